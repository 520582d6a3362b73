"""Representation statistics: hand-made spectra, invariances, and sklearn / direct-formula
references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from torch import nn

from medstudy.models import Backbone, create_backbone
from medstudy.repstats import (
    alignment,
    bootstrap_statistic,
    cka_matrix,
    condition_number,
    effective_rank,
    layer_features,
    linear_cka,
    paired_bootstrap_statistic,
    pca_spectrum,
    stage_names,
    uniformity,
)


# --------------------------------------------------------------------------- references ----
def hsic_biased(k: np.ndarray, l_: np.ndarray) -> float:
    """Gretton et al. (2005): tr(K H L H) / (n - 1)^2."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l_ @ h)) / (n - 1) ** 2


def hsic_unbiased(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. (2012), eq. 5, written out with zero-diagonal Gram matrices."""
    n = k.shape[0]
    kt = k - np.diag(np.diag(k))
    lt = l_ - np.diag(np.diag(l_))
    one = np.ones(n)
    term = (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    )
    return float(term) / (n * (n - 3))


def cka_reference(x: np.ndarray, y: np.ndarray, hsic) -> float:
    k, l_ = x @ x.T, y @ y.T
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


# ------------------------------------------------------------------------------------ CKA ----
def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    q = ortho_group.rvs(6, random_state=1)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.7 * x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q, debiased=True) == pytest.approx(1.0, abs=1e-12)
    y = rng.normal(size=(50, 4))
    assert linear_cka(x, 0.01 * y) == pytest.approx(linear_cka(x, y), rel=1e-12)
    # An added constant (translation) changes nothing: features are centred.
    assert linear_cka(x + 5.0, y) == pytest.approx(linear_cka(x, y), rel=1e-12)


def test_cka_symmetric_and_matches_direct_hsic_formulas() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 7))
    y = x[:, :3] @ rng.normal(size=(3, 5)) + 0.5 * rng.normal(size=(20, 5))
    for debiased, hsic in ((False, hsic_biased), (True, hsic_unbiased)):
        value = linear_cka(x, y, debiased=debiased)
        assert value == pytest.approx(linear_cka(y, x, debiased=debiased), rel=1e-12)
        assert value == pytest.approx(cka_reference(x, y, hsic), rel=1e-10)
    # Uncentred inputs: the unbiased estimator is translation invariant, the reference too.
    assert linear_cka(x + 2.0, y - 1.0, debiased=True) == pytest.approx(
        cka_reference(x + 2.0, y - 1.0, hsic_unbiased), rel=1e-10
    )


def test_cka_of_independent_features_biased_vs_debiased() -> None:
    rng = np.random.default_rng(2)
    biased, debiased = [], []
    for _ in range(20):
        x = rng.normal(size=(20, 200))
        y = rng.normal(size=(20, 200))
        biased.append(linear_cka(x, y))
        debiased.append(linear_cka(x, y, debiased=True))
    # With N << D the biased estimator is far from 0 (0.91 on average here); the debiased one
    # is unbiased for 0 (single values scatter with SD ~0.08 at N = 20).
    assert np.mean(biased) > 0.85
    assert abs(np.mean(debiased)) < 0.05
    assert np.std(debiased) < 0.15


def test_cka_matrix_layer_by_layer() -> None:
    rng = np.random.default_rng(3)
    feats = [rng.normal(size=(30, d)) for d in (4, 6, 8)]
    m = cka_matrix(feats, feats)
    assert m.shape == (3, 3)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
    np.testing.assert_allclose(m, m.T, rtol=1e-12)
    assert m[0, 2] == pytest.approx(linear_cka(feats[0], feats[2]))
    as_dict = cka_matrix({"a": feats[0]}, {"b": feats[1], "c": feats[2]}, debiased=True)
    assert as_dict.shape == (1, 2)
    assert as_dict[0, 1] == pytest.approx(linear_cka(feats[0], feats[2], debiased=True))


def test_cka_rejects_mismatched_samples_and_constant_features() -> None:
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(np.ones((5, 2)), np.ones((6, 2)))
    with pytest.raises(ValueError, match="constant"):
        linear_cka(np.ones((5, 2)), np.arange(10.0).reshape(5, 2))
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(np.eye(3), np.eye(3), debiased=True)


# ---------------------------------------------------------------------- effective rank ----
def test_effective_rank_of_orthogonal_matrix_is_exactly_d() -> None:
    q = ortho_group.rvs(7, random_state=0)
    assert effective_rank(q, center=False) == pytest.approx(7.0, abs=1e-12)
    assert effective_rank(np.ones(7), kind="singular_values") == pytest.approx(7.0, abs=1e-12)


def test_effective_rank_of_isotropic_sample_is_close_to_d() -> None:
    x = np.random.default_rng(0).normal(size=(20000, 5))
    assert effective_rank(x) == pytest.approx(5.0, abs=0.01)


def test_effective_rank_of_rank_one_matrix_is_one() -> None:
    rng = np.random.default_rng(1)
    x = np.outer(rng.normal(size=30), rng.normal(size=8))
    assert effective_rank(x) == 1.0
    assert effective_rank(x, center=False) == 1.0


def test_effective_rank_hand_computed_and_eigenvalue_input() -> None:
    s = np.array([3.0, 1.0, 0.0])
    p = np.array([0.75, 0.25])
    expected = np.exp(-(p * np.log(p)).sum())
    assert effective_rank(s, kind="singular_values") == pytest.approx(expected, rel=1e-12)
    # Eigenvalues lambda = s^2 / (N - 1): the same effective rank as the singular values.
    assert effective_rank(s**2 / 9.0, kind="eigenvalues") == pytest.approx(expected, rel=1e-12)
    x = np.random.default_rng(2).normal(size=(40, 6)) * np.array([5, 3, 2, 1, 1, 0.5])
    assert effective_rank(pca_spectrum(x, standardise=False), kind="eigenvalues") == pytest.approx(
        effective_rank(x), rel=1e-10
    )
    with pytest.raises(ValueError, match="unknown kind"):
        effective_rank(s, kind="nope")  # type: ignore[arg-type]


# ------------------------------------------------------------- PCA and condition number ----
@pytest.mark.parametrize("shape", [(60, 12), (10, 25)])
def test_pca_spectrum_equals_sklearn_explained_variance(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) * rng.uniform(0.1, 10, size=shape[1]) + 3.0
    np.testing.assert_allclose(
        pca_spectrum(x, standardise=False), PCA().fit(x).explained_variance_, rtol=1e-9
    )
    z = StandardScaler().fit_transform(x)
    np.testing.assert_allclose(
        pca_spectrum(x, n_components=5),
        PCA(n_components=5, svd_solver="full").fit(z).explained_variance_,
        rtol=1e-9,
    )
    spec = pca_spectrum(x)
    assert np.all(np.diff(spec) <= 1e-12)  # descending


def grouped_features(n: int, group_sizes: list[int], seed: int = 0) -> np.ndarray:
    """Columns in groups of exact copies of mutually orthogonal centred vectors.

    After standardisation each group of ``g`` copies is a block of ones in the correlation
    matrix, and groups are uncorrelated, so the PCA eigenvalues are exactly
    ``g * n / (n - 1)`` per group (StandardScaler uses ddof=0, the covariance ddof=1) and 0
    for the remaining ``g - 1`` directions of each group.
    """
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, len(group_sizes)))
    base -= base.mean(axis=0)
    q, _ = np.linalg.qr(base)  # orthonormal columns, still centred (span of centred vectors)
    return np.column_stack([q[:, j] for j, g in enumerate(group_sizes) for _ in range(g)])


def test_condition_number_on_a_constructed_spectrum() -> None:
    n = 50
    x = grouped_features(n, [4, 3, 2, 1])  # 10 features
    ev = pca_spectrum(x)
    np.testing.assert_allclose(ev[:4], np.array([4.0, 3.0, 2.0, 1.0]) * n / (n - 1), rtol=1e-10)
    np.testing.assert_allclose(ev[4:], 0.0, atol=1e-10)
    # By hand, np.percentile (linear) on the ascending [0]*6 + [1, 2, 3, 4] (times n/(n-1)):
    # 99.9th at position 0.999 * 9 = 8.991 -> 3 + 0.991 = 3.991; 90th at 8.1 -> 3.1.
    assert condition_number(x) == pytest.approx(3.991 / 3.1, rel=1e-9)
    assert condition_number(x) == pytest.approx(
        np.percentile(ev, 99.9) / np.percentile(ev, 90), rel=1e-12
    )


def test_condition_number_keeps_100_components() -> None:
    # 130 features: one group of 26 copies and 104 singletons -> eigenvalues 26, 1 (x104) and
    # 25 zeros. The first 100 components are [26] + [1]*99: ascending, 99.9th at position
    # 98.901 -> 1 + 0.901 * 25 = 23.525 and 90th -> 1. With all 130 it would be 22.775.
    x = grouped_features(200, [26] + [1] * 104)
    assert x.shape == (200, 130)
    assert condition_number(x) == pytest.approx(23.525, rel=1e-9)
    assert condition_number(x, n_components=130) == pytest.approx(22.775, rel=1e-9)
    ev = PCA(n_components=100, svd_solver="full").fit(StandardScaler().fit_transform(x))
    expected = np.percentile(ev.explained_variance_, 99.9) / np.percentile(
        ev.explained_variance_, 90
    )
    assert condition_number(x) == pytest.approx(expected, rel=1e-9)


def test_condition_number_uses_min_n_d_components() -> None:
    x = np.random.default_rng(2).normal(size=(30, 12))
    ev = PCA(n_components=12).fit(StandardScaler().fit_transform(x)).explained_variance_
    expected = np.percentile(ev, 99.9) / np.percentile(ev, 90)
    assert condition_number(x) == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------- alignment and uniformity ----
def test_alignment_hand_made() -> None:
    z1 = np.array([[1.0, 0.0], [0.0, 2.0]])
    z2 = np.array([[0.0, 1.0], [0.0, 5.0]])  # pair 0 orthogonal (dist sqrt 2), pair 1 equal
    assert alignment(z1, z2) == pytest.approx((2.0 + 0.0) / 2)
    assert alignment(z1, z2, alpha=1) == pytest.approx(np.sqrt(2) / 2)
    assert alignment(z1, -z1) == pytest.approx(4.0)  # antipodal: |2|^2


def test_uniformity_hand_made() -> None:
    # Two antipodal points: one pair, squared distance 4 -> log exp(-2 * 4) = -8.
    assert uniformity(np.array([[1.0, 0.0], [-3.0, 0.0]])) == pytest.approx(-8.0)
    # Square on the circle: 4 pairs at squared distance 2, 2 pairs at 4.
    z = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    expected = np.log((4 * np.exp(-2 * 2.0) + 2 * np.exp(-2 * 4.0)) / 6)
    assert uniformity(z) == pytest.approx(expected)
    # Identical points: no spread, the maximum 0.
    assert uniformity(np.ones((3, 2))) == pytest.approx(0.0)
    assert uniformity(z, t=1) == pytest.approx(np.log((4 * np.exp(-2.0) + 2 * np.exp(-4.0)) / 6))


# ------------------------------------------------------------------------- bootstraps ----
def test_bootstrap_statistic_seeded_percentile_ci() -> None:
    x = np.random.default_rng(0).normal(size=(40, 3))

    def fn(a: np.ndarray) -> float:
        return float(a[:, 0].mean())

    res = bootstrap_statistic(fn, x, n_boot=200, seed=5)
    assert res.estimate == pytest.approx(x[:, 0].mean())
    assert res.ci_low < res.estimate < res.ci_high
    assert res.method == "percentile" and res.n_boot == 200
    # The same draws by hand: one integers(0, n, n) call per replicate.
    rng = np.random.default_rng(5)
    boot = [x[rng.integers(0, 40, 40), 0].mean() for _ in range(200)]
    assert (res.ci_low, res.ci_high) == pytest.approx(tuple(np.percentile(boot, [2.5, 97.5])))
    assert bootstrap_statistic(fn, x, n_boot=200, seed=5) == res
    assert bootstrap_statistic(fn, x, n_boot=200, seed=6) != res


def test_paired_bootstrap_uses_the_same_rows_for_both() -> None:
    x = np.random.default_rng(1).normal(size=(25, 4))
    seen: list[bool] = []

    def same_rows(a: np.ndarray, b: np.ndarray) -> float:
        seen.append(bool(np.allclose(a, b - 10.0, rtol=0, atol=1e-12)))
        return linear_cka(a, b)

    res = paired_bootstrap_statistic(same_rows, x, x + 10.0, n_boot=50, seed=0)
    assert all(seen) and len(seen) == 51
    assert res.estimate == pytest.approx(1.0) and res.ci_low == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same samples"):
        paired_bootstrap_statistic(same_rows, x, x[:-1], n_boot=5)


# --------------------------------------------------------------------- layer features ----
class TinyBackbone(Backbone):
    def __init__(self) -> None:
        super().__init__()
        self.name = "tiny"
        self.feature_dim = 6
        self.stages = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
                nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()),
            ]
        )


def test_layer_features_one_array_per_stage_deterministic() -> None:
    torch.manual_seed(0)
    bb = TinyBackbone()
    bb.train()
    x = torch.randn(10, 3, 12, 12)
    feats = layer_features(bb, x, batch_size=4)
    assert list(feats) == ["stage0", "stage1"] == stage_names(bb)
    assert [f.shape for f in feats.values()] == [(10, 4), (10, 6)]
    again = layer_features(bb, x, batch_size=3)
    for k in feats:
        np.testing.assert_allclose(feats[k], again[k], rtol=1e-6, atol=1e-7)
        assert np.array_equal(feats[k], layer_features(bb, x, batch_size=4)[k])
    assert bb.training  # mode restored
    bb.eval()
    with torch.no_grad():
        np.testing.assert_allclose(feats["stage1"], bb(x).numpy(), rtol=1e-6, atol=1e-7)
    only = layer_features(bb, x, layers=[-1])
    assert list(only) == ["stage1"]
    with pytest.raises(ValueError, match="unknown layer"):
        layer_features(bb, x, layers=["stage9"])


def test_layer_features_resnet20_uint8_input() -> None:
    bb = create_backbone("resnet20_cifar", seed=0)
    u8 = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    feats = layer_features(bb, u8)
    assert [f.shape for f in feats.values()] == [(5, 16), (5, 16), (5, 32), (5, 64)]
    assert all(np.isfinite(f).all() for f in feats.values())
