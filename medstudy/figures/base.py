"""Every table and figure that the notebooks and the paper share, from saved results only.

Inputs are tidy metrics (columns ``METRIC_COLUMNS`` + ``run_id``, as returned by the transfer
stage or :func:`medstudy.results.collect_metrics`), the claims table
(:func:`medstudy.claims.evaluate_claims` / ``load_claims``) and, for bootstrap CIs and the
number of labelled images, the runs' predictions and details read through
:mod:`medstudy.results`. Nothing here trains or re-evaluates a model. Metrics are those of
:data:`medstudy.metrics.METRICS`; ``metric=None`` means each dataset's primary metric.

Uncertainty conventions:

- :func:`transfer_table`, :func:`label_efficiency_table`: mean and SD (ddof 1) over seeds;
  the area under the label-efficiency curve gets a 95 % t-interval over the per-seed areas;
- :func:`plot_transfer`: 95 % stratified percentile bootstrap over *test cases* of the metric
  averaged over seeds (each replicate resamples the same cases for every seed, so the bar's CI
  is the sampling uncertainty of the evaluation set for that seed-averaged model family);
- :func:`plot_label_efficiency`: mean ± SD over seeds (``errors="sd"``, the paper's), or the
  95 % t-interval over seeds (``errors="ci"``; ``stats.aggregate_seeds``, seeds i.i.d.);
- :func:`plot_forest`: the claims' effects with their CIs, coloured by verdict.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from medstudy.claims import (
    CLAIMS,
    MINUS,
    VERDICT_COLOURS,
    VERDICTS,
    is_clean,
    prediction_arrays,
)
from medstudy.data.info import INFO, get_info
from medstudy.metrics import METRICS, PRIMARY_METRIC
from medstudy.results import read_details, read_predictions
from medstudy.stats import (
    aggregate_seeds,
    area_under_label_curve,
    bootstrap_ci,
    label_efficiency_slope,
)

__all__ = [
    "ARM_ORDER",
    "PROTOCOL_ORDER",
    "label_efficiency_table",
    "ordered",
    "plot_forest",
    "plot_label_efficiency",
    "plot_transfer",
    "primary_metric",
    "sort_rows",
    "transfer_table",
]

#: Display order of protocols and arms (fnmatch patterns); anything else follows by name.
PROTOCOL_ORDER: tuple[str, ...] = (
    "linear",
    "knn",
    "finetune",
    "dvme_encoders",
    "dvme_dims",
    "dvme_concat",
)
ARM_ORDER: tuple[str, ...] = (
    "scratch",
    "natural_sup",
    "natural_ssl",
    "ssl:*",
    "natural_sup+ssl:*",
    "curriculum",
    "fusion",
)
PROTOCOL_NAMES: dict[str, str] = {
    "linear": "linear probing",
    "knn": "kNN",
    "finetune": "fine-tuning",
}


# --------------------------------------------------------------------------------------------
# Selection and order
# --------------------------------------------------------------------------------------------
def ordered(values: Iterable[str], first: Sequence[str]) -> list[str]:
    """Distinct ``values`` ordered by the first pattern of ``first`` they match, then by name."""

    def rank(v: str) -> int:
        return next((i for i, pat in enumerate(first) if fnmatch.fnmatchcase(v, pat)), len(first))

    return sorted(set(values), key=lambda v: (rank(v), v))


def primary_metric(dataset: str, columns: Iterable[str] | None = None) -> str:
    """The metric the claims use for ``dataset`` (``PRIMARY_METRIC`` of its task). A dataset
    outside INFO gets its task from its predictions' ``columns``
    (:func:`medstudy.data.info.get_info`); without them, AUC, the primary metric of every task
    such a dataset can have (an inferred task is never ordinal)."""
    if dataset not in INFO and columns is None:
        return "auc"
    return PRIMARY_METRIC[get_info(dataset, columns).task]


def sort_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in display order: index levels by name, except arms and protocols, which follow
    ``ARM_ORDER`` / ``PROTOCOL_ORDER``."""
    firsts = {"arm": ARM_ORDER, "protocol": PROTOCOL_ORDER}
    flat = table.reset_index()
    levels = list(table.index.names)
    ranks = {
        lvl: flat[lvl].map({v: i for i, v in enumerate(ordered(flat[lvl], firsts.get(lvl, ())))})
        for lvl in levels
    }
    order = pd.DataFrame(ranks).sort_values(levels, kind="stable").index
    return table.iloc[order]


def _select(
    metrics: pd.DataFrame, metric: str | Sequence[str] | None, split: str, strict: bool = True
) -> pd.DataFrame:
    """Clean (``claims.is_clean``) rows of ``split`` for ``metric`` (a name, names, or None =
    each dataset's primary metric); ``strict``: an explicitly requested metric without rows is
    an error (a typo in a notebook), else an empty frame."""
    if not len(metrics):
        return metrics
    df = metrics[(metrics["split"] == split) & is_clean(metrics["distortion"])]
    if metric is None:
        wanted = df["dataset"].map({d: primary_metric(d) for d in df["dataset"].unique()})
        return df[df["metric"] == wanted]
    names = [metric] if isinstance(metric, str) else list(metric)
    out = df[df["metric"].isin(names)]
    if out.empty and strict:
        present = sorted(metrics["metric"].unique())
        raise ValueError(f"no {split!r} rows for metric {metric!r}; metrics present: {present}")
    return out


def _only(df: pd.DataFrame, column: str) -> str:
    """The single value of ``column`` (a figure shows one dataset of one stage)."""
    values = sorted(df[column].unique())
    if len(values) != 1:
        raise ValueError(f"expected metrics of one {column}, got {values}; filter them first")
    return str(values[0])


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def transfer_table(
    metrics: pd.DataFrame,
    split: str = "test",
    metrics_shown: Sequence[str] | None = None,
    fraction: float | None = None,
    primary_only: bool = False,
) -> pd.DataFrame:
    """Mean and SD over seeds of each metric per (dataset, protocol, arm) at one label fraction.

    ``fraction=None`` takes each dataset's largest fraction. ``metrics_shown`` restricts the
    metrics; ``primary_only`` keeps each dataset's primary metric. Columns: ``<metric>`` (mean),
    ``<metric>_sd`` (SD over seeds, NaN with one seed), then ``n_seeds``. Empty metrics give an
    empty table.
    """
    if not len(metrics):
        return pd.DataFrame()
    names = metrics_shown or sorted(metrics["metric"].unique())
    df = _select(metrics, None if primary_only else names, split, strict=False)
    frac = df.groupby("dataset")["fraction"].transform("max") if fraction is None else fraction
    df = df[np.isclose(df["fraction"], frac)]
    if df.empty:
        return pd.DataFrame()
    keys = ["dataset", "protocol", "arm"]
    g = df.groupby([*keys, "metric"])["value"]
    mean = g.mean().unstack("metric")
    sd = g.std(ddof=1).unstack("metric").add_suffix("_sd")
    n = df.groupby(keys)["seed"].nunique().rename("n_seeds")
    table = pd.concat([mean, sd, n], axis=1)
    shown = [m for m in METRICS if m in mean.columns]
    shown += sorted(c for c in mean.columns if c not in METRICS)
    return sort_rows(table[[c for m in shown for c in (m, f"{m}_sd")] + ["n_seeds"]])


def label_efficiency_table(
    metrics: pd.DataFrame, metric: str | None = None, split: str = "test"
) -> pd.DataFrame:
    """Per (dataset, metric, protocol, arm): the mean (``"<fraction>"``) and SD
    (``"<fraction>_sd"``) over seeds of ``metric`` at every label fraction, the normalised area
    under the label-efficiency curve of the seed means (``aulc``; ``stats.area_under_label_curve``)
    with a 95 % t-CI over the per-seed areas, the slope per decade of labels
    (``stats.label_efficiency_slope``) and ``n_seeds``. Fewer than two fractions: NaN area and
    slope. ``metric=None``: each dataset's primary metric."""
    df = _select(metrics, metric, split)
    if not len(df):
        return pd.DataFrame()
    keys = ["dataset", "metric", "protocol", "arm"]
    fractions = sorted(df["fraction"].unique())
    rows = []
    for key, g in df.groupby(keys):
        row: dict[str, object] = dict(zip(keys, key, strict=True))
        per_fraction = g.groupby("fraction")["value"]
        means, sds = per_fraction.mean(), per_fraction.std(ddof=1)
        for f in means.index:
            row[f"{f:g}"], row[f"{f:g}_sd"] = means[f], sds[f]
        row.update(aulc=math.nan, aulc_ci_low=math.nan, aulc_ci_high=math.nan)
        row["slope_per_decade"] = math.nan
        if len(means) >= 2:
            row["aulc"] = area_under_label_curve(means.index, means.to_numpy())
            row["slope_per_decade"] = label_efficiency_slope(means.index, means.to_numpy())
            per_seed = [
                area_under_label_curve(s["fraction"], s["value"])
                for _, s in g.groupby("seed")
                if s["fraction"].nunique() == len(means)
            ]
            if per_seed:
                summ = aggregate_seeds(per_seed)
                row.update(aulc_ci_low=summ.ci_low, aulc_ci_high=summ.ci_high)
        row["n_seeds"] = int(g["seed"].nunique())
        rows.append(row)
    at = [c for f in fractions for c in (f"{f:g}", f"{f:g}_sd")]
    cols = [*at, "aulc", "aulc_ci_low", "aulc_ci_high", "slope_per_decade", "n_seeds"]
    return sort_rows(pd.DataFrame(rows).set_index(keys).reindex(columns=cols))


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _stacked_predictions(
    stage: str, run_ids: Sequence[str], split: str, root: Path | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``y`` (N,) or (N, L), scores (N, n_runs, K) aligned on sample_id across runs, and the
    prediction columns."""
    frames = []
    for rid in run_ids:
        df = read_predictions(stage, rid, root)
        frames.append(df[df["split"] == split].sort_values("sample_id", kind="stable"))
    ids = frames[0]["sample_id"].to_numpy()
    for f in frames[1:]:
        if not np.array_equal(f["sample_id"].to_numpy(), ids):
            raise ValueError(f"runs {list(run_ids)} were evaluated on different {split} samples")
    y, _ = prediction_arrays(frames[0])
    scores = np.stack([prediction_arrays(f)[1] for f in frames], axis=1)
    return y, scores, list(frames[0].columns)


def plot_transfer(
    metrics: pd.DataFrame,
    metric: str | None = None,
    split: str = "test",
    fraction: float | None = None,
    n_boot: int = 500,
    alpha: float = 0.05,
    seed: int = 0,
    root: Path | None = None,
) -> Figure:
    """Bar chart of ``metric`` per protocol × arm of one dataset with bootstrap CIs (module
    docstring). Bars are the seed-mean of the saved metric; error bars come from the saved
    predictions (of the results dir ``root``, default ``results/``)."""
    frac = float(metrics["fraction"].max()) if fraction is None else float(fraction)
    df = _select(metrics, metric, split)
    df = df[np.isclose(df["fraction"], frac)]
    stage, dataset, metric = _only(df, "stage"), _only(df, "dataset"), _only(df, "metric")
    spec = METRICS[metric]
    protocols = ordered(df["protocol"].unique(), PROTOCOL_ORDER)
    arms = ordered(df["arm"].unique(), ARM_ORDER)
    fig = Figure(figsize=(min(14.0, 3.0 + 0.45 * len(df.groupby(["protocol", "arm"]))), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    cmap = {a: f"C{i % 10}" for i, a in enumerate(arms)}
    width = 0.8 / max(1, len(arms))
    labelled: set[str] = set()
    for p_i, protocol in enumerate(protocols):
        present = [a for a in arms if ((df["protocol"] == protocol) & (df["arm"] == a)).any()]
        for a_i, arm in enumerate(present):
            rows = df[(df["protocol"] == protocol) & (df["arm"] == arm)].sort_values("seed")
            y, s, columns = _stacked_predictions(stage, rows["run_id"].tolist(), split, root)
            info = get_info(dataset, columns)

            per_run = spec.per_condition(info.task, info.n_classes)
            res = bootstrap_ci(
                lambda yy, ss: float(np.mean(per_run(yy, ss))),  # noqa: B023 (called in this iteration)
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


def _labelled_images(df: pd.DataFrame, root: Path | None) -> dict[float, str]:
    """Label fraction → number of labelled training images (``n_train`` of the runs' details;
    "a–b" if the runs differ), for the fractions whose runs recorded it."""
    out = {}
    for fraction, g in df.groupby("fraction"):
        counts = set()
        for stage, rid in g[["stage", "run_id"]].drop_duplicates().itertuples(index=False):
            n = read_details(str(stage), str(rid), root).get("n_train")
            if n is not None:
                counts.add(int(n))
        if counts:
            lo, hi = min(counts), max(counts)
            out[float(fraction)] = f"{lo}" if lo == hi else f"{lo}\u2013{hi}"
    return out


def plot_label_efficiency(
    metrics: pd.DataFrame,
    metric: str | None = None,
    split: str = "test",
    errors: Literal["sd", "ci"] = "sd",
    root: Path | None = None,
) -> Figure | None:
    """Label-efficiency curves: ``metric`` (default each dataset's primary metric) vs label
    fraction (log x), one panel per (protocol, dataset), one line per arm (one colour per arm
    across panels), error bars per ``errors`` (module docstring). Each panel's y axis names its
    metric; x ticks show each fraction and, where the runs recorded it (``run_id`` column and
    their details in ``root``), the number of labelled training images. ``None`` without data.
    """
    m = _select(metrics, metric, split)
    if not len(m):
        return None
    datasets = sorted(m["dataset"].unique())
    protocols = ordered(m["protocol"].unique(), PROTOCOL_ORDER)
    arms = ordered(m["arm"].unique(), ARM_ORDER)
    colours = {arm: f"C{i % 10}" for i, arm in enumerate(arms)}
    fig = Figure(figsize=(3.4 * len(datasets), 2.8 * len(protocols)))
    axes = fig.subplots(len(protocols), len(datasets), squeeze=False)
    for i, protocol in enumerate(protocols):
        for j, ds in enumerate(datasets):
            ax = axes[i, j]
            ax.set_title(f"{ds} · {protocol}", fontsize=9)
            sel = m[(m["protocol"] == protocol) & (m["dataset"] == ds)]
            if sel.empty:
                what = PROTOCOL_NAMES.get(protocol, protocol)
                text = f"no {what} at label fractions\nfor {ds}"
                ax.text(
                    0.5, 0.5, text, ha="center", va="center", fontsize=8, color="#555555",
                    transform=ax.transAxes,
                )  # fmt: skip
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            _draw_curves(ax, sel, colours, errors)
            fractions = sorted(sel["fraction"].unique())
            n_images = _labelled_images(sel, root) if "run_id" in sel else {}
            ax.set_xscale("log")
            ticks = [f"{f:g}" + (f"\nn={n_images[f]}" if f in n_images else "") for f in fractions]
            ax.set_xticks(fractions, ticks)
            ax.minorticks_off()
            ax.tick_params(labelsize=7)
            ax.set_ylabel(f"{split} {_only(sel, 'metric')}", fontsize=8)
            xlabel = "label fraction (n = labelled images)" if n_images else "label fraction"
            ax.set_xlabel(xlabel, fontsize=8)
    handles, labels = [], []
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(
        handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False
    )
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 4), 1, 1))
    return fig


def _draw_curves(ax: Axes, sel: pd.DataFrame, colours: dict[str, str], errors: str) -> None:
    """One line per arm: the seed mean at each fraction with SD or t-CI error bars."""
    arms = ordered(sel["arm"].unique(), ARM_ORDER)
    lows, highs = [], []
    for i, arm in enumerate(arms):
        g = sel[sel["arm"] == arm].groupby("fraction")["value"]
        mean = g.mean()
        if errors == "ci":
            summ = [aggregate_seeds(v.to_numpy()) for _, v in g]
            lo = np.array([s.mean - s.ci_low if np.isfinite(s.ci_low) else 0.0 for s in summ])
            hi = np.array([s.ci_high - s.mean if np.isfinite(s.ci_high) else 0.0 for s in summ])
            err: np.ndarray = np.vstack([lo, hi])
        else:
            err = g.std(ddof=1).fillna(0.0).to_numpy()
        # a small multiplicative dodge keeps the arms' error bars apart on the log axis
        x = mean.index.to_numpy() * 10 ** (0.02 * (i - (len(arms) - 1) / 2))
        ax.errorbar(
            x, mean.to_numpy(), yerr=err, color=colours[arm], marker="o", ms=3, capsize=2,
            label=arm,
        )  # fmt: skip
        lows.append(float(mean.min()))
        highs.append(float(mean.max()))
    if errors == "ci":
        # axis range from the means: with 2-3 seeds a t-interval can span far beyond the
        # metric's range (t_{0.975,1} = 12.7) and would flatten every curve
        pad = max(0.05, 0.15 * (max(highs) - min(lows)))
        ax.set_ylim(min(lows) - pad, max(highs) + pad)


def _row_label(r: pd.Series) -> str:
    stat = "" if r["statistic"] == "metric" else f" {r['statistic']}"
    return f"{r['dataset']}: {r['comparison']} [{r['metric']}{stat}]"


def plot_forest(claims_df: pd.DataFrame, claim_ids: Sequence[str] | None = None) -> Figure:
    """Forest plot: effect (A − B) with its CI per tested *primary* row (secondary statistics
    are in the table), one panel per claim on its statistic's own scale, coloured by verdict;
    claims without a tested row are listed underneath with their reason. ``claim_ids`` limits
    the plot to those claims (default: every claim of the registry); an unknown id is an
    error."""
    wanted = list(CLAIMS) if claim_ids is None else list(claim_ids)
    unknown = sorted(set(wanted) - set(CLAIMS))
    if unknown:
        raise ValueError(f"unknown claim ids {unknown}; valid: {list(CLAIMS)}")
    primary = claims_df["role"] != "secondary" if "role" in claims_df else True
    tested = claims_df[
        (claims_df["verdict"] != "not run")
        & np.isfinite(claims_df["effect"].astype(float))
        & primary
        & claims_df["claim"].isin(wanted)
    ]
    order = [c for c in wanted if c in set(tested["claim"])]
    untested = [c for c in wanted if c not in order]
    # at least 2 rows' height per panel: a one-row panel leaves its title no room
    heights = [max(2, int((tested["claim"] == c).sum())) for c in order] or [2]
    # ~0.25 inch per row and ~0.7 per panel title keep 8-pt labels legible on a page
    fig = Figure(figsize=(8.5, 1.0 + 0.25 * sum(heights) + 0.7 * len(heights)))
    axes = fig.subplots(len(heights), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, cid in zip(axes[:, 0], order, strict=False):
        rows = tested[tested["claim"] == cid].iloc[::-1]
        y = np.arange(len(rows))
        for yi, (_, r) in zip(y, rows.iterrows(), strict=True):
            colour = VERDICT_COLOURS[r["verdict"]]
            ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=colour, lw=2)
            ax.plot(r["effect"], yi, "o", color=colour, ms=6)
        ax.axvline(0.0, color="black", lw=0.8, ls="--")
        ax.set_yticks(y, [_row_label(r) for _, r in rows.iterrows()], fontsize=8)
        ax.set_title(f"{cid}: {CLAIMS[cid].text}", fontsize=9, loc="left", wrap=True)
        ax.tick_params(axis="x", labelsize=8)
    if not order:
        axes[0, 0].axis("off")
        axes[0, 0].text(0.5, 0.5, "no claim could be tested yet", ha="center", va="center")
    axes[-1, 0].set_xlabel(f"effect (A {MINUS} B, in the units of each panel's statistic)")
    handles = [
        Line2D([], [], color=VERDICT_COLOURS[v], marker="o", lw=2, label=v) for v in VERDICTS[:3]
    ]
    fig.legend(handles=handles, loc="upper right", fontsize=8, ncol=3, frameon=False)
    notes = []
    for cid in untested:
        reasons = claims_df.loc[claims_df["claim"] == cid, "reason"].astype(str)
        first = next((x for x in reasons if x), "")
        notes.append(f"{cid} not run: {first[:100]}")
    # reserve ~0.14 inch per note line under the panels
    fig.set_figheight(fig.get_figheight() + 0.14 * len(notes))
    bottom = (0.14 * len(notes) + 0.1) / fig.get_figheight() if notes else 0.0
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom", ha="left", color="#555555")
    fig.tight_layout(rect=(0.0, bottom, 1.0, 0.97))
    return fig
