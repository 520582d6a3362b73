"""Batched augmentation on the training device, with per-sample parameters from a generator.

Why not torchvision/PIL transforms: per-image PIL work in DataLoader workers is the bottleneck
of a 28 px ResNet-20 step on a 2-core CPU and starves a GPU (DESIGN §5). Here one call
augments a whole batch with a handful of tensor ops:

- random resized crop, flips and 90° rotations in ONE ``F.affine_grid`` + ``F.grid_sample``;
- colour jitter (brightness, contrast, and for RGB saturation and hue) as per-sample affine
  maps, random greyscale (RGB only);
- Gaussian blur with a per-sample sigma as one separable grouped convolution;
- solarisation and Gaussian noise.

Every random number comes from the explicit ``torch.Generator`` (never the global RNG), and the
same number of draws is made whatever the probabilities are, so a given generator state always
produces the same parameters for the same batch shape.

Recipes (:data:`RECIPES`) follow the papers' augmentation pipelines, rescaled for 28–32 px
images (the CPU profile); an :class:`AugmentRecipe` is a tuple of :class:`ViewTransform`, one
per view, so asymmetric recipes (BYOL) differ per view and a multi-crop recipe would be a
longer tuple (DINO and SwAV use 2 global crops at 28 px, as lightly's CIFAR-10 benchmark).
Medical-appropriate defaults come from :meth:`AugmentRecipe.for_modality`: no saturation/hue
or greyscale on grey images (they are meaningless there), vertical flips and 90° rotations only
for rotation-invariant modalities (histology, dermoscopy; not CXR or fundus, whose orientation
carries anatomy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from medstudy.data.tensors import to_float, to_model_input

# Datasets whose label does not depend on orientation (tissue patches, skin lesions). The rest
# (chest X-ray, fundus, …) keep their anatomical orientation: only horizontal flips.
# Horizontal flips stay on for chest X-ray although a flipped film puts the heart on the right:
# chosen on val (benchmarks/choose_ssl_on_val.py, SimCLR, PneumoniaMNIST, 300 steps): without
# flips kNN / linear-probe val AUC 0.963 / 0.981 vs 0.974 / 0.985 with them (paired DeLong, no
# flip − flip: −0.011 [−0.022, +0.001] and −0.004 [−0.011, +0.004]); the rule keeps the
# paper's recipe unless the alternative is better on val.
ROTATION_INVARIANT_DATASETS: frozenset[str] = frozenset(
    {"pcam", "pcam28_subset", "pathmnist", "dermamnist", "bloodmnist", "tissuemnist"}
)

# ITU-R BT.601 luma weights, with torchvision's rounding (rgb_to_grayscale).
_LUMA = (0.2989, 0.587, 0.114)


# Gaussian blur σ as a fraction of the image side: SimCLR/MoCo v2/BYOL/DINO draw σ ∈ [0.1, 2.0]
# px on 224 px ImageNet crops (SimCLR App. A: kernel 10 % of the side). At 28 px that is at
# most 0.25 px, nearly the identity, as lightly's CIFAR-10 benchmark (blur off at 32 px) has it;
# the old absolute (0.1, 1.0) px was 4x the papers' strength at 28 px and erased lesions.
BLUR_SIGMA: tuple[float, float] = (0.1 / 224, 2.0 / 224)


@dataclass(frozen=True)
class ViewTransform:
    """Parameters of one augmented view. Probabilities are per sample.

    ``output_size=None`` keeps the input size; multi-crop local views set a smaller one.
    ``blur_sigma`` is a fraction of the output side (:data:`BLUR_SIGMA`: the papers' 0.1–2.0 px
    at 224 px, i.e. 0.0125–0.25 px at 28 px), so that blur has the papers' strength at every
    resolution; with ``blur_prob=0`` no blur is drawn.
    """

    output_size: int | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)  # fraction of the image area
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range (w / h)
    hflip_prob: float = 0.5
    vflip_prob: float = 0.0
    rot90_prob: float = 0.0  # probability of a random k·90° rotation, k ∈ {1, 2, 3}
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2  # RGB only
    hue: float = 0.1  # RGB only, as a fraction of a full turn (torchvision convention)
    grayscale_prob: float = 0.2  # RGB only
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = BLUR_SIGMA
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5
    noise_prob: float = 0.0
    noise_std: float = 0.03

    def __post_init__(self) -> None:
        for name in (
            "hflip_prob",
            "vflip_prob",
            "rot90_prob",
            "jitter_prob",
            "grayscale_prob",
            "blur_prob",
            "solarize_prob",
            "noise_prob",
        ):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        if self.blur_sigma[0] <= 0 or self.blur_sigma[0] > self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")


IDENTITY = ViewTransform(
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    hflip_prob=0.0,
    jitter_prob=0.0,
    grayscale_prob=0.0,
)


@dataclass(frozen=True)
class AugmentRecipe:
    """The views of one SSL method family: ``views[i]`` makes the i-th view of every image."""

    name: str
    views: tuple[ViewTransform, ...]
    reference: str = ""

    @property
    def n_views(self) -> int:
        return len(self.views)

    def for_modality(self, n_channels: int, rotation_invariant: bool = False) -> AugmentRecipe:
        """Medical-appropriate variant: grey drops colour ops; rotation-invariant data (e.g.
        histology) adds vertical flips and 90° rotations."""
        if n_channels not in (1, 3):
            raise ValueError(f"expected 1 (grey) or 3 (RGB) channels, got {n_channels}")
        views = []
        for v in self.views:
            if n_channels == 1:
                v = replace(v, saturation=0.0, hue=0.0, grayscale_prob=0.0)
            if rotation_invariant:
                v = replace(v, vflip_prob=max(v.vflip_prob, v.hflip_prob), rot90_prob=0.5)
            views.append(v)
        return replace(self, views=tuple(views))


def recipe_for_dataset(recipe: AugmentRecipe, dataset: str, n_channels: int) -> AugmentRecipe:
    """``recipe`` adapted to a dataset's channels and orientation invariance."""
    return recipe.for_modality(n_channels, dataset in ROTATION_INVARIANT_DATASETS)


# ----------------------------------------------------------------------------- the recipes --
# SimCLR (Chen et al. 2020, App. A): crop (0.08, 1), flip, jitter 0.8 × (0.4, 0.4, 0.4, 0.1),
# greyscale 0.2. Saturation is reduced to 0.2 (fundus/histology colour carries signal); blur is
# off as in the paper's CIFAR setting.
_SIMCLR_VIEW = ViewTransform()
SIMCLR = AugmentRecipe("simclr", (_SIMCLR_VIEW, _SIMCLR_VIEW), "Chen et al. 2020, ICML")

# MoCo v2 (Chen et al. 2020, arXiv:2003.04297) uses the SimCLR recipe plus blur.
_MOCO_VIEW = ViewTransform(blur_prob=0.5)
MOCOV2 = AugmentRecipe("mocov2", (_MOCO_VIEW, _MOCO_VIEW), "Chen et al. 2020, arXiv:2003.04297")

# BYOL (Grill et al. 2020, Table 6): asymmetric views. View 1: blur 1.0, no solarisation;
# view 2: blur 0.1, solarisation 0.2. Jitter (0.4, 0.4, 0.2, 0.1) with p=0.8.
BYOL = AugmentRecipe(
    "byol",
    (
        ViewTransform(blur_prob=1.0, solarize_prob=0.0),
        ViewTransform(blur_prob=0.1, solarize_prob=0.2),
    ),
    "Grill et al. 2020, NeurIPS",
)

# Barlow Twins (Zbontar et al. 2021) uses BYOL's asymmetric recipe.
BARLOWTWINS = replace(BYOL, name="barlowtwins", reference="Zbontar et al. 2021, ICML")

# Multi-crop methods (Caron et al. 2020 SwAV; Caron et al. 2021 DINO) at 28 px: the 2 global
# crops only, at scale (0.14, 1) (DINO's ResNet-50 and SwAV's setting), as lightly's CIFAR-10
# benchmark runs them at 32 px (DINO ``n_local_views=0``; SwAV 2 crops, min scale 0.14). The
# ImageNet local crops (96 px of 224) would be 12 px here; DINO's local scale (0.05, 0.4) is
# its ViT setting (ResNet: (0.05, 0.14)). The methods still accept local crops as views 3+.
_GLOBAL = ViewTransform(crop_scale=(0.14, 1.0), blur_prob=0.5)
DINO = AugmentRecipe(
    "dino",
    (replace(_GLOBAL, blur_prob=1.0), replace(_GLOBAL, blur_prob=0.1, solarize_prob=0.2)),
    "Caron et al. 2021, ICCV",
)
SWAV = AugmentRecipe("swav", (_GLOBAL, _GLOBAL), "Caron et al. 2020")

# SparK (Tian et al. 2023): masking is the pretext task; augmentation is a mild random resized
# crop (0.67, 1) and a horizontal flip only.
SPARK = AugmentRecipe(
    "spark",
    (
        ViewTransform(
            crop_scale=(0.67, 1.0),
            jitter_prob=0.0,
            grayscale_prob=0.0,
        ),
    ),
    "Tian et al. 2023, ICLR",
)

RECIPES: dict[str, AugmentRecipe] = {
    r.name: r for r in (SIMCLR, MOCOV2, BYOL, BARLOWTWINS, DINO, SWAV, SPARK)
}


# ---------------------------------------------------------------------------- the ops -------
def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device) < p


def _geometry(
    x: torch.Tensor, view: ViewTransform, generator: torch.Generator, out_size: int
) -> torch.Tensor:
    """Random resized crop + flips + 90° rotations as one affine resampling of the batch.

    The crop of relative width ``w`` and height ``h`` (of the image side) centred at ``(cx,
    cy)`` in normalised coordinates maps output coords ``u`` to input ``A u + t`` with
    ``A = diag(w, h) · R · F``. Where torchvision re-draws an out-of-range crop (up to 10 times,
    then centre-crops), the sides are clamped to 1: the same distribution almost everywhere,
    without data-dependent control flow.
    """
    n = x.shape[0]
    area = _uniform(n, *view.crop_scale, generator)
    log_ratio = _uniform(n, math.log(view.crop_ratio[0]), math.log(view.crop_ratio[1]), generator)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (_uniform(n, -1.0, 1.0, generator)) * (1.0 - w)
    cy = (_uniform(n, -1.0, 1.0, generator)) * (1.0 - h)
    fx = 1.0 - 2.0 * _bernoulli(n, view.hflip_prob, generator).to(x.dtype)
    fy = 1.0 - 2.0 * _bernoulli(n, view.vflip_prob, generator).to(x.dtype)
    k = torch.randint(1, 4, (n,), generator=generator, device=generator.device)
    k = torch.where(_bernoulli(n, view.rot90_prob, generator), k, torch.zeros_like(k))
    is_identity = (
        view.crop_scale == (1.0, 1.0)
        and view.crop_ratio == (1.0, 1.0)
        and view.hflip_prob == 0.0
        and view.vflip_prob == 0.0
        and view.rot90_prob == 0.0
        and out_size == x.shape[-1]
    )
    if is_identity:
        return x  # skip an exact-but-costly resampling
    angle = k.to(x.dtype) * (math.pi / 2)
    cos, sin = torch.cos(angle).round(), torch.sin(angle).round()  # exact for multiples of 90°
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = w * cos * fx
    theta[:, 0, 1] = -w * sin * fy
    theta[:, 1, 0] = h * sin * fx
    theta[:, 1, 1] = h * cos * fy
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luma (N,1,H,W) of an RGB batch (or the batch itself if grey)."""
    if x.shape[1] == 1:
        return x
    luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * luma).sum(1, keepdim=True)


def _hue_matrices(shift: torch.Tensor) -> torch.Tensor:
    """(N,3,3) RGB→RGB hue rotations by ``shift`` turns, rotating chroma in YIQ space.

    A linear approximation of torchvision's HSV hue shift (exact for luma, close for chroma)
    that batches as one matmul instead of a per-pixel HSV round trip.
    """
    rgb2yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
        dtype=shift.dtype,
        device=shift.device,
    )
    yiq2rgb = torch.linalg.inv(rgb2yiq)
    angle = shift * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(shift.shape[0], 3, 3, dtype=shift.dtype, device=shift.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    return yiq2rgb @ rot @ rgb2yiq


def _colour(x: torch.Tensor, view: ViewTransform, generator: torch.Generator) -> torch.Tensor:
    """Brightness → contrast → saturation → hue, then random greyscale; per-sample factors.

    torchvision applies the four jitters in a random order per call; a fixed order keeps the
    batch vectorised (the SimCLR paper does not depend on the order).
    """
    n, c = x.shape[:2]
    on = _bernoulli(n, view.jitter_prob, generator)
    b = _uniform(n, 1 - view.brightness, 1 + view.brightness, generator)
    ct = _uniform(n, 1 - view.contrast, 1 + view.contrast, generator)
    s = _uniform(n, 1 - view.saturation, 1 + view.saturation, generator)
    hue = _uniform(n, -view.hue, view.hue, generator)
    grey = _bernoulli(n, view.grayscale_prob, generator)
    one = torch.ones_like(b)
    b, ct, s = torch.where(on, b, one), torch.where(on, ct, one), torch.where(on, s, one)
    hue = torch.where(on, hue, torch.zeros_like(hue))
    if view.jitter_prob > 0 and (view.brightness > 0 or view.contrast > 0):
        x = (x * b.view(n, 1, 1, 1)).clamp_(0, 1)
        mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * ct.view(n, 1, 1, 1) + mean).clamp_(0, 1)
    if c == 3 and view.jitter_prob > 0 and view.saturation > 0:
        g = _grey(x)
        x = ((x - g) * s.view(n, 1, 1, 1) + g).clamp_(0, 1)
    if c == 3 and view.jitter_prob > 0 and view.hue > 0:
        m = _hue_matrices(hue)
        x = torch.einsum("nij,njhw->nihw", m, x).clamp_(0, 1)
    if c == 3 and view.grayscale_prob > 0:
        x = torch.where(grey.view(n, 1, 1, 1), _grey(x).expand_as(x), x)
    return x


def _blur(x: torch.Tensor, view: ViewTransform, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma (``view.blur_sigma`` × the image side, in px):
    one separable grouped convolution over the selected samples (reflect padding, kernel
    radius 3·sigma_max)."""
    n, c, hgt, wid = x.shape
    side = min(hgt, wid)
    on = _bernoulli(n, view.blur_prob, generator)
    sigma = _uniform(n, *view.blur_sigma, generator) * side
    if view.blur_prob == 0 or not bool(on.any()):
        return x
    idx = on.nonzero().flatten()
    radius = min(math.ceil(3 * view.blur_sigma[1] * side), (side - 1) // 2)
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps.view(1, -1) ** 2) / (2 * sigma[idx].view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (m·c, K)
    sel = x[idx].reshape(1, -1, hgt, wid)
    sel = F.pad(sel, (radius, radius, radius, radius), mode="reflect")
    sel = F.conv2d(sel, kernel.view(-1, 1, 1, 2 * radius + 1), groups=sel.shape[1])
    sel = F.conv2d(sel, kernel.view(-1, 1, 2 * radius + 1, 1), groups=sel.shape[1])
    out = x.clone()
    out[idx] = sel.view(-1, c, hgt, wid)
    return out


def _solarize(x: torch.Tensor, view: ViewTransform, generator: torch.Generator) -> torch.Tensor:
    on = _bernoulli(x.shape[0], view.solarize_prob, generator).view(-1, 1, 1, 1)
    if view.solarize_prob == 0:
        return x
    return torch.where(on & (x >= view.solarize_threshold), 1.0 - x, x)


def _noise(x: torch.Tensor, view: ViewTransform, generator: torch.Generator) -> torch.Tensor:
    on = _bernoulli(x.shape[0], view.noise_prob, generator).view(-1, 1, 1, 1)
    if view.noise_prob == 0:
        return x
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return torch.where(on, (x + view.noise_std * noise).clamp(0, 1), x)


def augment_batch(x: torch.Tensor, view: ViewTransform, generator: torch.Generator) -> torch.Tensor:
    """One augmented view of a float batch in [0, 1] (N,C,H,W) → (N,C,S,S) in [0, 1].

    ``S`` is ``view.output_size`` (default: H). The channel count is kept: grey stays grey.
    ``generator`` must live on ``x``'s device.
    """
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected a (N, 1|3, H, W) batch, got shape {tuple(x.shape)}")
    if generator.device.type != x.device.type:
        raise ValueError(f"generator on {generator.device} but batch on {x.device}")
    out_size = view.output_size or x.shape[-1]
    x = _geometry(x, view, generator, out_size)
    x = _colour(x, view, generator)
    x = _blur(x, view, generator)
    x = _solarize(x, view, generator)
    return _noise(x, view, generator)


def make_views(
    x_u8: torch.Tensor,
    recipe: AugmentRecipe,
    generator: torch.Generator,
    model_input: bool = True,
) -> list[torch.Tensor]:
    """All views of a uint8 batch (N,C,H,W), in recipe order.

    With ``model_input`` (the default) each view goes through
    :func:`medstudy.data.to_model_input` (3 channels, ImageNet normalisation); otherwise the
    views stay in [0, 1] with the input's channels (for display).
    """
    x = to_float(x_u8)
    views = [augment_batch(x, view, generator) for view in recipe.views]
    return [to_model_input(v) for v in views] if model_input else views
