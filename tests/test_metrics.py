"""Tests for medstudy.metrics: sklearn as the reference on random inputs, hand cases for QWK,
referable AUC and ECE."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from medstudy import metrics as mt


def _probs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.dirichlet(np.ones(k), size=n)


# --------------------------------------------------------------------------------------------
# Against sklearn, every task type
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (400, 1))  # medmnist label layout
    p = _probs(rng, 400, 2)
    yf, pred = y[:, 0], p.argmax(1)
    m = mt.compute_metrics("binary-class", y, p, n_classes=2)
    assert set(m) == {"auc", "accuracy", "balanced_accuracy", "macro_f1", "ece"}
    assert m["auc"] == pytest.approx(skm.roc_auc_score(yf, p[:, 1]), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(yf, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(yf, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(yf, pred, average="macro"), abs=1e-12)
    # a 1-D P(positive) vector is the same thing as the (N, 2) layout
    assert mt.auc_score("binary-class", yf, p[:, 1]) == m["auc"]


@pytest.mark.parametrize("task", ["multi-class", "ordinal-regression"])
@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_and_ordinal_match_sklearn(task: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 5
    y = rng.integers(0, k, 500)
    p = _probs(rng, 500, k)
    pred = p.argmax(1)
    m = mt.compute_metrics(task, y, p, n_classes=k)
    ref_auc = skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=np.arange(k))
    assert m["auc"] == pytest.approx(ref_auc, abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
    if task == "ordinal-regression":
        qwk = skm.cohen_kappa_score(y, pred, weights="quadratic")
        assert m["qwk"] == pytest.approx(qwk, abs=1e-12)
        assert m["referable_auc"] == pytest.approx(
            skm.roc_auc_score(y >= 2, p[:, 2:].sum(1)), abs=1e-12
        )
        assert m["referable_auc_ge3"] == pytest.approx(
            skm.roc_auc_score(y >= 3, p[:, 3:].sum(1)), abs=1e-12
        )
    else:
        assert "qwk" not in m and "referable_auc" not in m


def test_ordinal_without_five_grades_has_no_referable_auc() -> None:
    rng = np.random.default_rng(0)
    m = mt.compute_metrics("ordinal-regression", rng.integers(0, 3, 50), _probs(rng, 50, 3), 3)
    assert "qwk" in m and "referable_auc" not in m and "referable_auc_ge3" not in m


@pytest.mark.parametrize("seed", [0, 1])
def test_multilabel_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (300, 6))
    s = np.clip(rng.random((300, 6)) * 0.8 + 0.3 * y, 0, 1)
    pred = (s > 0.5).astype(int)
    m = mt.compute_metrics("multi-label, binary-class", y, s, n_classes=6)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, s, average="macro"), abs=1e-12)
    assert m["accuracy"] == pytest.approx(np.mean(y == pred), abs=1e-15)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
    bal = np.mean([skm.balanced_accuracy_score(y[:, j], pred[:, j]) for j in range(6)])
    assert m["balanced_accuracy"] == pytest.approx(bal, abs=1e-12)
    assert 0.0 <= m["ece"] <= 1.0


def test_multilabel_auc_skips_single_class_label() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (100, 3))
    y[:, 1] = 0  # label 1 never present
    s = rng.random((100, 3))
    with pytest.warns(RuntimeWarning, match=r"skipped label\(s\) \[1\]"):
        got = mt.auc_score("multi-label, binary-class", y, s)
    ref = np.mean([skm.roc_auc_score(y[:, j], s[:, j]) for j in (0, 2)])
    assert got == pytest.approx(ref, abs=1e-12)


def test_multiclass_auc_skips_absent_class() -> None:
    rng = np.random.default_rng(4)
    y = rng.choice([0, 1, 3], 200)  # class 2 absent
    p = _probs(rng, 200, 4)
    with pytest.warns(RuntimeWarning, match=r"\[2\]"):
        got = mt.auc_score("multi-class", y, p)
    ref = np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in (0, 1, 3)])
    assert got == pytest.approx(ref, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Hand cases
# --------------------------------------------------------------------------------------------
def test_qwk_grade_absent_from_both() -> None:
    # K = 5, grade 2 absent from y_true and y_pred. Unnormalised weights (i - j)^2 (the 1/16
    # normalisation cancels). Observed: disagreements (1,3) and (3,1): sum w*O = 4 + 4 = 8.
    # Marginals are 1 each on grades {0,1,3,4}, N = 4 -> E_ij = 1/4; sum over ordered pairs of
    # {0,1,3,4} of (i-j)^2 = 2 * (1 + 9 + 16 + 4 + 9 + 1) = 80 -> sum w*E = 20.
    # kappa = 1 - 8/20 = 0.6. Without explicit labels sklearn re-indexes {0,1,3,4} -> 0..3 and
    # gets 1 - 2/10 = 0.8.
    y_true, y_pred = [0, 1, 3, 4], [0, 3, 1, 4]
    assert mt.quadratic_kappa(y_true, y_pred, n_classes=5) == pytest.approx(0.6, abs=1e-12)
    assert skm.cohen_kappa_score(y_true, y_pred, weights="quadratic") == pytest.approx(0.8)


def test_qwk_grade_absent_from_pred() -> None:
    # y_true = [0,1,2,2], y_pred = [0,1,1,1]: sum w*O = 1 + 1 = 2. Row marginals (1,1,2),
    # column marginals (1,3,0): sum w*E = (1/4)[1*(3) + 1*(1) + 2*(4 + 3)] = 4.5.
    # kappa = 1 - 2/4.5 = 5/9; an unused top grade (K = 5) changes nothing.
    for k in (3, 5):
        got = mt.quadratic_kappa([0, 1, 2, 2], [0, 1, 1, 1], n_classes=k)
        assert got == pytest.approx(5 / 9, abs=1e-12)
    with pytest.raises(ValueError, match="grades must lie"):
        mt.quadratic_kappa([0, 5], [0, 1], n_classes=5)


def test_referable_auc_hand_case() -> None:
    # Probabilities in eighths so that sums are exact.
    p = (
        np.array(
            [
                [5, 2, 1, 0, 0],  # y=0: P(>=2) = 1/8, P(>=3) = 0
                [2, 2, 2, 2, 0],  # y=1: 4/8, 2/8
                [1, 4, 1, 1, 1],  # y=2: 3/8, 2/8
                [0, 1, 1, 2, 4],  # y=3: 7/8, 6/8
                [0, 0, 1, 2, 5],  # y=4: 8/8, 7/8
                [1, 1, 0, 2, 4],  # y=2: 6/8, 6/8
            ]
        )
        / 8.0
    )
    y = np.array([0, 1, 2, 3, 4, 2])
    # >=2: positives {3, 7, 8, 6}, negatives {1, 4}: only 3 < 4 fails -> 7/8
    assert mt.referable_auc(y, p, threshold_grade=2) == 0.875
    # >=3: positives {6, 7}, negatives {0, 2, 2, 6}: 6 ties one negative -> (3.5 + 4)/8
    assert mt.referable_auc(y, p, threshold_grade=3) == 0.9375
    with pytest.raises(ValueError, match="threshold_grade"):
        mt.referable_auc(y, p, threshold_grade=5)


def test_ece_hand_case() -> None:
    # n_bins = 5, bins (0,.2], (.2,.4], (.4,.6], (.6,.8], (.8,1]
    p = np.array([[0.25, 0.75], [0.375, 0.625], [0.9375, 0.0625], [0.5, 0.5]])
    y = np.array([1, 0, 0, 1])
    # conf .75 correct and .625 wrong -> bin (.6,.8]: |0.5 - 0.6875| * 2/4 = 0.09375
    # conf .9375 correct -> (.8,1]: 0.0625 * 1/4 = 0.015625
    # conf .5, argmax tie -> class 0, wrong -> (.4,.6]: 0.5 * 1/4 = 0.125
    assert mt.expected_calibration_error(y, p, n_bins=5) == pytest.approx(0.234375, abs=1e-15)
    # a confidence exactly on an edge belongs to the lower bin: n_bins = 4 has exact edges; conf
    # 0.75 (right) and 0.7 (wrong) share (.5,.75] -> |0.5 - 0.725| = 0.225 (0.475 if 0.75 were
    # put into (.75,1])
    p2 = np.array([[0.25, 0.75], [0.3, 0.7]])
    assert mt.expected_calibration_error([1, 0], p2, n_bins=4) == pytest.approx(0.225, abs=1e-12)
    # perfectly calibrated extreme case: all confident and right -> 0
    assert mt.expected_calibration_error([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0


# --------------------------------------------------------------------------------------------
# Contracts
# --------------------------------------------------------------------------------------------
def test_task_strings_and_primary_metric() -> None:
    assert set(mt.PRIMARY_METRIC) == set(mt.TASKS)
    assert mt.PRIMARY_METRIC["ordinal-regression"] == "qwk"
    assert mt.PRIMARY_METRIC["multi-label, binary-class"] == "auc"
    try:
        from medmnist import INFO
    except ImportError:  # pragma: no cover - medmnist is a declared dependency
        pytest.skip("medmnist not installed")
    assert {v["task"] for v in INFO.values()} <= set(mt.TASKS)


def test_input_errors() -> None:
    rng = np.random.default_rng(0)
    p = _probs(rng, 10, 3)
    with pytest.raises(ValueError, match="unknown task"):
        mt.compute_metrics("regression", np.zeros(10), p, 3)
    with pytest.raises(ValueError, match="n_classes=4"):
        mt.compute_metrics("multi-class", rng.integers(0, 3, 10), p, 4, dataset="pathmnist")
    with pytest.raises(ValueError, match="shape mismatch"):
        mt.accuracy("multi-class", np.zeros(9, int), p)
    with pytest.raises(ValueError, match="binary scores"):
        mt.auc_score("binary-class", np.zeros(10, int), p)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_single_class_auc_is_nan_with_warning() -> None:
    p = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    with pytest.warns(RuntimeWarning, match="one class"):
        m = mt.compute_metrics("binary-class", [1, 1, 1], p, 2)
    assert np.isnan(m["auc"]) and m["accuracy"] == pytest.approx(1 / 3)
    with pytest.warns(RuntimeWarning, match="one class"):
        assert np.isnan(mt.referable_auc([0, 1, 1], _probs(np.random.default_rng(0), 3, 5)))


def test_no_warnings_on_clean_inputs() -> None:
    rng = np.random.default_rng(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mt.compute_metrics("ordinal-regression", rng.integers(0, 5, 200), _probs(rng, 200, 5), 5)


# --------------------------------------------------------------------------------------------
# The METRICS registry
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "k"),
    [("binary-class", 2), ("multi-class", 4), ("ordinal-regression", 5), ("multi-label, binary-class", 3)],
)  # fmt: skip
def test_batched_metrics_equal_the_plain_ones_at_every_condition(task: str, k: int) -> None:
    rng = np.random.default_rng(3)
    n, c = 90, 3
    if task.startswith("multi-label"):
        y = rng.integers(0, 2, (n, k))
        s = np.round(rng.random((n, c, k)), 1)  # ties
    else:
        y = np.arange(n) % k
        s = np.round(rng.dirichlet(np.ones(k), size=(n, c)), 1)
    applicable = [m for m in mt.METRICS.values() if m.applies(task, k)]
    assert [m.name for m in applicable] == list(mt.compute_metrics(task, y, s[:, 0], k))
    for spec in applicable:
        plain = [spec.compute(task, y, s[:, j], k) for j in range(c)]
        np.testing.assert_allclose(spec.per_condition(task, k)(y, s), plain, err_msg=spec.name)
        assert mt.compute_metrics(task, y, s[:, 1], k)[spec.name] == pytest.approx(plain[1])


def test_registry_rows() -> None:
    assert mt.METRICS["auc"].batched is not None and mt.METRICS["qwk"].batched is not None
    assert not mt.METRICS["ece"].higher_is_better
    assert all(m.higher_is_better for name, m in mt.METRICS.items() if name != "ece")
    assert mt.METRICS["auc"].chance("multi-class", 4) == 0.5
    assert mt.METRICS["qwk"].chance("ordinal-regression", 5) == 0.0
    assert mt.METRICS["balanced_accuracy"].chance("multi-class", 4) == 0.25
    assert not mt.METRICS["referable_auc"].applies("ordinal-regression", 4)
    assert set(mt.PRIMARY_METRIC.values()) <= set(mt.METRICS)
    with pytest.raises(ValueError, match="unknown metric 'kappa'; valid"):
        mt.get_metric("kappa")
