"""The distortion suite: contract of every distortion, severity growth, references, statistics."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageEnhance
from scipy import ndimage
from skimage import color as skcolor
from skimage.color import rgb_from_hed

from medstudy import distortions as dist
from medstudy.corruption import chance_level, chance_normalised_drop, mean_corruption_error
from medstudy.data.info import INFO
from medstudy.distortions import (
    CLEAN,
    DISTORTIONS,
    MODALITY_DISTORTIONS,
    RGB_ONLY,
    STOCHASTIC,
    apply_distortion,
    distortions_for,
    modality_of,
)

REQUIRED = {
    "gaussian_noise",
    "speckle_noise",
    "impulse_noise",
    "shot_noise",
    "gaussian_blur",
    "defocus_blur",
    "motion_blur",
    "brightness_up",
    "brightness_down",
    "contrast_up",
    "contrast_down",
    "gamma",
    "jpeg",
    "pixelate",
    "stain_shift",
}

#: Severity steps (s, s + 1) where the mean absolute distance from the clean image may shrink.
#: pixelate 1 → 2: BOX-resizing 28 → 26 → 28 px vs 28 → 25 → 28 px. At ratios this close to 1
#: the distance is set by which rows and columns are dropped and duplicated (a phase effect of
#: the resampling grid), not by the resolution lost; from severity 2 on it grows. CIFAR-10-C's
#: table, whose pixelation this is, behaves the same.
NON_MONOTONE_STEPS: dict[str, set[tuple[int, int]]] = {"pixelate": {(1, 2)}}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_batch(channels: int, n: int = 6, size: int = 28, seed: int = 1) -> torch.Tensor:
    """8-bit-valued random images in [0, 1], like the study's data after ``to_float``."""
    u8 = torch.randint(0, 256, (n, channels, size, size), generator=_gen(seed))
    return u8.float() / 255


def reference_image(channels: int, n: int = 8) -> torch.Tensor:
    """A fixed, smooth, real-looking 28 px image: a luminance gradient plus a bright disc, kept
    away from 0 and 1 so clipping does not dominate; pinkish (H&E-like) when RGB."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 28), torch.linspace(0, 1, 28), indexing="ij")
    grey = 0.2 + 0.45 * (0.6 * xx + 0.4 * yy)
    grey = grey + 0.3 * (((xx - 0.55) ** 2 + (yy - 0.45) ** 2) < 0.22**2).float()
    if channels == 1:
        img = grey[None]
    else:
        img = torch.stack([0.1 + 0.85 * grey, 0.8 * grey, 0.05 + 0.85 * grey])
    return img.expand(n, channels, 28, 28).contiguous()


def _cases() -> list[tuple[str, int]]:
    return [(name, c) for name in DISTORTIONS for c in (1, 3)]


# ------------------------------------------------------------------------------ registry ----
def test_registry_covers_the_issue_list_and_flags_are_consistent() -> None:
    assert REQUIRED <= set(DISTORTIONS)
    assert STOCHASTIC <= set(DISTORTIONS) and RGB_ONLY <= set(DISTORTIONS)
    for modality, names in MODALITY_DISTORTIONS.items():
        assert set(names) <= set(DISTORTIONS), modality
        assert len(set(names)) == len(names), modality
    assert not set(MODALITY_DISTORTIONS["generic"]) & RGB_ONLY
    assert set(MODALITY_DISTORTIONS["generic_rgb"]) == set(DISTORTIONS)


@pytest.mark.parametrize(("name", "channels"), _cases())
def test_contract_shape_dtype_range_determinism(name: str, channels: int) -> None:
    x = torch.cat([_random_batch(channels), reference_image(channels, n=2)])
    before = x.clone()
    if name in RGB_ONLY and channels == 1:
        with pytest.raises(ValueError, match="RGB"):
            apply_distortion(x, name, 3, _gen())
        with pytest.raises(ValueError, match="RGB"):
            DISTORTIONS[name](x, 3, _gen())
        return
    for severity in (1, 5):
        y = apply_distortion(x, name, severity, _gen(0))
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert torch.equal(x, before), "the input must not be modified"
        assert torch.equal(y, apply_distortion(x, name, severity, _gen(0))), "same seed"
        other = apply_distortion(x, name, severity, _gen(1))
        if name in STOCHASTIC:
            assert not torch.equal(y, other), "a different seed must differ"
        else:
            assert torch.equal(y, other), "deterministic distortions ignore the generator"


@pytest.mark.parametrize("name", sorted(DISTORTIONS))
def test_float64_stays_float64(name: str) -> None:
    x = _random_batch(3, n=3).double()
    y = apply_distortion(x, name, 4, _gen())
    assert y.dtype == torch.float64 and y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_the_global_rng_is_never_used() -> None:
    x = _random_batch(3, n=4)
    state = torch.get_rng_state()
    for name in DISTORTIONS:
        apply_distortion(x, name, 3, _gen())
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(
    ("name", "channels"), [(n, c) for n, c in _cases() if c == 3 or n not in RGB_ONLY]
)
def test_distance_from_clean_grows_with_severity(name: str, channels: int) -> None:
    x = reference_image(channels)
    d = [float((apply_distortion(x, name, s, _gen(0)) - x).abs().mean()) for s in dist.SEVERITIES]
    assert min(d) > 0, f"{name}: every severity must change the image: {d}"
    allowed = NON_MONOTONE_STEPS.get(name, set())
    for s, (a, b) in enumerate(zip(d, d[1:], strict=False), start=1):
        if (s, s + 1) not in allowed:
            assert b >= a - 1e-7, f"{name}, severity {s} → {s + 1}: {d}"


# ---------------------------------------------------------------------------- validation ----
def test_severity_zero_and_none_are_the_clean_images() -> None:
    x = _random_batch(3)
    for name, severity in (("gaussian_noise", 0), (CLEAN, 0), (CLEAN, 3)):
        y = apply_distortion(x, name, severity, _gen())
        assert torch.equal(y, x) and y is not x


@pytest.mark.parametrize("name", sorted(DISTORTIONS))
def test_an_empty_batch_stays_empty(name: str) -> None:
    y = apply_distortion(torch.zeros(0, 3, 28, 28), name, 2, _gen())
    assert y.shape == (0, 3, 28, 28)


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown distortion 'fog'.*gaussian_noise.*stain_shift"):
        apply_distortion(_random_batch(1), "fog", 1, _gen())
    with pytest.raises(ValueError, match="'none'"):
        apply_distortion(_random_batch(1), "Gaussian_noise", 0, _gen())


@pytest.mark.parametrize("severity", [-1, 6, 2.0, "3", True, None])
def test_bad_severity_names_the_range(severity: object) -> None:
    with pytest.raises(ValueError, match="severity must be an int in 0–5"):
        apply_distortion(_random_batch(1), "gaussian_blur", severity, _gen())  # type: ignore[arg-type]


def test_numpy_int_severity_is_accepted_and_direct_calls_check_the_range() -> None:
    x = _random_batch(1)
    assert torch.equal(
        apply_distortion(x, "gamma", np.int64(2), _gen()),  # type: ignore[arg-type]
        apply_distortion(x, "gamma", 2, _gen()),
    )
    with pytest.raises(ValueError, match="1–5"):
        DISTORTIONS["gamma"](x, 0, _gen())  # table[-1] would silently be severity 5


def test_bad_images_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="float images"):
        apply_distortion(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "jpeg", 1, _gen())
    with pytest.raises(ValueError, match=r"\(N, 1\|3, H, W\)"):
        apply_distortion(torch.zeros(2, 2, 28, 28), "jpeg", 1, _gen())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apply_distortion(torch.full((2, 3, 28, 28), -2.0), "jpeg", 1, _gen())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apply_distortion(torch.full((1, 1, 28, 28), float("nan")), "jpeg", 1, _gen())


# ---------------------------------------------------- independent reference implementations --
def _to_pil(img: torch.Tensor) -> Image.Image:
    arr = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def _from_pil(im: Image.Image, channels: int) -> torch.Tensor:
    arr = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)
    return arr[None] if channels == 1 else arr.permute(2, 0, 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_pixelate_matches_pil_box_resizing(channels: int) -> None:
    x = _random_batch(channels, n=2)
    for severity, frac in enumerate((0.95, 0.9, 0.85, 0.75, 0.65), start=1):
        y = apply_distortion(x, "pixelate", severity, _gen())
        m = int(28 * frac)
        for i in range(2):
            ref = _to_pil(x[i]).resize((m, m), Image.BOX).resize((28, 28), Image.BOX)
            # PIL rounds the intermediate image to 8 bits: at most 1 level apart
            assert (y[i] - _from_pil(ref, channels)).abs().max() <= 1.01 / 255


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_is_a_real_encoder_close_to_pil(channels: int) -> None:
    x = reference_image(channels, n=2)
    for severity, quality in ((1, 80), (5, 40)):
        y = apply_distortion(x, "jpeg", severity, _gen())
        assert torch.equal(y * 255, (y * 255).round()), "decoded JPEG is 8-bit"
        assert not torch.equal(y, x)
        buf = io.BytesIO()
        _to_pil(x[0]).save(buf, "JPEG", quality=quality)
        ref = _from_pil(Image.open(buf), channels)
        # two libjpeg builds (chroma subsampling, DCT) may differ by a few levels, never more
        assert (y[0] - ref).abs().mean() < 1.5 / 255


@pytest.mark.parametrize("channels", [1, 3])
def test_gaussian_blur_matches_scipy(channels: int) -> None:
    x = _random_batch(channels, n=2).double()
    for severity, sigma32 in ((1, 0.4), (5, 1.0)):
        y = apply_distortion(x, "gaussian_blur", severity, _gen())
        ref = ndimage.gaussian_filter(
            x.numpy(), sigma=(0, 0, sigma32 * 28 / 32, sigma32 * 28 / 32), mode="nearest"
        )
        np.testing.assert_allclose(y.numpy(), np.clip(ref, 0, 1), atol=1e-12)


def test_defocus_kernel_is_a_normalised_symmetric_disk() -> None:
    for radius, alias in ((0.2625, 0.35), (0.875, 0.175), (1.3125, 0.0875), (4.0, 0.0)):
        k = dist._disk_kernel(radius, alias)
        assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
        assert float(k.sum()) == pytest.approx(1.0)
        assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))
    # without alias blur, the pixel coverage of a large disk approaches its area π r²
    raw = dist._disk_kernel(4.0, 0.0)
    assert float(raw.max() / raw.min().clamp(min=1e-12)) > 1  # edge pixels partly covered
    assert float(1 / raw.max()) == pytest.approx(np.pi * 16, rel=0.01)


def test_motion_kernel_at_zero_degrees_is_imagemagicks_line() -> None:
    kernels, pad = dist._motion_kernels(torch.zeros(1), radius=2, sigma=1.0, step=1.0)
    taps = np.exp(-(np.arange(5) ** 2) / 2.0)
    hy = pad[2]
    np.testing.assert_allclose(kernels[0, hy, :5].numpy(), taps / taps.sum(), atol=1e-12)
    assert float(kernels[0].sum()) == pytest.approx(1.0)
    assert float(kernels[0].abs().sum() - kernels[0, hy].abs().sum()) == pytest.approx(0.0)
    # ±45°: mass on the diagonals, mirrored
    k45, _ = dist._motion_kernels(torch.tensor([45.0, -45.0]), 2, 1.0, 1.0)
    assert torch.allclose(k45[0], k45[1].flip(0), atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3])
def test_intensity_distortions_match_pil_and_torchvision(channels: int) -> None:
    from torchvision.transforms.functional import adjust_gamma

    x = (reference_image(channels, n=1) * 255).round() / 255  # on PIL's 8-bit grid
    img = _to_pil(x[0])
    for name, factors, enhancer in (
        ("brightness_up", (1.1, 1.5), ImageEnhance.Brightness),
        ("brightness_down", (0.9, 0.5), ImageEnhance.Brightness),
        ("contrast_up", (1.1, 1.6), ImageEnhance.Contrast),
        ("contrast_down", (0.9, 0.4), ImageEnhance.Contrast),
    ):
        for severity, factor in zip((1, 5), factors, strict=True):
            y = apply_distortion(x, name, severity, _gen())[0]
            ref = _from_pil(enhancer(img).enhance(factor), channels)
            # PIL rounds the output and (contrast) the mean luma to 8 bits
            assert (y - ref).abs().max() <= 1.01 / 255, (name, severity)
    for name, (g1, g5) in (("gamma", (1.1, 1.6)), ("gamma_down", (0.9, 0.4))):
        for severity, g in ((1, g1), (5, g5)):
            y = apply_distortion(x, name, severity, _gen())
            torch.testing.assert_close(y, adjust_gamma(x, g))


def test_noise_statistics() -> None:
    x = torch.full((40, 1, 28, 28), 0.5)
    n = x.numel()
    # Gaussian: residual std = σ (no clipping at 0.5 ± 3σ for σ = 0.12)
    r = apply_distortion(x, "gaussian_noise", 3, _gen()) - x
    assert float(r.std()) == pytest.approx(0.12, rel=0.03)
    # speckle at x = 0.5: std = 0.5 σ
    r = apply_distortion(x, "speckle_noise", 3, _gen()) - x
    assert float(r.std()) == pytest.approx(0.5 * 0.20, rel=0.03)
    # salt & pepper: a fraction `amount` replaced, half by 1, half by 0
    y = apply_distortion(x, "impulse_noise", 5, _gen())
    assert float((y == 1).sum() + (y == 0).sum()) / n == pytest.approx(0.17, rel=0.05)
    assert float((y == 1).sum() / (y == 0).sum()) == pytest.approx(1.0, rel=0.1)
    # shot: Poisson(λx)/λ has mean x and variance x/λ (λ = 5 at severity 5; x = 0.5 is far
    # from the clip at 1 only in the mean, so use x = 0.1)
    x = torch.full((40, 1, 28, 28), 0.1)
    y = apply_distortion(x, "shot_noise", 5, _gen())
    assert float(y.mean()) == pytest.approx(0.1, rel=0.03)
    assert float(y.var()) == pytest.approx(0.1 / 5, rel=0.05)
    assert torch.equal(y * 5, (y * 5).round()), "counts / λ"


def _poisson_fit_pvalue(draws: torch.Tensor, lam: float) -> float:
    """Pearson chi-square goodness of fit of whole-count ``draws`` to scipy's Poisson(lam) pmf,
    tail bins merged until every expected count is >= 20."""
    from scipy import stats

    counts = np.bincount(draws.numpy().astype(np.int64))
    k_max = int(stats.poisson.ppf(1 - 1e-4, lam))
    observed = np.append(counts[:k_max], counts[k_max:].sum())
    probs = np.append(stats.poisson.pmf(np.arange(k_max), lam), stats.poisson.sf(k_max - 1, lam))
    expected = probs * draws.numel()
    keep = expected >= 20
    obs, exp = observed[keep], expected[keep]
    if not keep.all():
        obs, exp = np.append(obs, observed[~keep].sum()), np.append(exp, expected[~keep].sum())
    return float(stats.chisquare(obs, exp).pvalue)


@pytest.mark.parametrize("lam", [0.7, 3.7, 25.0])
def test_chunked_poisson_is_exact_poisson_and_ignores_the_thread_count(
    lam: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medstudy import distortion_ops

    # many small chunks: every chunk has its own stream, and the chunk seams must not show
    monkeypatch.setattr(distortion_ops, "POISSON_CHUNK", 7_001)
    rate = torch.full((200_000,), lam)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = distortion_ops._poisson(rate, _gen(3))
        torch.set_num_threads(2)
        two = distortion_ops._poisson(rate, _gen(3))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # the thread count changes nothing
    assert not torch.equal(one, distortion_ops._poisson(rate, _gen(4)))  # the seed does
    assert _poisson_fit_pvalue(one, lam) > 1e-3
    # whole counts, a different stream in every chunk (no repeated chunk)
    assert torch.equal(one, one.round())
    assert not torch.equal(one[:7_001], one[7_001:14_002])


@pytest.mark.parametrize("photons", [60, 25, 18, 10, 5])
def test_8bit_poisson_tables_hold_the_poisson_pmf_of_every_level(photons: int) -> None:
    from scipy import stats

    from medstudy import distortion_ops as ops

    guide, cdf_flat, row = ops._poisson_8bit_tables(float(photons))
    cdf = cdf_flat
    scale = 1 << ops.UNIFORM_BITS
    levels = torch.arange(256, dtype=torch.int64)[:, None]
    cdf = cdf.view(256, row) - (levels << ops.UNIFORM_BITS)
    pmf = torch.diff(cdf, prepend=torch.zeros(256, 1, dtype=torch.int64)).double() / scale
    lam = np.arange(256)[:, None] * photons / 255
    ref = stats.poisson.pmf(np.arange(row)[None, :], lam)
    ref[:, -1] += stats.poisson.sf(row - 1, lam[:, 0])  # the tail joins the last outcome
    assert np.abs(pmf.numpy() - ref).max() <= 1.0 / scale  # rounded CDF: within 2^-31
    assert int(cdf[:, -1].min()) == scale and bool((torch.diff(cdf, dim=1) >= 0).all())
    # every guide cell that answers gives the inversion's answer for every u in it
    u = torch.randint(0, scale, (200_000,), generator=_gen(5))
    lv = torch.randint(0, 256, (200_000,), generator=_gen(6))
    g = guide.view(256, -1)[lv, u >> (ops.UNIFORM_BITS - ops.GUIDE_BITS)].long()
    answered = g >= 0
    assert float(answered.float().mean()) > 0.95  # the guide answers most draws
    want = (cdf[lv] <= u[:, None]).sum(1)  # inversion: the smallest k with u < cdf[L, k]
    assert torch.equal(g[answered], want[answered])
    # and the sampler (guide plus searchsorted) gives that answer for every u
    assert torch.equal(ops._invert_8bit(lv, u, guide, cdf_flat, row).long(), want)


@pytest.mark.parametrize(("level", "photons"), [(7, 60), (128, 60), (255, 5), (40, 10), (1, 18)])
def test_8bit_poisson_draws_are_poisson_and_ignore_the_thread_count(
    level: int, photons: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medstudy import distortion_ops as ops

    monkeypatch.setattr(ops, "POISSON_CHUNK", 7_001)
    lv = torch.full((200_000,), level, dtype=torch.uint8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops._poisson_8bit(lv, photons, _gen(3))
        torch.set_num_threads(2)
        two = ops._poisson_8bit(lv, photons, _gen(3))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert not torch.equal(one, ops._poisson_8bit(lv, photons, _gen(4)))
    assert not torch.equal(one[:7_001], one[7_001:14_002])  # a new stream in every chunk
    assert _poisson_fit_pvalue(one, level * photons / 255) > 1e-3


def test_shot_noise_inverts_tables_for_8bit_images_and_draws_torch_poisson_otherwise() -> None:
    from medstudy import distortion_ops as ops

    xf = reference_image(3, n=4)  # smooth float values: not 8-bit
    x8 = (xf * 255).round() / 255  # as a MedMNIST image read as float
    counts = ops._poisson_8bit((x8 * 255).round().to(torch.uint8), 25, _gen(2))
    assert torch.equal(dist.shot_noise(x8, 2, _gen(2)), (counts / 25).clamp(0, 1))
    counts = ops._poisson(xf * 25, _gen(2))
    assert torch.equal(dist.shot_noise(xf, 2, _gen(2)), (counts / 25).clamp(0, 1))
    assert not torch.equal(dist.shot_noise(xf, 2, _gen(2)), dist.shot_noise(x8, 2, _gen(2)))
    # on the 1/255 grid but outside [0, 1]: never wrapped into uint8 levels
    big = torch.full((2, 1, 4, 4), 256 / 255)
    torch.testing.assert_close(
        ops._photon_counts(big, 25, _gen(2)), ops._poisson(big * 25, _gen(2))
    )


def test_stain_shift_matches_skimage_hed_round_trip() -> None:
    assert np.allclose(np.array(dist._RGB_FROM_HED), rgb_from_hed)
    x = reference_image(3, n=4).double()
    x[:, :, :3, :3] = 0.0  # black stays black
    sigma = 0.2  # severity 5
    y = apply_distortion(x, "stain_shift", 5, _gen(7))
    draws = torch.rand((4, 2, 3), generator=_gen(7), dtype=torch.float64) * 2 - 1
    alpha, beta = 1 + sigma * draws[:, 0].numpy(), sigma * draws[:, 1].numpy()
    log_adjust = -np.log(1e-6)  # skimage's stain units are OD / ln(1e6)
    for i in range(4):
        rgb = x[i].permute(1, 2, 0).numpy()
        hed = skcolor.rgb2hed(rgb)
        ref = skcolor.hed2rgb(alpha[i] * hed + beta[i] / log_adjust)
        ref[rgb.max(-1) == 0] = 0.0
        np.testing.assert_allclose(y[i].permute(1, 2, 0).numpy(), ref, atol=1e-6)
    assert float(y[:, :, :3, :3].abs().max()) == 0.0


def test_stochastic_severities_are_nested_for_one_seed() -> None:
    """The same draws are scaled by the severity: impulse hits at severity s stay hit at s+1."""
    x = torch.full((4, 1, 28, 28), 0.5)
    hit = [apply_distortion(x, "impulse_noise", s, _gen(3)) != 0.5 for s in dist.SEVERITIES]
    for a, b in zip(hit, hit[1:], strict=False):
        assert bool((b | ~a).all())


# ------------------------------------------------------------------------- modality subsets --
def test_distortions_for_cxr_has_no_stain_shift() -> None:
    assert modality_of("pneumoniamnist") == "cxr"
    assert distortions_for("pneumoniamnist") == MODALITY_DISTORTIONS["cxr"]
    assert "stain_shift" not in distortions_for("pneumoniamnist")
    assert "stain_shift" not in distortions_for("chestmnist")


def test_distortions_for_every_info_dataset() -> None:
    for name, row in INFO.items():
        names = distortions_for(name)
        assert names and set(names) <= set(DISTORTIONS)
        if row.n_channels == 1:
            assert not set(names) & RGB_ONLY, name
    assert modality_of("retinamnist") == modality_of("synth_lesions") == "fundus"
    assert "stain_shift" in distortions_for("retinamnist")
    assert modality_of("pcam28_subset") == modality_of("pathmnist") == "pathology"
    assert distortions_for("dermamnist") == MODALITY_DISTORTIONS["generic_rgb"]
    assert distortions_for("organamnist") == MODALITY_DISTORTIONS["generic"]


def test_distortions_for_unknown_or_inconsistent_datasets() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nosuchmnist'"):
        distortions_for("nosuchmnist")
    assert distortions_for("nosuchmnist", n_channels=1) == MODALITY_DISTORTIONS["generic"]
    with pytest.raises(ValueError, match="INFO table says pneumoniamnist has 1"):
        distortions_for("pneumoniamnist", n_channels=3)
    with pytest.raises(ValueError, match="n_channels must be 1 or 3"):
        distortions_for("nosuchmnist", n_channels=4)


# ------------------------------------------------------------------------------ statistics --
def test_chance_levels() -> None:
    assert chance_level("auc") == 0.5 and chance_level("referable_auc") == 0.5
    assert chance_level("qwk") == 0.0
    assert chance_level("balanced_accuracy", 4) == 0.25 and chance_level("accuracy", 2) == 0.5
    with pytest.raises(ValueError, match="needs n_classes"):
        chance_level("accuracy")
    with pytest.raises(ValueError, match="valid:.*'auc'.*'qwk'"):
        chance_level("macro_f1")


def test_chance_normalised_drop_hand_cases() -> None:
    assert chance_normalised_drop(0.9, 0.8, 0.5) == pytest.approx(0.25)
    assert chance_normalised_drop(0.8, 0.8, 0.5) == 0.0  # unchanged
    assert chance_normalised_drop(0.8, 0.5, 0.5) == pytest.approx(1.0)  # fell to chance
    assert chance_normalised_drop(0.8, 0.35, 0.5) == pytest.approx(1.5)  # below chance
    assert chance_normalised_drop(0.8, 0.86, 0.5) == pytest.approx(-0.2)  # improved
    assert chance_normalised_drop(0.6, 0.3, chance_level("qwk")) == pytest.approx(0.5)
    got = chance_normalised_drop(0.9, [0.9, 0.7, 0.5], 0.5)
    np.testing.assert_allclose(got, [0.0, 0.5, 1.0])
    assert isinstance(chance_normalised_drop(0.9, 0.8, 0.5), float)


def test_chance_normalised_drop_is_undefined_at_or_below_chance() -> None:
    for clean in (0.5, 0.45, float("nan")):
        with pytest.raises(ValueError, match="undefined.*on_undefined='nan'"):
            chance_normalised_drop(clean, 0.4, 0.5)
        assert np.isnan(chance_normalised_drop(clean, 0.4, 0.5, on_undefined="nan"))
    got = chance_normalised_drop([0.9, 0.5], [0.7, 0.5], 0.5, on_undefined="nan")
    assert got[0] == pytest.approx(0.5) and np.isnan(got[1])
    with pytest.raises(ValueError, match="1 of 2 entries"):
        chance_normalised_drop([0.9, 0.5], [0.7, 0.5], 0.5)
    with pytest.raises(ValueError, match="on_undefined"):
        chance_normalised_drop(0.9, 0.8, 0.5, on_undefined="zero")  # type: ignore[arg-type]


HAND_TABLE = {
    "scratch": {"noise": [0.2, 0.4], "blur": [0.1, 0.3], "none": 0.1},
    "ssl": {"noise": [0.1, 0.3], "blur": [0.1, 0.1], "none": 0.05},
}


def _hand_frame() -> pd.DataFrame:
    rows = [("scratch", "none", 0, 0.1), ("ssl", "none", 0, 0.05)]
    for arm, table in HAND_TABLE.items():
        for d in ("noise", "blur"):
            rows += [(arm, d, s, e) for s, e in enumerate(table[d], start=1)]
    return pd.DataFrame(rows, columns=["arm", "distortion", "severity", "error"])


@pytest.mark.parametrize("as_frame", [False, True])
def test_mce_on_a_hand_table(as_frame: bool) -> None:
    res = mean_corruption_error(_hand_frame() if as_frame else HAND_TABLE)
    # CE_noise = (0.1 + 0.3) / (0.2 + 0.4), CE_blur = (0.1 + 0.1) / (0.1 + 0.3)
    assert res.ce.loc["ssl", "noise"] == pytest.approx(2 / 3)
    assert res.ce.loc["ssl", "blur"] == pytest.approx(1 / 2)
    assert res.mce["ssl"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert res.mce["scratch"] == pytest.approx(1.0)
    # relative: noise (0.05 + 0.25) / (0.1 + 0.3); blur (0.05 + 0.05) / (0.0 + 0.2)
    assert res.relative_ce is not None and res.relative_mce is not None
    assert res.relative_ce.loc["ssl", "noise"] == pytest.approx(0.75)
    assert res.relative_ce.loc["ssl", "blur"] == pytest.approx(0.5)
    assert res.relative_mce["ssl"] == pytest.approx(0.625)
    assert res.relative_mce["scratch"] == pytest.approx(1.0)
    assert res.reference == "scratch"


def test_mce_without_clean_errors_and_with_a_severity_mapping() -> None:
    table = {
        "scratch": {"noise": {1: 0.2, 2: 0.4}},
        "ssl": {"noise": {2: 0.3, 1: 0.1}},
    }
    res = mean_corruption_error(table)
    assert res.mce["ssl"] == pytest.approx(2 / 3)
    assert res.relative_ce is None and res.relative_mce is None


def test_mce_errors_are_explicit() -> None:
    with pytest.raises(ValueError, match="reference arm 'scratch' not in"):
        mean_corruption_error({"ssl": {"noise": [0.1]}})
    with pytest.raises(ValueError, match="missing \\[\\('blur', 2\\)\\]"):
        mean_corruption_error(
            {
                "scratch": {"noise": [0.2], "blur": [0.1, 0.3]},
                "ssl": {"noise": [0.1], "blur": [0.1]},
            }
        )
    with pytest.raises(ValueError, match="duplicate.*average over seeds"):
        mean_corruption_error(pd.concat([_hand_frame(), _hand_frame().iloc[[3]]]))
    zero = {"scratch": {"noise": [0.0, 0.0]}, "ssl": {"noise": [0.1, 0.1]}}
    with pytest.raises(ValueError, match="CE is undefined for \\['noise'\\]"):
        mean_corruption_error(zero)
    assert np.isnan(mean_corruption_error(zero, on_undefined="nan").mce["ssl"])
    flat = {
        "scratch": {"noise": [0.1, 0.1], "none": 0.1},
        "ssl": {"noise": [0.2, 0.3], "none": 0.1},
    }
    with pytest.raises(ValueError, match="relative CE is undefined"):
        mean_corruption_error(flat)
    with pytest.raises(
        ValueError, match="clean errors given for some arms but not for \\['ssl'\\]"
    ):
        mean_corruption_error({"scratch": {"noise": [0.2], "none": 0.1}, "ssl": {"noise": [0.1]}})
    with pytest.raises(ValueError, match="single number is only allowed for the clean error"):
        mean_corruption_error({"scratch": {"noise": 0.2}, "ssl": {"noise": 0.1}})
