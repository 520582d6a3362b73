"""Tests for medstudy.stats.seed_case_test and minimum_detectable_effect: an independent O(n^2)
DeLong route, scipy's one-sample t-test, p/CI consistency, and a seeded calibration simulation
with a known true difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score

from medstudy import stats as st

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


GAMMA = 0.7  # arm-specific case effect shared by the seeds (case noise common to seeds)
SIGMA = 0.5  # case noise of one trained model (specific to a seed)
SCALE = math.sqrt(2 * (1 + GAMMA**2 + SIGMA**2))  # SD of (positive - negative) score, tau = 0


def slow_placements(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """DeLong et al. (1988) from the definition: psi(x, w) = 1{x > w} + 1/2 1{x = w} over every
    (positive x, negative w) pair; V10 = row means, V01 = column means, AUC = the grand mean."""
    x, w = s[y == 1], s[y == 0]
    psi = np.array([[1.0 if xi > wj else 0.5 if xi == wj else 0.0 for wj in w] for xi in x])
    return float(psi.mean()), psi.mean(axis=1), psi.mean(axis=0)


def seed_case_by_hand(
    y: np.ndarray, per_seed: list[tuple[np.ndarray, np.ndarray]], alpha: float
) -> dict[str, float]:
    """The seed x case t test recomputed step by step from DeLong's covariance matrix S of all
    2S AUCs and the contrast L = (1, -1, 1, -1, ...) / S."""
    n_seeds = len(per_seed)
    comps = [slow_placements(y, s) for pair in per_seed for s in pair]  # A_1, B_1, A_2, ...
    aucs = np.array([c[0] for c in comps])
    v10 = np.array([c[1] for c in comps])
    v01 = np.array([c[2] for c in comps])
    m, n = v10.shape[1], v01.shape[1]
    s10, s01 = np.cov(v10), np.cov(v01)  # (2S, 2S), ddof = 1
    contrast = np.tile([1.0, -1.0], n_seeds) / n_seeds
    c10 = contrast @ s10 @ contrast / m
    c01 = contrast @ s01 @ contrast / n
    d = aucs[0::2] - aucs[1::2]
    diff = d.mean()
    var_seed = np.var(d, ddof=1) / n_seeds
    var_case = c10 + c01
    df_case = var_case**2 / (c10**2 / (m - 1) + c01**2 / (n - 1))
    var = var_seed + var_case
    df = var**2 / (var_seed**2 / (n_seeds - 1) + var_case**2 / df_case)
    se = math.sqrt(var)
    tq = sps.t.ppf(1 - alpha / 2, df)
    return {
        "estimate_a": aucs[0::2].mean(),
        "estimate_b": aucs[1::2].mean(),
        "diff": diff,
        "var_seed": var_seed,
        "var_case": var_case,
        "df": df,
        "se": se,
        "p_value": 2 * sps.t.sf(abs(diff / se), df),
        "ci_low": diff - tq * se,
        "ci_high": diff + tq * se,
        "mde": (tq + sps.t.ppf(0.8, df)) * se,
        "p_greater": sps.t.sf(diff / se, df),
        "p_less": sps.t.cdf(diff / se, df),
        "lo_greater": diff - sps.t.ppf(1 - alpha, df) * se,
    }


def hand_example() -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """S = 3 seeds, 60 cases (26 positives); one-decimal scores -> many ties."""
    rng = np.random.default_rng(42)
    y = np.r_[np.zeros(34, dtype=int), np.ones(26, dtype=int)]
    rng.shuffle(y)
    latent = rng.normal(size=60) + 0.9 * y
    per_seed = [
        (
            np.round(latent + rng.normal(0, 0.5, 60) + 0.2 * k * y, 1),
            np.round(latent + rng.normal(0, 0.9, 60), 1),
        )
        for k in range(3)
    ]
    return y, per_seed


def simulate(
    rng: np.random.Generator,
    reps: int,
    n_seeds: int,
    n_per_class: int,
    mu: tuple[float, float],
    tau: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (reps, S, 2, N) for arms A, B: (mu_k + u_ks) y + z + GAMMA w_k + SIGMA eps_ks.

    z: case difficulty shared by both arms; w_k: arm k's case effect, shared by its seeds;
    eps_ks: case noise of one trained model; u_ks ~ N(0, tau^2): the seed's shift of the arm's
    separation (training variance). The population AUC of (k, s) is Phi((mu_k + u_ks) / a) with
    a = SCALE; averaged over seeds it is Phi(mu_k / sqrt(a^2 + tau^2)).
    """
    y = np.r_[np.zeros(n_per_class, dtype=int), np.ones(n_per_class, dtype=int)]
    size = (reps, n_seeds, 2, y.size)
    shift = np.asarray(mu)[None, None, :, None] + rng.normal(0, tau, (reps, n_seeds, 2, 1))
    scores = (
        shift * y
        + rng.normal(size=(reps, 1, 1, y.size))
        + GAMMA * rng.normal(size=(reps, 1, 2, y.size))
        + SIGMA * rng.normal(size=size)
    )
    return y, scores


def true_auc(mu: float, tau: float) -> float:
    return float(sps.norm.cdf(mu / math.sqrt(SCALE**2 + tau**2)))


# --------------------------------------------------------------------------------------------
# Independent route
# --------------------------------------------------------------------------------------------
def test_seed_case_matches_independent_slow_delong_route() -> None:
    y, per_seed = hand_example()
    alpha = 0.05
    ref = seed_case_by_hand(y, per_seed, alpha)
    r = st.seed_case_test("auc", [(y, a, b) for a, b in per_seed], alpha=alpha)
    for key in ("estimate_a", "estimate_b", "diff", "var_seed", "var_case", "df", "se"):
        assert getattr(r, key) == pytest.approx(ref[key], rel=1e-10, abs=1e-12), key
    for key in ("p_value", "ci_low", "ci_high", "mde"):
        assert getattr(r, key) == pytest.approx(ref[key], rel=0, abs=1e-10), key
    assert (r.n_seeds, r.n_cases, r.alpha, r.alternative, r.n_boot_dropped) == (
        3,
        60,
        0.05,
        "two-sided",
        0,
    )
    assert "DeLong" in r.test
    # the per-seed AUCs are sklearn's
    sk = np.mean([roc_auc_score(y, a) - roc_auc_score(y, b) for a, b in per_seed])
    assert r.diff == pytest.approx(sk, abs=1e-12)
    # the example is informative: both variance sources matter, df well below df_case
    assert r.var_seed > 0.1 * r.var_case and r.var_case > 0.1 * r.var_seed
    assert 2 < r.df < 50

    g = st.seed_case_test("auc", [(y, a, b) for a, b in per_seed], alternative="greater")
    assert g.p_value == pytest.approx(ref["p_greater"], abs=1e-10)
    assert (g.ci_low, g.ci_high) == (pytest.approx(ref["lo_greater"], abs=1e-10), math.inf)
    ls = st.seed_case_test("auc", [(y, a, b) for a, b in per_seed], alternative="less")
    assert ls.p_value == pytest.approx(ref["p_less"], abs=1e-10)
    assert ls.ci_low == -math.inf


def test_no_case_variance_reduces_to_one_sample_t_test() -> None:
    # A constant score vector is unchanged by any case resample, so max(scores) has no case
    # variance: only the seed-to-seed differences 0.01, 0.02, 0.03 remain.
    y = np.r_[np.zeros(10, dtype=int), np.ones(10, dtype=int)]
    per_seed = [(y, np.full(20, 0.5 + 0.01 * k), np.full(20, 0.5)) for k in (1, 2, 3)]

    def top_score(yy: np.ndarray, ss: np.ndarray) -> float:
        return float(np.max(ss))

    r = st.seed_case_test(top_score, per_seed, n_boot=200, seed=0)
    d = np.array([0.51, 0.52, 0.53]) - 0.5
    ref = sps.ttest_1samp(d, 0.0)
    ci = ref.confidence_interval(0.95)
    assert r.var_case == 0.0 and r.df == 2.0
    assert r.p_value == pytest.approx(ref.pvalue, abs=1e-12)
    assert r.p_value == pytest.approx(0.0742, abs=1e-4)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert r.var_seed == pytest.approx(np.var(d, ddof=1) / 3, rel=1e-12)
    g = st.seed_case_test(top_score, per_seed, n_boot=200, alternative="greater")
    assert g.p_value == pytest.approx(sps.ttest_1samp(d, 0.0, alternative="greater").pvalue)


def test_identical_seeds_reduce_to_paired_delong_with_t_df() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 150)
    latent = rng.normal(size=150) + y
    a, b = latent + rng.normal(0, 0.7, 150), latent + rng.normal(0, 1.0, 150)
    r = st.seed_case_test("auc", [(y, a, b)] * 3)
    dl = st.delong_test(y, a, b)
    assert r.var_seed == 0.0
    assert r.diff == pytest.approx(dl.diff, abs=1e-14)
    assert r.se == pytest.approx(dl.diff / dl.z, rel=1e-10)
    # V_seed = 0 -> df = df_case, the Welch df over the two classes' DeLong terms
    _, v10a, v01a = slow_placements(y, a)
    _, v10b, v01b = slow_placements(y, b)
    m, n = v10a.size, v01a.size
    c10, c01 = np.var(v10a - v10b, ddof=1) / m, np.var(v01a - v01b, ddof=1) / n
    df_case = (c10 + c01) ** 2 / (c10**2 / (m - 1) + c01**2 / (n - 1))
    assert r.df == pytest.approx(df_case, rel=1e-10)
    assert r.p_value == pytest.approx(2 * sps.t.sf(abs(dl.z), df_case), abs=1e-12)


def test_zero_variance_edge_cases() -> None:
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(20, dtype=int), np.ones(20, dtype=int)]
    a = rng.normal(size=40) + y
    same = st.seed_case_test("auc", [(y, a, a.copy())] * 3)
    assert (same.diff, same.se, same.p_value, same.ci_low, same.ci_high, same.mde) == (
        0.0,
        0.0,
        1.0,
        0.0,
        0.0,
        0.0,
    )
    assert st.seed_case_test("auc", [(y, a, a)] * 2, alternative="greater").p_value == 1.0

    def top_score(yy: np.ndarray, ss: np.ndarray) -> float:
        return float(np.max(ss))

    shifted = [(y, np.full(40, 0.6), np.full(40, 0.5))] * 3  # every d_s = 0.1 exactly
    r = st.seed_case_test(top_score, shifted, n_boot=50)
    assert (r.se, r.p_value) == (0.0, 0.0)
    assert r.ci_low == r.ci_high == pytest.approx(0.1)
    assert st.seed_case_test(top_score, shifted, n_boot=50, alternative="less").p_value == 1.0
    assert st.seed_case_test(top_score, shifted, n_boot=50, alternative="greater").p_value == 0.0


# --------------------------------------------------------------------------------------------
# p and CI from one inversion
# --------------------------------------------------------------------------------------------
def test_p_and_ci_agree_on_random_inputs() -> None:
    rng = np.random.default_rng(3)
    n_checked = 0
    for i in range(300):
        n_seeds = int(rng.integers(2, 6))
        n = int(rng.integers(20, 120))
        y = np.r_[np.zeros(n // 2, dtype=int), np.ones(n - n // 2, dtype=int)]
        latent = rng.normal(size=n) + y
        effect = rng.choice([0.0, 0.3, 0.8])
        spread = rng.choice([0.0, 0.3, 1.0])
        per_seed = [
            (
                y,
                np.round(latent + rng.normal(0, 0.7, n) + (effect + spread * rng.normal()) * y, 1),
                np.round(latent + rng.normal(0, 0.7, n), 1),
            )
            for _ in range(n_seeds)
        ]
        alpha = float(rng.choice([0.01, 0.05, 0.1]))
        r = st.seed_case_test("auc", per_seed, alpha=alpha)
        assert 0.0 <= r.p_value <= 1.0 and r.ci_low <= r.diff <= r.ci_high
        assert (r.ci_low > 0 or r.ci_high < 0) == (r.p_value < alpha), i
        g = st.seed_case_test("auc", per_seed, alpha=alpha, alternative="greater")
        assert (g.ci_low > 0) == (g.p_value < alpha) and g.ci_high == math.inf
        ls = st.seed_case_test("auc", per_seed, alpha=alpha, alternative="less")
        assert (ls.ci_high < 0) == (ls.p_value < alpha) and ls.ci_low == -math.inf
        # swapping the arms mirrors everything
        sw = st.seed_case_test("auc", [(yy, b, a) for yy, a, b in per_seed], alpha=alpha)
        assert sw.diff == pytest.approx(-r.diff, abs=1e-14)
        assert sw.p_value == pytest.approx(r.p_value, abs=1e-12)
        assert (sw.ci_low, sw.ci_high) == pytest.approx((-r.ci_high, -r.ci_low), abs=1e-12)
        n_checked += r.p_value < alpha
    assert 30 < n_checked < 270  # both outcomes were exercised


# --------------------------------------------------------------------------------------------
# Case bootstrap path (callable metrics)
# --------------------------------------------------------------------------------------------
def rank_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC without input checks (a cheap callable for the bootstrap path)."""
    ranks = sps.rankdata(s)
    m = int(y.sum())
    n = y.size - m
    return float((ranks[y == 1].sum() - m * (m + 1) / 2) / (m * n))


def test_bootstrap_path_agrees_with_delong_path() -> None:
    y, per_seed = hand_example()
    data = [(y, a, b) for a, b in per_seed]
    fast = st.seed_case_test("auc", data)
    boot = st.seed_case_test(rank_auc, data, n_boot=2000, seed=0)
    small = st.seed_case_test(rank_auc, data, n_boot=50, seed=1)
    assert small == st.seed_case_test(rank_auc, data, n_boot=50, seed=1)
    assert small != st.seed_case_test(rank_auc, data, n_boot=50, seed=2)
    assert "bootstrap" in boot.test
    assert (boot.diff, boot.var_seed) == (pytest.approx(fast.diff), pytest.approx(fast.var_seed))
    # same quantity, two estimators (DeLong ~ jackknife vs bootstrap) plus Monte Carlo error
    assert boot.var_case == pytest.approx(fast.var_case, rel=0.15)
    assert boot.p_value == pytest.approx(fast.p_value, abs=0.03)


def test_bootstrap_resamples_cases_once_per_replicate_for_all_seeds() -> None:
    # Scores encode the case id (+ 1000 per seed and arm): within one replicate every call
    # must see the same multiset of cases, with the class counts kept (stratified).
    y = np.r_[np.zeros(7, dtype=int), np.ones(5, dtype=int)]
    ids = np.arange(12, dtype=float)
    per_seed = [(y, ids + 1000 * (2 * k), ids + 1000 * (2 * k + 1)) for k in range(3)]
    seen: list[tuple[float, ...]] = []

    def record(yy: np.ndarray, ss: np.ndarray) -> float:
        assert np.bincount(yy, minlength=2).tolist() == [7, 5]
        seen.append(tuple(np.sort(ss % 1000)))
        return float(ss.mean() % 1000)

    st.seed_case_test(record, per_seed, n_boot=40, seed=1)
    calls = seen[6:]  # 6 full-data calls, then 6 per replicate
    assert len(calls) == 40 * 6
    for r in range(40):
        assert len(set(calls[6 * r : 6 * r + 6])) == 1
    assert len({calls[6 * r] for r in range(40)}) > 30  # replicates do differ


def test_bootstrap_nan_replicates_dropped_or_rejected() -> None:
    # Case 0 has the unique score 99 in every seed and arm; the metric is NaN on resamples that
    # draw it >= 4 times (~2 %) or that miss it (~37 %).
    rng = np.random.default_rng(5)
    y = np.r_[np.zeros(30, dtype=int), np.ones(30, dtype=int)]

    def scores() -> np.ndarray:
        s = rng.normal(size=60) + y
        s[0] = 99.0
        return s

    per_seed = [(y, scores(), scores()) for _ in range(3)]

    def often_4(yy: np.ndarray, ss: np.ndarray) -> float:
        return math.nan if np.sum(ss == 99.0) >= 4 else float(np.mean(ss[yy == 1]))

    r = st.seed_case_test(often_4, per_seed, n_boot=1000, seed=0)
    assert 5 <= r.n_boot_dropped <= 60 and math.isfinite(r.p_value) and r.var_case > 0

    def needs_case_0(yy: np.ndarray, ss: np.ndarray) -> float:
        return float(np.mean(ss[yy == 1])) if np.any(ss == 99.0) else math.nan

    with pytest.raises(ValueError, match="NaN on"):
        st.seed_case_test(needs_case_0, per_seed, n_boot=300, seed=0)


def test_boot_p_drops_nan_replicates() -> None:
    boot = np.array([0.05, 0.2, -0.1, 0.12, 0.3])
    with_nan = np.r_[boot, np.full(20, np.nan)]
    for alt in ("two-sided", "greater", "less"):
        assert st._boot_p(0.1, with_nan, alt) == st._boot_p(0.1, boot, alt)
    assert math.isnan(st._boot_p(0.1, np.full(5, np.nan), "two-sided"))
    # two-sided: |centred| >= 0.1 for 0.2 (0.1), -0.1 (0.2), 0.3 (0.2) -> (1 + 3) / (1 + 5)
    assert st._boot_p(0.1, with_nan, "two-sided") == pytest.approx(4 / 6)


# --------------------------------------------------------------------------------------------
# Errors and minimum detectable effect
# --------------------------------------------------------------------------------------------
def test_input_errors() -> None:
    y, per_seed = hand_example()
    a, b = per_seed[0]
    with pytest.raises(ValueError, match="S=1"):
        st.seed_case_test("auc", [(y, a, b)])
    with pytest.raises(ValueError, match="S=0"):
        st.seed_case_test("auc", [])
    with pytest.raises(ValueError, match="seed 1 has 59"):
        st.seed_case_test("auc", [(y, a, b), (y[1:], a[1:], b[1:])])
    y2 = y.copy()
    y2[[np.argmax(y == 0), np.argmax(y == 1)]] = [1, 0]  # same class counts, other cases
    with pytest.raises(ValueError, match="y_true of seed 2 differs"):
        st.seed_case_test("auc", [(y, a, b), (y, b, a), (y2, a, b)])
    with pytest.raises(ValueError, match="y_true of seed 1 differs"):
        st.seed_case_test(lambda yy, ss: st.auc(yy, ss), [(y, a, b), (y2, a, b)], n_boot=10)
    with pytest.raises(ValueError, match="alternative"):
        st.seed_case_test("auc", [(y, a, b)] * 2, alternative="bigger")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown metric"):
        st.seed_case_test("f1", [(y, a, b)] * 2)  # type: ignore[arg-type]


def test_minimum_detectable_effect_by_hand() -> None:
    se, df = 0.021, 7.3
    two = (sps.t.ppf(0.975, df) + sps.t.ppf(0.8, df)) * se
    one = (sps.t.ppf(0.95, df) + sps.t.ppf(0.8, df)) * se
    assert st.minimum_detectable_effect(se, df) == pytest.approx(two, rel=1e-12)
    assert st.minimum_detectable_effect(se, df, alternative="less") == pytest.approx(one, rel=1e-12)
    p90 = (sps.t.ppf(0.995, df) + sps.t.ppf(0.9, df)) * se
    assert st.minimum_detectable_effect(se, df, alpha=0.01, power=0.9) == pytest.approx(p90)
    # single-seed DeLong row: normal quantiles, 2.8016 se
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    assert st.minimum_detectable_effect(se, math.inf) == pytest.approx(z * se, rel=1e-12)
    assert st.minimum_detectable_effect(0.0, 3.0) == 0.0
    assert math.isnan(st.minimum_detectable_effect(math.nan, 3.0))
    for bad in ({"se": -1.0, "df": 3.0}, {"se": 0.1, "df": 0.0}, {"se": 0.1, "df": math.nan}):
        with pytest.raises(ValueError):
            st.minimum_detectable_effect(**bad)
    with pytest.raises(ValueError, match="power"):
        st.minimum_detectable_effect(0.1, 3.0, power=1.0)


# --------------------------------------------------------------------------------------------
# Calibration by simulation
# --------------------------------------------------------------------------------------------
N_PER_CLASS = 40
MU = 1.0


def _case_se(rng: np.random.Generator) -> float:
    """SE of one seed's paired AUC difference from test-case sampling (null, tau = 0): the root
    mean DeLong variance over simulated test sets."""
    y, scores = simulate(rng, 200, 1, N_PER_CLASS, (MU, MU), 0.0)
    z = sps.norm.ppf(0.975)
    var = [((r.ci_high - r.diff) / z) ** 2 for r in (st.delong_test(y, *s[0]) for s in scores)]
    return math.sqrt(float(np.mean(var)))


def _tau_for(ratio: float, case_se: float) -> float:
    """tau giving a seed SD of the true per-seed AUC difference of ``ratio * case_se``
    (linearised: SD ~ sqrt(2) phi(mu / a) tau / a)."""
    return ratio * case_se * SCALE / (math.sqrt(2) * sps.norm.pdf(MU / SCALE))


def _mu_for(delta: float, tau: float) -> float:
    """Separation of arm A whose seed-averaged true AUC exceeds arm B's (MU) by ``delta``."""
    return brentq(lambda m: true_auc(m, tau) - true_auc(MU, tau) - delta, MU, MU + 5.0)


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_calibration_false_positives_coverage_power(n_seeds: int) -> None:
    rng = np.random.default_rng(100 + n_seeds)
    case_se = _case_se(rng)
    reps = 400
    for ratio in (0.0, 1.0, 3.0):
        tau = _tau_for(ratio, case_se)
        y, null = simulate(rng, reps, n_seeds, N_PER_CLASS, (MU, MU), tau)
        p = np.array([st.seed_case_test("auc", [(y, *s) for s in sim]).p_value for sim in null])
        fpr = float(np.mean(p < 0.05))
        assert fpr <= 0.08, (n_seeds, ratio, fpr)

        # a real difference of 3 case SEs on the AUC scale, with its true value known
        delta = 3.0 * case_se
        mu_a = _mu_for(delta, tau)
        y, alt = simulate(rng, reps, n_seeds, N_PER_CLASS, (mu_a, MU), tau)
        res = [st.seed_case_test("auc", [(y, *s) for s in sim]) for sim in alt]
        coverage = np.mean([r.ci_low <= delta <= r.ci_high for r in res])
        power = np.mean([r.p_value < 0.05 for r in res])
        assert coverage >= 0.92, (n_seeds, ratio, coverage)
        if ratio <= 1.0:
            assert power >= 0.5, (n_seeds, ratio, power)
