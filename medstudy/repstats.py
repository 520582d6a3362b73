"""Representation statistics (claim C9): PCA spectra, condition numbers, effective rank, linear
CKA, alignment/uniformity, bootstrap CIs over samples, and per-stage feature extraction.

Data contract
-------------
Every statistic is a pure function of numpy arrays of shape ``(N, D)``: N samples (rows, the
resampled unit of the bootstraps) by D features. Two feature sets compared with each other
(CKA, alignment) must describe the *same* N samples in the same row order. Arrays are
converted to float64. Randomness only enters the bootstraps, through an explicit
``seed: int | np.random.Generator`` (a Generator passed in is used as is and advanced).

Features of a network come from :func:`layer_features`: the output of every stage of a
:class:`medstudy.models.Backbone`, global-average-pooled per channel (``(N, C_stage)``).

References
----------
- Srinivasan et al. (2022), "On the robustness of pretraining and self-supervision for a deep
  learning-based analysis of diabetic retinopathy", PLOS ONE; public code (``compute_ev`` /
  ``compute_cn``): standardised layer outputs, PCA with 100 components, condition number
  ``percentile(lambda, 99.9) / percentile(lambda, 90)``.
- Roy & Vetterli (2007), "The effective rank: a measure of effective dimensionality", EUSIPCO.
- Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of neural network representations
  revisited", ICML (linear CKA).
- Song, Smola, Gretton, Bedo & Borgwardt (2012), "Feature selection via dependence
  maximization", JMLR 13 (unbiased HSIC); Nguyen, Raghu & Kornblith (2021), "Do wide and deep
  networks learn the same things?", ICLR (debiased CKA).
- Wang & Isola (2020), "Understanding contrastive representation learning through alignment
  and uniformity on the hypersphere", ICML.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from scipy.spatial.distance import pdist
from scipy.special import logsumexp

from medstudy.data.tensors import to_float, to_model_input
from medstudy.models import Backbone
from medstudy.stats import BootstrapResult

__all__ = [
    "alignment",
    "bootstrap_statistic",
    "cka_matrix",
    "condition_number",
    "effective_rank",
    "layer_features",
    "linear_cka",
    "paired_bootstrap_statistic",
    "pca_spectrum",
    "stage_names",
    "uniformity",
]

Seed = int | np.random.Generator
SpectrumKind = Literal["features", "singular_values", "eigenvalues"]


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def _features(x: npt.ArrayLike, name: str = "x", min_rows: int = 2) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N samples, D features), got shape {a.shape}")
    if a.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} samples (rows), got {a.shape[0]}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _same_rows(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"the two feature sets must hold the same samples: {x.shape[0]} vs {y.shape[0]} rows"
        )


# --------------------------------------------------------------------------------------------
# PCA spectrum and condition number
# --------------------------------------------------------------------------------------------
def _zscore(a: np.ndarray) -> np.ndarray:
    """Column z-scores as ``sklearn.preprocessing.StandardScaler``: ``(x - mean) / std``
    with the population SD (ddof=0); constant columns are centred only (scale 1)."""
    sd = a.std(axis=0)
    sd[sd == 0.0] = 1.0  # StandardScaler's rule for zero-variance features
    return (a - a.mean(axis=0)) / sd


def pca_spectrum(
    x: npt.ArrayLike, n_components: int | None = None, standardise: bool = True
) -> np.ndarray:
    """Eigenvalues of the sample covariance of ``x`` (N, D), descending.

    ``lambda_k = s_k**2 / (N - 1)`` with ``s_k`` the singular values of the column-centred
    (and, with ``standardise=True``, column-standardised as StandardScaler does) matrix. This is
    ``sklearn.decomposition.PCA(n_components).fit(x).explained_variance_``: the covariance
    uses ddof=1 while the standardisation uses ddof=0, exactly as StandardScaler + PCA do.
    ``n_components=None`` returns all ``min(N, D)`` values; otherwise the first
    ``n_components`` (at most ``min(N, D)``; more is an error, as in sklearn).
    """
    a = _features(x)
    n, d = a.shape
    k = min(n, d)
    if n_components is not None:
        if not 1 <= n_components <= k:
            raise ValueError(f"n_components must be in [1, min(N, D) = {k}], got {n_components}")
        k = n_components
    a = _zscore(a) if standardise else a - a.mean(axis=0)
    s = np.linalg.svd(a, compute_uv=False)
    return (s[:k] ** 2) / (n - 1)


def condition_number(x: npt.ArrayLike, n_components: int = 100) -> float:
    """Percentile condition number of a layer's outputs, as in Srinivasan et al. (2022).

    Their public code (``compute_ev`` then ``compute_cn(ev, 99.9, 90)``): standardise the layer
    outputs (StandardScaler), fit ``PCA(n_components=100)``, take its eigenvalues ``lambda``
    (``explained_variance_``) and return
    ``|np.percentile(lambda, 99.9)| / |np.percentile(lambda, 90)|`` (linear interpolation).
    A ratio of percentiles instead of max/min keeps it finite when trailing eigenvalues vanish.
    With fewer than 100 samples or features the number of components is ``min(N, D)`` (sklearn
    would refuse 100). A zero denominator gives ``inf``.

    Deviation: the DR code flattens whole feature maps of conv/BN layers; here ``x`` is whatever
    the caller passes, in the study the per-stage pooled features of :func:`layer_features`.
    """
    a = _features(x)
    k = min(n_components, *a.shape)
    ev = pca_spectrum(a, n_components=k, standardise=True)
    num = abs(float(np.percentile(ev, 99.9)))
    den = abs(float(np.percentile(ev, 90)))
    return num / den if den > 0 else float("inf")


# --------------------------------------------------------------------------------------------
# Effective rank
# --------------------------------------------------------------------------------------------
def effective_rank(x: npt.ArrayLike, kind: SpectrumKind = "features", center: bool = True) -> float:
    """Effective rank of Roy & Vetterli (2007): ``exp(H(p))``, ``p_k = s_k / sum_j s_j``.

    ``s`` are the **singular values** (not their squares) of the matrix and ``H`` is the
    Shannon entropy in nats with ``0 log 0 = 0``; the value lies in ``[1, rank]`` and equals
    ``r`` when ``r`` singular values are equal and the rest zero.

    ``kind`` says what ``x`` is:

    - ``"features"``: an (N, D) matrix; its singular values are taken after column centring
      (``center=True``, the standard choice for representations: the mean is not a
      direction of variation) or as is (``center=False``);
    - ``"singular_values"``: the singular values themselves (1-D, >= 0);
    - ``"eigenvalues"``: covariance eigenvalues, e.g. from :func:`pca_spectrum`; converted to
      singular values by ``s = sqrt(lambda)`` (the factor ``sqrt(N - 1)`` cancels in ``p``), so
      the result matches ``kind="features"`` on the same (unstandardised) data.

    Singular values below ``max(s) * max(N, D) * eps`` (numpy's ``matrix_rank`` tolerance) are
    set to 0, so a rank-1 matrix has effective rank exactly 1.
    """
    if kind == "features":
        a = _features(x, min_rows=1)
        if center:
            a = a - a.mean(axis=0)
        s = np.linalg.svd(a, compute_uv=False)
        tol = s.max(initial=0.0) * max(a.shape) * np.finfo(np.float64).eps
    elif kind in ("singular_values", "eigenvalues"):
        v = np.asarray(x, dtype=np.float64).ravel()
        if v.size == 0 or not np.all(np.isfinite(v)):
            raise ValueError(f"{kind} must be a non-empty finite 1-D array")
        if np.any(v < -1e-12 * max(1.0, float(np.abs(v).max()))):
            raise ValueError(f"{kind} must be >= 0")
        v = np.clip(v, 0.0, None)
        s = np.sqrt(v) if kind == "eigenvalues" else v
        tol = s.max() * s.size * np.finfo(np.float64).eps
    else:
        raise ValueError(
            f"unknown kind {kind!r}; valid: 'features', 'singular_values', 'eigenvalues'"
        )
    s = np.where(s > tol, s, 0.0)
    total = s.sum()
    if total <= 0.0:
        raise ValueError("effective rank is undefined for an all-zero spectrum")
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


# --------------------------------------------------------------------------------------------
# Linear CKA
# --------------------------------------------------------------------------------------------
def _debiased_dot(
    xty_sq: float, rows_x: np.ndarray, rows_y: np.ndarray, norm_x: float, norm_y: float, n: int
) -> float:
    """``n (n - 3) * HSIC_unbiased`` for linear kernels, from feature-space quantities.

    Song et al. (2012) eq. 5 with ``K = X X^T`` and ``L = Y Y^T`` (diagonals zeroed):
    ``tr(K L) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'K L 1``. For centred X, Y this reduces to
    ``||Y'X||_F^2 - n/(n-2) <rows_x, rows_y> + ||X||^2 ||Y||^2 / ((n-1)(n-2))`` with
    ``rows_x = diag(K)`` (Kornblith et al.'s feature-space form; the estimator is invariant to
    centring since its kernel is a product of feature differences).
    """
    return (
        xty_sq - n / (n - 2.0) * float(rows_x @ rows_y) + norm_x * norm_y / ((n - 1.0) * (n - 2.0))
    )


def linear_cka(x: npt.ArrayLike, y: npt.ArrayLike, debiased: bool = False) -> float:
    """Linear centred kernel alignment of two representations of the same N samples.

    ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with linear kernels ``K = X X^T``,
    ``L = Y Y^T`` (Kornblith et al. 2019). The biased estimator uses
    ``HSIC = tr(K H L H) / (N-1)^2``, which for column-centred X, Y is
    ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``; it is computed in feature space
    (O(N D^2), no N x N Gram matrix). It is invariant to orthogonal transforms and isotropic
    scaling of either set, symmetric, and 1 for ``x == y``. With few samples and many features
    the biased estimator is far above 0 for independent features; ``debiased=True`` plugs in
    the unbiased HSIC estimator of Song et al. (2012), as in Nguyen et al. (2021), which is
    ~0 in expectation for independent features (and can be slightly negative). It needs
    N >= 4.
    """
    a = _features(x, "x")
    b = _features(y, "y")
    _same_rows(a, b)
    n = a.shape[0]
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    xty_sq = float(np.linalg.norm(b.T @ a) ** 2)
    xtx = float(np.linalg.norm(a.T @ a))
    yty = float(np.linalg.norm(b.T @ b))
    if debiased:
        if n < 4:
            raise ValueError(f"debiased CKA needs at least 4 samples, got {n}")
        rows_x = np.einsum("ij,ij->i", a, a)
        rows_y = np.einsum("ij,ij->i", b, b)
        sq_x, sq_y = float(rows_x.sum()), float(rows_y.sum())
        xty_sq = _debiased_dot(xty_sq, rows_x, rows_y, sq_x, sq_y, n)
        xx = _debiased_dot(xtx**2, rows_x, rows_x, sq_x, sq_x, n)
        yy = _debiased_dot(yty**2, rows_y, rows_y, sq_y, sq_y, n)
        # HSIC_u(K, K) is positive in practice; clip round-off before the square root.
        xtx, yty = float(np.sqrt(max(xx, 0.0))), float(np.sqrt(max(yy, 0.0)))
    denom = xtx * yty
    if denom == 0.0:
        raise ValueError("CKA is undefined when a representation is constant over the samples")
    return xty_sq / denom


def cka_matrix(
    features_a: Sequence[npt.ArrayLike] | Mapping[str, npt.ArrayLike],
    features_b: Sequence[npt.ArrayLike] | Mapping[str, npt.ArrayLike],
    debiased: bool = False,
) -> np.ndarray:
    """Layer x layer linear CKA: ``out[i, j] = linear_cka(features_a[i], features_b[j])``.

    Each list holds one (N, D_layer) array per layer, all on the same N samples (a dict, such as
    :func:`layer_features`' output, is taken in its key order). Pass the same list twice for
    the within-network matrix.
    """
    fa = list(features_a.values()) if isinstance(features_a, Mapping) else list(features_a)
    fb = list(features_b.values()) if isinstance(features_b, Mapping) else list(features_b)
    out = np.empty((len(fa), len(fb)), dtype=np.float64)
    for i, a in enumerate(fa):
        for j, b in enumerate(fb):
            out[i, j] = linear_cka(a, b, debiased=debiased)
    return out


# --------------------------------------------------------------------------------------------
# Alignment and uniformity
# --------------------------------------------------------------------------------------------
def _l2_normalise(z: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    if np.any(norms == 0.0):
        raise ValueError("an embedding is the zero vector and cannot be L2-normalised")
    return z / norms


def alignment(z1: npt.ArrayLike, z2: npt.ArrayLike, alpha: float = 2.0) -> float:
    """Alignment loss of Wang & Isola (2020): ``mean_i ||f(x_i) - f(y_i)||_2 ** alpha``.

    Rows ``i`` of ``z1`` and ``z2`` (N, D) embed two augmented views of the same image (a
    positive pair). Both are L2-normalised here first (the hypersphere of the paper), so the
    value lies in ``[0, 2**alpha]``; lower is better aligned.
    """
    a = _l2_normalise(_features(z1, "z1", min_rows=1))
    b = _l2_normalise(_features(z2, "z2", min_rows=1))
    _same_rows(a, b)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    return float(np.mean(np.linalg.norm(a - b, axis=1) ** alpha))


def uniformity(z: npt.ArrayLike, t: float = 2.0) -> float:
    """Uniformity loss of Wang & Isola (2020): ``log mean_{i<j} exp(-t ||f_i - f_j||_2^2)``.

    Over all distinct pairs of rows of the L2-normalised ``z`` (N, D), as their
    ``torch.pdist(x).pow(2).mul(-t).exp().mean().log()``; computed with ``logsumexp`` for
    stability. It lies in ``[-4t, 0]``; lower is more uniform.
    """
    a = _l2_normalise(_features(z, "z"))
    if t <= 0:
        raise ValueError(f"t must be > 0, got {t}")
    sq = pdist(a, "sqeuclidean")
    return float(logsumexp(-t * sq) - np.log(sq.size))


# --------------------------------------------------------------------------------------------
# Bootstraps over samples
# --------------------------------------------------------------------------------------------
def _check_boot(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _percentile_result(
    estimate: float, boot: np.ndarray, n_boot: int, alpha: float
) -> BootstrapResult:
    finite = boot[np.isfinite(boot)]
    if finite.size < boot.size:
        raise ValueError(
            f"{boot.size - finite.size} of {boot.size} bootstrap replicates are not finite"
        )
    lo, hi = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return BootstrapResult(float(estimate), float(lo), float(hi), n_boot, "percentile")


def bootstrap_statistic(
    fn: Callable[[np.ndarray], float],
    x: npt.ArrayLike,
    n_boot: int = 1000,
    seed: Seed = 0,
    alpha: float = 0.05,
) -> BootstrapResult:
    """Percentile bootstrap CI of ``fn(x)`` over samples.

    Resampled unit: the sample (row of ``x``, shape (N, D)); each replicate draws N row indices
    with replacement from ``np.random.default_rng(seed)`` and evaluates ``fn(x[idx])``. The
    estimate is ``fn(x)`` on all rows; the CI is the ``alpha/2`` and ``1 - alpha/2``
    percentiles of the replicates. Caveats: duplicated rows act like extra, perfectly
    dependent samples, so estimators that assume distinct samples (debiased CKA, effective
    rank) are biased within replicates; the CI describes test-sample variability only, not
    training-seed variability (DESIGN §6 handles seeds).
    """
    _check_boot(n_boot, alpha)
    a = np.asarray(x)
    if a.ndim < 1 or a.shape[0] < 2:
        raise ValueError("x must have at least 2 samples (rows)")
    rng = np.random.default_rng(seed)
    n = a.shape[0]
    boot = np.array([fn(a[rng.integers(0, n, n)]) for _ in range(n_boot)], dtype=np.float64)
    return _percentile_result(fn(a), boot, n_boot, alpha)


def paired_bootstrap_statistic(
    fn: Callable[[np.ndarray, np.ndarray], float],
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    n_boot: int = 1000,
    seed: Seed = 0,
    alpha: float = 0.05,
) -> BootstrapResult:
    """Percentile bootstrap CI of ``fn(x, y)`` for two feature sets of the same N samples.

    Each replicate draws one set of row indices and applies it to both ``x`` and ``y`` (same
    samples, same order), which keeps the pairing: use it for ``linear_cka(x, y)`` between two
    networks or for a difference such as
    ``lambda a, b: condition_number(a) - condition_number(b)``. Same RNG and percentile rule
    as :func:`bootstrap_statistic`.
    """
    _check_boot(n_boot, alpha)
    a, b = np.asarray(x), np.asarray(y)
    if a.ndim < 1 or b.ndim < 1 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"x and y must hold the same samples (rows): shapes {a.shape} and {b.shape}"
        )
    if a.shape[0] < 2:
        raise ValueError("need at least 2 samples (rows)")
    rng = np.random.default_rng(seed)
    n = a.shape[0]
    boot = np.empty(n_boot, dtype=np.float64)
    for r in range(n_boot):
        idx = rng.integers(0, n, n)
        boot[r] = fn(a[idx], b[idx])
    return _percentile_result(fn(a, b), boot, n_boot, alpha)


# --------------------------------------------------------------------------------------------
# Per-stage features of a backbone
# --------------------------------------------------------------------------------------------
def stage_names(backbone: Backbone) -> list[str]:
    """``["stage0", "stage1", ...]``: one name per entry of ``backbone.stages`` (stage0 = stem)."""
    return [f"stage{i}" for i in range(len(backbone.stages))]


@torch.no_grad()
def layer_features(
    backbone: Backbone,
    images: torch.Tensor | np.ndarray,
    layers: Sequence[str | int] | None = None,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Per-stage features ``{"stage{i}": (N, C_i) float32}``, global-average-pooled per channel.

    A forward hook on every requested stage of ``backbone.stages`` (all by default; names from
    :func:`stage_names` or integer indices) pools its output map over space, so the last
    stage's features equal ``backbone(x)``. ``images``: the model input (N, 3, H, W) float as
    made by :func:`medstudy.data.to_model_input`; a uint8 (N, C, H, W) array/tensor is put
    through the package pipeline (``to_float`` -> ``to_model_input``) first. Runs in eval
    mode (BatchNorm running statistics) without gradients, in input order, batch by batch; the
    backbone's train/eval mode is restored afterwards. The result does not depend on
    ``batch_size`` beyond float round-off.
    """
    if len(backbone.stages) == 0:
        raise ValueError(f"{backbone.name}: no stages exposed, per-stage features unavailable")
    names = stage_names(backbone)
    if layers is None:
        chosen = list(range(len(names)))
    else:
        chosen = []
        for layer in layers:
            if isinstance(layer, int) and not isinstance(layer, bool):
                if not -len(names) <= layer < len(names):
                    raise ValueError(f"stage index {layer} out of range for {len(names)} stages")
                chosen.append(layer % len(names))
            elif layer in names:
                chosen.append(names.index(layer))
            else:
                raise ValueError(f"unknown layer {layer!r}; valid: {names}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x_all = torch.as_tensor(images)
    if x_all.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x_all.shape)}")
    device = next(backbone.parameters()).device
    captured: dict[int, torch.Tensor] = {}

    def hook_for(i: int) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _inp: object, out: torch.Tensor) -> None:
            captured[i] = backbone.pool(out).float().cpu()

        return hook

    handles = [backbone.stages[i].register_forward_hook(hook_for(i)) for i in chosen]
    chunks: dict[int, list[torch.Tensor]] = {i: [] for i in chosen}
    was_training = backbone.training
    backbone.eval()
    try:
        for start in range(0, x_all.shape[0], batch_size):
            x = x_all[start : start + batch_size].to(device)
            if x.dtype == torch.uint8:
                x = to_model_input(to_float(x))
            elif x.dtype != torch.float32:
                x = x.float()
            backbone(x)
            for i in chosen:
                chunks[i].append(captured.pop(i))
    finally:
        for h in handles:
            h.remove()
        backbone.train(was_training)
    return {
        names[i]: (
            torch.cat(chunks[i]).numpy()
            if chunks[i]
            else np.zeros((0, backbone.stage_channels[i]), dtype=np.float32)
        )
        for i in chosen
    }
