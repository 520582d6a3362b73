"""Robustness tables and plots shared by notebook 06 and the paper (claim C6)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medstudy.data.loaders import dataset_info
from medstudy.figures.base import ARM_ORDER, _only, ordered, primary_metric
from medstudy.metrics import METRICS


# --------------------------------------------------------------------------------------------
# Robustness (notebook 06, claim C6)
# --------------------------------------------------------------------------------------------
def _robustness_means(metrics: pd.DataFrame, metric: str | None) -> tuple[pd.DataFrame, str]:
    """Test rows of one metric (default: the dataset's primary), mean over seeds per
    (arm, distortion, severity); the clean set is distortion "none", severity 0."""
    m = metrics[metrics["split"] == "test"]
    metric = metric or primary_metric(_only(m, "dataset"))
    m = m[m["metric"] == metric]
    keys = ["arm", "distortion", "severity"]
    return m.groupby(keys, as_index=False)["value"].mean(), metric


def plot_severity_curves(metrics: pd.DataFrame, metric: str | None = None) -> Figure:
    """Metric against severity, one panel per distortion, a line per arm (mean over seeds);
    severity 0 is the clean test set, the dashed line chance."""
    means, metric = _robustness_means(metrics, metric)
    clean = means[means["distortion"] == "none"].set_index("arm")["value"]
    names = sorted(set(means["distortion"]) - {"none"})
    arms = ordered(means["arm"].unique(), ARM_ORDER)
    ncols = min(4, max(1, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = Figure(figsize=(2.6 * ncols, 2.1 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    chance = METRICS[metric].chance(dataset_info(_only(metrics, "dataset")).task, 0)
    for ax, name in zip(axes.ravel(), names, strict=False):
        for arm in arms:
            part = means[(means["arm"] == arm) & (means["distortion"] == name)]
            xs = [0, *part["severity"].tolist()]
            ys = [clean.get(arm, np.nan), *part["value"].tolist()]
            ax.plot(xs, ys, marker="o", ms=3, label=arm)
        ax.axhline(chance, color="grey", ls="--", lw=0.8)
        ax.set_title(name.replace("_", " "), fontsize=8)
        ax.set_xlabel("severity (0 = clean)", fontsize=7)
        ax.set_ylabel(f"test {metric}", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(arms), 4), fontsize=7)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def robustness_table(metrics: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Per arm: the clean metric, the mean chance-normalised drop over the suite
    (:func:`medstudy.corruption.chance_normalised_drop`; lower = more robust) and the mCE and
    relative mCE normalised by ``scratch`` (ImageNet-C; below 1 = more robust than scratch).
    Means over seeds; C6's test with CIs is in notebook 07."""
    from medstudy.corruption import chance_normalised_drop, mean_corruption_error

    means, metric = _robustness_means(metrics, metric)
    dataset = _only(metrics, "dataset")
    info = dataset_info(dataset)
    chance = METRICS[metric].chance(info.task, info.n_classes)
    rows = []
    for arm, g in means.groupby("arm"):
        clean = float(g.loc[g["distortion"] == "none", "value"].mean())
        distorted = g.loc[g["distortion"] != "none", "value"].to_numpy()
        drop = chance_normalised_drop(clean, distorted, chance, on_undefined="nan")
        rows.append({"arm": arm, f"clean_{metric}": clean, "chance_norm_drop": np.mean(drop)})
    table = pd.DataFrame(rows).set_index("arm")
    if "scratch" in table.index:
        errors = means.assign(error=1.0 - means["value"])[
            ["arm", "distortion", "severity", "error"]
        ]
        ce = mean_corruption_error(errors, reference="scratch", on_undefined="nan")
        table["mCE"] = ce.mce
        table["relative_mCE"] = ce.relative_mce
    return table.loc[ordered(table.index, ARM_ORDER)]
