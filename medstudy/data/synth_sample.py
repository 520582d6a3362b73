"""Sampling the scene of each synthetic fundus image: lesion counts, anatomy, lesion geometry.

Every function takes the generator's ``np.random.Generator`` and draws from it in a fixed order;
:func:`medstudy.data.synth.generate_synth_lesions` calls them in the order that defines the
data set, so reordering draws here (or there) changes every image. Geometry is in px, scaled by
``size / REF_SIZE``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medstudy.data.synth_spec import EX_MANY, EXU, HAEM, MA, MA_FEW_MAX, MA_MANY

__all__ = [
    "DESIGNS",
    "Anatomy",
    "LesionSet",
    "place_lesions",
    "sample_anatomy",
    "sample_counts",
    "sample_lesions",
]

# Lesion "designs": (kind, intended size class, equivalent-radius range in px at 28 px, max
# aspect ratio). Radii are chosen so the visible area lands well inside its SIZE_CLASSES bin.
# Order = drawing order (large first so small lesions find gaps and stay on top).
DESIGNS: tuple[tuple[int, str, tuple[float, float], float], ...] = (
    (HAEM, "large", (2.7, 3.3), 1.6),
    (HAEM, "small", (1.72, 1.95), 1.3),
    (EXU, "large", (2.6, 3.1), 1.7),
    (EXU, "small", (1.72, 1.95), 1.3),
    (MA, "minute", (0.5, 1.0), 1.2),
)
_D_HL, _D_HS, _D_EL, _D_ES, _D_MA = range(len(DESIGNS))

# Lesion colours (linear RGB in [0, 1], times the image gain) and opacity ranges. MAs and
# haemorrhages are dark red (blood), exudates bright yellow (lipid).
_LESION_RGB = {
    MA: (0.40, 0.05, 0.04),
    HAEM: (0.36, 0.04, 0.03),
    EXU: (1.00, 0.86, 0.42),
}
_LESION_ALPHA = {MA: (0.75, 0.95), HAEM: (0.70, 0.92), EXU: (0.65, 0.90)}

_N_CANDIDATES = 24  # candidate positions per lesion in rejection sampling


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Per-image anatomy and appearance, arrays of length ``n`` (colours ``(n, 3)``).

    Field of view ``cy, cx, radius``; optic disc ``od_cy, od_cx`` (integer-valued) and
    ``od_radius``; macula ``mac_cy, mac_cx, mac_r`` and its darkening ``mac_depth``; colours
    ``base_rgb`` (retina) and ``od_rgb`` (optic disc); exposure ``gain``, ``vignette``,
    ``vessel_contrast`` and the sensor ``noise_sd``. ``eye_right``: optic disc on the right.
    """

    eye_right: np.ndarray
    cy: np.ndarray
    cx: np.ndarray
    radius: np.ndarray
    od_cy: np.ndarray
    od_cx: np.ndarray
    od_radius: np.ndarray
    mac_cy: np.ndarray
    mac_cx: np.ndarray
    mac_r: np.ndarray
    mac_depth: np.ndarray
    base_rgb: np.ndarray
    gain: np.ndarray
    vignette: np.ndarray
    od_rgb: np.ndarray
    vessel_contrast: np.ndarray
    noise_sd: np.ndarray


@dataclass(frozen=True, eq=False)
class LesionSet:
    """All sampled lesions as flat arrays sorted by ``(image, order)``.

    ``order`` is the drawing order within the image, ``kind`` the mask value, ``a, b`` the
    semi-axes (px) of the ellipse rotated by ``theta`` (given as float32 ``cos, sin``),
    ``alpha`` the peak opacity, ``rgb`` ``(L, 3)`` the colour and ``cy, cx`` the centre (px).
    """

    image: np.ndarray
    order: np.ndarray
    kind: np.ndarray
    a: np.ndarray
    b: np.ndarray
    cos: np.ndarray
    sin: np.ndarray
    alpha: np.ndarray
    rgb: np.ndarray
    cy: np.ndarray
    cx: np.ndarray


def sample_counts(rng: np.random.Generator, grades: np.ndarray) -> np.ndarray:
    """Lesion counts ``(n, len(DESIGNS))`` consistent with each sampled grade.

    All draws are made for all images and then selected by grade, which keeps the RNG stream
    independent of the grade mix (and is vectorised).
    """
    n = grades.shape[0]
    counts = np.zeros((n, len(DESIGNS)), dtype=np.int64)
    g = grades
    # grade 1: 1..MA_FEW_MAX microaneurysms only.
    ma_few = rng.integers(1, MA_FEW_MAX + 1, n)
    # grade 2: either (a) MA_FEW_MAX+1..7 MAs, or (b) 0..3 MAs and 1-2 haemorrhages.
    g2_many_ma = rng.random(n) < 0.5
    ma_mod = rng.integers(MA_FEW_MAX + 1, 8, n)
    ma_some = rng.integers(0, MA_FEW_MAX + 1, n)
    h_few = rng.integers(1, 3, n)
    h_few_large = rng.binomial(h_few, 0.3)
    # grade 3: 0..MA_MANY-1 MAs (so it can never reach grade 4), 1-3 haemorrhages, 1-3 exudates.
    ma3 = rng.integers(0, MA_MANY, n)
    h3 = rng.integers(1, 4, n)
    h3_large = rng.binomial(h3, 0.4)
    e3 = rng.integers(1, 4, n)
    e3_large = rng.binomial(e3, 0.4)
    # grade 4: MA_MANY..8 MAs, 1-2 large + 0-1 small haemorrhages, EX_MANY..4 exudates.
    ma4 = rng.integers(MA_MANY, 9, n)
    h4_large = rng.integers(1, 3, n)
    h4_small = rng.integers(0, 2, n)
    e4 = rng.integers(EX_MANY, 5, n)
    e4_large = rng.binomial(e4, 0.5)

    ma = np.select(
        [g == 1, (g == 2) & g2_many_ma, g == 2, g == 3, g == 4], [ma_few, ma_mod, ma_some, ma3, ma4]
    )
    hl = np.select([(g == 2) & ~g2_many_ma, g == 3, g == 4], [h_few_large, h3_large, h4_large])
    hs = np.select(
        [(g == 2) & ~g2_many_ma, g == 3, g == 4], [h_few - h_few_large, h3 - h3_large, h4_small]
    )
    el = np.select([g == 3, g == 4], [e3_large, e4_large])
    es = np.select([g == 3, g == 4], [e3 - e3_large, e4 - e4_large])
    counts[:, _D_MA], counts[:, _D_HL], counts[:, _D_HS] = ma, hl, hs
    counts[:, _D_EL], counts[:, _D_ES] = el, es
    return counts


def sample_anatomy(rng: np.random.Generator, n: int, size: int) -> Anatomy:
    """Per-image anatomy and appearance of ``n`` images of ``size`` px.

    Drawn independently of the grade, so global colour or brightness carries no label
    information.
    """
    eye_right = rng.random(n) < 0.5
    side = np.where(eye_right, 1.0, -1.0)
    fcy = size / 2 - 0.5 + rng.uniform(-0.03, 0.03, n) * size
    fcx = size / 2 - 0.5 + rng.uniform(-0.03, 0.03, n) * size
    frad = rng.uniform(0.42, 0.46, n) * size
    # Optic disc ~ 1/6 of the FOV diameter, on the nasal side; integer centre so the vessel
    # template (centred on it) is cropped without resampling.
    od_cy = np.rint(fcy + rng.uniform(-0.06, 0.06, n) * size)
    od_cx = np.rint(fcx + side * rng.uniform(0.22, 0.28, n) * size)
    od_r = rng.uniform(0.065, 0.085, n) * size
    mac_cy = fcy + rng.uniform(-0.03, 0.03, n) * size
    mac_cx = fcx - side * rng.uniform(0.02, 0.06, n) * size
    mac_r = rng.uniform(0.10, 0.14, n) * size
    mac_depth = rng.uniform(0.08, 0.2, n)
    base_rgb = np.stack(
        [rng.uniform(0.72, 0.92, n), rng.uniform(0.26, 0.42, n), rng.uniform(0.08, 0.20, n)], 1
    )
    gain = rng.uniform(0.72, 1.1, n)  # exposure
    vignette = rng.uniform(0.25, 0.5, n)
    od_rgb = np.stack(
        [np.ones(n), rng.uniform(0.80, 0.95, n), rng.uniform(0.45, 0.65, n)], 1
    ) * rng.uniform(0.9, 1.05, (n, 1))
    vessel_contrast = rng.uniform(0.7, 1.1, n)
    noise_sd = rng.uniform(0.008, 0.025, n)
    return Anatomy(
        eye_right=eye_right, cy=fcy, cx=fcx, radius=frad, od_cy=od_cy, od_cx=od_cx,
        od_radius=od_r, mac_cy=mac_cy, mac_cx=mac_cx, mac_r=mac_r, mac_depth=mac_depth,
        base_rgb=base_rgb, gain=gain, vignette=vignette, od_rgb=od_rgb,
        vessel_contrast=vessel_contrast, noise_sd=noise_sd,
    )  # fmt: skip


def sample_lesions(
    rng: np.random.Generator, counts: np.ndarray, anatomy: Anatomy, scale: float
) -> LesionSet:
    """Shape, colour and position of every lesion given the counts ``(n, len(DESIGNS))``."""
    n = counts.shape[0]
    totals = counts.sum(axis=1)
    n_les = int(totals.sum())
    design = np.repeat(np.tile(np.arange(len(DESIGNS)), n), counts.ravel())
    image = np.repeat(np.arange(n), totals)
    starts = np.cumsum(totals) - totals
    order = np.arange(n_les) - np.repeat(starts, totals)
    d_kind = np.array([d[0] for d in DESIGNS])
    d_lo = np.array([d[2][0] for d in DESIGNS]) * scale
    d_hi = np.array([d[2][1] for d in DESIGNS]) * scale
    d_asp = np.array([d[3] for d in DESIGNS])
    kind = d_kind[design]
    r_eq = rng.uniform(d_lo[design], d_hi[design])
    aspect = rng.uniform(1.0, d_asp[design])
    a = r_eq * np.sqrt(aspect)  # semi-axes with pi*a*b = pi*r_eq**2
    b = r_eq / np.sqrt(aspect)
    theta = rng.uniform(0, np.pi, n_les)
    alpha_lo = np.array([0.0, *(_LESION_ALPHA[k][0] for k in (MA, HAEM, EXU))])
    alpha_hi = np.array([0.0, *(_LESION_ALPHA[k][1] for k in (MA, HAEM, EXU))])
    alpha = rng.uniform(alpha_lo[kind], alpha_hi[kind])
    kind_rgb = np.array([(0, 0, 0), *(_LESION_RGB[k] for k in (MA, HAEM, EXU))])
    rgb = kind_rgb[kind] * rng.uniform(0.9, 1.1, (n_les, 1)) * anatomy.gain[image, None]
    cy, cx = place_lesions(rng, image, order, a, anatomy, scale)
    return LesionSet(
        image=image, order=order, kind=kind, a=a, b=b,
        cos=np.cos(theta).astype(np.float32), sin=np.sin(theta).astype(np.float32),
        alpha=alpha, rgb=rgb, cy=cy, cx=cx,
    )  # fmt: skip


def place_lesions(
    rng: np.random.Generator,
    img: np.ndarray,
    order: np.ndarray,
    semi_major: np.ndarray,
    anatomy: Anatomy,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Centres for all lesions: inside the FOV, off the optic disc, not touching each other.

    Vectorised over images: slot ``k`` (the k-th lesion of every image) is placed for all images
    at once, given slots ``0..k-1``. Each lesion tries ``_N_CANDIDATES`` uniform positions and
    takes the first with a clearance >= 0; if none has, the one with the largest clearance
    (overlaps are then resolved at drawing time: later lesion wins). Candidates on the optic disc
    are never taken.
    """
    n = anatomy.cy.shape[0]
    n_slots = int(order.max()) + 1 if order.size else 0
    # Obstacles per image: slot 0 = optic disc, slots 1.. = lesions already placed.
    obs_y = np.zeros((n, n_slots + 1))
    obs_x = np.zeros((n, n_slots + 1))
    obs_r = np.zeros((n, n_slots + 1))
    obs_y[:, 0], obs_x[:, 0] = anatomy.od_cy, anatomy.od_cx
    obs_r[:, 0] = anatomy.od_radius + 0.5 * scale
    gap = 1.0 * scale  # keep lesions one (scaled) pixel apart so instances stay separable

    cy = np.zeros(img.shape[0])
    cx = np.zeros(img.shape[0])
    for k in range(n_slots):
        sel = np.flatnonzero(order == k)
        im = img[sel]
        a = semi_major[sel]
        # Lesion pixels lie within max(a, 0.71) of the centre (0.71: the always-drawn centre
        # pixel); keep that disc inside the FOV circle with a quarter-pixel margin.
        r_max = anatomy.radius[im] - np.maximum(a, 0.71) - 0.25
        u = rng.random((sel.size, _N_CANDIDATES))
        phi = rng.random((sel.size, _N_CANDIDATES)) * (2 * np.pi)
        rad = np.sqrt(u) * r_max[:, None]  # uniform in the disc
        cand_y = anatomy.cy[im][:, None] + rad * np.sin(phi)
        cand_x = anatomy.cx[im][:, None] + rad * np.cos(phi)
        oy, ox, orad = obs_y[im, : k + 1], obs_x[im, : k + 1], obs_r[im, : k + 1]  # placed
        dist = np.hypot(cand_y[:, :, None] - oy[:, None, :], cand_x[:, :, None] - ox[:, None, :])
        clear = dist - orad[:, None, :] - np.maximum(a, 0.71)[:, None, None] - gap
        # The optic disc is a hard constraint (fallback never lands on it); other lesions are
        # soft: first candidate with clearance >= 0, else the largest clearance.
        clearance = np.where(clear[:, :, 0] >= 0, clear[:, :, 1:].min(axis=2, initial=1e9), -1e9)
        ok = clearance >= 0
        pick = np.where(ok.any(axis=1), ok.argmax(axis=1), clearance.argmax(axis=1))
        rows = np.arange(sel.size)
        cy[sel], cx[sel] = cand_y[rows, pick], cand_x[rows, pick]
        obs_y[im, k + 1], obs_x[im, k + 1], obs_r[im, k + 1] = cy[sel], cx[sel], a
    return cy, cx
