"""Linear probe on frozen, cached features (DESIGN §6; Truong et al. 2021 "linear evaluation").

Data contract
-------------
- features: float (N, D) arrays, one row per sample, from :func:`extract_features`;
- labels: int64 (N,) class indices, or a 0/1 (N, L) matrix for multi-label tasks;
- scores returned: float64 (N, K) probabilities (softmax over classes; for binary tasks K = 2
  and the positive class is column 1) or (N, L) independent sigmoids for multi-label tasks, i.e.
  exactly what :func:`medstudy.metrics.compute_metrics` and ``predictions_frame`` take.

Protocol: standardise every feature with the train mean/SD, fit an L2-regularised multinomial
logistic regression (one-vs-rest sigmoids for multi-label) by full-batch L-BFGS in float64 (scipy,
exact closed-form gradient) for
each L2 strength of a log-spaced grid, select the strength by the task's primary metric on val
(``PRIMARY_METRIC``; ties go to the stronger penalty) and keep that fit. The problem is strictly
convex, so the result does not depend on the initialisation and is deterministic on a given
machine. No class re-weighting: the probe sees the training prevalence, like the fine-tuned
models, and class imbalance shows up in balanced accuracy / macro F1 rather than being hidden.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_softmax, softmax
from threadpoolctl import threadpool_limits

from medstudy.data.info import DatasetInfo
from medstudy.metrics import PRIMARY_METRIC, compute_metrics

#: L2 strengths tried on val. The penalty is ``l2 / 2 * ||W||^2`` added to the *mean* loss, so
#: 1e-6 is nearly unregularised on 20k samples and 10 shrinks a 64-d probe to almost constant.
L2_GRID: tuple[float, ...] = tuple(float(10.0**k) for k in range(-6, 2))
#: L-BFGS iteration cap per grid point (warm-started along the grid, so later points converge
#: fast). Nearly separable data at the weakest penalties may hit it; the val selection then
#: simply prefers a stronger penalty that did converge if that predicts better.
MAX_ITER: int = 300


@dataclass
class LinearProbe:
    """A fitted probe: ``scores = act((x - mean) / scale @ weight + bias)``.

    ``weight`` (D, K), ``bias`` (K,), ``mean``/``scale`` (D,) from the train features.
    ``val_by_l2`` holds the val primary metric of every grid point (for the notebook table).
    """

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    l2: float
    multilabel: bool
    primary_metric: str
    val_by_l2: dict[float, float] = field(default_factory=dict)

    def logits(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return z @ self.weight + self.bias

    def predict_scores(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features → (N, K) probabilities (see the module data contract)."""
        logits = self.logits(features)
        return expit(logits) if self.multilabel else softmax(logits, axis=1)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to save next to the run (``probe.npz``) so later notebooks can reuse the probe."""
        return {
            "mean": self.mean,
            "scale": self.scale,
            "weight": self.weight,
            "bias": self.bias,
            "l2": np.array(self.l2),
            "multilabel": np.array(self.multilabel),
        }


def standardiser(train_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train mean and SD per feature; a constant feature keeps SD 1 (centred, not blown up)."""
    x = np.asarray(train_features, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    return mean, scale


def _objective(
    theta: np.ndarray, x: np.ndarray, targets: np.ndarray, multilabel: bool, l2: float
) -> tuple[float, np.ndarray]:
    """Penalised loss and its gradient in closed form; ``theta`` = [W (D·K) row-major, b (K)].

    Single-label: mean softmax cross-entropy. Multi-label: per label the mean binary
    cross-entropy, summed over labels, so every label is its own (one-vs-rest) problem with the
    same penalty. The bias is not penalised (standard for logistic regression, as in sklearn).
    """
    n, d = x.shape
    k = targets.shape[1]
    weight, bias = theta[: d * k].reshape(d, k), theta[d * k :]
    logits = x @ weight + bias
    if multilabel:
        # log(1 + exp(-|z|)) form of the BCE: stable for large |logits|.
        data = np.sum(np.logaddexp(0.0, logits) - targets * logits) / n
        resid = (expit(logits) - targets) / n
    else:
        logp = log_softmax(logits, axis=1)
        data = -np.sum(targets * logp) / n
        resid = (np.exp(logp) - targets) / n
    loss = data + 0.5 * l2 * float(np.sum(weight * weight))
    grad_w = x.T @ resid + l2 * weight
    return float(loss), np.concatenate([grad_w.ravel(), resid.sum(axis=0)])


def fit_logistic(
    x: np.ndarray,
    targets: np.ndarray,
    multilabel: bool,
    l2: float,
    init: np.ndarray | None = None,
    max_iter: int = MAX_ITER,
) -> np.ndarray:
    """Full-batch L-BFGS (scipy's L-BFGS-B, exact gradient) for one L2 strength.

    ``x`` float64 (N, D) standardised; ``targets`` float64 (N, K): one-hot classes, or the 0/1
    label matrix for multi-label. Returns ``theta`` = [W (D, K) row-major, b (K)]; ``init``
    warm-starts from a previous grid point.
    """
    d, k = x.shape[1], targets.shape[1]
    x0 = np.zeros(d * k + k) if init is None else init
    res = minimize(
        _objective,
        x0,
        args=(x, targets, multilabel, l2),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": 1e-9, "ftol": 1e-13},
    )
    return np.asarray(res.x)


def _selection_value(info: DatasetInfo, y: np.ndarray, scores: np.ndarray, metric: str) -> float:
    value = compute_metrics(info.task, y, scores, info.n_classes, info.name)[metric]
    return value if math.isfinite(value) else -math.inf


def fit_linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    info: DatasetInfo,
    l2_grid: Sequence[float] = L2_GRID,
    max_iter: int = MAX_ITER,
) -> LinearProbe:
    """Fit the probe for every L2 in ``l2_grid`` and keep the best on val (module docstring).

    Raises ``ValueError`` if the grid is empty or the val primary metric is undefined for every
    grid point (e.g. a val split with one class), instead of picking a strength arbitrarily.
    """
    if not l2_grid:
        raise ValueError("l2_grid must hold at least one L2 strength")
    metric = PRIMARY_METRIC[info.task]
    mean, scale = standardiser(train_features)
    x = (np.asarray(train_features, dtype=np.float64) - mean) / scale
    y = np.asarray(train_labels)
    if info.is_multilabel:
        targets = y.astype(np.float64)
    else:
        targets = np.eye(info.n_outputs)[y.reshape(-1)]
    d, k = x.shape[1], targets.shape[1]
    val_y = np.asarray(val_labels)
    probe = LinearProbe(mean, scale, np.empty(0), np.empty(0), math.nan, info.is_multilabel, metric)
    best: tuple[float, float, np.ndarray] | None = None
    theta: np.ndarray | None = None
    # One BLAS thread: these are many small matrix products, for which extra threads buy
    # nothing, and on a shared 2-core CPU oversubscribed BLAS threads made them 10x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        # Strong → weak penalty: each fit warm-starts from the smoother previous solution.
        for l2 in sorted((float(v) for v in l2_grid), reverse=True):
            theta = fit_logistic(x, targets, info.is_multilabel, l2, theta, max_iter)
            probe.weight, probe.bias, probe.l2 = theta[: d * k].reshape(d, k), theta[d * k :], l2
            value = _selection_value(info, val_y, probe.predict_scores(val_features), metric)
            probe.val_by_l2[l2] = value
            if best is None or value > best[0]:  # strict: ties keep the stronger penalty
                best = (value, l2, theta)
    assert best is not None
    if best[0] == -math.inf:
        raise ValueError(
            f"{info.name}: val {metric} is undefined for every L2 in {list(l2_grid)}; "
            "cannot select the probe's regularisation"
        )
    probe.weight, probe.bias, probe.l2 = best[2][: d * k].reshape(d, k), best[2][d * k :], best[1]
    return probe
