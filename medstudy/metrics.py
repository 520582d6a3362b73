"""Task-aware classification metrics, keyed by medmnist's task strings (``INFO[name]["task"]``).

Data contract
-------------
- ``task``: one of :data:`TASKS` -- ``"binary-class"``, ``"multi-class"``,
  ``"ordinal-regression"``, ``"multi-label, binary-class"``.
- ``y_true``: integer class labels, shape ``(N,)`` or medmnist's ``(N, 1)``; for multi-label a
  0/1 matrix ``(N, L)``.
- ``scores``: predicted probabilities. Single-label tasks: ``(N, K)`` rows of class
  probabilities (binary has K = 2 and the positive class is column 1; a 1-D ``(N,)`` vector is
  accepted for binary as P(class 1)). Multi-label: ``(N, L)`` independent per-label
  probabilities.
- Hard predictions: argmax over classes for single-label tasks (ties -> lowest class index);
  ``p > 0.5`` per label for multi-label (medmnist's evaluator uses the same 0.5 rule).

sklearn provides every metric here except the ECE and the referable-DR AUC.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats as sps
from sklearn import metrics as skm

__all__ = [
    "BINARY",
    "METRICS",
    "MULTI_CLASS",
    "MULTI_LABEL",
    "ORDINAL",
    "PRIMARY_METRIC",
    "TASKS",
    "ConditionMetric",
    "MetricSpec",
    "accuracy",
    "auc_score",
    "balanced_accuracy",
    "compute_metrics",
    "expected_calibration_error",
    "get_metric",
    "macro_f1",
    "predict",
    "quadratic_kappa",
    "referable_auc",
]

BINARY = "binary-class"
MULTI_CLASS = "multi-class"
ORDINAL = "ordinal-regression"
MULTI_LABEL = "multi-label, binary-class"
TASKS: tuple[str, ...] = (BINARY, MULTI_CLASS, ORDINAL, MULTI_LABEL)

#: Metric each claim uses per task. Ordinal grading (RetinaMNIST) is judged by quadratic kappa,
#: which, unlike one-vs-rest AUC, penalises a grade-0-vs-4 confusion more than 0-vs-1.
PRIMARY_METRIC: dict[str, str] = {
    BINARY: "auc",
    MULTI_CLASS: "auc",
    ORDINAL: "qwk",
    MULTI_LABEL: "auc",
}


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------
#: Val metrics that may select the fine-tuning epoch (higher is better); "" = the task's primary.
SELECT_METRICS: tuple[str, ...] = ("", "auc", "accuracy", "balanced_accuracy", "macro_f1", "qwk")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(repr(t) for t in TASKS)}")


def _labels_1d(y_true: npt.ArrayLike) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"y_true must be (N,) or (N, 1) for a single-label task, got {y.shape}")
    if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError("y_true must hold integer class labels")
    return y.astype(np.int64)


def _prepare(
    task: str, y_true: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (y, scores) with y (N,) int for single-label, (N, L) int otherwise,
    and scores (N, K) / (N, L) float64."""
    _check_task(task)
    s = np.asarray(scores, dtype=np.float64)
    if task == BINARY and s.ndim == 1:
        s = np.column_stack([1.0 - s, s])
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (N, K), got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    if task == MULTI_LABEL:
        y = np.asarray(y_true)
        if y.shape != s.shape:
            raise ValueError(f"multi-label y_true {y.shape} and scores {s.shape} must match")
        if not np.all(np.isin(y, (0, 1))):
            raise ValueError("multi-label y_true must be 0/1")
        return y.astype(np.int64), s
    y = _labels_1d(y_true)
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"shape mismatch: {y.shape[0]} labels vs {s.shape[0]} score rows")
    if task == BINARY and s.shape[1] != 2:
        raise ValueError(f"binary scores must be (N, 2) (positive = column 1), got {s.shape}")
    if y.size and (y.min() < 0 or y.max() >= s.shape[1]):
        raise ValueError(f"labels must lie in [0, {s.shape[1] - 1}] for {s.shape[1]} score columns")
    return y, s


def predict(task: str, scores: npt.ArrayLike, threshold: float = 0.5) -> np.ndarray:
    """Hard predictions: argmax class (N,) for single-label tasks, ``scores > threshold``
    (N, L) 0/1 for multi-label."""
    _check_task(task)
    s = np.asarray(scores, dtype=np.float64)
    if task == MULTI_LABEL:
        return (s > threshold).astype(np.int64)
    if task == BINARY and s.ndim == 1:
        s = np.column_stack([1.0 - s, s])
    return np.argmax(s, axis=1)


def _per_label(
    y: np.ndarray,
    cols: Sequence[np.ndarray],
    fn: Callable[..., float],
    what: str,
    need_both: bool = True,
) -> float:
    """Mean of ``fn(y[:, j], *cols[:, j])`` over labels, skipping labels whose y_true column has
    one class only (AUC / balanced accuracy undefined) with a RuntimeWarning."""
    vals, skipped = [], []
    for j in range(y.shape[1]):
        yj = y[:, j]
        if need_both and (yj.min() == yj.max()):
            skipped.append(j)
            continue
        vals.append(fn(yj, *(c[:, j] for c in cols)))
    if skipped:
        warnings.warn(
            f"{what}: skipped label(s) {skipped} with a single class in y_true",
            RuntimeWarning,
            stacklevel=3,
        )
    return float(np.mean(vals)) if vals else float("nan")


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def _binary_auc_or_nan(y: np.ndarray, score: np.ndarray, what: str) -> float:
    """sklearn AUC, but NaN with a RuntimeWarning when y has one class only (e.g. a tiny
    validation split): callers selecting checkpoints treat non-finite values as "no signal"
    rather than crashing mid-training."""
    if y.size == 0 or y.min() == y.max():
        warnings.warn(
            f"{what}: only one class in y_true, AUC undefined -> NaN", RuntimeWarning, stacklevel=3
        )
        return float("nan")
    return float(skm.roc_auc_score(y, score))


def auc_score(task: str, y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """ROC AUC for the task.

    - binary: AUC of column 1 (positive class = 1); NaN with a RuntimeWarning if y_true has
      a single class.
    - multi-class / ordinal: macro one-vs-rest AUC, i.e. the unweighted mean over classes k of
      AUC(y == k, scores[:, k]) -- equal to ``roc_auc_score(multi_class="ovr",
      average="macro")`` when every class occurs; a class absent from y_true is skipped with a
      RuntimeWarning instead of raising.
    - multi-label: mean over labels of the per-label AUC, skipping (with a RuntimeWarning)
      labels whose y_true column holds one class only; NaN if no label is usable.
    """
    y, s = _prepare(task, y_true, scores)
    if task == BINARY:
        return _binary_auc_or_nan(y, s[:, 1], "auc")
    if task == MULTI_LABEL:
        return _per_label(y, [s], skm.roc_auc_score, "auc")
    onehot = (y[:, None] == np.arange(s.shape[1])[None, :]).astype(np.int64)
    return _per_label(onehot, [s], skm.roc_auc_score, "auc (one-vs-rest)")


def accuracy(task: str, y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Accuracy of the argmax prediction; multi-label: mean over labels of the per-label
    accuracy at p > 0.5 (= element-wise accuracy, medmnist's definition -- not subset accuracy)."""
    y, s = _prepare(task, y_true, scores)
    pred = predict(task, s)
    if task == MULTI_LABEL:
        return float(np.mean(y == pred))
    return float(skm.accuracy_score(y, pred))


def balanced_accuracy(task: str, y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Balanced accuracy (mean per-class recall over the classes present in y_true, sklearn);
    multi-label: mean over labels of the binary balanced accuracy at p > 0.5, skipping labels
    with one class in y_true (RuntimeWarning)."""
    y, s = _prepare(task, y_true, scores)
    pred = predict(task, s)
    if task == MULTI_LABEL:
        return _per_label(y, [pred], skm.balanced_accuracy_score, "balanced_accuracy")
    return float(skm.balanced_accuracy_score(y, pred))


def macro_f1(task: str, y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Macro F1 over all K classes (``labels=range(K)``, ``zero_division=0``: a class never
    predicted and absent scores 0); multi-label: macro F1 over the L labels at p > 0.5."""
    y, s = _prepare(task, y_true, scores)
    pred = predict(task, s)
    if task == MULTI_LABEL:
        return float(skm.f1_score(y, pred, average="macro", zero_division=0))
    return float(
        skm.f1_score(y, pred, labels=np.arange(s.shape[1]), average="macro", zero_division=0)
    )


def quadratic_kappa(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, n_classes: int) -> float:
    """Quadratic-weighted Cohen's kappa with explicit ``labels=range(n_classes)``.

    The explicit labels matter: sklearn otherwise builds the weight matrix from the grades that
    occur, so with grade 2 absent from both vectors a 1-vs-3 disagreement would weigh like an
    adjacent-grade error. ``y_true``/``y_pred``: integer grades (N,) in [0, n_classes).
    """
    yt, yp = _labels_1d(y_true), _labels_1d(y_pred)
    if yt.shape != yp.shape:
        raise ValueError(f"shape mismatch: y_true {yt.shape} vs y_pred {yp.shape}")
    for name, v in (("y_true", yt), ("y_pred", yp)):
        if v.size and (v.min() < 0 or v.max() >= n_classes):
            raise ValueError(f"{name} grades must lie in [0, {n_classes - 1}]")
    return float(skm.cohen_kappa_score(yt, yp, weights="quadratic", labels=np.arange(n_classes)))


def referable_auc(y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold_grade: int = 2) -> float:
    """Binary AUC of "grade >= threshold_grade" vs below, for ordinal DR grading.

    The score is the total probability of the referable grades, ``scores[:, t:].sum(1)``, which
    is the calibrated P(grade >= t) if the class probabilities are. ``threshold_grade=2`` is
    referable DR as moderate or worse (ICDR 2+); ``3`` gives the "referable = grades 3-4"
    definition. ``y_true`` (N,) grades, ``scores`` (N, K) class probabilities. NaN with a
    RuntimeWarning if all grades fall on one side of the threshold.
    """
    y = _labels_1d(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ValueError(f"scores must be (N, K) with N = {y.shape[0]}, got {s.shape}")
    if not 1 <= threshold_grade < s.shape[1]:
        raise ValueError(f"threshold_grade must be in [1, {s.shape[1] - 1}], got {threshold_grade}")
    return _binary_auc_or_nan(
        y >= threshold_grade,
        s[:, threshold_grade:].sum(axis=1),
        f"referable_auc(>={threshold_grade})",
    )


def _ece_top_label(correct: np.ndarray, conf: np.ndarray, n_bins: int) -> float:
    # Equal-width bins (lo, hi] as in Guo et al. 2017. searchsorted against the float edges
    # keeps bin membership consistent with the edges themselves (ceil(conf * n_bins) - 1 can
    # disagree by one bin, e.g. 0.6 * 5 = 3.0000000000000004 vs the edge 0.6000000000000001).
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], conf, side="left")
    acc = np.bincount(bins, weights=correct, minlength=n_bins)
    cnf = np.bincount(bins, weights=conf, minlength=n_bins)
    # sum_b |B_b|/N |acc_b - conf_b| == sum_b |sum_correct_b - sum_conf_b| / N
    return float(np.abs(acc - cnf).sum() / conf.size)


def expected_calibration_error(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, n_bins: int = 15
) -> float:
    """Top-label expected calibration error (Guo et al. 2017) with ``n_bins`` equal-width bins.

    confidence = max_k scores[:, k], correct = (argmax == y_true);
    ``ECE = sum_b (|B_b| / N) |accuracy(B_b) - mean confidence(B_b)|`` over bins (lo, hi] of
    [0, 1]. ``y_true`` (N,) labels, ``scores`` (N, K) probabilities. Empty bins contribute 0.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y = _labels_1d(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ValueError(f"scores must be (N, K) with N = {y.shape[0]}, got {s.shape}")
    correct = (np.argmax(s, axis=1) == y).astype(np.float64)
    return _ece_top_label(correct, s.max(axis=1), n_bins)


def _ece_multilabel(y: np.ndarray, s: np.ndarray, n_bins: int) -> float:
    """Mean over labels of the binary top-label ECE: per label, confidence max(p, 1 - p) and
    prediction p > 0.5."""
    vals = []
    for j in range(y.shape[1]):
        p = s[:, j]
        correct = ((p > 0.5).astype(np.int64) == y[:, j]).astype(np.float64)
        vals.append(_ece_top_label(correct, np.maximum(p, 1.0 - p), n_bins))
    return float(np.mean(vals))


# --------------------------------------------------------------------------------------------
# The METRICS registry: every table, plot and claim reads its metrics here
# --------------------------------------------------------------------------------------------
#: ``fn(y (N,) or (N, L), scores (N, C, K)) -> (C,)``: a metric at each of C conditions
#: (seeds, label fractions, distortions) scored on the same cases.
ConditionMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _auc(task: str, y: npt.ArrayLike, s: npt.ArrayLike, k: int) -> float:
    return auc_score(task, y, s)


def _accuracy(task: str, y: npt.ArrayLike, s: npt.ArrayLike, k: int) -> float:
    return accuracy(task, y, s)


def _balanced_accuracy(task: str, y: npt.ArrayLike, s: npt.ArrayLike, k: int) -> float:
    return balanced_accuracy(task, y, s)


def _macro_f1(task: str, y: npt.ArrayLike, s: npt.ArrayLike, k: int) -> float:
    return macro_f1(task, y, s)


def _ece(task: str, y: npt.ArrayLike, s: npt.ArrayLike, k: int) -> float:
    if task == MULTI_LABEL:
        yy, ss = _prepare(task, y, s)
        return _ece_multilabel(yy, ss, 15)
    return expected_calibration_error(y, s)


def _qwk(task: str, y: npt.ArrayLike, s: npt.ArrayLike, k: int) -> float:
    return quadratic_kappa(y, predict(task, s), k)


def _referable(threshold_grade: int) -> Callable[[str, npt.ArrayLike, npt.ArrayLike, int], float]:
    return lambda task, y, s, k: referable_auc(y, s, threshold_grade)


def _auc_per_condition(task: str, n_classes: int) -> ConditionMetric:
    """AUC at every condition. Binary: one midrank pass over all conditions at once
    (Mann-Whitney, ties count 1/2; equals :func:`auc_score` when both classes occur); other
    tasks: :func:`auc_score` per condition."""
    if task == BINARY:

        def binary(y: np.ndarray, s: np.ndarray) -> np.ndarray:
            pos = np.asarray(y).ravel().astype(bool)
            m = int(pos.sum())
            n = pos.size - m
            ranks = sps.rankdata(s[:, :, 1], axis=0)
            return (ranks[pos].sum(axis=0) - m * (m + 1) / 2.0) / (m * n)

        return binary
    return lambda y, s: np.array([auc_score(task, y, s[:, c]) for c in range(s.shape[1])])


def _qwk_per_condition(task: str, n_classes: int) -> ConditionMetric:
    """Quadratic kappa of the argmax grade with labels ``range(K)`` at every condition; equals
    :func:`quadratic_kappa` but costs one bincount (bootstraps call it thousands of times)."""
    k = n_classes
    grid = np.arange(k)
    weights = (grid[:, None] - grid[None, :]) ** 2 / float((k - 1) ** 2)

    def qwk(y: np.ndarray, s: np.ndarray) -> np.ndarray:
        yt = np.asarray(y).ravel()
        out = np.empty(s.shape[1])
        for c in range(s.shape[1]):
            cm = np.bincount(yt * k + np.argmax(s[:, c], axis=1), minlength=k * k).reshape(k, k)
            expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / cm.sum()
            den = float(np.sum(weights * expected))
            out[c] = 1.0 - float(np.sum(weights * cm)) / den if den > 0 else math.nan
        return out

    return qwk


def _uniform_guess(task: str, n_classes: int) -> float:
    # a uniformly random guess: 1/K of the classes, or one of two outcomes per label
    return 0.5 if task == MULTI_LABEL else 1.0 / n_classes


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the study.

    ``compute(task, y_true, scores, n_classes) -> float`` follows the module's data contract;
    ``higher_is_better``; ``chance(task, n_classes)`` is the value of an uninformative model
    (NaN where it depends on the class prevalence, or for a lower-is-better error);
    the metric is reported for ``tasks`` (and, if ``n_classes`` is set, only with that many
    classes). ``batched(task, n_classes)``, if given, is a fast ``ConditionMetric`` equal to
    ``compute`` at every condition (tests check the equality); :meth:`per_condition` falls back
    to calling ``compute`` per condition.
    """

    name: str
    compute: Callable[[str, npt.ArrayLike, npt.ArrayLike, int], float]
    higher_is_better: bool
    chance: Callable[[str, int], float]
    tasks: tuple[str, ...]
    n_classes: int | None = None
    batched: Callable[[str, int], ConditionMetric] | None = None
    description: str = ""

    def applies(self, task: str, n_classes: int) -> bool:
        return task in self.tasks and self.n_classes in (None, n_classes)

    def per_condition(self, task: str, n_classes: int) -> ConditionMetric:
        """``fn(y, scores (N, C, K)) -> (C,)``: the metric at each of C conditions."""
        if self.batched is not None:
            return self.batched(task, n_classes)
        return lambda y, s: np.array(
            [self.compute(task, y, s[:, c], n_classes) for c in range(s.shape[1])]
        )


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec(
            "auc", _auc, True, lambda t, k: 0.5, TASKS, batched=_auc_per_condition,
            description="ROC AUC (macro one-vs-rest; mean per label for multi-label)",
        ),
        MetricSpec(
            "accuracy", _accuracy, True, _uniform_guess, TASKS,
            description="accuracy of the argmax (multi-label: per label at p > 0.5)",
        ),
        MetricSpec(
            "balanced_accuracy", _balanced_accuracy, True, _uniform_guess, TASKS,
            description="mean per-class recall",
        ),
        MetricSpec(
            "macro_f1", _macro_f1, True, lambda t, k: math.nan, TASKS,
            description="macro F1 over all classes",
        ),
        MetricSpec(
            "ece", _ece, False, lambda t, k: math.nan, TASKS,
            description="top-label expected calibration error, 15 bins (lower is better)",
        ),
        MetricSpec(
            "qwk", _qwk, True, lambda t, k: 0.0, (ORDINAL,), batched=_qwk_per_condition,
            description="quadratic-weighted Cohen's kappa of the argmax grade",
        ),
        MetricSpec(
            "referable_auc", _referable(2), True, lambda t, k: 0.5, (ORDINAL,), n_classes=5,
            description="AUC of referable DR, grade >= 2 (5-grade DR scale)",
        ),
        MetricSpec(
            "referable_auc_ge3", _referable(3), True, lambda t, k: 0.5, (ORDINAL,), n_classes=5,
            description="AUC of referable DR as grades 3-4 (the DR study's definition)",
        ),
    )
}  # fmt: skip


def get_metric(name: str) -> MetricSpec:
    """The registry row for ``name``; an unknown name raises ``ValueError`` listing the valid."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; valid: {list(METRICS)}") from None


def compute_metrics(
    task: str,
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    n_classes: int,
    dataset: str | None = None,
) -> dict[str, float]:
    """Every metric of ``METRICS`` that applies to the task, in registry order.

    Always: ``auc``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``ece`` (definitions in
    the functions above; multi-label: mean per-label AUC, mean per-label accuracy at 0.5, mean
    per-label balanced accuracy, macro F1 at 0.5, mean per-label binary ECE). Ordinal tasks add
    ``qwk`` (argmax grade vs true grade); ordinal tasks with 5 grades (RetinaMNIST's DR scale)
    also add ``referable_auc`` (grade >= 2) and ``referable_auc_ge3`` (grade >= 3).
    ``n_classes`` is K (or L for multi-label) and must equal ``scores.shape[1]``. ``dataset`` is
    only used in error messages.
    """
    y, s = _prepare(task, y_true, scores)
    where = f" ({dataset})" if dataset else ""
    if s.shape[1] != n_classes:
        raise ValueError(f"n_classes={n_classes} but scores have {s.shape[1]} columns{where}")
    return {
        name: spec.compute(task, y, s, n_classes)
        for name, spec in METRICS.items()
        if spec.applies(task, n_classes)
    }
