"""medstudy.figures: the tables and figures shared by notebooks and paper, on a planted results
tree (tests/fake_results.py); numbers checked against a direct groupby of the metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_results import add_runs
from matplotlib.figure import Figure

from medstudy import figures, results
from medstudy.stats import area_under_label_curve

PNEU, RETINA = "pneumoniamnist", "retinamnist"


@pytest.fixture
def label_curves(results_tmp: Path) -> pd.DataFrame:
    """Label efficiency: linear on both datasets (3 fractions, 2 seeds), fine-tuning on
    pneumonia only; every run records its number of labelled images."""
    arms = {"scratch": 1.0, "ssl:simclr": 2.0}
    for ds in (PNEU, RETINA):
        add_runs(
            results_tmp, "label_efficiency", ds, arms, protocol="linear",
            fractions=(0.01, 0.1, 1.0), fraction_strength=0.5,
        )  # fmt: skip
    add_runs(
        results_tmp, "label_efficiency", PNEU, arms, fractions=(0.1, 1.0), fraction_strength=0.5
    )
    metrics = results.collect_metrics("label_efficiency", results_tmp)
    for rid in metrics["run_id"].unique():
        results.write_json(
            results_tmp / "label_efficiency" / rid / results.DETAILS_FILE, {"n_train": 50}
        )
    return metrics


def test_transfer_table_is_the_seed_mean_and_sd_at_the_largest_fraction(
    results_tmp: Path,
) -> None:
    add_runs(results_tmp, "transfer", PNEU, {"scratch": 0.3, "natural_sup": 2.5})
    add_runs(results_tmp, "transfer", RETINA, {"scratch": 0.3}, fractions=(0.1, 1.0))
    metrics = results.collect_metrics("transfer", results_tmp)
    table = figures.transfer_table(metrics)
    assert table.index.names == ["dataset", "protocol", "arm"]
    assert list(table.index) == [
        (PNEU, "finetune", "scratch"),
        (PNEU, "finetune", "natural_sup"),  # ARM_ORDER, not alphabetical
        (RETINA, "finetune", "scratch"),
    ]
    ref = metrics.query("split == 'test' and fraction == 1.0 and metric == 'qwk'")
    assert table.loc[(RETINA, "finetune", "scratch"), "qwk"] == pytest.approx(ref["value"].mean())
    assert table.loc[(RETINA, "finetune", "scratch"), "qwk_sd"] == pytest.approx(
        ref["value"].std(ddof=1)
    )
    assert (table["n_seeds"] == 3).all()  # fake_results writes 3 seeds by default
    primary = figures.transfer_table(metrics, primary_only=True)
    assert list(primary.columns) == ["auc", "auc_sd", "qwk", "qwk_sd", "n_seeds"]
    assert primary.loc[PNEU, "qwk"].isna().all() and primary.loc[RETINA, "auc"].isna().all()
    assert figures.transfer_table(metrics.iloc[:0]).empty


def test_label_efficiency_table_area_and_sd(label_curves: pd.DataFrame) -> None:
    table = figures.label_efficiency_table(label_curves)  # each dataset's primary metric
    key = (RETINA, "qwk", "linear", "ssl:simclr")
    lin = label_curves.query(
        "dataset == @RETINA and arm == 'ssl:simclr' and protocol == 'linear' "
        "and split == 'test' and metric == 'qwk'"
    )
    means = lin.groupby("fraction")["value"].mean()
    assert table.loc[key, "aulc"] == pytest.approx(area_under_label_curve(means.index, means))
    assert table.loc[key, "0.01_sd"] == pytest.approx(
        lin[lin["fraction"] == 0.01]["value"].std(ddof=1)
    )
    assert np.isnan(table.loc[(PNEU, "auc", "finetune", "scratch"), "0.01"])
    with pytest.raises(ValueError, match="metrics present"):
        figures.label_efficiency_table(label_curves, "kappa")


def test_label_efficiency_plot_names_metrics_images_and_empty_panels(
    label_curves: pd.DataFrame, results_tmp: Path
) -> None:
    fig = figures.plot_label_efficiency(label_curves, root=results_tmp)
    assert isinstance(fig, Figure)
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert panels[f"{RETINA} · linear"].get_ylabel() == "test qwk"
    assert panels[f"{PNEU} · finetune"].get_ylabel() == "test auc"
    ticks = [t.get_text() for t in panels[f"{RETINA} · linear"].get_xticklabels()]
    assert ticks == ["0.01\nn=50", "0.1\nn=50", "1\nn=50"]
    empty = panels[f"{RETINA} · finetune"]
    texts = [t.get_text().replace("\n", " ") for t in empty.texts]
    assert texts == [f"no fine-tuning at label fractions for {RETINA}"]
    assert figures.plot_label_efficiency(label_curves.iloc[:0]) is None


def test_plot_transfer_reads_predictions_through_results(results_tmp: Path) -> None:
    add_runs(results_tmp, "transfer", RETINA, {"scratch": 0.3, "natural_sup": 2.5})
    metrics = results.collect_metrics("transfer", results_tmp)
    fig = figures.plot_transfer(metrics, n_boot=20, root=results_tmp)
    assert fig.axes[0].get_ylabel() == "test qwk"


def test_primary_metric_and_datasets_outside_info() -> None:
    assert figures.primary_metric(RETINA) == "qwk"
    assert figures.primary_metric(PNEU) == "auc"
    assert figures.primary_metric("my_own_set") == "auc"
    cols = ["sample_id", "y_true", "score_0", "score_1", "score_2"]
    assert figures.primary_metric("my_own_set", cols) == "auc"
    assert figures.ordered(["ssl:b", "fusion", "scratch", "ssl:a", "zzz"], figures.ARM_ORDER) == [
        "scratch",
        "ssl:a",
        "ssl:b",
        "fusion",
        "zzz",
    ]
