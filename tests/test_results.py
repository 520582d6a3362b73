"""medstudy.results: run ids, atomic writes, manifest, tidy metrics, predictions, cache."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medstudy import results
from medstudy.results import (
    METRIC_COLUMNS,
    Run,
    collect_metrics,
    collect_predictions,
    is_done,
    metric_rows,
    predictions_frame,
    run_id,
)

CFG = {"dataset": "retinamnist", "arm": "scratch", "seed": 0}
BASE = {
    "stage": "transfer",
    "dataset": "retinamnist",
    "arm": "scratch",
    "protocol": "linear",
    "fraction": 1.0,
    "seed": 0,
    "split": "test",
}


def test_run_id_depends_on_config_and_inputs_only():
    a = run_id(CFG, {"retinamnist.npz": "abc"})
    assert a == run_id(dict(reversed(list(CFG.items()))), {"retinamnist.npz": "abc"})
    assert a != run_id({**CFG, "seed": 1}, {"retinamnist.npz": "abc"})
    assert a != run_id(CFG, {"retinamnist.npz": "abd"})
    assert len(a) == 12


def test_run_writes_config_manifest_metrics_predictions(results_tmp):
    ids = np.array(["a", "b", "c"])
    with Run("transfer", CFG, inputs={"retinamnist.npz": "abc"}, seed=0) as run:
        run.log_metrics(metric_rows(BASE, {"auc": 0.75, "accuracy": 0.5}))
        run.save_predictions(
            predictions_frame(BASE, ids, np.array([0, 1, 1]), np.full((3, 2), 0.5))
        )
    d = results_tmp / "transfer" / run.id
    assert is_done("transfer", run.id)
    assert json.loads((d / "config.json").read_text()) == CFG
    man = json.loads((d / "manifest.json").read_text())
    for key in ("git", "versions", "inputs", "seed", "device", "start", "end", "wall_time_s"):
        assert key in man
    assert man["inputs"] == {"retinamnist.npz": "abc"} and man["versions"]["torch"]
    assert {"sha", "dirty"} <= set(man["git"])
    m = pd.read_csv(d / "metrics.csv")
    assert list(m.columns) == list(METRIC_COLUMNS)
    assert m.set_index("metric")["value"].to_dict() == {"auc": 0.75, "accuracy": 0.5}
    p = pd.read_parquet(d / "predictions.parquet")
    assert p["sample_id"].tolist() == ["a", "b", "c"]
    assert {"y_true", "score_0", "score_1", "arm", "split"} <= set(p.columns)
    assert len(collect_metrics("transfer")) == 2 and len(collect_predictions("transfer")) == 3


def test_crash_mid_run_leaves_no_finished_looking_run(results_tmp):
    with pytest.raises(RuntimeError):
        with Run("transfer", CFG) as run:
            run.log_metrics(metric_rows(BASE, {"auc": 0.75}))
            raise RuntimeError("killed")
    assert not is_done("transfer", run.id)
    assert collect_metrics("transfer").empty  # unfinished runs are invisible to readers


def test_crash_mid_write_leaves_old_file_intact(results_tmp, monkeypatch):
    path = results_tmp / "x" / "metrics.csv"
    results.write_metrics(path, metric_rows(BASE, {"auc": 0.5}))
    before = path.read_text()

    def crash(self, *args, **kwargs):
        with open(args[0], "w") as fh:
            fh.write("stage,dataset\ntransfer,retin")  # half a row, then the machine dies
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash)
    with pytest.raises(KeyboardInterrupt):
        results.write_metrics(path, metric_rows(BASE, {"auc": 0.9}))
    assert path.read_text() == before
    assert [p.name for p in path.parent.iterdir()] == ["metrics.csv"]  # no temp file left


def test_rerun_after_crash_recomputes_and_finishes(results_tmp):
    with pytest.raises(RuntimeError):
        with Run("transfer", CFG):
            raise RuntimeError("killed")
    with Run("transfer", CFG) as run:
        run.log_metrics(metric_rows(BASE, {"auc": 0.75}))
    assert is_done("transfer", run.id)


def test_metrics_schema_is_enforced(results_tmp):
    with pytest.raises(ValueError, match=r"outside the schema: \['epoch'\]"):
        results.write_metrics(
            results_tmp / "m.csv", [{**BASE, "metric": "auc", "value": 1.0, "epoch": 3}]
        )


def test_predictions_need_sample_ids(results_tmp):
    with pytest.raises(ValueError, match="sample_id"):
        results.write_predictions(results_tmp / "p.parquet", pd.DataFrame({"y_true": [1]}))


def test_multilabel_predictions_frame():
    df = predictions_frame(
        BASE, np.array(["a", "b"]), np.array([[0, 1], [1, 1]]), np.array([[0.1, 0.9], [0.8, 0.7]])
    )
    assert {"y_true_0", "y_true_1", "score_0", "score_1"} <= set(df.columns)
