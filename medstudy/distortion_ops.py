"""Batched tensor operations behind :mod:`medstudy.distortions`: severity checks, seeded noise
draws, separable and 2-D filters, blur kernels and resize operators (pure torch, explicit
generators, never the global RNG)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

T = TypeVar("T")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
# ITU-R 601-2 luma, as PIL's "L" conversion that ImageEnhance.Contrast uses (MedMNIST-C).
LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)
_LUMA = LUMA


def _check_severity(severity: object, allow_clean: bool) -> None:
    lo = 0 if allow_clean else 1
    is_int = isinstance(severity, int | np.integer) and not isinstance(severity, bool | np.bool_)
    if not is_int or not lo <= int(severity) <= 5:  # type: ignore[call-overload]
        meaning = "0 = clean, 1 = mildest … 5 = strongest" if allow_clean else "1 … 5"
        raise ValueError(
            f"severity must be an int in {lo}–5 ({meaning}), got {severity!r}"
            f" ({type(severity).__name__})"
        )


def _level(table: tuple[T, ...], severity: int) -> T:
    """``table[severity - 1]`` after checking that severity is an int in 1–5."""
    _check_severity(severity, allow_clean=False)
    return table[int(severity) - 1]


def _rand(shape: Sequence[int], x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=generator, device=x.device, dtype=x.dtype)


def _randn(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


#: Values per independent random stream of :func:`_poisson` and :func:`_poisson_8bit` (fixed,
#: so that a result never depends on the thread count).
POISSON_CHUNK = 1 << 20


def _chunked_draw(
    n: int,
    generator: torch.Generator,
    draw: Callable[[slice, torch.Generator], None],
) -> None:
    """Call ``draw(part, stream)`` for fixed chunks of :data:`POISSON_CHUNK` of ``range(n)``.

    Chunk ``i`` gets its own generator, seeded with the ``i``-th of one batch of 63-bit seeds
    drawn from ``generator``, and the chunks run on ``torch.get_num_threads()`` Python threads
    (torch releases the GIL inside its ops). What ``draw`` writes depends on the generator's
    state and the input only, never on the thread count.
    """
    n_chunks = max(1, -(-n // POISSON_CHUNK))
    seeds = torch.randint(0, 2**63 - 1, (n_chunks,), generator=generator).tolist()

    def one(i: int) -> None:
        draw(
            slice(i * POISSON_CHUNK, (i + 1) * POISSON_CHUNK),
            torch.Generator().manual_seed(seeds[i]),
        )

    with ThreadPoolExecutor(min(torch.get_num_threads(), n_chunks)) as pool:
        list(pool.map(one, range(n_chunks)))


def _poisson(rate: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Exact Poisson draws with mean ``rate`` (any shape, float), on every CPU core.

    ``torch.poisson``'s CPU kernel is serial (one generator, ~100 ns per value here), so the
    values are drawn in chunks on threads (:func:`_chunked_draw`). Off the CPU, one
    ``torch.poisson`` call (already parallel there).
    """
    if rate.device.type != "cpu":
        return torch.poisson(rate, generator=generator)
    flat = rate.reshape(-1)
    out = torch.empty_like(flat)

    def draw(part: slice, stream: torch.Generator) -> None:
        out[part] = torch.poisson(flat[part], generator=stream)

    _chunked_draw(flat.numel(), generator, draw)
    return out.view(rate.shape)


#: Bits of the uniform integer that :func:`_poisson_8bit` inverts, and of its guide-table cell.
UNIFORM_BITS, GUIDE_BITS = 31, 12


@functools.lru_cache(maxsize=16)
def _poisson_8bit_tables(photons: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Inversion tables of Poisson(photons · L / 255) for the 256 levels L.

    ``cdf[L, k]`` is P(K ≤ k) in units of 2^-UNIFORM_BITS, rounded (float64 pmf from
    ``lgamma``); the last column is forced to 2^UNIFORM_BITS, so the tail beyond
    ``k_max = λ + 12√λ + 20`` (mass < 1e-20 for λ ≤ 60) joins ``k_max``. Every outcome's
    probability is thus the Poisson pmf to within 2^-UNIFORM_BITS (4.7e-10).
    ``guide[L, c]`` is the outcome of every uniform in cell ``c`` (the top GUIDE_BITS bits) of
    level ``L``, or −1 when a CDF step falls inside the cell. Returns (guide flattened,
    cdf + L·2^UNIFORM_BITS flattened (increasing, for one ``searchsorted``), row length).
    """
    lam = torch.arange(256, dtype=torch.float64) * (photons / 255)
    k_max = int(photons + 12 * math.sqrt(photons) + 20)
    k = torch.arange(k_max + 1, dtype=torch.float64)
    log_pmf = k * lam[:, None].log() - lam[:, None] - torch.lgamma(k + 1)
    pmf = log_pmf.exp()
    pmf[0] = (k == 0).to(pmf.dtype)  # level 0: λ = 0, always 0 photons (0·log 0 is NaN)
    scale = 1 << UNIFORM_BITS
    cdf = (pmf.cumsum(1) * scale).round_().to(torch.int64).clamp_(max=scale)
    cdf[:, -1] = scale
    shift = UNIFORM_BITS - GUIDE_BITS
    first = (torch.arange(1 << GUIDE_BITS, dtype=torch.int64) << shift).expand(256, -1)
    at_first = torch.searchsorted(cdf, first.contiguous(), right=True)
    at_last = torch.searchsorted(cdf, (first + ((1 << shift) - 1)).contiguous(), right=True)
    guide = torch.where(at_first == at_last, at_first, -1).to(torch.int16)
    offset = torch.arange(256, dtype=torch.int64)[:, None] << UNIFORM_BITS
    return guide.reshape(-1), (cdf + offset).reshape(-1), k_max + 1


def _poisson_8bit(level: torch.Tensor, photons: float, generator: torch.Generator) -> torch.Tensor:
    """Poisson(photons · level / 255) draws for integer levels 0–255, by table inversion.

    One uniform 31-bit integer u per value; the outcome is the smallest k with u < cdf[L, k]
    (:func:`_poisson_8bit_tables`). A guide table answers from u's top 12 bits for ~99 % of the
    values; the rest (their cell holds a CDF step) take one ``searchsorted`` in the level's
    CDF. The outcome probabilities are the Poisson pmf to within 2^-31: exact for any test
    this study can run, as a chi-square test checks against scipy. 3x faster than
    ``torch.poisson`` for 8-bit images on this CPU (benchmarks/README.md, bench_robustness).
    Chunked on threads like :func:`_poisson`; a float tensor of counts of ``level``'s shape.
    """
    guide, cdf, row = _poisson_8bit_tables(float(photons))
    flat = level.reshape(-1)
    out = torch.empty(flat.shape, dtype=torch.float32)

    def draw(part: slice, stream: torch.Generator) -> None:
        lv = flat[part].to(torch.int32)
        u = torch.randint(0, 1 << UNIFORM_BITS, lv.shape, generator=stream, dtype=torch.int32)
        out[part] = _invert_8bit(lv, u, guide, cdf, row)

    _chunked_draw(flat.numel(), generator, draw)
    return out.view(level.shape)


def _invert_8bit(
    level: torch.Tensor, u: torch.Tensor, guide: torch.Tensor, cdf: torch.Tensor, row: int
) -> torch.Tensor:
    """The smallest k with ``u < cdf[level, k]``, as float32 (tables of
    :func:`_poisson_8bit_tables`; level and u integer tensors of one shape)."""
    level, u = level.to(torch.int32), u.to(torch.int32)
    cell = (level << GUIDE_BITS).add_(u >> (UNIFORM_BITS - GUIDE_BITS))
    k = guide.index_select(0, cell).to(torch.float32)
    step = (k < 0).nonzero().squeeze(1)
    level_step = level[step].to(torch.int64)
    key = u[step].to(torch.int64) + (level_step << UNIFORM_BITS)
    k[step] = (torch.searchsorted(cdf, key, right=True) - level_step * row).to(torch.float32)
    return k


def _photon_counts(x: torch.Tensor, photons: float, generator: torch.Generator) -> torch.Tensor:
    """Poisson(photons · x) draws, as float counts in x's shape (x float in [0, 1]).

    On the CPU, when every value of x is an 8-bit level (|255·x − round(255·x)| ≤ 1e-3 and
    round(255·x) in 0–255, as for MedMNIST images), :func:`_poisson_8bit`; otherwise :func:`_poisson` (``torch.poisson``).
    Both draw from the same distribution, with different streams.
    """
    work = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    if x.device.type == "cpu" and work.numel():
        scaled = work * 255
        level = scaled.round()
        on_grid = float((scaled - level).abs().max()) <= 1e-3
        if on_grid and 0 <= float(level.min()) and float(level.max()) <= 255:  # no uint8 wrap
            return _poisson_8bit(level.to(torch.uint8), photons, generator).to(work.dtype)
    return _poisson(work * photons, generator)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(N,1,H,W) luma of an RGB batch; a grey batch is its own luma."""
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _gaussian_taps(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius ``int(truncate·σ + 0.5)`` (scipy/skimage's rule)."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def _replicate_operator(n: int, taps: torch.Tensor) -> torch.Tensor:
    """(n, n) matrix of a 1-D correlation with ``taps`` (odd length) and edge replication."""
    radius = (taps.numel() - 1) // 2
    src = (torch.arange(n)[:, None] + torch.arange(-radius, radius + 1)[None, :]).clamp(0, n - 1)
    op = torch.zeros(n, n, dtype=torch.float64)
    return op.scatter_add_(1, src, taps.expand(n, -1).contiguous())


def _separable_blur(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Blur rows and columns with ``taps`` (edge replication) as two small matrix products.

    At 28 px, ``B_H @ x @ B_Wᵀ`` with dense (28, 28) operators is faster on a CPU than a
    grouped convolution, and the border rule lives in the operator.
    """
    h, w = x.shape[-2:]
    op_h = _replicate_operator(h, taps).to(x.dtype).to(x.device)
    op_w = _replicate_operator(w, taps).to(x.dtype).to(x.device)
    return op_h @ x @ op_w.T


def _box_operator(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) matrix of PIL's ``Image.resize(..., BOX)`` along one axis.

    Pillow's ``precompute_coeffs``: output pixel k averages the input pixels whose centres
    fall in ((k + ½)·s − f/2, (k + ½)·s + f/2], s = n_in/n_out, f = max(s, 1). Upsampling
    (f = 1) picks exactly one pixel: nearest neighbour.
    """
    scale = n_in / n_out
    width = max(scale, 1.0)
    centre = (torch.arange(n_out, dtype=torch.float64)[:, None] + 0.5) * scale
    t = (torch.arange(n_in, dtype=torch.float64)[None, :] + 0.5 - centre) / width
    op = ((t > -0.5) & (t <= 0.5)).to(torch.float64)
    return op / op.sum(1, keepdim=True)


def _box_resize_operator(n: int, n_small: int) -> torch.Tensor:
    """(n, n): BOX-resize n → n_small → n along one axis."""
    return _box_operator(n, n_small) @ _box_operator(n_small, n)


def _filter2d(
    x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int, int, int], mode: str
) -> torch.Tensor:
    """Correlate every image with a 2-D kernel: shared ``(kh, kw)`` or per image ``(N, kh, kw)``.

    ``pad`` = (left, right, top, bottom) must make the output H×W. One grouped convolution
    over the N·C planes; on a CPU it beats a batch of single-channel convolutions ~5x.
    """
    n, c, h, w = x.shape
    if kernel.ndim == 2:
        kernel = kernel.expand(n, *kernel.shape)
    weight = kernel.to(dtype=x.dtype, device=x.device).repeat_interleave(c, 0).unsqueeze(1)
    planes = F.pad(x.reshape(1, n * c, h, w), pad, mode=mode)
    return F.conv2d(planes, weight, groups=n * c).view(n, c, h, w)


def _disk_kernel(radius: float, alias_sigma: float, supersample: int = 16) -> torch.Tensor:
    """ImageNet-C's defocus kernel: a disk (pillbox) blurred by a 3×3 Gaussian of σ
    ``alias_sigma``. The disk is its exact area coverage of each pixel (``supersample``² points
    per pixel), not ImageNet-C's integer-radius mask, so sub-pixel radii after rescaling to
    28 px still grow the blur smoothly."""
    half = max(0, math.ceil(radius - 0.5))
    sub = (torch.arange(supersample, dtype=torch.float64) + 0.5) / supersample - 0.5
    coords = (torch.arange(-half, half + 1, dtype=torch.float64)[:, None] + sub).flatten()
    inside = (coords[:, None] ** 2 + coords[None, :] ** 2) <= radius**2
    size = 2 * half + 1
    disk = inside.view(size, supersample, size, supersample).sum((1, 3)).to(torch.float64)
    disk = disk / disk.sum()
    if alias_sigma <= 0:
        return disk
    g = torch.exp(-0.5 * (torch.arange(-1.0, 2.0, dtype=torch.float64) / alias_sigma) ** 2)
    g = g / g.sum()
    out = torch.zeros(size + 2, size + 2, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            out[i : i + size, j : j + size] += g[i] * g[j] * disk
    return out


def _motion_kernels(
    angles_deg: torch.Tensor, radius: float, sigma: float, step: float
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Per-image motion-blur kernels (N, rows, cols) and the padding that centres them.

    ImageMagick's ``MotionBlurImage`` (what ImageNet-C calls): ``2·ceil(radius) + 1`` taps
    ``i = 0, 1, …`` along the direction ``angle``, weighted by a one-sided Gaussian
    ``exp(−i² / 2σ²)``; output(p) = Σ wᵢ · input(p + i·(cos, sin)). ``step`` is the tap spacing
    in output pixels (1/8 when a 224 px table is applied at 28 px); taps at sub-pixel offsets
    are splatted bilinearly, i.e. the input is sampled bilinearly there.
    """
    n_taps = 2 * math.ceil(radius) + 1
    i = torch.arange(n_taps, dtype=torch.float64)
    weight = torch.exp(-(i**2) / (2 * sigma**2))
    weight = weight / weight.sum()
    reach = (n_taps - 1) * step
    # angles ∈ [−45°, 45°]: x offsets ∈ [0, reach], y offsets ∈ [−reach/√2, reach/√2]
    hx = math.floor(reach) + 1
    hy = math.floor(reach * math.sqrt(0.5)) + 1
    rows, cols = 2 * hy + 1, hx + 1
    theta = torch.deg2rad(angles_deg.to(torch.float64).cpu())
    px = torch.outer(torch.cos(theta), i * step)  # (N, taps) offsets, ≥ 0
    py = torch.outer(torch.sin(theta), i * step)
    x0, y0 = torch.floor(px), torch.floor(py)
    fx, fy = px - x0, py - y0
    # bilinear splat of every tap onto its 4 neighbours, all images at once (one bincount)
    n, size = theta.numel(), rows * cols
    corner = (torch.arange(n, dtype=torch.float64) * size)[:, None] + (y0 + hy) * cols + x0
    index = torch.stack([corner, corner + 1, corner + cols, corner + cols + 1])
    share = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]) * weight
    kernels = torch.bincount(index.to(torch.int64).flatten(), share.flatten(), minlength=n * size)
    return kernels.view(-1, rows, cols), (0, hx, hy, hy)
