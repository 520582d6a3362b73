"""Tables and figures of notebooks 02 and 03, computed from saved results only.

Inputs are the tidy metrics returned by :func:`~medstudy.evaluate.transfer.run_transfer`
(columns ``METRIC_COLUMNS`` + ``run_id``) and, for bootstrap CIs, the units'
``predictions.parquet`` found through ``run_id``. Nothing here trains or re-evaluates a model.

Uncertainty conventions:

- :func:`plot_transfer`: 95 % stratified percentile bootstrap over *test cases* of the metric
  averaged over seeds (each replicate resamples the same cases for every seed, so the bar's CI
  is the sampling uncertainty of the evaluation set for that seed-averaged model family);
- :func:`plot_label_efficiency` / :func:`label_efficiency_table`: across-seed mean and 95 %
  t-interval (``stats.aggregate_seeds``; seeds treated as i.i.d.); with one seed no interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medstudy import paths
from medstudy.data.info import INFO, DatasetInfo
from medstudy.metrics import (
    MULTI_LABEL,
    PRIMARY_METRIC,
    accuracy,
    auc_score,
    balanced_accuracy,
    expected_calibration_error,
    macro_f1,
    predict,
    quadratic_kappa,
    referable_auc,
)
from medstudy.stats import (
    aggregate_seeds,
    area_under_label_curve,
    bootstrap_ci,
    label_efficiency_slope,
)

PROTOCOL_ORDER: tuple[str, ...] = (
    "linear",
    "knn",
    "finetune",
    "dvme_encoders",
    "dvme_dims",
    "dvme_concat",
)
MetricFn = Callable[[np.ndarray, np.ndarray], float]


def dataset_info(name: str) -> DatasetInfo:
    """INFO row, or the row inferred from a dropped-in ``<name>.npz`` (via the loader)."""
    if name in INFO:
        return INFO[name]
    from medstudy.data import load_split

    return load_split(name, "val").info


def primary_metric(dataset: str) -> str:
    """The metric the claims use for ``dataset`` (``PRIMARY_METRIC`` of its task)."""
    return PRIMARY_METRIC[dataset_info(dataset).task]


def metric_function(info: DatasetInfo, metric: str) -> MetricFn:
    """``fn(y_true, scores) -> float`` for one metric of ``compute_metrics`` (same definitions),
    without computing the others: bootstrap replicates call it thousands of times."""
    task, k = info.task, info.n_classes
    table: dict[str, MetricFn] = {
        "auc": lambda y, s: auc_score(task, y, s),
        "accuracy": lambda y, s: accuracy(task, y, s),
        "balanced_accuracy": lambda y, s: balanced_accuracy(task, y, s),
        "macro_f1": lambda y, s: macro_f1(task, y, s),
        "qwk": lambda y, s: quadratic_kappa(y, predict(task, s), k),
        "referable_auc": lambda y, s: referable_auc(y, s, 2),
        "referable_auc_ge3": lambda y, s: referable_auc(y, s, 3),
    }
    if task != MULTI_LABEL:
        table["ece"] = lambda y, s: expected_calibration_error(y, s)
    if metric not in table:
        raise ValueError(f"no bootstrap metric {metric!r} for {task}; valid: {sorted(table)}")
    return table[metric]


def _select(metrics: pd.DataFrame, metric: str, split: str) -> pd.DataFrame:
    df = metrics[(metrics["metric"] == metric) & (metrics["split"] == split)]
    if df.empty:
        valid = sorted(metrics["metric"].unique())
        raise ValueError(f"no {split!r} rows for metric {metric!r}; metrics present: {valid}")
    return df


def _only(df: pd.DataFrame, column: str) -> str:
    """The single value of ``column`` (a figure shows one dataset of one stage)."""
    values = sorted(df[column].unique())
    if len(values) != 1:
        raise ValueError(f"expected metrics of one {column}, got {values}; filter them first")
    return str(values[0])


def _protocol_key(p: str) -> tuple[int, str]:
    return (PROTOCOL_ORDER.index(p) if p in PROTOCOL_ORDER else len(PROTOCOL_ORDER), p)


def _arm_order(arms: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(arms))


def _stacked_predictions(
    stage: str, run_ids: Sequence[str], split: str
) -> tuple[np.ndarray, np.ndarray]:
    """``y`` (N,) or (N, L) and scores (N, n_runs, K) aligned on sample_id across runs."""
    frames = []
    for rid in run_ids:
        df = pd.read_parquet(paths.run_dir(stage, rid) / "predictions.parquet")
        frames.append(df[df["split"] == split].sort_values("sample_id").reset_index(drop=True))
    ids = frames[0]["sample_id"].to_numpy()
    for f in frames[1:]:
        if not np.array_equal(f["sample_id"].to_numpy(), ids):
            raise ValueError(f"runs {list(run_ids)} were evaluated on different {split} samples")
    ycols = [c for c in frames[0].columns if c == "y_true" or c.startswith("y_true_")]
    scols = [c for c in frames[0].columns if c.startswith("score_")]
    y = frames[0][ycols].to_numpy()
    y = y[:, 0] if ycols == ["y_true"] else y
    scores = np.stack([f[scols].to_numpy(dtype=np.float64) for f in frames], axis=1)
    return y, scores


def transfer_table(
    metrics: pd.DataFrame,
    split: str = "test",
    metrics_shown: Sequence[str] | None = None,
    fraction: float | None = None,
) -> pd.DataFrame:
    """Seed-mean (± SD over seeds) of each metric per (protocol, arm) at one label fraction.

    ``fraction=None`` takes the largest fraction present. Columns: ``<metric>`` (mean) and
    ``<metric>_sd``, plus ``n_seeds``.
    """
    _only(metrics, "dataset")
    frac = float(metrics["fraction"].max()) if fraction is None else float(fraction)
    df = metrics[(metrics["split"] == split) & np.isclose(metrics["fraction"], frac)]
    if metrics_shown is not None:
        df = df[df["metric"].isin(metrics_shown)]
    g = df.groupby(["protocol", "arm", "metric"])["value"]
    out = g.mean().unstack("metric")
    sd = g.std(ddof=1).unstack("metric").add_suffix("_sd")
    n = df.groupby(["protocol", "arm"])["seed"].nunique().rename("n_seeds")
    table = pd.concat([out, sd, n], axis=1)
    cols = [c for m in out.columns for c in (m, f"{m}_sd")] + ["n_seeds"]
    table = table[cols]
    order = sorted(table.index, key=lambda ix: (_protocol_key(ix[0]), ix[1]))
    return table.loc[order]


def plot_transfer(
    metrics: pd.DataFrame,
    metric: str,
    split: str = "test",
    fraction: float | None = None,
    n_boot: int = 500,
    alpha: float = 0.05,
    seed: int = 0,
) -> Figure:
    """Bar chart of ``metric`` per protocol × arm with bootstrap CIs (module docstring).

    Bars are the seed-mean of the saved metric; error bars come from the saved predictions.
    """
    frac = float(metrics["fraction"].max()) if fraction is None else float(fraction)
    df = _select(metrics, metric, split)
    df = df[np.isclose(df["fraction"], frac)]
    stage, dataset = _only(df, "stage"), _only(df, "dataset")
    fn = metric_function(dataset_info(dataset), metric)
    protocols = sorted(df["protocol"].unique(), key=_protocol_key)
    arms = _arm_order(df["arm"])
    fig = Figure(figsize=(min(14.0, 3.0 + 0.45 * len(df.groupby(["protocol", "arm"]))), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    cmap = {a: f"C{i}" for i, a in enumerate(arms)}
    width = 0.8 / max(1, len(arms))
    labelled: set[str] = set()
    for p_i, protocol in enumerate(protocols):
        present = [a for a in arms if ((df["protocol"] == protocol) & (df["arm"] == a)).any()]
        for a_i, arm in enumerate(present):
            rows = df[(df["protocol"] == protocol) & (df["arm"] == arm)].sort_values("seed")
            y, s = _stacked_predictions(stage, rows["run_id"].tolist(), split)
            res = bootstrap_ci(
                lambda yy, ss: float(np.mean([fn(yy, ss[:, j]) for j in range(ss.shape[1])])),
                y,
                s,
                n_boot=n_boot,
                alpha=alpha,
                method="percentile",
                seed=seed,
            )
            x = p_i + (a_i - (len(present) - 1) / 2) * width
            mean = float(rows["value"].mean())
            ax.bar(
                x,
                mean,
                width * 0.9,
                color=cmap[arm],
                label=arm if arm not in labelled else None,
                yerr=[[max(0.0, mean - res.ci_low)], [max(0.0, res.ci_high - mean)]],
                capsize=3,
            )
            labelled.add(arm)
    ax.set_xticks(range(len(protocols)), protocols)
    ax.set_ylabel(f"{split} {metric}")
    # Bars start near the lowest value, not at 0: differences of a few points must be visible.
    ax.set_ylim(max(0.0, float(df["value"].min()) - 0.1), None)
    ax.set_title(
        f"{dataset}: {metric} with {frac:.0%} of the labels "
        f"(seed mean, {1 - alpha:.0%} bootstrap CI over test cases)"
    )
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def _seed_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Per (protocol, arm, fraction): mean, CI bounds and n over seeds."""
    rows = []
    for (protocol, arm, fraction), g in df.groupby(["protocol", "arm", "fraction"]):
        summ = aggregate_seeds(g["value"].to_numpy())
        rows.append(
            {
                "protocol": protocol,
                "arm": arm,
                "fraction": float(fraction),
                "mean": summ.mean,
                "ci_low": summ.ci_low,
                "ci_high": summ.ci_high,
                "n_seeds": summ.n,
            }
        )
    return pd.DataFrame(rows)


def plot_label_efficiency(metrics: pd.DataFrame, metric: str, split: str = "test") -> Figure:
    """``metric`` vs label fraction (log x), one panel per protocol and one curve per arm:
    across-seed mean with 95 % t-interval error bars."""
    df = _select(metrics, metric, split)
    curves = _seed_curves(df)
    protocols = sorted(curves["protocol"].unique(), key=_protocol_key)
    arms = _arm_order(df["arm"])
    fig = Figure(figsize=(4.0 * len(protocols), 3.6))
    axes = fig.subplots(1, len(protocols), sharey=True, squeeze=False)[0]
    for ax, protocol in zip(axes, protocols, strict=True):
        for i, arm in enumerate(arms):
            c = curves[(curves["protocol"] == protocol) & (curves["arm"] == arm)]
            if c.empty:
                continue
            c = c.sort_values("fraction")
            ok = c["ci_low"].notna()  # one seed: no interval to draw
            err = [
                np.where(ok, c["mean"] - c["ci_low"], 0.0),
                np.where(ok, c["ci_high"] - c["mean"], 0.0),
            ]
            # A small multiplicative dodge keeps the arms' error bars apart on the log axis.
            x = c["fraction"] * 10 ** (0.025 * (i - (len(arms) - 1) / 2))
            ax.errorbar(x, c["mean"], yerr=err, fmt="o-", color=f"C{i}", capsize=3, label=arm)
        ax.set_xscale("log")
        ax.set_xlabel("label fraction")
        ax.set_title(protocol)
    # Axis range from the means: with 2-3 seeds a t-interval can span far beyond the metric's
    # range (t_{0.975,1} = 12.7) and would flatten every curve.
    lo, hi = float(curves["mean"].min()), float(curves["mean"].max())
    pad = max(0.05, 0.15 * (hi - lo))
    axes[0].set_ylim(lo - pad, hi + pad)
    axes[0].set_ylabel(f"{split} {metric}")
    axes[-1].legend(fontsize=8)
    dataset = _only(df, "dataset")
    fig.suptitle(f"{dataset}: label efficiency (mean ± 95 % t-CI over seeds)")
    fig.tight_layout()
    return fig


def label_efficiency_table(metrics: pd.DataFrame, metric: str, split: str = "test") -> pd.DataFrame:
    """Per (protocol, arm): seed-mean ``metric`` at every fraction, the normalised area under
    the label-efficiency curve (``stats.area_under_label_curve`` of the seed means; its 95 %
    t-CI over the per-seed areas) and the slope per decade of labels
    (``stats.label_efficiency_slope``). Fewer than two fractions → area and slope are NaN."""
    df = _select(metrics, metric, split)
    _only(df, "dataset")
    curves = _seed_curves(df)
    rows = []
    for (protocol, arm), c in curves.groupby(["protocol", "arm"]):
        row: dict[str, object] = {"protocol": protocol, "arm": arm}
        for _, r in c.sort_values("fraction").iterrows():
            row[f"{metric}@{r['fraction']:g}"] = r["mean"]
        g = df[(df["protocol"] == protocol) & (df["arm"] == arm)]
        if c["fraction"].nunique() >= 2:
            row["aulc"] = area_under_label_curve(c["fraction"], c["mean"])
            row["slope_per_decade"] = label_efficiency_slope(c["fraction"], c["mean"])
            per_seed = [
                area_under_label_curve(s["fraction"], s["value"])
                for _, s in g.groupby("seed")
                if s["fraction"].nunique() == c["fraction"].nunique()
            ]
            summ = aggregate_seeds(per_seed) if per_seed else None
            row["aulc_ci_low"] = summ.ci_low if summ else math.nan
            row["aulc_ci_high"] = summ.ci_high if summ else math.nan
        else:
            row.update(aulc=math.nan, slope_per_decade=math.nan)
            row.update(aulc_ci_low=math.nan, aulc_ci_high=math.nan)
        row["n_seeds"] = int(g["seed"].nunique())
        rows.append(row)
    table = pd.DataFrame(rows).set_index(["protocol", "arm"])
    at = [f"{metric}@{f:g}" for f in sorted(curves["fraction"].unique())]
    cols = [*at, "aulc", "aulc_ci_low", "aulc_ci_high", "slope_per_decade", "n_seeds"]
    order = sorted(table.index, key=lambda ix: (_protocol_key(ix[0]), ix[1]))
    return table.loc[order, cols]
