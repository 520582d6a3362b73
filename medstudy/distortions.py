"""The distortion suite of notebook 06 (claim C6) and the statistics that summarise it.

One function per distortion, ``(images, severity, generator) -> images``, in the
``imagecorruptions`` style: the first line of each body is its 5-entry severity table, with the
source in a comment. :data:`DISTORTIONS` is the registry; :func:`apply_distortion` is the
validated entry point (unknown name, bad severity, wrong image layout → ``ValueError`` naming
the valid choices; severity 0 or name ``"none"`` → the clean images).

Contract of every distortion
----------------------------
- ``images``: float tensor (N, C, H, W), C ∈ {1, 3}, values in [0, 1]; the result has the same
  shape, dtype and device, and stays in [0, 1].
- Batched tensor ops (no per-image Python loop, except JPEG, which calls libjpeg per image
  through torchvision).
- Randomness comes only from ``generator`` (never the global RNG), which must live on the
  images' device. The same generator state gives the same output; draws are made in batch
  order, so split a set into the same batches to reproduce it. Deterministic distortions
  ignore the generator; :data:`STOCHASTIC` names the ones that use it. A stochastic
  distortion draws the same variates at every severity (the severity only scales them or the
  threshold applied to them), so with one seed the five levels are nested: e.g. the values
  hit by impulse noise at severity s are hit again at s + 1. Shot noise is the exception: its
  Poisson draws depend on the rate.
- Intended for the study's 28 px images (DESIGN §8). Spatial parameters are in pixels at
  28 px and are *not* rescaled for larger inputs.

Sources and scaling to 28 px
----------------------------
- MedMNIST-C (Di Salvo, Doerrich & Ledig 2024, arXiv:2406.17536, ``medmnistc-api``
  ``corruptions/registry.py``) gives per-dataset tables for the 224 px MedMNIST+ images.
  Intensity parameters (noise amplitudes, brightness/contrast/gamma factors) act per pixel
  and do not depend on the resolution: they are used unchanged. We take the
  ``chestmnist``/``dermamnist`` row, one table per distortion for every dataset, so that
  severities mean the same thing across datasets (MedMNIST-C tunes some rows per dataset,
  e.g. milder noise for pneumoniamnist).
- ImageNet-C (Hendrycks & Dietterich 2019, ICLR; ``imagecorruptions`` and ``make_imagenet_c.py``
  at 224 px; ``make_cifar_c.py`` for CIFAR-10-C at 32 px). Spatial tables are rescaled to the
  same blur *relative to the image content*: CIFAR-10-C (32 px) values × 28/32, or 224 px
  values × 28/224 = 1/8. We take the 32 px table where the 224 px one, divided by 8, falls
  inside one pixel (Gaussian and defocus blur at severities 1–2 would be no-ops). Motion blur
  uses the 224 px table ÷ 8, because CIFAR-10-C's severities 3 and 4 differ only in a kernel
  length beyond the Gaussian's support, and so coincide.
- Relative or resolution-bound parameters come from CIFAR-10-C, the calibration closest to
  28 px. That covers the pixelation factor and the JPEG quality: an 8×8 JPEG block spans 2/7 of
  a 28 px image, so MedMNIST-C's 224 px qualities (down to 7) would erase it.
- ``stain_shift`` is in neither suite: MedMNIST-C's pathology set has saturation, stain
  deposits and bubbles instead. It is the HED perturbation of Tellez et al. 2018 (IEEE TMI
  37:2126) and 2019 (Med. Image Anal. 58:101544). Its σ goes up to their "HED-strong" 0.2;
  their "HED-light" 0.05 lies between our severities 1 and 2.

=================  ===========  =================================================================
distortion         stochastic   severity 1 → 5 (28 px)
=================  ===========  =================================================================
gaussian_noise     yes          σ 0.04, 0.08, 0.12, 0.18, 0.26 (MedMNIST-C)
speckle_noise      yes          σ 0.05, 0.15, 0.20, 0.35, 0.45, multiplicative (MedMNIST-C)
impulse_noise      yes          salt & pepper fraction 0.01 … 0.17 (MedMNIST-C)
shot_noise         yes          Poisson with 60, 25, 18, 10, 5 "photons" at white (MedMNIST-C)
gaussian_blur      no           σ 0.35 … 0.875 px (CIFAR-10-C × 28/32)
defocus_blur       no           disk radius 0.26 … 1.31 px + alias blur (CIFAR-10-C × 28/32)
motion_blur        yes          one-sided Gaussian streak, σ 0.375 … 1.875 px, random angle
                                ±45° per image (ImageNet-C = MedMNIST-C, 224 px ÷ 8)
brightness_up      no           × 1.1 … 1.5 (MedMNIST-C)
brightness_down    no           × 0.9 … 0.5 (MedMNIST-C)
contrast_up        no           × 1.1 … 1.6 around the mean luma (MedMNIST-C)
contrast_down      no           × 0.9 … 0.4 around the mean luma (MedMNIST-C)
gamma              no           x^γ, γ 1.1 … 1.6, darkens (MedMNIST-C ``gamma_corr_up``)
gamma_down         no           x^γ, γ 0.9 … 0.4, brightens (MedMNIST-C ``gamma_corr_down``)
jpeg               no           quality 80, 65, 58, 50, 40 (CIFAR-10-C), libjpeg via torchvision
pixelate           no           area-downsample to 0.95 … 0.65 of the side, nearest-upsample
                                (CIFAR-10-C)
stain_shift        yes          HED stain gain/bias, σ 0.04 … 0.2 (Tellez et al.); RGB only
=================  ===========  =================================================================

Modality subsets (:data:`MODALITY_DISTORTIONS`, chosen per dataset by :func:`distortions_for`)
follow MedMNIST-C's per-dataset selections: ``cxr`` is its chestmnist/pneumoniamnist set,
``fundus`` its retinamnist set plus ``stain_shift`` (camera colour balance), ``pathology`` its
pathmnist set minus saturation, deposits and bubbles, plus ``stain_shift``. ``generic`` is
every distortion that works on grey images; ``generic_rgb`` adds ``stain_shift``. Grey
datasets never get ``stain_shift``.

Statistics (pure numpy/pandas; direction conventions in each docstring)
------------------------------------------------------------------------
- :func:`chance_level`: the score of a guess made without looking at the image.
- :func:`chance_normalised_drop`: ``(m_clean − m_distorted) / (m_clean − chance)``, the
  fraction of the above-chance margin that a distortion removes (claim C6, DESIGN §1).
- :func:`mean_corruption_error`: ImageNet-C's mCE and relative mCE against a reference arm
  (``scratch``, where Hendrycks & Dietterich use AlexNet).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from medstudy.data.info import get_info
from medstudy.distortion_ops import (
    LUMA,
    SEVERITIES,
    _box_resize_operator,
    _check_severity,
    _disk_kernel,
    _filter2d,
    _gaussian_taps,
    _level,
    _luma,
    _motion_kernels,
    _photon_counts,
    _rand,
    _randn,
    _separable_blur,
)

__all__ = [
    "CLEAN",
    "DATASET_MODALITY",
    "DISTORTIONS",
    "MODALITY_DISTORTIONS",
    "RGB_ONLY",
    "SEVERITIES",
    "STOCHASTIC",
    "Distortion",
    "apply_distortion",
    "distortions_for",
    "modality_of",
]

#: ``(images (N,C,H,W) float in [0, 1], severity 1..5, generator) -> images``.
Distortion = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]

#: The distortion name of the clean set (severity 0), as written in ``metrics.csv``.
CLEAN = "none"
_CLEAN_NAMES = (CLEAN, "clean", "")  # as medstudy.claims.CLEAN_DISTORTIONS

# Spatial rescaling to 28 px: same blur relative to the image content.
_FROM_32_PX = 28 / 32  # CIFAR-10-C tables (32 px)
_FROM_224_PX = 28 / 224  # ImageNet-C / MedMNIST-C tables (224 px)

# ITU-R 601-2 luma, as PIL's "L" conversion that ImageEnhance.Contrast uses (MedMNIST-C).
_LUMA = LUMA

# Ruifrok & Johnston (2001) stain optical-density vectors: rows H, E, DAB in RGB (skimage's
# ``rgb_from_hed``).
_RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# The distortions. First line of each body: the severity table (1 → 5) and its source.
# --------------------------------------------------------------------------------------------
# Additive Gaussian noise, x + σ·z, clipped.
def gaussian_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = _level((0.04, 0.08, 0.12, 0.18, 0.26), severity)  # MedMNIST-C chestmnist, as is
    return (x + sigma * _randn(x, generator)).clamp_(0, 1)


# Multiplicative (speckle) noise, x + x·σ·z, clipped.
def speckle_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = _level((0.05, 0.15, 0.20, 0.35, 0.45), severity)  # MedMNIST-C chestmnist, as is
    return (x + x * sigma * _randn(x, generator)).clamp_(0, 1)


# Salt & pepper (skimage ``random_noise(mode="s&p")``): each value, per channel, is replaced
# with probability ``amount``, by 0 or 1 with equal odds. One uniform u per value: u < amount/2
# → pepper, amount/2 ≤ u < amount → salt (half the draws of skimage's two-uniform scheme).
def impulse_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    amount = _level((0.01, 0.03, 0.06, 0.09, 0.17), severity)  # MedMNIST-C chestmnist, as is
    u = _rand(x.shape, x, generator)
    return torch.where(u < amount, (u >= amount / 2).to(x.dtype), x)


# Shot (Poisson) noise: Poisson(λ·x)/λ, λ = expected photon count of a white pixel.
def shot_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    photons = _level((60, 25, 18, 10, 5), severity)  # MedMNIST-C chestmnist, as is
    counts = _photon_counts(x, photons, generator)  # exact (8-bit: table inversion), threaded
    return (counts / photons).clamp_(0, 1).to(x.dtype)


# Gaussian blur, edge replication (skimage ``gaussian``'s default mode "nearest").
def gaussian_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = _level((0.4, 0.6, 0.7, 0.8, 1.0), severity) * _FROM_32_PX  # CIFAR-10-C σ, 32 px
    return _separable_blur(x, _gaussian_taps(sigma)).clamp_(0, 1)


# Defocus: disk kernel + alias blur (ImageNet-C ``disk``), reflect-101 border (cv2.filter2D).
def defocus_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    radius, alias = _level(((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)), severity)
    # ↑ CIFAR-10-C (radius, alias σ) at 32 px; both rescaled by 28/32 below
    kernel = _disk_kernel(radius * _FROM_32_PX, alias * _FROM_32_PX)
    half = (kernel.shape[0] - 1) // 2
    return _filter2d(x, kernel, (half, half, half, half), "reflect").clamp_(0, 1)


# Motion blur along a random direction in [−45°, 45°] per image, edge replication
# (ImageMagick's default virtual pixels).
def motion_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    radius, sigma = _level(((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)), severity)
    # ↑ ImageNet-C (= MedMNIST-C dermamnist) (radius, σ) in 224 px taps; taps 1/8 px apart here
    angles = _rand((x.shape[0],), x, generator) * 90 - 45
    kernels, pad = _motion_kernels(angles, radius, sigma, step=_FROM_224_PX)
    return _filter2d(x, kernels, pad, "replicate").clamp_(0, 1)


# PIL ``ImageEnhance.Brightness``: a blend with black, i.e. x·f.
def brightness_up(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    factor = _level((1.1, 1.2, 1.3, 1.4, 1.5), severity)  # MedMNIST-C chestmnist, as is
    return (x * factor).clamp_(0, 1)


def brightness_down(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    factor = _level((0.9, 0.8, 0.7, 0.6, 0.5), severity)  # MedMNIST-C chestmnist, as is
    return (x * factor).clamp_(0, 1)


# PIL ``ImageEnhance.Contrast``: a blend with the image's mean luma, m + f·(x − m).
def _contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    return (mean + factor * (x - mean)).clamp_(0, 1)


def contrast_up(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    factor = _level((1.1, 1.2, 1.3, 1.4, 1.6), severity)  # MedMNIST-C chestmnist, as is
    return _contrast(x, factor)


def contrast_down(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    factor = _level((0.9, 0.8, 0.7, 0.6, 0.4), severity)  # MedMNIST-C chestmnist, as is
    return _contrast(x, factor)


# Gamma correction x^γ (torchvision ``adjust_gamma``, gain 1): γ > 1 darkens the mid-tones.
def gamma(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    g = _level((1.1, 1.2, 1.3, 1.4, 1.6), severity)  # MedMNIST-C chestmnist gamma_corr_up
    return x.clamp(0, 1).pow(g)


# γ < 1 brightens the mid-tones.
def gamma_down(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    g = _level((0.9, 0.8, 0.7, 0.6, 0.4), severity)  # MedMNIST-C chestmnist gamma_corr_down
    return x.clamp(0, 1).pow(g)


# A real JPEG round trip (libjpeg through torchvision) of the 8-bit image, per image.
def jpeg(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    quality = _level((80, 65, 58, 50, 40), severity)  # CIFAR-10-C (32 px), as is
    if x.shape[0] == 0:
        return x.clone()
    u8 = x.mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu()
    encoded = encode_jpeg(list(u8.unbind(0)), quality=quality)
    decoded = decode_jpeg(encoded, mode=ImageReadMode.UNCHANGED)
    return torch.stack(decoded).to(device=x.device, dtype=x.dtype).div_(255)


# Pixelate: PIL BOX resize down to a fraction of the side and back up (CIFAR-10-C, MedMNIST-C;
# BOX upsampling is nearest-neighbour), as one (H, H) and one (W, W) operator.
def pixelate(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    frac = _level((0.95, 0.9, 0.85, 0.75, 0.65), severity)  # CIFAR-10-C (32 px), as is
    h, w = x.shape[-2:]
    op_h = _box_resize_operator(h, max(1, int(h * frac)))
    op_w = _box_resize_operator(w, max(1, int(w * frac)))
    return op_h.to(x.dtype).to(x.device) @ x @ op_w.T.to(x.dtype).to(x.device)


# Stain/colour shift (Tellez et al.'s HED perturbation): in optical density OD = −ln x, stain
# concentrations c = OD · M⁻¹ (M: Ruifrok–Johnston H, E, DAB vectors) become α·c + β with
# α = 1 + σ·u, β = σ·v (OD units), u, v ~ U(−1, 1) per image and stain. Computed as
# x · exp(−ΔOD), so black stays black and σ = 0 is exactly the identity. On fundus images,
# which carry no stain, it acts as a colour-balance shift in a fixed colour basis.
def stain_shift(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = _level((0.04, 0.08, 0.12, 0.16, 0.20), severity)  # Tellez et al. 2019, HED-strong 0.2
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"stain_shift needs RGB images (N, 3, H, W), got shape {tuple(x.shape)}: a stain or "
            "colour shift means nothing on a grey image, and no grey dataset's subset "
            "(distortions_for) contains it"
        )
    draws = _rand((x.shape[0], 2, 3), x, generator).to(torch.float64) * 2 - 1
    rgb_from_hed = torch.tensor(_RGB_FROM_HED, dtype=torch.float64, device=draws.device)
    hed_from_rgb = torch.linalg.inv(rgb_from_hed)
    gain, bias = sigma * draws[:, 0], sigma * draws[:, 1]  # (N, 3) each: α − 1 and β
    # ΔOD = ((α − 1)·c + β) · M  =  OD · (M⁻¹ diag(α − 1) M)  +  β · M, one 3×3 map per image
    lin = torch.einsum("cs,ns,sd->ndc", hed_from_rgb, gain, rgb_from_hed).to(x.dtype)
    shift = (bias @ rgb_from_hed).to(x.dtype)  # (N, 3)
    n, _, h, w = x.shape
    od = x.clamp(min=1e-6).log_().neg_().view(n, 3, h * w)
    neg_delta = torch.baddbmm(shift[..., None], lin, od, beta=-1, alpha=-1)  # −ΔOD, (N, 3, HW)
    return neg_delta.exp_().view_as(x).mul_(x).clamp_(0, 1)


# --------------------------------------------------------------------------------------------
# Registry and modality subsets
# --------------------------------------------------------------------------------------------
DISTORTIONS: dict[str, Distortion] = {
    f.__name__: f
    for f in (
        gaussian_noise,
        speckle_noise,
        impulse_noise,
        shot_noise,
        gaussian_blur,
        defocus_blur,
        motion_blur,
        brightness_up,
        brightness_down,
        contrast_up,
        contrast_down,
        gamma,
        gamma_down,
        jpeg,
        pixelate,
        stain_shift,
    )
}
#: Distortions that draw from the generator (the others ignore it).
STOCHASTIC: frozenset[str] = frozenset(
    {"gaussian_noise", "speckle_noise", "impulse_noise", "shot_noise", "motion_blur", "stain_shift"}
)
#: Distortions defined for RGB images only.
RGB_ONLY: frozenset[str] = frozenset({"stain_shift"})

_GREY_SAFE = tuple(name for name in DISTORTIONS if name not in RGB_ONLY)
MODALITY_DISTORTIONS: dict[str, tuple[str, ...]] = {
    # MedMNIST-C chestmnist / pneumoniamnist
    "cxr": (
        "gaussian_noise",
        "speckle_noise",
        "impulse_noise",
        "shot_noise",
        "gaussian_blur",
        "brightness_up",
        "brightness_down",
        "contrast_up",
        "contrast_down",
        "gamma",
        "gamma_down",
        "jpeg",
        "pixelate",
    ),
    # MedMNIST-C retinamnist, plus a colour shift
    "fundus": (
        "gaussian_noise",
        "speckle_noise",
        "defocus_blur",
        "motion_blur",
        "brightness_down",
        "contrast_down",
        "jpeg",
        "pixelate",
        "stain_shift",
    ),
    # MedMNIST-C pathmnist (without saturate, stain_deposit, bubble), plus the HED stain shift
    "pathology": (
        "defocus_blur",
        "motion_blur",
        "brightness_up",
        "brightness_down",
        "contrast_up",
        "contrast_down",
        "jpeg",
        "pixelate",
        "stain_shift",
    ),
    "generic": _GREY_SAFE,
    "generic_rgb": (*_GREY_SAFE, *sorted(RGB_ONLY)),
}
#: Datasets with a modality-specific subset; every other dataset gets ``generic`` (grey) or
#: ``generic_rgb`` (RGB) by its channel count.
DATASET_MODALITY: dict[str, str] = {
    "pneumoniamnist": "cxr",
    "chestmnist": "cxr",
    "retinamnist": "fundus",
    "synth_lesions": "fundus",
    "pathmnist": "pathology",
    "pcam28_subset": "pathology",
    "pcam": "pathology",
}


def _valid_names() -> list[str]:
    return [CLEAN, *DISTORTIONS]


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected a float (N, 1|3, H, W) batch, got {shape}")
    if not images.is_floating_point():
        raise ValueError(
            f"expected float images in [0, 1], got dtype {images.dtype} "
            "(convert uint8 with medstudy.data.tensors.to_float)"
        )
    if images.numel():
        lo, hi = torch.aminmax(images)
        if not (float(lo) >= 0.0 and float(hi) <= 1.0):
            raise ValueError(
                f"images must lie in [0, 1] (before model normalisation), got min {float(lo):.4g},"
                f" max {float(hi):.4g}"
            )


def apply_distortion(
    images: torch.Tensor, name: str, severity: int, generator: torch.Generator
) -> torch.Tensor:
    """``DISTORTIONS[name](images, severity, generator)``, validated.

    ``images``: float (N, C, H, W), C ∈ {1, 3}, values in [0, 1] (before the ImageNet
    normalisation of :func:`medstudy.data.tensors.to_model_input`). ``severity``: int 0–5, where
    0 (or ``name == "none"``) returns a copy of the clean images. ``generator`` must live on
    the images' device. Errors (``ValueError``): an unknown name (the message lists the valid
    ones), a severity that is not an int in 0–5, a bad layout or range, ``stain_shift`` on grey
    images.

    >>> x = torch.full((2, 1, 28, 28), 0.5)
    >>> float(apply_distortion(x, "brightness_down", 5, torch.Generator()).max())
    0.25
    """
    if name not in DISTORTIONS and name != CLEAN:
        raise ValueError(f"unknown distortion {name!r}; valid: {_valid_names()}")
    _check_severity(severity, allow_clean=True)
    _check_images(images)
    if name == CLEAN or int(severity) == 0 or images.shape[0] == 0:
        return images.clone()
    if generator.device.type != images.device.type:
        raise ValueError(f"generator on {generator.device} but images on {images.device}")
    return DISTORTIONS[name](images, int(severity), generator)


def modality_of(dataset: str, n_channels: int | None = None) -> str:
    """The key of :data:`MODALITY_DISTORTIONS` for a dataset.

    Datasets in :data:`DATASET_MODALITY` have their own subset; any other dataset is
    ``generic`` (grey) or ``generic_rgb`` (RGB) by its channel count from the INFO table.
    ``n_channels`` is needed only for a dataset missing from INFO (a MedMNIST-format file
    dropped into the data dir); given with an INFO dataset it must agree.
    """
    channels = _channels(dataset, n_channels)
    return DATASET_MODALITY.get(dataset, "generic_rgb" if channels == 3 else "generic")


def _channels(dataset: str, n_channels: int | None) -> int:
    if n_channels is not None and n_channels not in (1, 3):
        raise ValueError(f"n_channels must be 1 or 3, got {n_channels!r}")
    try:
        info_channels = get_info(dataset).n_channels
    except ValueError:
        if n_channels is None:
            raise
        return n_channels
    if n_channels is not None and n_channels != info_channels:
        raise ValueError(
            f"n_channels={n_channels} but the INFO table says {dataset} has {info_channels}"
        )
    return info_channels


def distortions_for(dataset: str, n_channels: int | None = None) -> tuple[str, ...]:
    """The distortion names notebook 06 applies to ``dataset``, in registry order.

    The modality subset of :func:`modality_of`, without RGB-only distortions for grey data:
    e.g. ``pneumoniamnist`` → the ``cxr`` subset (no ``stain_shift``), ``retinamnist`` →
    ``fundus``, ``dermamnist`` → ``generic_rgb``, ``organamnist`` → ``generic``.
    """
    channels = _channels(dataset, n_channels)
    names = MODALITY_DISTORTIONS[modality_of(dataset, n_channels)]
    return tuple(n for n in names if channels == 3 or n not in RGB_ONLY)
