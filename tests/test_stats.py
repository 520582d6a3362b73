"""Tests for medstudy.stats against independent references (sklearn, statsmodels, scipy, hand
calculations, an O(n^2) DeLong, and seeded simulations with known truth)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from medstudy import stats as st

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def naive_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong (1988) structural components with an explicit m x n comparison matrix, O(mn)."""
    y = np.asarray(y).astype(bool)
    scores = np.atleast_2d(scores)
    v10, v01, aucs = [], [], []
    for s in scores:
        x, w = s[y], s[~y]
        psi = (x[:, None] > w[None, :]) + 0.5 * (x[:, None] == w[None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    m, n = int(y.sum()), int((~y).sum())
    v10a, v01a = np.array(v10), np.array(v01)
    c10 = (v10a - v10a.mean(1, keepdims=True)) @ (v10a - v10a.mean(1, keepdims=True)).T / (m - 1)
    c01 = (v01a - v01a.mean(1, keepdims=True)) @ (v01a - v01a.mean(1, keepdims=True)).T / (n - 1)
    return np.array(aucs), c10 / m + c01 / n


def binormal(rng: np.random.Generator, n_pos: int, n_neg: int, mu: float):
    """neg ~ N(0, 1), pos ~ N(mu, 1): true AUC = Phi(mu / sqrt(2))."""
    y = np.r_[np.zeros(n_neg, dtype=int), np.ones(n_pos, dtype=int)]
    s = np.r_[rng.normal(0.0, 1.0, n_neg), rng.normal(mu, 1.0, n_pos)]
    return y, s


# Hand example used by several tests. y = [0, 0, 1, 1, 1]
#   A = [0.1, 0.4, 0.35, 0.8, 0.4]   negatives {0.1, 0.4}, positives {0.35, 0.8, 0.4}
#   B = [0.3, 0.1, 0.2, 0.9, 0.5]    negatives {0.3, 0.1}, positives {0.2, 0.9, 0.5}
# Placements (ties count 1/2):
#   V10_A = [1/2, 2/2, (1 + 1/2)/2] = [0.5, 1, 0.75]   AUC_A = 0.75
#   V01_A = [3/3, (1 + 1/2)/3]      = [1, 0.5]
#   V10_B = [1/2, 1, 1]                                AUC_B = 5/6
#   V01_B = [2/3, 1]
# S10 (ddof=1, over the 3 positives): var_A = (1/16 + 1/16 + 0)/2 = 1/16,
#   var_B = (1/9 + 1/36 + 1/36)/2 = 1/12, cov_AB = ((-1/4)(-1/3) + (1/4)(1/6) + 0)/2 = 1/16
# S01 (ddof=1, over the 2 negatives): var_A = 1/8, var_B = 1/18, cov_AB = -1/12
# S = S10/3 + S01/2: S_AA = 1/48 + 1/16 = 1/12, S_BB = 1/36 + 1/36 = 1/18,
#   S_AB = 1/48 - 1/24 = -1/48
# var(A - B) = 1/12 + 1/18 + 2/48 = 13/72; diff = 0.75 - 5/6 = -1/12
# z = (-1/12) / sqrt(13/72) = -1/sqrt(26)
Y5 = np.array([0, 0, 1, 1, 1])
A5 = np.array([0.1, 0.4, 0.35, 0.8, 0.4])
B5 = np.array([0.3, 0.1, 0.2, 0.9, 0.5])


# --------------------------------------------------------------------------------------------
# AUC
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_auc_matches_sklearn_with_many_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + 0.7 * y, 1)  # ~40 distinct values -> many ties
    assert st.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_input_errors() -> None:
    with pytest.raises(ValueError, match="one class"):
        st.auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="shape mismatch"):
        st.auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0/1"):
        st.auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        st.auc([0, 1], [0.1, np.nan])


# --------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------
def test_delong_hand_case() -> None:
    aucs, cov = st.delong_auc_cov(Y5, np.vstack([A5, B5]))
    np.testing.assert_allclose(aucs, [0.75, 5 / 6], rtol=0, atol=1e-15)
    np.testing.assert_allclose(cov, [[1 / 12, -1 / 48], [-1 / 48, 1 / 18]], rtol=0, atol=1e-15)

    a, lo, hi = st.auc_ci(Y5, A5)
    half = sps.norm.ppf(0.975) * math.sqrt(1 / 12)
    assert (a, lo, hi) == pytest.approx((0.75, 0.75 - half, 1.0), abs=1e-12)  # upper clipped

    r = st.delong_test(Y5, A5, B5)
    assert r.diff == pytest.approx(-1 / 12, abs=1e-15)
    assert r.z == pytest.approx(-1 / math.sqrt(26), abs=1e-12)
    assert r.p_value == pytest.approx(2 * sps.norm.cdf(-1 / math.sqrt(26)), abs=1e-12)
    half_d = sps.norm.ppf(0.975) * math.sqrt(13 / 72)
    assert (r.ci_low, r.ci_high) == pytest.approx((-1 / 12 - half_d, -1 / 12 + half_d), abs=1e-12)
    assert (r.n_pos, r.n_neg, r.df) == (3, 2, math.inf)
    # one-sided: H1 A > B is not supported by diff < 0
    assert st.delong_test(Y5, A5, B5, "greater").p_value == pytest.approx(
        sps.norm.sf(-1 / math.sqrt(26)), abs=1e-12
    )
    assert st.delong_test(Y5, A5, B5, "less").p_value == pytest.approx(
        sps.norm.cdf(-1 / math.sqrt(26)), abs=1e-12
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_delong_matches_naive_structural_components(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 250)
    latent = rng.normal(size=250) + y
    scores = np.vstack(
        [np.round(latent + rng.normal(0, s, 250), 1) for s in (0.3, 0.8, 1.5)]
    )  # rounding -> ties
    aucs, cov = st.delong_auc_cov(y, scores)
    aucs_ref, cov_ref = naive_delong(y, scores)
    np.testing.assert_allclose(aucs, aucs_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, cov_ref, rtol=1e-10, atol=1e-15)
    # and the paired test's variance equals L S L'
    r = st.delong_test(y, scores[0], scores[1])
    var = cov_ref[0, 0] + cov_ref[1, 1] - 2 * cov_ref[0, 1]
    assert r.z == pytest.approx((aucs_ref[0] - aucs_ref[1]) / math.sqrt(var), rel=1e-9)


def test_delong_antisymmetry() -> None:
    rng = np.random.default_rng(7)
    y, a = binormal(rng, 80, 120, 1.0)
    b = a + rng.normal(0, 1.0, a.size)
    ab, ba = st.delong_test(y, a, b), st.delong_test(y, b, a)
    assert ab.diff == pytest.approx(-ba.diff, abs=1e-15)
    assert ab.z == pytest.approx(-ba.z, abs=1e-12)
    assert ab.p_value == pytest.approx(ba.p_value, abs=1e-15)
    assert (ab.ci_low, ab.ci_high) == pytest.approx((-ba.ci_high, -ba.ci_low), abs=1e-12)
    assert st.delong_test(y, a, b, "greater").p_value == pytest.approx(
        st.delong_test(y, b, a, "less").p_value, abs=1e-15
    )


def test_monotone_transform_invariance() -> None:
    rng = np.random.default_rng(3)
    y, a = binormal(rng, 60, 90, 0.8)
    a = np.round(a, 1)
    b = np.round(a + rng.normal(0, 1, a.size), 1)

    def f(x: np.ndarray) -> np.ndarray:
        return np.exp(2 * x) + x**3  # strictly increasing

    assert st.auc(y, f(a)) == st.auc(y, a)
    r0, r1 = st.delong_test(y, a, b), st.delong_test(y, f(a), 1 / (1 + np.exp(-b)))
    assert r1.z == pytest.approx(r0.z, abs=1e-12)
    assert r1.p_value == pytest.approx(r0.p_value, abs=1e-12)


def test_delong_identical_scores_gives_z0_p1() -> None:
    rng = np.random.default_rng(0)
    y, a = binormal(rng, 30, 30, 1.0)
    r = st.delong_test(y, a, a.copy())
    assert (r.z, r.p_value, r.diff, r.ci_low, r.ci_high) == (0.0, 1.0, 0.0, 0.0, 0.0)
    r = st.delong_test(y, a, 3 * a + 1)  # rank-identical
    assert (r.z, r.p_value) == (0.0, 1.0)


def test_delong_unpaired_matches_proc_formula() -> None:
    rng = np.random.default_rng(11)
    ya, sa = binormal(rng, 40, 60, 1.2)
    yb, sb = binormal(rng, 70, 50, 0.6)
    r = st.delong_test_unpaired(ya, sa, yb, sb)
    _, va = naive_delong(ya, sa)
    _, vb = naive_delong(yb, sb)
    va, vb = va[0, 0], vb[0, 0]
    diff = roc_auc_score(ya, sa) - roc_auc_score(yb, sb)
    d = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 99 + vb**2 / 119)
    assert r.diff == pytest.approx(diff, abs=1e-12)
    assert r.z == pytest.approx(d, rel=1e-10)
    assert r.df == pytest.approx(df, rel=1e-10)
    assert r.p_value == pytest.approx(2 * sps.t.sf(abs(d), df), rel=1e-9)
    assert (r.n_pos, r.n_neg) == (110, 110)
    same = st.delong_test_unpaired(ya, sa, ya, sa)
    assert (same.z, same.p_value) == (0.0, 1.0)


def test_delong_ci_coverage_simulation() -> None:
    rng = np.random.default_rng(2024)
    mu = 1.0
    true_auc = sps.norm.cdf(mu / math.sqrt(2))
    hits = 0
    for _ in range(400):
        y, s = binormal(rng, 100, 100, mu)
        _, lo, hi = st.auc_ci(y, s)
        hits += lo <= true_auc <= hi
    assert 0.92 <= hits / 400 <= 0.98


def test_bootstrap_ci_coverage_simulation() -> None:
    rng = np.random.default_rng(99)
    mu = 1.0
    true_auc = sps.norm.cdf(mu / math.sqrt(2))
    hits = 0
    for i in range(400):
        y, s = binormal(rng, 100, 100, mu)
        r = st.bootstrap_ci("auc", y, s, n_boot=500, method="bca", seed=i)
        hits += r.ci_low <= true_auc <= r.ci_high
    assert 0.92 <= hits / 400 <= 0.98


def test_paired_delong_size_under_null() -> None:
    rng = np.random.default_rng(5)
    rejections = 0
    n_sim = 1000
    for _ in range(n_sim):
        y = np.r_[np.zeros(100, int), np.ones(100, int)]
        latent = rng.normal(size=200) + 1.0 * y
        a = latent + rng.normal(size=200)  # same noise level -> AUC_A = AUC_B, correlated
        b = latent + rng.normal(size=200)
        rejections += st.delong_test(y, a, b).p_value < 0.05
    assert 0.03 <= rejections / n_sim <= 0.07


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["bca", "percentile"])
def test_bootstrap_auc_fast_path_equals_generic_path(method: str) -> None:
    rng = np.random.default_rng(1)
    y, s = binormal(rng, 45, 75, 0.9)
    s = np.round(s, 1)
    fast = st.bootstrap_ci("auc", y, s, n_boot=300, method=method, seed=123)
    slow = st.bootstrap_ci(lambda yy, ss: st.auc(yy, ss), y, s, 300, method=method, seed=123)
    assert fast.estimate == slow.estimate
    assert fast.ci_low == pytest.approx(slow.ci_low, abs=1e-12)
    assert fast.ci_high == pytest.approx(slow.ci_high, abs=1e-12)
    assert fast.ci_low < fast.estimate < fast.ci_high
    assert (fast.n_boot, fast.method) == (300, method)


def test_bca_end_to_end_against_textbook_formula() -> None:
    # Record the replicate values the generic path computes, then rebuild the BCa interval
    # independently: z0 from the mid-rank share below the estimate, acceleration from a brute
    # force within-class jackknife (sklearn AUCs), Efron & Tibshirani eq. 14.10.
    rng = np.random.default_rng(17)
    y, s = binormal(rng, 30, 50, 2.2)  # AUC ~ 0.94: skewed replicate distribution, a != 0
    seen: list[float] = []

    def metric(yy: np.ndarray, ss: np.ndarray) -> float:
        v = st.auc(yy, ss)
        seen.append(v)
        return v

    n_boot, alpha = 400, 0.1
    r = st.bootstrap_ci(metric, y, s, n_boot=n_boot, alpha=alpha, method="bca", seed=3)
    boot = np.array(seen[1 : n_boot + 1])  # call 0 is the full-data estimate
    theta = roc_auc_score(y, s)
    # discrete AUC replicates hit theta exactly up to float rounding -> compare with a tolerance
    tied = np.abs(boot - theta) <= 1e-12
    assert tied.any()
    z0 = sps.norm.ppf((np.sum((boot < theta) & ~tied) + 0.5 * np.sum(tied)) / n_boot)
    num = den = 0.0
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        loo = np.array([roc_auc_score(np.delete(y, i), np.delete(s, i)) for i in idx])
        u = (idx.size - 1) * (loo.mean() - loo)
        num += np.sum(u**3) / idx.size**3
        den += np.sum(u**2) / idx.size**2
    a = num / (6 * den**1.5)
    assert abs(a) > 1e-3
    zq = sps.norm.ppf([alpha / 2, 1 - alpha / 2])
    q = sps.norm.cdf(z0 + (z0 + zq) / (1 - a * (z0 + zq)))
    expected = np.quantile(boot, q)
    assert (r.ci_low, r.ci_high) == pytest.approx(tuple(expected), abs=1e-12)
    fast = st.bootstrap_ci("auc", y, s, n_boot=n_boot, alpha=alpha, method="bca", seed=3)
    assert (fast.ci_low, fast.ci_high) == pytest.approx(tuple(expected), abs=1e-12)


def test_bootstrap_is_stratified_and_seeded() -> None:
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(17, int), np.ones(9, int), np.full(5, 2)]
    s = rng.normal(size=y.size)
    seen: list[tuple[int, int, int]] = []

    def metric(yy: np.ndarray, ss: np.ndarray) -> float:
        seen.append(tuple(np.bincount(yy, minlength=3)))
        return float(np.mean(ss[yy == 1]))

    st.bootstrap_ci(metric, y, s, n_boot=50, method="percentile", seed=0)
    assert set(seen) == {(17, 9, 5)}  # every replicate keeps the class counts
    r1 = st.bootstrap_ci("auc", (y == 1).astype(int), s, n_boot=200, seed=5)
    r2 = st.bootstrap_ci("auc", (y == 1).astype(int), s, n_boot=200, seed=5)
    r3 = st.bootstrap_ci("auc", (y == 1).astype(int), s, n_boot=200, seed=6)
    assert r1 == r2 and r1 != r3
    g = st.bootstrap_ci("auc", (y == 1).astype(int), s, n_boot=200, seed=np.random.default_rng(5))
    assert g == r1


def test_stratified_bca_agrees_with_scipy_multisample_bootstrap() -> None:
    # scipy resampling each class as its own sample *is* a stratified bootstrap, with the
    # same multi-sample BCa acceleration; CIs must agree up to Monte Carlo error.
    rng = np.random.default_rng(8)
    y, s = binormal(rng, 60, 90, 0.7)
    ours = st.bootstrap_ci("auc", y, s, n_boot=4000, seed=0)
    neg, pos = s[y == 0], s[y == 1]

    def stat(w: np.ndarray, x: np.ndarray) -> float:
        return st.auc(np.r_[np.zeros(w.size), np.ones(x.size)], np.r_[w, x])

    ref = sps.bootstrap(
        (neg, pos), stat, n_resamples=4000, vectorized=False, method="BCa", rng=1
    ).confidence_interval
    assert ours.ci_low == pytest.approx(ref.low, abs=0.012)
    assert ours.ci_high == pytest.approx(ref.high, abs=0.012)


def test_bootstrap_multilabel_uses_plain_resampling() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, (120, 3))
    s = rng.random((120, 3)) + 0.5 * y

    def mean_auc(yy: np.ndarray, ss: np.ndarray) -> float:
        return float(np.mean([roc_auc_score(yy[:, j], ss[:, j]) for j in range(yy.shape[1])]))

    r1 = st.bootstrap_ci(mean_auc, y, s, n_boot=100, method="percentile", seed=3)
    r2 = st.bootstrap_ci(mean_auc, y, s, n_boot=100, method="percentile", seed=3)
    assert r1 == r2
    assert r1.estimate == pytest.approx(mean_auc(y, s))
    assert r1.ci_low < r1.estimate < r1.ci_high


def test_paired_bootstrap_properties() -> None:
    rng = np.random.default_rng(6)
    y, a = binormal(rng, 70, 90, 1.0)
    b = a + rng.normal(0, 1.2, a.size)

    def acc(yy: np.ndarray, ss: np.ndarray) -> float:
        return float(np.mean((ss > 0.5) == yy))

    r = st.paired_bootstrap(acc, y, a, b, n_boot=300, seed=0)
    assert r.diff == acc(y, a) - acc(y, b)
    assert (r.estimate_a, r.estimate_b) == (acc(y, a), acc(y, b))
    assert r == st.paired_bootstrap(acc, y, a, b, n_boot=300, seed=0)

    same = st.paired_bootstrap("auc", y, a, a.copy(), n_boot=300, seed=0)
    assert (same.diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)

    fast = st.paired_bootstrap("auc", y, a, b, n_boot=300, seed=9)
    slow = st.paired_bootstrap(lambda yy, ss: st.auc(yy, ss), y, a, b, n_boot=300, seed=9)
    assert fast.diff == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b), abs=1e-12)
    assert (fast.ci_low, fast.ci_high, fast.p_value) == pytest.approx(
        (slow.ci_low, slow.ci_high, slow.p_value), abs=1e-12
    )
    # swapping A and B mirrors the replicates exactly (same seed -> same indices)
    g = st.paired_bootstrap("auc", y, a, b, n_boot=300, seed=9, alternative="greater")
    ls = st.paired_bootstrap("auc", y, b, a, n_boot=300, seed=9, alternative="less")
    assert g.p_value == ls.p_value
    swapped = st.paired_bootstrap("auc", y, b, a, n_boot=300, seed=9, method="percentile")
    plain = st.paired_bootstrap("auc", y, a, b, n_boot=300, seed=9, method="percentile")
    assert (swapped.ci_low, swapped.ci_high) == pytest.approx(
        (-plain.ci_high, -plain.ci_low), abs=1e-12
    )


def test_paired_bootstrap_p_value_formula() -> None:
    # Strong effect: no centred replicate reaches |d| -> p = 1 / (B + 1) exactly.
    rng = np.random.default_rng(12)
    y, a = binormal(rng, 100, 100, 2.5)
    b = rng.normal(size=a.size)
    r = st.paired_bootstrap("auc", y, a, b, n_boot=400, seed=0)
    assert r.p_value == pytest.approx(1 / 401, abs=1e-15)


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------
def test_aggregate_seeds() -> None:
    r = st.aggregate_seeds([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(5 / 3)
    half = 3.182446305284263 * sd / 2  # t_{0.975, 3}
    assert (r.mean, r.sd, r.n) == (2.5, pytest.approx(sd, abs=1e-15), 4)
    assert (r.ci_low, r.ci_high) == pytest.approx((2.5 - half, 2.5 + half), abs=1e-12)
    one = st.aggregate_seeds([0.8])
    assert one.mean == 0.8 and one.n == 1
    assert math.isnan(one.sd) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    with pytest.raises(ValueError, match="NaN"):
        st.aggregate_seeds([0.8, np.nan])


def _seed_data(rng: np.random.Generator, n_seeds: int, same_cases: bool):
    y, latent = binormal(rng, 60, 60, 1.0)
    out = []
    for k in range(n_seeds):
        if not same_cases:  # each seed scored on its own test cases (different sizes)
            y, latent = binormal(rng, 55 + 5 * k, 60, 1.0)
        out.append((y, latent + rng.normal(0, 0.6, y.size), latent + rng.normal(0, 1.0, y.size)))
    return out


@pytest.mark.parametrize("cases", ["shared", "independent"])
def test_hierarchical_bootstrap(cases: str) -> None:
    rng = np.random.default_rng(13)
    per_seed = _seed_data(rng, 4, same_cases=True)
    r = st.hierarchical_bootstrap_diff("auc", per_seed, n_boot=400, seed=0, cases=cases)
    assert r == st.hierarchical_bootstrap_diff("auc", per_seed, n_boot=400, seed=0, cases=cases)
    pooled = np.mean([roc_auc_score(y, a) - roc_auc_score(y, b) for y, a, b in per_seed])
    assert r.diff == pytest.approx(pooled, abs=1e-12)
    assert r.ci_low < pooled < r.ci_high
    slow = st.hierarchical_bootstrap_diff(
        lambda yy, ss: st.auc(yy, ss), per_seed, n_boot=60, seed=1, cases=cases
    )
    fast = st.hierarchical_bootstrap_diff("auc", per_seed, n_boot=60, seed=1, cases=cases)
    assert (fast.ci_low, fast.ci_high, fast.p_value) == pytest.approx(
        (slow.ci_low, slow.ci_high, slow.p_value), abs=1e-12
    )


def test_hierarchical_shared_reduces_to_paired_bootstrap_for_identical_seeds() -> None:
    rng = np.random.default_rng(21)
    y, a = binormal(rng, 50, 70, 1.0)
    b = a + rng.normal(0, 1, a.size)
    h = st.hierarchical_bootstrap_diff("auc", [(y, a, b)] * 3, n_boot=500, seed=4)
    g = np.random.default_rng(4)
    g.integers(0, 3, size=(500, 3))  # the seed draws hierarchical makes first
    p = st.paired_bootstrap("auc", y, a, b, n_boot=500, method="percentile", seed=g)
    assert (h.ci_low, h.ci_high, h.p_value) == pytest.approx(
        (p.ci_low, p.ci_high, p.p_value), abs=1e-12
    )


def test_hierarchical_case_mode_validation() -> None:
    rng = np.random.default_rng(3)
    per_seed = _seed_data(rng, 3, same_cases=False)
    with pytest.raises(ValueError, match="same y_true"):
        st.hierarchical_bootstrap_diff("auc", per_seed, n_boot=10, cases="shared")
    auto = st.hierarchical_bootstrap_diff("auc", per_seed, n_boot=50, seed=2)
    ind = st.hierarchical_bootstrap_diff("auc", per_seed, n_boot=50, seed=2, cases="independent")
    assert auto == ind


# --------------------------------------------------------------------------------------------
# Multiplicity
# --------------------------------------------------------------------------------------------
P_RAW = np.array([0.01, np.nan, 0.04, 0.03, 0.2, np.nan, 0.005])


def test_adjust_pvalues_hand_values() -> None:
    # Holm on the 5 non-NaN p: sorted 0.005*5, 0.01*4, 0.03*3, 0.04*2, 0.2*1 then running max
    holm = [0.04, np.nan, 0.09, 0.09, 0.2, np.nan, 0.025]
    # BH: p*m/rank = 0.025, 0.025, 0.05, 0.05, 0.2 then running min from the top
    bh = [0.025, np.nan, 0.05, 0.05, 0.2, np.nan, 0.025]
    np.testing.assert_allclose(st.adjust_pvalues(P_RAW, "holm"), holm, atol=1e-15)
    np.testing.assert_allclose(st.adjust_pvalues(P_RAW, "fdr_bh"), bh, atol=1e-15)


@pytest.mark.parametrize("method", ["holm", "fdr_bh"])
def test_adjust_pvalues_matches_statsmodels(method: str) -> None:
    rng = np.random.default_rng(0)
    p = rng.random(30) ** 3
    p[[3, 17]] = np.nan
    ok = ~np.isnan(p)
    expected = np.full(30, np.nan)
    expected[ok] = multipletests(p[ok], method=method)[1]
    np.testing.assert_array_equal(st.adjust_pvalues(p, method), expected)


def test_adjust_pvalues_errors_and_edge_cases() -> None:
    with pytest.raises(ValueError, match="holm, fdr_bh"):
        st.adjust_pvalues([0.1, 0.2], "bonferonni")
    assert np.isnan(st.adjust_pvalues([np.nan, np.nan])).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        st.adjust_pvalues([0.1, 1.2])


# --------------------------------------------------------------------------------------------
# Label efficiency
# --------------------------------------------------------------------------------------------
def test_label_efficiency_hand_cases() -> None:
    f = [0.01, 0.1, 1.0]
    assert st.label_efficiency_slope(f, [0.5, 0.6, 0.7]) == pytest.approx(0.1, abs=1e-12)
    assert st.area_under_label_curve(f, [0.5, 0.6, 0.7]) == pytest.approx(0.6, abs=1e-12)
    # x = -2, -1, 0; OLS slope = sum(xc * v) / sum(xc^2) = (-0.5 + 0.7) / 2 = 0.1
    assert st.label_efficiency_slope(f, [0.5, 0.7, 0.7]) == pytest.approx(0.1, abs=1e-12)
    # trapezoids: (0.5 + 0.7)/2 + (0.7 + 0.7)/2 = 1.3 over a range of 2 -> 0.65
    assert st.area_under_label_curve(f, [0.5, 0.7, 0.7]) == pytest.approx(0.65, abs=1e-12)
    # order of the points does not matter
    assert st.area_under_label_curve([1.0, 0.01, 0.1], [0.7, 0.5, 0.6]) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="> 0"):
        st.label_efficiency_slope([0.0, 1.0], [0.5, 0.6])
    with pytest.raises(ValueError, match="two distinct"):
        st.area_under_label_curve([0.1, 0.1], [0.5, 0.6])
