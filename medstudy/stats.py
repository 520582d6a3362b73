"""Statistics for the study: AUC, DeLong, stratified bootstraps, seeds x cases, multiplicity.

All functions are pure functions of numpy arrays. Randomness only enters through an explicit
``seed: int | np.random.Generator`` argument (``np.random.default_rng(seed)``; a Generator passed
in is used as is and therefore advanced). There is no global RNG state.

Data contract shared by the binary functions
--------------------------------------------
- ``y_true``: shape ``(N,)`` (an ``(N, 1)`` column, the medmnist label layout, is accepted and
  flattened), values in ``{0, 1}`` (bool or any numeric dtype); the positive class is ``1``.
- ``scores``: shape ``(N,)``, finite floats; a *higher* score means "more likely positive". The
  direction is fixed (pROC ``direction="<"``): an AUC below 0.5 is reported as such, never
  flipped the way pROC's ``direction="auto"`` would.
- Paired comparisons take two score vectors for the *same* cases; differences are always
  ``A - B``.

References
----------
- DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837-845 (structural components).
- Sun & Xu (2014), IEEE Signal Process. Lett. 21:1389-1393 (fast DeLong via midranks).
- Robin et al. (2011), pROC, BMC Bioinformatics 12:77 (``ci.auc``, ``roc.test`` semantics).
- Efron & Tibshirani (1993), An Introduction to the Bootstrap, ch. 14 (BCa);
  Davison & Hinkley (1997), Bootstrap Methods and their Application, sec. 3.2 and 5.3
  (stratified resampling and its BCa acceleration).
- Saravanan, Berman & Sober (2020), "Application of the hierarchical bootstrap to multi-level
  data in neuroscience", Neurons, Behavior, Data analysis, and Theory 3(5).
- Satterthwaite (1946), Biometrics Bulletin 2:110-114; Welch (1947), Biometrika 34:28-35
  (approximate degrees of freedom of a sum of variance estimates).
- Bouthillier et al. (2021), "Accounting for variance in machine learning benchmarks", MLSys
  (training-seed and test-sample variance of a benchmark comparison).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats as sps
from scipy.special import ndtr, ndtri, stdtr, stdtrit

__all__ = [
    "Alternative",
    "BootstrapResult",
    "DeLongResult",
    "Metric",
    "PairedBootstrapResult",
    "SeedCaseResult",
    "SeedSummary",
    "adjust_pvalues",
    "aggregate_seeds",
    "area_under_label_curve",
    "auc",
    "auc_ci",
    "bootstrap_ci",
    "delong_auc_cov",
    "delong_test",
    "delong_test_unpaired",
    "hierarchical_bootstrap_diff",
    "label_efficiency_slope",
    "minimum_detectable_effect",
    "paired_bootstrap",
    "seed_case_test",
]

Alternative = Literal["two-sided", "greater", "less"]
#: A metric is ``metric(y_true, scores) -> float`` or the string ``"auc"`` (vectorised fast path).
Metric = Callable[[np.ndarray, np.ndarray], float] | Literal["auc"]
Seed = int | np.random.Generator

_ALTERNATIVES: tuple[str, ...] = ("two-sided", "greater", "less")
_BOOT_METHODS: tuple[str, ...] = ("bca", "percentile")
_PADJ_METHODS: tuple[str, ...] = ("holm", "fdr_bh")
# A case bootstrap whose metric is undefined (NaN) on more than this share of replicates no longer
# describes the sampling distribution of the statistic (it conditions on the resamples where the
# metric exists): seed_case_test raises instead of silently using the rest.
_MAX_NAN_BOOT_SHARE: float = 0.1
# Upper bound on the number of int64 elements of one chunk of resample indices (~32 MB): keeps
# the bootstrap memory flat for large N while staying vectorised for the study's sizes.
_CHUNK_ELEMENTS: int = 4_000_000


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeLongResult:
    """DeLong comparison of two AUCs.

    ``diff = auc_a - auc_b``; ``z`` is the standardised difference (for the unpaired test it is
    pROC's ``D`` statistic, referred to a t distribution with ``df`` degrees of freedom);
    ``[ci_low, ci_high]`` is the two-sided ``1 - alpha`` CI of ``diff``. ``n_pos``/``n_neg``
    count positives/negatives (for the unpaired test: summed over both samples). ``df`` is
    ``inf`` for the paired test (normal reference distribution).
    """

    auc_a: float
    auc_b: float
    diff: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int
    df: float = math.inf


@dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap CI of one metric: point estimate on the full data and the CI bounds."""

    estimate: float
    ci_low: float
    ci_high: float
    n_boot: int
    method: str


@dataclass(frozen=True)
class PairedBootstrapResult:
    """Paired bootstrap comparison; ``diff = estimate_a - estimate_b``, CI and p refer to diff."""

    estimate_a: float
    estimate_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_boot: int


@dataclass(frozen=True)
class SeedCaseResult:
    """Result of :func:`seed_case_test` (S >= 2 training seeds x shared test cases).

    ``diff = estimate_a - estimate_b`` (means over seeds; direction A - B). ``[ci_low, ci_high]``
    is the ``1 - alpha`` CI of diff (one-sided alternatives: the open side is +/-inf) and
    ``p_value`` the p of H0: diff = 0; both come from one t statistic ``diff / se`` with ``df``
    degrees of freedom, so for the two-sided test the CI excludes 0 iff ``p_value < alpha``.
    ``se**2 = var_seed + var_case``: training (seed-to-seed) variance of the seed mean and
    test-case sampling variance of the seed-averaged difference. ``mde`` is the minimum
    detectable |diff| at 80 % power (:func:`minimum_detectable_effect`). ``test`` names the case
    variance ("DeLong" or "stratified bootstrap"); ``n_boot_dropped`` counts NaN case-bootstrap
    replicates (always 0 for DeLong).
    """

    estimate_a: float
    estimate_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    df: float
    se: float
    var_seed: float
    var_case: float
    n_seeds: int
    n_cases: int
    mde: float
    test: str
    alpha: float = 0.05
    alternative: str = "two-sided"
    n_boot_dropped: int = 0


@dataclass(frozen=True)
class SeedSummary:
    """Mean over training seeds, sample SD (ddof=1) and t-interval of the mean."""

    mean: float
    sd: float
    ci_low: float
    ci_high: float
    n: int


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------
def _binary_labels(y_true: npt.ArrayLike, name: str = "y_true") -> np.ndarray:
    """Return ``y_true`` as a 1-D bool array (True = positive) or raise ValueError."""
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {y.shape}")
    if y.dtype != bool:
        if not np.issubdtype(y.dtype, np.number):
            raise ValueError(f"{name} must be numeric or bool with values in {{0, 1}}")
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            raise ValueError(
                f"{name} must contain only 0/1 (positive class = 1); "
                f"found {np.unique(y[bad])[:5].tolist()}"
            )
    return y.astype(bool)


def _scores_1d(scores: npt.ArrayLike, n: int, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {s.shape}")
    if s.shape[0] != n:
        raise ValueError(f"shape mismatch: y_true has {n} cases but {name} has {s.shape[0]}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} contains NaN or inf")
    return s


def _check_binary(
    y_true: npt.ArrayLike, *scores: npt.ArrayLike, min_per_class: int = 1
) -> tuple[np.ndarray, list[np.ndarray]]:
    y = _binary_labels(y_true)
    names = ["scores"] if len(scores) == 1 else ["scores_a", "scores_b", "scores_c"]
    out = [_scores_1d(s, y.shape[0], nm) for s, nm in zip(scores, names, strict=False)]
    n_pos = int(y.sum())
    n_neg = int(y.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        present = "positives (1)" if n_pos else "negatives (0)"
        raise ValueError(f"AUC is undefined: only one class present in y_true ({present} only)")
    if min(n_pos, n_neg) < min_per_class:
        raise ValueError(
            f"need at least {min_per_class} positives and negatives for a DeLong variance, "
            f"got n_pos={n_pos}, n_neg={n_neg}"
        )
    return y, out


def _check_choice(value: str, valid: Sequence[str], what: str) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _p_from_z(z: float, alternative: str) -> float:
    """Normal p-value; 'greater' means H1: A > B (pROC convention)."""
    if alternative == "two-sided":
        return float(2.0 * sps.norm.sf(abs(z)))
    if alternative == "greater":
        return float(sps.norm.sf(z))
    return float(sps.norm.cdf(z))


# --------------------------------------------------------------------------------------------
# AUC and fast DeLong
# --------------------------------------------------------------------------------------------
def auc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Binary ROC AUC (positive class = 1), ties counted 1/2 via midranks (Mann-Whitney U).

    ``AUC = (sum of midranks of positives - m(m+1)/2) / (m n)`` with m positives, n negatives;
    equal to ``sklearn.metrics.roc_auc_score`` including ties. Raises ValueError if only one
    class is present, if shapes mismatch, or if labels are not 0/1.
    """
    y, (s,) = _check_binary(y_true, scores)
    m = int(y.sum())
    n = y.shape[0] - m
    ranks = sps.rankdata(s)  # midranks ("average") make ties count 1/2
    return float((ranks[y].sum() - m * (m + 1) / 2.0) / (m * n))


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sun & Xu (2014) placements for k score vectors.

    ``s`` is (k, N). Returns ``aucs`` (k,), ``v10`` (k, m) and ``v01`` (k, n), where
    ``v10[r, i] = P(neg < pos_i) + 1/2 P(neg = pos_i)`` over the negatives and
    ``v01[r, j] = P(pos > neg_j) + 1/2 P(pos = neg_j)`` over the positives. Three midrank passes
    replace the O(mn) comparison matrix: for a positive, (rank among all) - (rank among
    positives) counts negatives below it, ties counted 1/2 -- O(N log N) overall.
    """
    x = s[:, y]
    w = s[:, ~y]
    m, n = x.shape[1], w.shape[1]
    tx = sps.rankdata(x, axis=1)
    tw = sps.rankdata(w, axis=1)
    tz = sps.rankdata(s, axis=1)
    v10 = (tz[:, y] - tx) / n
    v01 = 1.0 - (tz[:, ~y] - tw) / m
    aucs = (tz[:, y].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    return aucs, v10, v01


def delong_auc_cov(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and DeLong covariance matrix of k score vectors on the same cases (fast DeLong).

    Parameters
    ----------
    y_true : (N,) 0/1 labels, positive class = 1; at least 2 positives and 2 negatives.
    scores : (N,) or (k, N) float scores (one row per model), higher = more positive.

    Returns
    -------
    aucs : (k,) float64
    cov : (k, k) float64, ``S10 / m + S01 / n`` where ``S10``/``S01`` are the sample
        covariances (ddof=1) of the placements of positives/negatives (DeLong 1988, eq. 3;
        identical to pROC's ``delongPlacements``-based variance).
    """
    s = np.asarray(scores, dtype=np.float64)
    s2 = np.atleast_2d(s)
    if s2.ndim != 2:
        raise ValueError(f"scores must be (N,) or (k, N), got shape {s.shape}")
    y = _binary_labels(y_true)
    for r in range(s2.shape[0]):
        _check_binary(y, s2[r], min_per_class=2)
    aucs, v10, v01 = _placements(y, s2)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def auc_ci(
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    alpha: float = 0.05,
    method: Literal["delong", "bootstrap"] = "delong",
    *,
    n_boot: int = 2000,
    seed: Seed = 0,
    boot_method: Literal["bca", "percentile"] = "bca",
) -> tuple[float, float, float]:
    """AUC with a two-sided ``1 - alpha`` CI; returns ``(auc, low, high)``.

    ``method="delong"`` reproduces pROC ``ci.auc(method="delong")``: normal approximation on the
    AUC scale, ``auc +/- z_{1-alpha/2} * sqrt(var_DeLong)``, bounds clipped to ``[0, 1]``.
    ``method="bootstrap"`` is a class-stratified bootstrap (``boot_method`` "bca" or
    "percentile", ``n_boot`` replicates, ``seed``), see :func:`bootstrap_ci`.
    """
    _check_alpha(alpha)
    _check_choice(method, ("delong", "bootstrap"), "method")
    if method == "bootstrap":
        res = bootstrap_ci(
            "auc", y_true, scores, n_boot=n_boot, alpha=alpha, method=boot_method, seed=seed
        )
        return res.estimate, res.ci_low, res.ci_high
    aucs, cov = delong_auc_cov(y_true, scores)
    a = float(aucs[0])
    half = float(sps.norm.ppf(1.0 - alpha / 2.0) * math.sqrt(max(cov[0, 0], 0.0)))
    # pROC clips: the normal approximation can leave [0, 1] near perfect discrimination.
    return a, max(a - half, 0.0), min(a + half, 1.0)


def delong_test(
    y_true: npt.ArrayLike,
    scores_a: npt.ArrayLike,
    scores_b: npt.ArrayLike,
    alternative: Alternative = "two-sided",
    alpha: float = 0.05,
) -> DeLongResult:
    """Paired DeLong test of ``AUC_A - AUC_B`` on the same cases (pROC ``roc.test``,
    ``method="delong", paired=TRUE``).

    ``z = diff / sqrt(var(diff))`` with ``var(diff) = L S L'``, ``L = (1, -1)``, S the DeLong
    covariance; p from the standard normal ('greater': H1 AUC_A > AUC_B). The CI of diff is
    ``diff +/- z_{1-alpha/2} sd`` (not clipped). If ``var(diff) == 0`` and ``diff == 0`` (e.g.
    identical or rank-identical scores) the result is ``z = 0, p = 1`` instead of 0/0 = NaN, as
    pROC does; if ``var(diff) == 0`` but ``diff != 0``, ``z = +/-inf``.
    """
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    _check_alpha(alpha)
    y, (a, b) = _check_binary(y_true, scores_a, scores_b, min_per_class=2)
    aucs, v10, v01 = _placements(y, np.vstack([a, b]))
    m, n = v10.shape[1], v01.shape[1]
    diff = float(aucs[0] - aucs[1])
    # var(V10_A - V10_B)/m + var(V01_A - V01_B)/n == L S L' algebraically; computing it from the
    # differenced placements avoids cancellation in S_AA + S_BB - 2 S_AB and gives an exact 0
    # for identical scores.
    var = float(np.var(v10[0] - v10[1], ddof=1) / m + np.var(v01[0] - v01[1], ddof=1) / n)
    sd = math.sqrt(max(var, 0.0))
    z = _safe_ratio(diff, sd)
    p = _p_from_z(z, alternative)
    half = float(sps.norm.ppf(1.0 - alpha / 2.0)) * sd
    return DeLongResult(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        diff=diff,
        z=z,
        p_value=p,
        ci_low=diff - half,
        ci_high=diff + half,
        n_pos=m,
        n_neg=n,
    )


def _safe_ratio(diff: float, sd: float) -> float:
    if sd > 0.0:
        return diff / sd
    return 0.0 if diff == 0.0 else math.copysign(math.inf, diff)


def delong_test_unpaired(
    y_a: npt.ArrayLike,
    scores_a: npt.ArrayLike,
    y_b: npt.ArrayLike,
    scores_b: npt.ArrayLike,
    alternative: Alternative = "two-sided",
    alpha: float = 0.05,
) -> DeLongResult:
    """Unpaired DeLong test of ``AUC_A - AUC_B`` on independent case sets (pROC ``roc.test``,
    ``method="delong", paired=FALSE``).

    ``var = var_A + var_B`` (each the single-curve DeLong variance); pROC refers
    ``D = diff / sqrt(var)`` to a t distribution with Welch-Satterthwaite-type
    ``df = (V_A + V_B)^2 / (V_A^2 / (N_A - 1) + V_B^2 / (N_B - 1))`` (N = all cases of a
    sample); we do the same, and the CI of diff uses the same t quantile. ``z`` holds D;
    ``n_pos``/``n_neg`` are summed over both samples. Zero variance is handled as in
    :func:`delong_test`.
    """
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    _check_alpha(alpha)
    ya, (sa,) = _check_binary(y_a, scores_a, min_per_class=2)
    yb, (sb,) = _check_binary(y_b, scores_b, min_per_class=2)
    auc_a, cov_a = delong_auc_cov(ya, sa)
    auc_b, cov_b = delong_auc_cov(yb, sb)
    va, vb = float(cov_a[0, 0]), float(cov_b[0, 0])
    diff = float(auc_a[0] - auc_b[0])
    sd = math.sqrt(max(va + vb, 0.0))
    d = _safe_ratio(diff, sd)
    den = va**2 / (ya.size - 1) + vb**2 / (yb.size - 1)
    df = (va + vb) ** 2 / den if den > 0 else math.inf
    if alternative == "two-sided":
        p = float(2.0 * sps.t.sf(abs(d), df))
    elif alternative == "greater":
        p = float(sps.t.sf(d, df))
    else:
        p = float(sps.t.cdf(d, df))
    half = float(sps.t.ppf(1.0 - alpha / 2.0, df)) * sd
    return DeLongResult(
        auc_a=float(auc_a[0]),
        auc_b=float(auc_b[0]),
        diff=diff,
        z=d,
        p_value=p,
        ci_low=diff - half,
        ci_high=diff + half,
        n_pos=int(ya.sum() + yb.sum()),
        n_neg=int((~ya).sum() + (~yb).sum()),
        df=float(df),
    )


# --------------------------------------------------------------------------------------------
# Bootstrap machinery (one resampling engine for every bootstrap in this module)
# --------------------------------------------------------------------------------------------
# Why not scipy.stats.bootstrap everywhere: it has no notion of strata for a (y_true, scores)
# statistic, and the paired and hierarchical bootstraps need the *same* indices for A and B and
# access to the replicate distribution for p-values. So stratified resamples are generated here
# (per class, independently -- Davison & Hinkley 1997, sec. 3.2) and BCa is computed here with
# the stratified jackknife acceleration, which is the same formula scipy uses for multi-sample
# data (sum over strata of n_s^-3 sum U^3 over (sum n_s^-2 sum U^2)^1.5). Sharing one engine
# means the vectorised AUC path reproduces the generic metric path exactly for the same seed.
# scipy.stats.bootstrap is used where it fits: the unstratified (multi-label) bootstrap_ci.


def _strata(y_true: np.ndarray) -> list[np.ndarray]:
    """Case indices per stratum: one per distinct label of a 1-D (or (N, 1)) ``y_true``; a single
    stratum holding every case for 2-D multi-label ``y_true`` (plain case resampling)."""
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 1:
        _, inv = np.unique(y, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        counts = np.bincount(inv)
        return np.split(order, np.cumsum(counts)[:-1])
    return [np.arange(y.shape[0])]


def _resample_chunks(
    members: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Yield (c, N) arrays of case indices, c replicates at a time, resampling each stratum
    with replacement to its own size. Columns are grouped stratum by stratum (case order within a
    replicate carries no meaning). The chunk size depends on N only, so the random stream, and
    therefore every replicate, is identical for all consumers given the same seed."""
    n_total = sum(len(mm) for mm in members)
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // max(n_total, 1)))
    done = 0
    while done < n_boot:
        c = min(chunk, n_boot - done)
        parts = [mm[rng.integers(0, len(mm), size=(c, len(mm)))] for mm in members]
        yield np.concatenate(parts, axis=1)
        done += c


def _row_counts(local: np.ndarray, size: int) -> np.ndarray:
    """(c, L) indices in [0, size) -> (c, size) multiplicities, one bincount for all rows."""
    c = local.shape[0]
    flat = (local + (np.arange(c) * size)[:, None]).ravel()
    return np.bincount(flat, minlength=c * size).reshape(c, size)


class _AucResampler:
    """Vectorised replicate AUCs of k score vectors for stratified index resamples.

    A replicate is a multiset of negatives and positives, i.e. integer weights (counts) on the
    original cases. With the negatives sorted by score once, the weighted number of resampled
    negatives below / tied with positive i is a cumulative sum of the weights read at two
    precomputed ``searchsorted`` positions, so one replicate costs O(N) array operations and
    all replicates of a chunk are a handful of (c, N) numpy ops -- no per-replicate sorting.
    """

    def __init__(self, y: np.ndarray, scores: np.ndarray, members: Sequence[np.ndarray]) -> None:
        # members[0] = negatives, members[1] = positives (np.unique sorts False < True).
        self.neg, self.pos = members[0], members[1]
        self.n, self.m = len(self.neg), len(self.pos)
        self.local = np.empty(y.shape[0], dtype=np.intp)
        self.local[self.neg] = np.arange(self.n)
        self.local[self.pos] = np.arange(self.m)
        self.order: list[np.ndarray] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        for s in np.atleast_2d(scores):
            order = np.argsort(s[self.neg], kind="stable")
            sorted_neg = s[self.neg][order]
            self.order.append(order)
            self.lo.append(np.searchsorted(sorted_neg, s[self.pos], side="left"))
            self.hi.append(np.searchsorted(sorted_neg, s[self.pos], side="right"))

    def aucs(self, idx: np.ndarray) -> np.ndarray:
        """(c, N) stratified index chunk -> (k, c) replicate AUCs."""
        cnt_neg = _row_counts(self.local[idx[:, : self.n]], self.n)
        cnt_pos = _row_counts(self.local[idx[:, self.n :]], self.m).astype(np.float64)
        out = np.empty((len(self.order), idx.shape[0]))
        cum = np.zeros((idx.shape[0], self.n + 1))
        for r, (order, lo, hi) in enumerate(zip(self.order, self.lo, self.hi, strict=True)):
            np.cumsum(cnt_neg[:, order], axis=1, out=cum[:, 1:])
            # (#below + #(below or tied)) / 2 = #below + #tied / 2: the Mann-Whitney count.
            placed = cum[:, lo] + cum[:, hi]
            out[r] = np.einsum("ij,ij->i", cnt_pos, placed) / (2.0 * self.m * self.n)
        return out


def _is_auc_metric(metric: Metric) -> bool:
    return (isinstance(metric, str) and metric == "auc") or metric is auc


def _callable_metric(metric: Metric) -> Callable[[np.ndarray, np.ndarray], float]:
    if isinstance(metric, str):
        if metric != "auc":
            raise ValueError(f"unknown metric string {metric!r}; valid: 'auc' or a callable")
        return auc
    return metric


def _acceleration(influence: Sequence[np.ndarray]) -> float:
    """BCa acceleration from per-stratum (jackknife) influence values.

    a = sum_s n_s^-3 sum_i U_i^3 / (6 (sum_s n_s^-2 sum_i U_i^2)^1.5) (Davison & Hinkley 1997,
    eq. 5.19 with strata; reduces to Efron's eq. 14.15 for one stratum). Zero spread -> a = 0.
    """
    num = sum(float(np.sum(u**3)) / len(u) ** 3 for u in influence if len(u))
    den = sum(float(np.sum(u**2)) / len(u) ** 2 for u in influence if len(u))
    return num / (6.0 * den**1.5) if den > 0.0 else 0.0


def _jackknife_influence(
    stat: Callable[[np.ndarray], float], members: Sequence[np.ndarray], n_cases: int
) -> list[np.ndarray]:
    """Within-stratum jackknife: U_i = (n_s - 1) (mean_s theta_(-i) - theta_(-i)).
    Costs N evaluations of ``stat`` (a function of a kept-case mask)."""
    out = []
    for mm in members:
        theta = np.empty(len(mm))
        keep = np.ones(n_cases, dtype=bool)
        for j, i in enumerate(mm):
            keep[i] = False
            theta[j] = stat(keep)
            keep[i] = True
        out.append((len(mm) - 1) * (theta.mean() - theta))
    return out


def _auc_influence(y: np.ndarray, scores: np.ndarray) -> list[np.ndarray]:
    """Closed-form jackknife influence of the AUC (or of a difference of AUCs) per stratum.

    Deleting positive i gives AUC_(-i) = (m AUC - V10_i) / (m - 1), so the within-stratum
    jackknife value U_i = V10_i - AUC exactly (likewise V01_j - AUC for negatives): the DeLong
    structural components *are* the influence values. ``scores`` (k, N) with k = 1 (AUC) or
    k = 2 (influence of AUC_A - AUC_B). Order matches ``_strata``: [negatives, positives].
    """
    aucs, v10, v01 = _placements(y, np.atleast_2d(scores))
    if v10.shape[0] == 1:
        return [v01[0] - aucs[0], v10[0] - aucs[0]]
    d = aucs[0] - aucs[1]
    return [(v01[0] - v01[1]) - d, (v10[0] - v10[1]) - d]


def _interval(
    theta_hat: float, boot: np.ndarray, alpha: float, method: str, accel: float
) -> tuple[float, float]:
    """Two-sided percentile or BCa interval from the replicate distribution ``boot``."""
    q = np.array([alpha / 2.0, 1.0 - alpha / 2.0])
    if method == "percentile":
        lo, hi = np.quantile(boot, q)
        return float(lo), float(hi)
    # z0 from the mid-rank proportion of replicates below theta_hat (ties count 1/2, as scipy
    # does): AUC replicates are discrete, and for identical A/B all diffs tie at 0 -> z0 = 0.
    # The tolerance absorbs last-ulp differences between the count-based and rank-based AUC.
    tol = 1e-12 * max(1.0, abs(theta_hat))
    below = np.count_nonzero(boot < theta_hat - tol)
    tied = np.count_nonzero(np.abs(boot - theta_hat) <= tol)
    z0 = float(ndtri((below + 0.5 * tied) / boot.size))
    if not math.isfinite(z0):
        warnings.warn(
            "BCa undefined: all bootstrap replicates lie on one side of the estimate; "
            "returning NaN bounds (use method='percentile')",
            RuntimeWarning,
            stacklevel=3,
        )
        return math.nan, math.nan
    zq = ndtri(q)
    adj = ndtr(z0 + (z0 + zq) / (1.0 - accel * (z0 + zq)))
    lo, hi = np.quantile(boot, adj)
    return float(lo), float(hi)


def _boot_p(diff: float, boot: np.ndarray, alternative: str) -> float:
    """Bootstrap p-value of H0: diff = 0 from the replicate distribution *centred* at the
    estimate (it approximates the null distribution of the estimator; Hall & Wilson 1991),
    with the +1 correction so p is never 0: (1 + #{extreme}) / (1 + B). 'greater' = H1 A > B.

    Non-finite replicates (a metric undefined on a resample) are dropped and B counts the finite
    ones: a NaN compares False with everything, so kept it would count as non-extreme and bias p
    towards 0. No finite replicate (or a non-finite ``diff``) gives p = NaN.
    """
    boot = np.asarray(boot, dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0 or not math.isfinite(diff):
        return math.nan
    centred = boot - diff
    # tolerance so that exactly-equal (e.g. identical models) replicates count as extreme
    tol = 1e-12 * max(1.0, abs(diff))
    if alternative == "two-sided":
        extreme = np.count_nonzero(np.abs(centred) >= abs(diff) - tol)
    elif alternative == "greater":
        extreme = np.count_nonzero(centred >= diff - tol)
    else:
        extreme = np.count_nonzero(centred <= diff + tol)
    return float((1.0 + extreme) / (1.0 + boot.size))


def _check_boot_args(n_boot: int, alpha: float, method: str) -> None:
    _check_alpha(alpha)
    _check_choice(method, _BOOT_METHODS, "method")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def _as_cases(y_true: npt.ArrayLike, *scores: npt.ArrayLike) -> tuple[np.ndarray, ...]:
    y = np.asarray(y_true)
    out = [np.asarray(s) for s in scores]
    if y.ndim == 0:
        raise ValueError("y_true must have a case axis (N, ...)")
    for s in out:
        if s.shape[0] != y.shape[0]:
            raise ValueError(f"shape mismatch: y_true has {y.shape[0]} cases, scores {s.shape[0]}")
    return (y, *out)


def _check_strata(members: Sequence[np.ndarray], need_bca: bool) -> None:
    small = min(len(mm) for mm in members)
    if small < (2 if need_bca else 1):
        raise ValueError(f"a stratum (class) has only {small} case(s); BCa's jackknife needs 2")


def bootstrap_ci(
    metric: Metric,
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    n_boot: int = 2000,
    alpha: float = 0.05,
    method: Literal["bca", "percentile"] = "bca",
    seed: Seed = 0,
) -> BootstrapResult:
    """Stratified bootstrap CI of ``metric(y_true, scores)``.

    Resampled unit: the case (row of ``y_true`` and ``scores`` together). For 1-D (or (N, 1))
    ``y_true`` the cases of each class are resampled separately, with replacement, to the
    class's own size (stratified by ``y_true``), so every replicate has the original class
    counts and a defined AUC. For 2-D multi-label ``y_true`` (N, L) there is no single class to
    stratify on: plain case resampling via ``scipy.stats.bootstrap`` (BCa there uses scipy's
    jackknife; a label absent from a replicate is the metric's business).

    ``metric="auc"`` (or :func:`auc` itself) takes a vectorised fast path (1-D binary
    ``y_true``/``scores``): replicate AUCs from resample counts without re-ranking and the BCa
    acceleration from the DeLong placements in closed form; it reproduces the generic path
    exactly for the same seed. Otherwise ``metric`` is called once per replicate plus, for BCa,
    once per case (jackknife).

    BCa: bias correction z0 from the mid-rank share of replicates below the estimate, acceleration
    from the within-stratum jackknife (see ``_acceleration``). ``seed`` seeds
    ``np.random.default_rng``.
    """
    _check_boot_args(n_boot, alpha, method)
    rng = np.random.default_rng(seed)
    if _is_auc_metric(metric):
        y, (s,) = _check_binary(y_true, scores, min_per_class=2)
        estimate = auc(y, s)
        members = _strata(y)
        sampler = _AucResampler(y, s, members)
        boot = np.concatenate(
            [sampler.aucs(ix)[0] for ix in _resample_chunks(members, n_boot, rng)]
        )
        accel = _acceleration(_auc_influence(y, s)) if method == "bca" else 0.0
        lo, hi = _interval(estimate, boot, alpha, method, accel)
        return BootstrapResult(estimate, lo, hi, n_boot, method)

    fn = _callable_metric(metric)
    y, s = _as_cases(y_true, scores)
    estimate = float(fn(y, s))
    if y.ndim == 2 and y.shape[1] > 1:
        # Unstratified: scipy.stats.bootstrap fits exactly (resample case indices).
        res = sps.bootstrap(
            (np.arange(y.shape[0]),),
            lambda idx: float(fn(y[idx], s[idx])),
            n_resamples=n_boot,
            vectorized=False,
            confidence_level=1.0 - alpha,
            method="BCa" if method == "bca" else "percentile",
            rng=rng,
        )
        ci = res.confidence_interval
        return BootstrapResult(estimate, float(ci.low), float(ci.high), n_boot, method)

    members = _strata(y)
    _check_strata(members, method == "bca")
    boot = np.concatenate(
        [[fn(y[r], s[r]) for r in ix] for ix in _resample_chunks(members, n_boot, rng)]
    ).astype(np.float64)
    accel = 0.0
    if method == "bca":
        accel = _acceleration(_jackknife_influence(lambda k: fn(y[k], s[k]), members, len(y)))
    lo, hi = _interval(estimate, boot, alpha, method, accel)
    return BootstrapResult(estimate, lo, hi, n_boot, method)


def paired_bootstrap(
    metric: Metric,
    y_true: npt.ArrayLike,
    scores_a: npt.ArrayLike,
    scores_b: npt.ArrayLike,
    n_boot: int = 2000,
    alpha: float = 0.05,
    method: Literal["bca", "percentile"] = "bca",
    seed: Seed = 0,
    alternative: Alternative = "two-sided",
) -> PairedBootstrapResult:
    """Paired, stratified bootstrap of ``diff = metric(y, A) - metric(y, B)`` on the same cases.

    Each replicate draws one set of case indices (stratified by class as in
    :func:`bootstrap_ci`; plain case resampling for 2-D multi-label ``y_true``) and applies it
    to both A and B, so the case-level correlation between the models is kept. CI: percentile
    or BCa of the replicate diffs (jackknife of the diff for the acceleration). p-value of
    H0: diff = 0 from the centred replicate distribution, ``(1 + #{|d* - d| >= |d|}) / (1 + B)``
    two-sided, ``(1 + #{d* - d >= d}) / (1 + B)`` for 'greater' (H1: A > B), mirrored for
    'less'. Identical A and B give diff = 0, CI (0, 0) and p = 1. The CI is always two-sided.
    ``metric="auc"`` uses the vectorised AUC path.
    """
    _check_boot_args(n_boot, alpha, method)
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    rng = np.random.default_rng(seed)
    if _is_auc_metric(metric):
        y, (a, b) = _check_binary(y_true, scores_a, scores_b, min_per_class=2)
        est_a, est_b = auc(y, a), auc(y, b)
        members = _strata(y)
        sampler = _AucResampler(y, np.vstack([a, b]), members)
        boot = np.concatenate(
            [np.subtract(*sampler.aucs(ix)) for ix in _resample_chunks(members, n_boot, rng)]
        )
        influence = _auc_influence(y, np.vstack([a, b])) if method == "bca" else []
    else:
        fn = _callable_metric(metric)
        y, a, b = _as_cases(y_true, scores_a, scores_b)
        est_a, est_b = float(fn(y, a)), float(fn(y, b))
        members = _strata(y)
        _check_strata(members, method == "bca")
        boot = np.concatenate(
            [
                [fn(y[r], a[r]) - fn(y[r], b[r]) for r in ix]
                for ix in _resample_chunks(members, n_boot, rng)
            ]
        ).astype(np.float64)
        influence = []
        if method == "bca":
            influence = _jackknife_influence(
                lambda k: fn(y[k], a[k]) - fn(y[k], b[k]), members, len(y)
            )
    diff = est_a - est_b
    accel = _acceleration(influence) if method == "bca" else 0.0
    lo, hi = _interval(diff, boot, alpha, method, accel)
    p = _boot_p(diff, boot, alternative)
    return PairedBootstrapResult(est_a, est_b, diff, lo, hi, p, n_boot)


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------
def aggregate_seeds(values: npt.ArrayLike, alpha: float = 0.05) -> SeedSummary:
    """Summarise one metric over training seeds: mean, SD (ddof=1) and the t-interval
    ``mean +/- t_{1-alpha/2, n-1} sd / sqrt(n)`` (seeds treated as i.i.d. draws).

    ``values``: (n_seeds,) finite floats. With n = 1 the SD and the CI are NaN (no spread can be
    estimated from one seed). Non-finite values raise ValueError (a failed run must be handled
    explicitly, not silently dropped).
    """
    _check_alpha(alpha)
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("values is empty")
    if not np.all(np.isfinite(v)):
        raise ValueError("values contains NaN or inf")
    mean = float(v.mean())
    if v.size == 1:
        return SeedSummary(mean, math.nan, math.nan, math.nan, 1)
    sd = float(v.std(ddof=1))
    half = float(sps.t.ppf(1.0 - alpha / 2.0, v.size - 1)) * sd / math.sqrt(v.size)
    return SeedSummary(mean, sd, mean - half, mean + half, int(v.size))


def hierarchical_bootstrap_diff(
    metric: Metric,
    per_seed: Sequence[tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]],
    n_boot: int = 2000,
    seed: Seed = 0,
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
    cases: Literal["auto", "shared", "independent"] = "auto",
) -> PairedBootstrapResult:
    """Two-level bootstrap of the seed-averaged paired difference ``metric(A) - metric(B)``.

    ``per_seed``: one ``(y_true, scores_a, scores_b)`` tuple per training seed (A and B trained
    with that seed and scored on the same cases). Each replicate (i) draws S seeds with
    replacement from the S available, (ii) draws class-stratified case resamples (each shared by
    A and B), and (iii) averages the per-seed diffs over the S drawn seeds. The replicate
    distribution carries both the test-sample and the seed-to-seed (training) variability, which
    neither a single-seed case bootstrap nor a t-interval over S seed means does alone
    (Saravanan et al. 2020).

    ``cases`` says how level (ii) is drawn:

    - "independent": a fresh case resample for every drawn seed -- the nested design of
      Saravanan et al., right when each seed has its own test cases.
    - "shared": one case resample per replicate, applied to every drawn seed. Right when all
      seeds are scored on the *same* test cases (cases crossed with seeds, the study's fixed
      test split): resampling independently there would treat S evaluations of one test set as
      S independent test sets and shrink the case-sampling variance by about 1/S.
      Requires identical ``y_true`` across seeds.
    - "auto" (default): "shared" if every seed's ``y_true`` is identical, else "independent".

    Point estimates are the means over seeds of the full-data metrics; the CI is percentile (a
    jackknife BCa is not well defined for the two-level design); the p-value is computed as in
    :func:`paired_bootstrap`. ``metric="auc"`` is vectorised.

    Superseded for verdicts by :func:`seed_case_test`: drawing S seeds with replacement
    understates the seed variance by (S - 1) / S and the percentile tails are normal-like where
    S = 3 seeds call for t_2, so this interval is anti-conservative for few seeds; and its p
    (centred replicates) and CI (percentiles) can disagree.
    """
    _check_boot_args(n_boot, alpha, "percentile")
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    _check_choice(cases, ("auto", "shared", "independent"), "cases")
    if len(per_seed) == 0:
        raise ValueError("per_seed is empty")
    rng = np.random.default_rng(seed)
    fast = _is_auc_metric(metric)
    fn = _callable_metric(metric)
    n_seeds = len(per_seed)
    prepared: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    est_a, est_b = np.empty(n_seeds), np.empty(n_seeds)
    for k, (y0, a0, b0) in enumerate(per_seed):
        if fast:
            y, (a, b) = _check_binary(y0, a0, b0, min_per_class=2)
        else:
            y, a, b = _as_cases(y0, a0, b0)
        est_a[k], est_b[k] = fn(y, a), fn(y, b)
        prepared.append((y, a, b))
    same_y = all(
        p[0].shape == prepared[0][0].shape and np.array_equal(p[0], prepared[0][0])
        for p in prepared
    )
    if cases == "shared" and not same_y:
        raise ValueError("cases='shared' needs the same y_true for every seed")
    shared = cases == "shared" or (cases == "auto" and same_y)

    # Level 1: the seeds drawn by each replicate, kept as multiplicities (B, S).
    counts = _row_counts(rng.integers(0, n_seeds, size=(n_boot, n_seeds)), n_seeds)
    if shared:
        y = prepared[0][0]
        members = _strata(y)
        chunks = _resample_chunks(members, n_boot, rng)
        if fast:
            # all 2S score vectors share each replicate's case counts: one sampler, k = 2S
            sampler = _AucResampler(
                y, np.vstack([np.vstack([a, b]) for _, a, b in prepared]), members
            )
            reps = np.concatenate([sampler.aucs(ix) for ix in chunks], axis=1)  # (2S, B)
            diffs = reps[0::2] - reps[1::2]  # (S, B)
        else:
            diffs = np.array(
                [
                    [fn(y[r], a[r]) - fn(y[r], b[r]) for _, a, b in prepared]
                    for ix in chunks
                    for r in ix
                ],
                dtype=np.float64,
            ).T
        boot = np.einsum("bs,sb->b", counts, diffs) / n_seeds
    else:
        total = np.zeros(n_boot)
        for k, (y, a, b) in enumerate(prepared):
            c_k = int(counts[:, k].sum())
            if c_k == 0:
                continue
            # Level 2: one case resample per *draw* of seed k; draws are handed to replicates
            # in order, so replicate r receives counts[r, k] of them.
            members = _strata(y)
            chunks = _resample_chunks(members, c_k, rng)
            if fast:
                sampler = _AucResampler(y, np.vstack([a, b]), members)
                d_k = np.concatenate([np.subtract(*sampler.aucs(ix)) for ix in chunks])
            else:
                d_k = np.array(
                    [fn(y[r], a[r]) - fn(y[r], b[r]) for ix in chunks for r in ix],
                    dtype=np.float64,
                )
            owner = np.repeat(np.arange(n_boot), counts[:, k])
            total += np.bincount(owner, weights=d_k, minlength=n_boot)
        boot = total / n_seeds
    ea, eb = float(est_a.mean()), float(est_b.mean())
    diff = float(np.mean(est_a - est_b))
    lo, hi = _interval(diff, boot, alpha, "percentile", 0.0)
    return PairedBootstrapResult(ea, eb, diff, lo, hi, _boot_p(diff, boot, alternative), n_boot)


def minimum_detectable_effect(
    se: float,
    df: float,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: Alternative = "two-sided",
) -> float:
    """Smallest |difference| a t (or z) test with standard error ``se`` detects with ``power``.

    ``MDE = (t_{1 - alpha/2, df} + t_{power, df}) * se`` for a two-sided test, with
    ``t_{1 - alpha, df}`` for a one-sided one (the MDE then lies in H1's direction). ``df =
    inf`` gives the normal quantiles (e.g. a single-seed DeLong row: 2.80 se at alpha = 0.05,
    80 % power). This is the usual shifted-central-t approximation, which treats se as known and
    ignores the far rejection tail; the exact noncentral-t power at this MDE is 0.77 for df = 2,
    0.78 for df = 3 and >= 0.79 from df = 4 on (0.80 for large df). ``se = 0`` gives 0 and
    ``se = NaN`` gives NaN (a row whose variance could not be estimated).
    """
    _check_alpha(alpha)
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if not df > 0.0:  # also rejects NaN
        raise ValueError(f"df must be > 0 (inf for a normal reference), got {df}")
    if math.isnan(se):
        return math.nan
    if se < 0.0:
        raise ValueError(f"se must be >= 0, got {se}")
    if se == 0.0:
        return 0.0
    level = 1.0 - alpha / 2.0 if alternative == "two-sided" else 1.0 - alpha
    return float((stdtrit(df, level) + stdtrit(df, power)) * se)


def _welch_df(parts: Sequence[tuple[float, float]]) -> float:
    """Welch-Satterthwaite df of a sum of independent variance estimates ``(v_i, df_i)``:
    ``(sum v_i)^2 / sum(v_i^2 / df_i)``; zero parts carry no information and are skipped.
    NaN if every part is zero (the caller decides what an all-zero variance means)."""
    total = sum(v for v, _ in parts)
    den = sum(v * v / d for v, d in parts if v > 0.0)
    return total * total / den if den > 0.0 else math.nan


def _t_inference(
    diff: float, se: float, df: float, alpha: float, alternative: str
) -> tuple[float, float, float]:
    """p-value and CI of ``diff`` from the single statistic ``T = diff / se ~ t_df``.

    Both invert the same T, so the two-sided CI excludes 0 exactly when p < alpha. se = 0 gives
    T = +/-inf (p = 0 when diff lies in H1's direction, else 1) and a point CI; diff = se = 0
    gives p = 1 (no evidence of any difference) for every alternative.
    """
    # scipy.special's t CDF / quantile (what scipy.stats.t wraps, ~50x less call overhead: the
    # calibration simulations call this hundreds of thousands of times); df = inf is the normal.
    t = _safe_ratio(diff, se)
    if alternative == "two-sided":
        p = float(2.0 * stdtr(df, -abs(t)))
        half = float(stdtrit(df, 1.0 - alpha / 2.0)) * se
        lo, hi = diff - half, diff + half
    elif alternative == "greater":
        p = float(stdtr(df, -t))
        lo, hi = diff - float(stdtrit(df, 1.0 - alpha)) * se, math.inf
    else:
        p = float(stdtr(df, t))
        lo, hi = -math.inf, diff + float(stdtrit(df, 1.0 - alpha)) * se
    if se == 0.0 and diff == 0.0:
        p = 1.0
    return p, lo, hi


def _check_same_cases(labels: Sequence[np.ndarray]) -> None:
    """Every seed must be scored on the same test cases, in the same order."""
    first = labels[0]
    for k, y in enumerate(labels[1:], start=1):
        if y.shape[0] != first.shape[0]:
            raise ValueError(
                "seed_case_test needs the same test cases for every seed: seed 0 has "
                f"{first.shape[0]} cases, seed {k} has {y.shape[0]}"
            )
        if y.shape != first.shape or not np.array_equal(y, first):
            raise ValueError(
                f"seed_case_test needs the same test cases for every seed: y_true of seed {k} "
                "differs from seed 0 (align the predictions by sample id first)"
            )


def _seed_case_delong(
    per_seed: Sequence[tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]],
) -> tuple[np.ndarray, np.ndarray, float, float, int]:
    """Per-seed AUCs of A and B, DeLong variance of the seed-averaged AUC difference and its
    Welch-Satterthwaite df over the two classes, and the number of cases."""
    labels: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for y0, a0, b0 in per_seed:
        y, (a, b) = _check_binary(y0, a0, b0, min_per_class=2)
        labels.append(y)
        rows.extend((a, b))
    _check_same_cases(labels)
    y = labels[0]
    aucs, v10, v01 = _placements(y, np.vstack(rows))  # rows: A_1, B_1, A_2, B_2, ...
    # The seed-averaged difference (1/S) sum_s (AUC_As - AUC_Bs) is a linear combination L of
    # the 2S AUCs, and each AUC is the mean of its placements; so its DeLong variance L S L' is
    # the DeLong variance of the averaged differenced placements -- exact, and free of the
    # cancellation in expanding L S L'.
    d10 = (v10[0::2] - v10[1::2]).mean(axis=0)
    d01 = (v01[0::2] - v01[1::2]).mean(axis=0)
    m, n = d10.size, d01.size
    c10 = float(np.var(d10, ddof=1)) / m
    c01 = float(np.var(d01, ddof=1)) / n
    df_case = _welch_df([(c10, m - 1), (c01, n - 1)])
    if math.isnan(df_case):  # no case variance at all; df_case is then never used for p or CI
        df_case = float(m + n - 1)
    return aucs[0::2], aucs[1::2], c10 + c01, df_case, m + n


def _seed_case_bootstrap(
    metric: Metric,
    per_seed: Sequence[tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]],
    n_boot: int,
    seed: Seed,
) -> tuple[np.ndarray, np.ndarray, float, float, int, int]:
    """Per-seed metrics, class-stratified case-bootstrap variance of the seed-averaged
    difference (one case resample per replicate shared by every seed and both arms), its df
    (N - 1), the number of cases and the number of dropped NaN replicates."""
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2 for a bootstrap variance, got {n_boot}")
    fn = _callable_metric(metric)
    prepared = [_as_cases(y0, a0, b0) for y0, a0, b0 in per_seed]
    _check_same_cases([y for y, _, _ in prepared])
    y = prepared[0][0]
    est_a = np.array([float(fn(y, a)) for _, a, _ in prepared])
    est_b = np.array([float(fn(y, b)) for _, _, b in prepared])
    if not (np.all(np.isfinite(est_a)) and np.all(np.isfinite(est_b))):
        raise ValueError("metric is not finite on the full test set for some seed")
    rng = np.random.default_rng(seed)
    members = _strata(y)
    boot = np.array(
        [
            np.mean([float(fn(y[r], a[r])) - float(fn(y[r], b[r])) for _, a, b in prepared])
            for ix in _resample_chunks(members, n_boot, rng)
            for r in ix
        ],
        dtype=np.float64,
    )
    finite = np.isfinite(boot)
    n_dropped = int(boot.size - finite.sum())
    if n_dropped > _MAX_NAN_BOOT_SHARE * n_boot or finite.sum() < 2:
        raise ValueError(
            f"metric is NaN on {n_dropped} of {n_boot} case-bootstrap replicates (more than "
            f"{_MAX_NAN_BOOT_SHARE:.0%}): the case variance would be conditional on the "
            "resamples where it is defined"
        )
    # df of a plug-in variance from N cases; the bootstrap gives no per-stratum split for a
    # Welch-type df as the DeLong path has (for large N the two barely differ).
    kept = boot[finite]
    var_case = float(np.var(kept - kept[0], ddof=1))  # shifted: identical values give exactly 0
    return est_a, est_b, var_case, float(y.shape[0] - 1), int(y.shape[0]), n_dropped


def seed_case_test(
    metric: Metric,
    per_seed: Sequence[tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]],
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: Seed = 0,
    alternative: Alternative = "two-sided",
) -> SeedCaseResult:
    """Paired test of a seed-averaged difference ``metric(A) - metric(B)`` when each arm has
    S >= 2 training seeds scored on the *same* test cases.

    Data contract
    -------------
    ``per_seed``: S >= 2 tuples ``(y_true, scores_a, scores_b)``, one per training seed s (A
    and B trained with seed s), every tuple on the same N test cases in the same order (equal
    ``y_true``; ValueError otherwise). ``metric="auc"`` (or :func:`auc`): binary AUC, ``y_true``
    (N,) 0/1 with positive class 1, scores (N,) higher = more positive, >= 2 cases per class.
    A callable ``metric(y_true, scores) -> float`` takes any per-case layout (the module's
    ``(N, ...)`` contract). The estimate is ``diff = mean_s d_s`` with
    ``d_s = metric(y, A_s) - metric(y, B_s)``: direction A - B, so 'greater' is H1: A > B.

    Two variance sources (Bouthillier et al. 2021)
    -----------------------------------------------
    - Training, seed to seed: ``var_seed = s_d^2 / S``, ``s_d^2`` the sample variance
      (ddof=1) of the S per-seed differences d_s; it has S - 1 df.
    - Test-case sampling of the *seed-averaged* difference, ``var_case``. For AUC: DeLong's
      structural components (DeLong et al. 1988, via Sun & Xu 2014 midranks); the per-seed
      placement differences are averaged over seeds before taking their variance, which is
      exact because the averaged difference is linear in the placements. Its df is the
      Welch-Satterthwaite df of the two class terms, ``(V10 + V01)^2 / (V10^2 / (m - 1) +
      V01^2 / (n - 1))`` (m positives, n negatives): ~N - 2 for balanced classes, near m - 1 when
      positives are rare (where a variance driven by few positives is indeed that uncertain).
      Otherwise: a class-stratified case bootstrap (``n_boot`` replicates, ``seed``); each
      replicate resamples the cases once and applies the same indices to every seed and both
      arms, and ``var_case`` is the variance (ddof=1) of the replicate seed-averaged diffs; df
      ``N - 1``. NaN replicates are dropped and counted (``n_boot_dropped``); more than 10 %
      NaN raises ValueError.

    Why these two add up: the seeds share the test cases, so the part of the case-sampling error
    that is common to all seeds shifts every d_s alike and is absent from ``s_d^2``; ``var_seed``
    sees training variance only, ``var_case`` sees the (shared) case error of the mean. The two
    overlap only in case error specific to one seed (seed s's model errs on other cases than seed
    t's), which both count: the sum over-estimates the variance of diff by that seed-specific part
    / S in expectation, i.e. it errs on the conservative side (see
    ``benchmarks/bench_seed_case.py`` for the calibration).

    Small-sample correction: ``T = diff / se`` with ``se^2 = var_seed + var_case`` is referred
    to a t distribution with Welch-Satterthwaite df (Satterthwaite 1946; Welch 1947),
    ``df = se^4 / (var_seed^2 / (S - 1) + var_case^2 / df_case)``. When training variance
    dominates, df -> S - 1 (the one-sample t-test over seeds; with no case variance the result
    *is* ``scipy.stats.ttest_1samp`` of the d_s); when case variance dominates, df -> df_case
    (~ the paired DeLong z test). ``var_seed = 0`` gives df = df_case. p and CI invert this one
    T, so the two-sided CI excludes 0 iff p < alpha; one-sided alternatives give a one-sided p
    and a one-sided CI (the other bound +/-inf). ``se = 0`` (no variance at all): p = 1 if
    diff = 0, else 0 if diff lies in H1's direction (1 if it does not), and the CI is the point
    diff.

    Why this and not :func:`hierarchical_bootstrap_diff`: resampling S seeds with replacement
    shrinks the seed variance by (S - 1) / S and its percentile CI has normal-like tails where S
    = 3 seeds call for t_2 (anti-conservative), and its p (centred replicates) and CI
    (percentiles) can disagree. Here every ingredient is closed form for AUC (no Monte Carlo
    error, deterministic) and the error rate is checked by simulation in the tests and the
    benchmark.
    """
    _check_alpha(alpha)
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    n_seeds = len(per_seed)
    if n_seeds < 2:
        raise ValueError(
            f"seed_case_test needs S >= 2 training seeds, got S={n_seeds} "
            "(for one seed use delong_test or paired_bootstrap)"
        )
    if _is_auc_metric(metric):
        est_a, est_b, var_case, df_case, n_cases = _seed_case_delong(per_seed)
        n_dropped, case_name = 0, "DeLong"
    else:
        est_a, est_b, var_case, df_case, n_cases, n_dropped = _seed_case_bootstrap(
            metric, per_seed, n_boot, seed
        )
        case_name = "stratified bootstrap"
    d = est_a - est_b
    diff = float(d.mean())
    # shifted by d[0] (variance unchanged): identical per-seed differences give exactly 0, not
    # the rounding residue of their mean
    var_seed = float(np.var(d - d[0], ddof=1)) / n_seeds
    var = var_seed + var_case
    df = df_case if var_seed == 0.0 else _welch_df([(var_seed, n_seeds - 1), (var_case, df_case)])
    se = math.sqrt(var)
    p, lo, hi = _t_inference(diff, se, df, alpha, alternative)
    return SeedCaseResult(
        estimate_a=float(est_a.mean()),
        estimate_b=float(est_b.mean()),
        diff=diff,
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        df=float(df),
        se=se,
        var_seed=var_seed,
        var_case=var_case,
        n_seeds=n_seeds,
        n_cases=n_cases,
        mde=minimum_detectable_effect(se, df, alpha, 0.8, alternative),
        test=f"seed-case t ({case_name} cases + seed variance, Welch-Satterthwaite df)",
        alpha=alpha,
        alternative=alternative,
        n_boot_dropped=n_dropped,
    )


# --------------------------------------------------------------------------------------------
# Multiplicity
# --------------------------------------------------------------------------------------------
def adjust_pvalues(p: npt.ArrayLike, method: str = "holm") -> np.ndarray:
    """Multiplicity-adjusted p-values (``statsmodels.stats.multitest.multipletests``).

    ``method``: "holm" (FWER, Holm 1979) or "fdr_bh" (FDR, Benjamini-Hochberg 1995). NaN inputs
    stay NaN and are excluded from the family (the family size is the number of non-NaN p);
    the output has the input's shape and order. Raises ValueError for an unknown method or p
    outside [0, 1].
    """
    _check_choice(method, _PADJ_METHODS, "method")
    arr = np.asarray(p, dtype=np.float64)
    flat = arr.ravel()
    ok = ~np.isnan(flat)
    if np.any((flat[ok] < 0.0) | (flat[ok] > 1.0)):
        raise ValueError("p-values must lie in [0, 1]")
    out = np.full(flat.shape, np.nan)
    if ok.any():
        from statsmodels.stats.multitest import multipletests  # heavy import, only when needed

        # multipletests sorts internally and returns corrected p in input order
        out[ok] = multipletests(flat[ok], method=method)[1]
    return out.reshape(arr.shape)


# --------------------------------------------------------------------------------------------
# Label efficiency (claim C4)
# --------------------------------------------------------------------------------------------
def _label_curve(fractions: npt.ArrayLike, values: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(fractions, dtype=np.float64).ravel()
    v = np.asarray(values, dtype=np.float64).ravel()
    if f.shape != v.shape:
        raise ValueError(f"shape mismatch: {f.size} fractions vs {v.size} values")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(v))):
        raise ValueError("fractions and values must be finite")
    if np.any(f <= 0.0):
        raise ValueError("label fractions must be > 0 (log10 scale)")
    if np.unique(f).size < 2:
        raise ValueError("need at least two distinct label fractions")
    order = np.argsort(f, kind="stable")
    return np.log10(f[order]), v[order]


def label_efficiency_slope(fractions: npt.ArrayLike, values: npt.ArrayLike) -> float:
    """OLS slope of the metric against ``log10(label fraction)``: metric gain per 10x labels.

    ``fractions``: (F,) label fractions in (0, 1], ``values``: (F,) metric at each fraction
    (e.g. seed means). Repeated fractions (one point per seed) are allowed; at least two distinct
    fractions are required. A *smaller* slope means the method degrades less when labels are
    scarce.
    """
    x, v = _label_curve(fractions, values)
    xc = x - x.mean()
    return float(np.dot(xc, v - v.mean()) / np.dot(xc, xc))


def area_under_label_curve(fractions: npt.ArrayLike, values: npt.ArrayLike) -> float:
    """Trapezoid area under metric vs ``log10(label fraction)``, divided by the log10 range.

    The normalisation makes it a mean metric over the (log-spaced) label budget, on the metric's
    own scale: e.g. fractions [0.01, 0.1, 1] with values [0.5, 0.6, 0.7] give 0.6. Inputs as in
    :func:`label_efficiency_slope`; fractions are sorted first; repeated fractions should be
    averaged by the caller (a repeated x contributes a zero-width trapezoid).
    """
    x, v = _label_curve(fractions, values)
    # explicit trapezoid rule (np.trapezoid is numpy >= 2 only; the project allows 1.26)
    area = float(np.sum(np.diff(x) * (v[1:] + v[:-1]) / 2.0))
    return area / float(x[-1] - x[0])
