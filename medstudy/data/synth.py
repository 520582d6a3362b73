"""Seeded, procedurally generated fundus-like images with per-pixel lesion ground truth.

The data set imitates colour fundus photographs graded for diabetic retinopathy (DR): an
orange-red retina (field of view, "disc") on a black background with vignetting, a bright
yellowish optic disc, a dark-red vessel tree leaving the optic disc, a darker macula, and three
DR lesion types:

- **microaneurysms** (MA): the earliest DR sign, tiny round dark-red dots (about 1-5 px at 28 px);
- **haemorrhages** (dot/blot haemorrhages): larger dark-red blobs;
- **hard exudates**: bright, waxy yellow blobs with sharp edges (lipid deposits).

The grade (0-4) is derived from the lesion load, loosely following the International Clinical
Diabetic Retinopathy severity scale (Wilkinson et al., Ophthalmology 2003: 0 no apparent
retinopathy, 1 mild NPDR = microaneurysms only, 2 moderate NPDR, 3 severe NPDR, 4 proliferative
DR). It is *not* a clinical scale: see :func:`grade_from_lesions` for the exact rule. The rule
is built so that grading needs both minute lesions (the MA count separates 0 / 1 / 2 and 3 / 4)
and large ones (grade 4 needs a large haemorrhage), which is what claim C7 ("SSL attributions
focus more on lesions, including minute ones") needs.

Geometry is expressed in units of ``size / 28`` so 28 px and 64 px (and any size >= 16) images
look alike. Generation is vectorised over images (chunks of a few hundred images); 10 000
images take well under 10 s at 28 and 64 px (``benchmarks/bench_synth.py``).

Reproducibility: everything is drawn from ``np.random.default_rng(seed)``; the same ``(n, size,
seed)`` gives byte-identical arrays. No global RNG state is read or written.

Conventions
-----------
- Pixel ``(i, j)`` has its centre at ``(y, x) = (i, j)``.
- The field of view (FOV, "disc") of image ``k`` is the set of pixels whose centre lies within
  ``fundus.radius[k]`` of ``(fundus.cy[k], fundus.cx[k])`` (see :func:`fov_masks`).
- Lesions are placed fully inside the FOV and outside the optic disc, and are drawn in the order
  of the lesion table (haemorrhages large -> small, exudates large -> small, microaneurysms).
  Placement avoids overlaps (rejection sampling with a small gap); when no free spot is found
  the least-overlapping candidate is used and **the later lesion wins** the shared pixels, so
  minute lesions are never hidden under large ones. A lesion left with no visible pixel is
  dropped from the table (rare: ~1 in 30 000 lesions at 28 px; the rule keeps the table exact).
  ``area_px``, the bounding box and ``size_class`` describe the lesion *as visible* in the mask,
  and the label is computed from that final table, so ``grade_from_lesions`` always reproduces
  ``labels``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # matplotlib is only needed for plotting; keep the import cheap
    from matplotlib.figure import Figure

__all__ = [
    "EX_MANY",
    "GRADE_PROBS",
    "KIND_NAMES",
    "MA_FEW_MAX",
    "MA_MANY",
    "REF_SIZE",
    "SIZE_CLASSES",
    "SynthLesions",
    "fov_masks",
    "generate_synth_lesions",
    "grade_from_lesions",
    "grades_from_table",
    "plot_examples",
    "size_class_of",
    "size_class_thresholds",
    "split_seed",
    "synth_splits",
]

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

REF_SIZE = 28
"""Image size (px) at which the geometric constants below are quoted; they scale with size/28."""

KIND_NAMES: tuple[str, ...] = ("background", "microaneurysm", "haemorrhage", "exudate")
"""Value ``k`` of ``masks`` means ``KIND_NAMES[k]``."""
MA, HAEM, EXU = 1, 2, 3

SIZE_CLASSES: dict[str, float] = {"minute": 6 / 784, "small": 16 / 784}
"""Upper bounds (inclusive) on visible lesion area as a fraction of the image area
(``size**2``); anything above ``small`` is ``large``. At 28 px: minute <= 6 px, small 7-16 px,
large >= 17 px; at 64 px: minute <= 31 px, small <= 83 px. The minute bound is at least 2 px
so a 2-px dot is "minute" even on tiny images."""

GRADE_PROBS: tuple[float, ...] = (0.34, 0.20, 0.20, 0.14, 0.12)
"""Sampling probabilities of grades 0-4: mildly imbalanced towards "no DR", as in DR screening
data, but every grade is common enough to be learnt."""

# Grade rule thresholds (see grade_from_lesions).
MA_FEW_MAX = 3  # 1..3 MAs and nothing else -> grade 1; more MAs -> grade 2
MA_MANY = 5  # grade 4 needs >= MA_MANY MAs ...
EX_MANY = 2  # ... and >= EX_MANY exudates and >= 1 large haemorrhage

# Lesion "designs": (kind, intended size class, equivalent-radius range in px at 28 px, max
# aspect ratio). Radii are chosen so the visible area lands well inside its SIZE_CLASSES bin.
# Order = drawing order (large first so small lesions find gaps and stay on top).
_DESIGNS: tuple[tuple[int, str, tuple[float, float], float], ...] = (
    (HAEM, "large", (2.7, 3.3), 1.6),
    (HAEM, "small", (1.72, 1.95), 1.3),
    (EXU, "large", (2.6, 3.1), 1.7),
    (EXU, "small", (1.72, 1.95), 1.3),
    (MA, "minute", (0.5, 1.0), 1.2),
)
_D_HL, _D_HS, _D_EL, _D_ES, _D_MA = range(len(_DESIGNS))

# Lesion colours (linear RGB in [0, 1], times the image gain) and opacity ranges. MAs and
# haemorrhages are dark red (blood), exudates bright yellow (lipid).
_LESION_RGB = {
    MA: (0.40, 0.05, 0.04),
    HAEM: (0.36, 0.04, 0.03),
    EXU: (1.00, 0.86, 0.42),
}
_LESION_ALPHA = {MA: (0.75, 0.95), HAEM: (0.70, 0.92), EXU: (0.65, 0.90)}

_CHUNK_PIXELS = 1 << 16  # images per rendering chunk = this / size**2 (keeps arrays in cache)
_N_VESSEL_TEMPLATES = 12  # vessel trees per call; x2 with the mirrored (other-eye) versions
_N_CANDIDATES = 24  # candidate positions per lesion in rejection sampling
_TRI_SD = math.sqrt(2 * (256**2 - 1) / 12)  # sd of u1 + u2 with u ~ U{0..255} (~104.5)


# --------------------------------------------------------------------------------------------
# Data container
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SynthLesions:
    """A generated data set (``eq=False``: compare arrays explicitly, not via ``==``).

    Attributes:
        images: uint8 ``(n, size, size, 3)`` RGB.
        labels: int64 ``(n,)`` grade 0-4, equal to :func:`grades_from_table` of ``lesions``.
        masks: uint8 ``(n, size, size)`` lesion kind per pixel (``KIND_NAMES``: 0 background,
            1 microaneurysm, 2 haemorrhage, 3 exudate); on overlaps the later lesion wins.
        instance: int32 ``(n, size, size)``: ``lesion + 1`` of the lesion visible at the pixel
            (0 = none), matching the ``lesion`` column of ``lesions`` for that image.
        lesions: one row per visible lesion, sorted by ``(image, lesion)``: ``image``,
            ``lesion`` (0-based index within the image = drawing order), ``kind`` (str),
            ``kind_id`` (mask value), ``size_class`` ("minute" | "small" | "large", from
            ``area_px`` via :data:`SIZE_CLASSES`), ``area_px`` (visible pixel count), ``cy``,
            ``cx`` (sampled centre, px), ``y0, x0, y1, x1`` (bbox of the visible pixels,
            inclusive-exclusive).
        fundus: one row per image: ``cy, cx, radius`` of the field of view, ``od_cy, od_cx,
            od_radius`` of the optic disc, ``eye`` ("right": optic disc on the right).
        size: image side in px.
        seed: the seed it was generated from.
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    instance: np.ndarray
    lesions: pd.DataFrame
    fundus: pd.DataFrame
    size: int
    seed: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# --------------------------------------------------------------------------------------------
# Size classes and the grading rule
# --------------------------------------------------------------------------------------------


def size_class_thresholds(size: int) -> tuple[float, float]:
    """Max visible area (px, inclusive) of a "minute" and of a "small" lesion at ``size``."""
    area = float(size) * float(size)
    return max(2.0, SIZE_CLASSES["minute"] * area), SIZE_CLASSES["small"] * area


def size_class_of(area_px: np.ndarray | int, size: int) -> np.ndarray:
    """Size class ("minute" | "small" | "large") of lesion(s) with visible area ``area_px``."""
    minute_max, small_max = size_class_thresholds(size)
    area = np.asarray(area_px)
    # 1e-9 guards against float round-off at the exact bounds (e.g. 6/784 * 784).
    idx = (area > minute_max + 1e-9).astype(np.int64) + (area > small_max + 1e-9)
    return np.array(["minute", "small", "large"], dtype=object)[idx]


def _grade_rule(n_ma: Any, n_haem: Any, n_haem_large: Any, n_ex: Any) -> np.ndarray:
    """Vectorised grade rule shared by :func:`grade_from_lesions` and the generator."""
    n_ma, n_haem, n_haem_large, n_ex = (np.asarray(a) for a in (n_ma, n_haem, n_haem_large, n_ex))
    grade = np.where(n_ma > 0, 1, 0)
    grade = np.where((n_ma > MA_FEW_MAX) | (n_haem > 0) | (n_ex > 0), 2, grade)
    grade = np.where((n_haem > 0) & (n_ex > 0), 3, grade)
    grade = np.where((n_ma >= MA_MANY) & (n_haem_large > 0) & (n_ex >= EX_MANY), 4, grade)
    return grade.astype(np.int64)


def grade_from_lesions(counts_by_kind_and_size: Mapping[tuple[str, str], int]) -> int:
    """Grade 0-4 of one image from its visible lesions.

    Args:
        counts_by_kind_and_size: ``{(kind, size_class): count}``, e.g.
            ``{("microaneurysm", "minute"): 3, ("haemorrhage", "large"): 1}``; missing keys
            count 0.

    The rule (first match from the top; MA = microaneurysms of any size class, H = haemorrhages,
    H_large = haemorrhages of size class "large", EX = exudates):

    - 4 "many of all": MA >= 5 and H_large >= 1 and EX >= 2;
    - 3 haemorrhages and exudates: H >= 1 and EX >= 1;
    - 2 more than a few MAs, or any haemorrhage or exudate: MA >= 4 or H >= 1 or EX >= 1;
    - 1 a few MAs only: 1 <= MA <= 3;
    - 0 no lesion.

    So 0 vs 1 vs 2 and (often) 3 vs 4 turn on *minute* lesions, 4 needs a *large* one.
    """
    n = {k: 0 for k in KIND_NAMES[1:]}
    n_haem_large = 0
    for (kind, size_class), count in counts_by_kind_and_size.items():
        if kind not in n:
            raise ValueError(f"unknown lesion kind {kind!r}; valid: {KIND_NAMES[1:]}")
        n[kind] += int(count)
        if kind == "haemorrhage" and size_class == "large":
            n_haem_large += int(count)
    return int(_grade_rule(n["microaneurysm"], n["haemorrhage"], n_haem_large, n["exudate"]))


def grades_from_table(lesions: pd.DataFrame, n_images: int) -> np.ndarray:
    """Vectorised :func:`grade_from_lesions` for every image ``0..n_images-1`` of a table."""
    img = lesions["image"].to_numpy(np.int64)
    kind = lesions["kind"].to_numpy()
    large = lesions["size_class"].to_numpy() == "large"

    def count(sel: np.ndarray) -> np.ndarray:
        return np.bincount(img[sel], minlength=n_images)

    is_haem = kind == "haemorrhage"
    return _grade_rule(
        count(kind == "microaneurysm"),
        count(is_haem),
        count(is_haem & large),
        count(kind == "exudate"),
    )


# --------------------------------------------------------------------------------------------
# Sampling: grades -> lesion counts -> lesion geometry -> placement
# --------------------------------------------------------------------------------------------


def _sample_counts(rng: np.random.Generator, grades: np.ndarray) -> np.ndarray:
    """Lesion counts ``(n, len(_DESIGNS))`` consistent with each sampled grade.

    All draws are made for all images and then selected by grade, which keeps the RNG stream
    independent of the grade mix (and is vectorised).
    """
    n = grades.shape[0]
    counts = np.zeros((n, len(_DESIGNS)), dtype=np.int64)
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


def _place_lesions(
    rng: np.random.Generator,
    img: np.ndarray,
    order: np.ndarray,
    semi_major: np.ndarray,
    fundus: dict[str, np.ndarray],
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Centres for all lesions: inside the FOV, off the optic disc, not touching each other.

    Vectorised over images: slot ``k`` (the k-th lesion of every image) is placed for all images
    at once, given slots ``0..k-1``. Each lesion tries ``_N_CANDIDATES`` uniform positions and
    takes the first with a clearance >= 0; if none has, the one with the largest clearance
    (overlaps are then resolved at drawing time: later lesion wins). Candidates on the optic disc
    are never taken.
    """
    n = fundus["cy"].shape[0]
    n_slots = int(order.max()) + 1 if order.size else 0
    # Obstacles per image: slot 0 = optic disc, slots 1.. = lesions already placed.
    obs_y = np.zeros((n, n_slots + 1))
    obs_x = np.zeros((n, n_slots + 1))
    obs_r = np.zeros((n, n_slots + 1))
    obs_y[:, 0], obs_x[:, 0] = fundus["od_cy"], fundus["od_cx"]
    obs_r[:, 0] = fundus["od_radius"] + 0.5 * scale
    gap = 1.0 * scale  # keep lesions one (scaled) pixel apart so instances stay separable

    cy = np.zeros(img.shape[0])
    cx = np.zeros(img.shape[0])
    for k in range(n_slots):
        sel = np.flatnonzero(order == k)
        im = img[sel]
        a = semi_major[sel]
        # Lesion pixels lie within max(a, 0.71) of the centre (0.71: the always-drawn centre
        # pixel); keep that disc inside the FOV circle with a quarter-pixel margin.
        r_max = fundus["radius"][im] - np.maximum(a, 0.71) - 0.25
        u = rng.random((sel.size, _N_CANDIDATES))
        phi = rng.random((sel.size, _N_CANDIDATES)) * (2 * np.pi)
        rad = np.sqrt(u) * r_max[:, None]  # uniform in the disc
        cand_y = fundus["cy"][im][:, None] + rad * np.sin(phi)
        cand_x = fundus["cx"][im][:, None] + rad * np.cos(phi)
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


# --------------------------------------------------------------------------------------------
# Vessel tree templates
# --------------------------------------------------------------------------------------------


def _vessel_bank(rng: np.random.Generator, size: int) -> np.ndarray:
    """Vessel-darkness templates ``(2T, 2*size+1, 2*size+1)`` float32 in [0, 1].

    The optic disc sits at the template centre ``(size, size)``; templates are drawn for an
    optic disc on the right of the fundus (temporal side to the left) and mirrored for the other
    eye. Each tree has the two temporal arcades curving around the macula, two short nasal
    vessels, and a few side branches; width and contrast taper along each vessel. Per image a
    template is chosen and cropped so its centre lands on that image's optic disc, which is far
    cheaper than drawing curves per image.
    """
    from scipy.spatial import cKDTree

    s = size / REF_SIZE
    c = 2 * size + 1
    step = 0.3  # px along the curve: dense enough that the nearest sample ~ nearest curve point
    grid = np.stack(np.meshgrid(np.arange(c), np.arange(c), indexing="ij"), -1).reshape(-1, 2)
    bank = np.zeros((2 * _N_VESSEL_TEMPLATES, c, c), dtype=np.float32)

    def curve(
        y0: float,
        x0: float,
        phi0: float,
        kappa: float,
        length: float,
        width: tuple[float, float],
        depth: tuple[float, float],
    ) -> tuple[np.ndarray, ...]:
        """Samples (y, x, width, depth, heading) of one vessel; width/depth taper start->end.

        ``phi`` uses the maths convention (y up), so a positive ``kappa`` turns
        counter-clockwise; a slow sinusoidal wiggle keeps vessels from looking like arcs.
        """
        m = max(int(length / step), 2)
        t = np.arange(m) * step
        phi = phi0 + kappa * t + 0.12 * np.sin(t / (2.5 * s) + rng.uniform(0, 2 * np.pi))
        y = y0 - np.cumsum(np.sin(phi)) * step
        x = x0 + np.cumsum(np.cos(phi)) * step
        f = t / t[-1]
        w = (width[0] + (width[1] - width[0]) * f) * s
        d = depth[0] + (depth[1] - depth[0]) * f
        return y, x, w, d, phi

    for tpl in range(_N_VESSEL_TEMPLATES):
        rot = rng.uniform(-0.25, 0.25)  # whole-tree tilt
        parts = []
        for sign in (1.0, -1.0):  # superior / inferior half of the tree
            # Temporal arcade: leaves up-left (down-left) and curves around the macula.
            arc = curve(
                size,
                size,
                phi0=np.pi - sign * rng.uniform(0.8, 1.1) + rot,
                kappa=sign * rng.uniform(1.3, 1.9) / size,
                length=rng.uniform(0.75, 0.95) * size,
                width=(0.95, 0.5),
                depth=(0.75, 0.45),
            )
            parts.append(arc)
            # One or two thinner side branches off the middle half of the arcade.
            for _ in range(rng.integers(1, 3)):
                j = rng.integers(len(arc[0]) // 4, 3 * len(arc[0]) // 4)
                parts.append(
                    curve(
                        arc[0][j],
                        arc[1][j],
                        phi0=arc[4][j] + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 0.9),
                        kappa=rng.uniform(-1.0, 1.0) / size,
                        length=rng.uniform(0.2, 0.35) * size,
                        width=(0.6, 0.4),
                        depth=(0.5, 0.3),
                    )
                )
            # Nasal vessel: short, towards the right, soon leaves the field of view.
            parts.append(
                curve(
                    size,
                    size,
                    phi0=sign * rng.uniform(0.4, 0.9) + rot,
                    kappa=-sign * rng.uniform(0.5, 1.5) / size,
                    length=rng.uniform(0.25, 0.4) * size,
                    width=(0.75, 0.45),
                    depth=(0.6, 0.4),
                )
            )
        ys, xs, ws, ds, _ = (np.concatenate(c) for c in zip(*parts, strict=True))
        # Nearest curve sample of every template pixel (exact enough with 0.3-px steps).
        dist, idx = cKDTree(np.stack([ys, xs], -1)).query(grid, distance_upper_bound=3.5 * s + 1.5)
        hit = np.isfinite(dist)
        v = np.zeros(grid.shape[0])
        # Gaussian cross-section: a vessel is darkest on its axis and fades over ~w px.
        v[hit] = ds[idx[hit]] * np.exp(-((dist[hit] / ws[idx[hit]]) ** 2))
        bank[tpl] = v.reshape(c, c)
        bank[_N_VESSEL_TEMPLATES + tpl] = bank[tpl, :, ::-1]  # the other eye
    return bank


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------


def generate_synth_lesions(n: int, size: int = 28, seed: int = 0) -> SynthLesions:
    """Generate ``n`` fundus-like images of ``size`` px with lesion masks and grades.

    Args:
        n: number of images (>= 0).
        size: image side in px (>= 16; the look is tuned at 28 and 64).
        seed: seed of ``np.random.default_rng``; same ``(n, size, seed)`` -> identical output.

    Steps: sample grades (:data:`GRADE_PROBS`) -> lesion counts consistent with the grade ->
    per-image anatomy and colour -> lesion shapes and non-overlapping positions -> render in
    chunks of images (background, vignetting, macula, optic disc, vessels, lesions, noise) ->
    masks, instance map and lesion table from the rendered pixels -> labels from the table.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng(seed)
    s = size / REF_SIZE
    f32 = np.float32

    # ---- per-image anatomy and appearance (independent of the grade, so global colour or
    # brightness carries no label information).
    grades = rng.choice(len(GRADE_PROBS), size=n, p=GRADE_PROBS)
    counts = _sample_counts(rng, grades)
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
    bank = _vessel_bank(rng, size)
    tpl = rng.integers(0, _N_VESSEL_TEMPLATES, n) + np.where(eye_right, 0, _N_VESSEL_TEMPLATES)
    fundus = {
        "cy": fcy, "cx": fcx, "radius": frad, "od_cy": od_cy, "od_cx": od_cx, "od_radius": od_r,
    }  # fmt: skip

    # ---- lesions: flat arrays sorted by (image, drawing order).
    totals = counts.sum(axis=1)
    n_les = int(totals.sum())
    design = np.repeat(np.tile(np.arange(len(_DESIGNS)), n), counts.ravel())
    l_img = np.repeat(np.arange(n), totals)
    starts = np.cumsum(totals) - totals
    l_order = np.arange(n_les) - np.repeat(starts, totals)
    d_kind = np.array([d[0] for d in _DESIGNS])
    d_lo = np.array([d[2][0] for d in _DESIGNS]) * s
    d_hi = np.array([d[2][1] for d in _DESIGNS]) * s
    d_asp = np.array([d[3] for d in _DESIGNS])
    l_kind = d_kind[design]
    r_eq = rng.uniform(d_lo[design], d_hi[design])
    aspect = rng.uniform(1.0, d_asp[design])
    l_a = r_eq * np.sqrt(aspect)  # semi-axes with pi*a*b = pi*r_eq**2
    l_b = r_eq / np.sqrt(aspect)
    theta = rng.uniform(0, np.pi, n_les)
    l_cos, l_sin = np.cos(theta).astype(f32), np.sin(theta).astype(f32)
    alpha_lo = np.array([0.0, *(_LESION_ALPHA[k][0] for k in (MA, HAEM, EXU))])
    alpha_hi = np.array([0.0, *(_LESION_ALPHA[k][1] for k in (MA, HAEM, EXU))])
    l_alpha = rng.uniform(alpha_lo[l_kind], alpha_hi[l_kind])
    kind_rgb = np.array([(0, 0, 0), *(_LESION_RGB[k] for k in (MA, HAEM, EXU))])
    l_rgb = kind_rgb[l_kind] * rng.uniform(0.9, 1.1, (n_les, 1)) * gain[l_img, None]
    l_cy, l_cx = _place_lesions(rng, l_img, l_order, l_a, fundus, s)

    # ---- render in chunks of images.
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    instance = np.zeros((n, size, size), dtype=np.int32)
    area = np.zeros(n_les, dtype=np.int64)
    bbox = np.zeros((n_les, 4), dtype=np.int64)
    new_order = np.zeros(n_les, dtype=np.int64)
    ax = np.arange(size, dtype=f32)
    vessel_windows = np.lib.stride_tricks.sliding_window_view(bank, (size, size), axis=(1, 2))
    # Window half-widths covering the largest lesion (+1 px for rounding the centre).
    l_is_ma = l_kind == MA
    half = int(math.ceil(float(l_a[~l_is_ma].max(initial=1.0)))) + 1
    half_ma = int(math.ceil(float(l_a[l_is_ma].max(initial=1.0)))) + 1
    l_inv_a, l_inv_b = (1.0 / l_a).astype(f32), (1.0 / l_b).astype(f32)
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    bg_rgb = np.array([0.02, 0.015, 0.01], dtype=f32)
    vessel_rgb_loss = np.array([0.5, 0.75, 0.65], dtype=f32)  # vessels absorb G/B more than R

    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        b = i1 - i0
        sl = slice(i0, i1)

        def col(v: np.ndarray, sl: slice = sl) -> np.ndarray:
            return v[sl].astype(f32)[:, None, None]

        # Squared distances via (b, size, 1) + (b, 1, size) broadcasting: 1 full-size op each.
        dy = ax[None, :] - col(fcy)[:, :, 0]
        dx = ax[None, :] - col(fcx)[:, :, 0]
        r2 = dy[:, :, None] ** 2 + dx[:, None, :] ** 2
        rn2 = r2 / col(frad) ** 2
        # Soft FOV edge over ~1 scaled px (anti-aliasing); the FOV itself is r <= radius.
        edge = np.clip((1.0 - np.sqrt(rn2)) * (col(frad) / s) + 0.5, 0.0, 1.0)
        shade = col(gain) * (1.0 - col(vignette) * rn2)
        my = (ax[None, :] - col(mac_cy)[:, :, 0]) ** 2
        mx = (ax[None, :] - col(mac_cx)[:, :, 0]) ** 2
        mac = np.clip(1.0 - (my[:, :, None] + mx[:, None, :]) / col(mac_r) ** 2, 0.0, 1.0)
        shade *= 1.0 - col(mac_depth) * mac
        oy = (ax[None, :] - col(od_cy)[:, :, 0]) ** 2
        ox = (ax[None, :] - col(od_cx)[:, :, 0]) ** 2
        # Optic disc: flat-topped bright spot (plateau inside ~0.6 radius, then fades).
        od = np.clip(1.6 * (1.0 - (oy[:, :, None] + ox[:, None, :]) / col(od_r) ** 2), 0.0, 1.0)
        od *= 0.9
        r0 = (size - od_cy[sl]).astype(np.int64)
        c0 = (size - od_cx[sl]).astype(np.int64)
        vessel = vessel_windows[tpl[sl], r0, c0] * col(vessel_contrast)
        vessel *= 1.0 - 0.6 * od  # vessels fade over the bright optic disc head

        img = np.empty((b, size, size, 3), dtype=f32)
        for ch in range(3):
            x = shade * base_rgb[sl, ch].astype(f32)[:, None, None]
            x = x * (1.0 - od) + od * (col(gain) * od_rgb[sl, ch].astype(f32)[:, None, None])
            x *= 1.0 - vessel_rgb_loss[ch] * vessel
            img[..., ch] = x

        # ---- lesions of this chunk: ellipse test on a (2h+1)^2 window per lesion, with a
        # small window for microaneurysms (most lesions) and a large one for the rest.
        j0, j1 = np.searchsorted(l_img, [i0, i1])
        if j1 > j0:
            ls = slice(j0, j1)
            flats, ranks = [], []
            for group, h in ((~l_is_ma[ls], half), (l_is_ma[ls], half_ma)):
                gi = j0 + np.flatnonzero(group)
                if gi.size == 0:
                    continue
                w = np.arange(-h, h + 1)
                py = np.rint(l_cy[gi]).astype(np.int64)[:, None] + w  # (L, W)
                px = np.rint(l_cx[gi]).astype(np.int64)[:, None] + w
                ddy = (py - l_cy[gi, None]).astype(f32)[:, :, None]
                ddx = (px - l_cx[gi, None]).astype(f32)[:, None, :]
                cs, sn = l_cos[gi, None, None], l_sin[gi, None, None]
                u = (ddy * cs + ddx * sn) * l_inv_a[gi, None, None]
                v = (ddx * cs - ddy * sn) * l_inv_b[gi, None, None]
                inside = u * u + v * v <= 1.0
                inside[:, h, h] = True  # the centre pixel: every lesion has >= 1 pixel
                inside &= ((py >= 0) & (py < size))[:, :, None]
                inside &= ((px >= 0) & (px < size))[:, None, :]
                rows = (l_img[gi, None] - i0) * size + np.clip(py, 0, size - 1)  # (L, W)
                flat = rows[:, :, None] * size + np.clip(px, 0, size - 1)[:, None, :]
                flats.append(flat[inside])
                ranks.append(np.broadcast_to((gi - j0 + 1)[:, None, None], inside.shape)[inside])
            # Later lesion wins a shared pixel: keep the highest drawing rank per pixel.
            winner = np.zeros(b * size * size, dtype=np.int64)
            np.maximum.at(winner, np.concatenate(flats), np.concatenate(ranks))
            pix = np.flatnonzero(winner)
            who = winner[pix] - 1  # lesion index within the chunk
            gl = j0 + who  # global lesion index
            area[ls] = np.bincount(who, minlength=j1 - j0)
            pim, rem = np.divmod(pix, size * size)
            pyy, pxx = np.divmod(rem, size)
            lo_y = np.full(j1 - j0, size)
            lo_x = np.full(j1 - j0, size)
            hi_y = np.full(j1 - j0, -1)
            hi_x = np.full(j1 - j0, -1)
            np.minimum.at(lo_y, who, pyy), np.minimum.at(lo_x, who, pxx)
            np.maximum.at(hi_y, who, pyy), np.maximum.at(hi_x, who, pxx)
            bbox[ls] = np.stack([lo_y, lo_x, hi_y + 1, hi_x + 1], 1)
            # Renumber within each image if a lesion vanished (drop rule in the module doc).
            dropped = area[ls] == 0
            cd = np.cumsum(dropped) - dropped
            first = np.searchsorted(l_img[ls], l_img[ls])  # first lesion of the same image
            new_order[ls] = l_order[ls] - (cd - cd[first])
            masks.reshape(-1)[i0 * size * size + pix] = l_kind[gl]
            instance.reshape(-1)[i0 * size * size + pix] = new_order[gl] + 1
            # Colour: blend towards the lesion colour, strongest at the centre (1 - 0.35 rho^2).
            ry, rx = pyy - l_cy[gl], pxx - l_cx[gl]
            uu = ry * l_cos[gl] + rx * l_sin[gl]
            vv = -ry * l_sin[gl] + rx * l_cos[gl]
            rho2p = np.minimum((uu / l_a[gl]) ** 2 + (vv / l_b[gl]) ** 2, 1.0)
            a_p = (l_alpha[gl] * (1.0 - 0.35 * rho2p)).astype(f32)[:, None]
            img_flat = img.reshape(-1, 3)
            img_flat[pix] = (1.0 - a_p) * img_flat[pix] + a_p * l_rgb[gl].astype(f32)

        # FOV edge, background, sensor noise, quantisation.
        img = img * edge[..., None] + bg_rgb * (1.0 - edge[..., None])
        # Triangular noise from two uniform bytes: ~Gaussian-looking, 10x cheaper than
        # standard_normal (which dominated the run time).
        u8 = rng.integers(0, 256, (2, b, size, size, 3), dtype=np.uint8)
        noise = u8[0].astype(f32)
        noise += u8[1]
        noise -= 255.0
        img += noise * (noise_sd[sl] / _TRI_SD).astype(f32)[:, None, None, None]
        np.clip(img * 255.0 + 0.5, 0.0, 255.0, out=img)
        images[sl] = img.astype(np.uint8)

    # ---- lesion table (visible lesions only) and labels.
    keep = area > 0
    kind_names = np.array(KIND_NAMES, dtype=object)
    lesions = pd.DataFrame(
        {
            "image": l_img[keep],
            "lesion": new_order[keep],
            "kind": kind_names[l_kind[keep]],
            "kind_id": l_kind[keep].astype(np.int64),
            "size_class": size_class_of(area[keep], size),
            "area_px": area[keep],
            "cy": l_cy[keep],
            "cx": l_cx[keep],
            "y0": bbox[keep, 0],
            "x0": bbox[keep, 1],
            "y1": bbox[keep, 2],
            "x1": bbox[keep, 3],
        }
    )
    fundus_df = pd.DataFrame({**fundus, "eye": np.where(eye_right, "right", "left")})
    labels = grades_from_table(lesions, n)
    return SynthLesions(
        images=images,
        labels=labels,
        masks=masks,
        instance=instance,
        lesions=lesions,
        fundus=fundus_df,
        size=int(size),
        seed=int(seed),
    )


def fov_masks(data: SynthLesions) -> np.ndarray:
    """Boolean ``(n, size, size)`` field of view: pixel centres within the fundus radius."""
    ax = np.arange(data.size, dtype=np.float64)
    f = data.fundus
    dy = (ax[None, :] - f["cy"].to_numpy()[:, None]) ** 2
    dx = (ax[None, :] - f["cx"].to_numpy()[:, None]) ** 2
    return dy[:, :, None] + dx[:, None, :] <= (f["radius"].to_numpy() ** 2)[:, None, None]


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def split_seed(seed: int, split: str) -> int:
    """Seed of one split: ``SeedSequence([seed, crc32(split)])`` -> first 32-bit state word.

    ``crc32`` (not ``hash``) so it does not change between Python processes.
    """
    ss = np.random.SeedSequence([int(seed), zlib.crc32(split.encode("utf-8"))])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def synth_splits(
    size: int = 28, seed: int = 0, n_train: int = 4000, n_val: int = 500, n_test: int = 1000
) -> dict[str, SynthLesions]:
    """Train/val/test sets, each generated with its own seed from :func:`split_seed`.

    The splits are independent draws (so disjoint with probability 1, and checked in the tests);
    changing one split's size does not change the other splits.
    """
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    return {
        name: generate_synth_lesions(k, size=size, seed=split_seed(seed, name))
        for name, k in sizes.items()
    }


# --------------------------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------------------------

_KIND_COLOURS = {MA: (1.0, 0.0, 1.0), HAEM: (0.0, 0.9, 1.0), EXU: (0.2, 1.0, 0.2)}


def plot_examples(data: SynthLesions, n: int = 8, ax: Any = None) -> Figure:
    """Images (top row) and their lesion masks over a grey copy (bottom row), titled by grade.

    Examples cycle through the grades 0-4 (first unused image of each grade) so every grade is
    shown when ``n >= 5``. ``ax``: optional ``(2, n)`` array of Axes to draw into.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = min(n, len(data))
    picks: list[int] = []
    pools = {g: list(np.flatnonzero(data.labels == g)) for g in range(len(GRADE_PROBS))}
    g = 0
    while len(picks) < n and any(pools.values()):
        if pools[g]:
            picks.append(int(pools[g].pop(0)))
        g = (g + 1) % len(GRADE_PROBS)
    if ax is None:
        fig, ax = plt.subplots(2, n, figsize=(1.6 * n, 3.6), squeeze=False)
    else:
        ax = np.asarray(ax).reshape(2, -1)
        fig = ax[0, 0].figure
    for j, i in enumerate(picks):
        img = data.images[i]
        grey = img.astype(np.float32).mean(axis=2, keepdims=True) / 255.0
        over = np.repeat(0.6 * grey, 3, axis=2)
        for kind, rgb in _KIND_COLOURS.items():
            over[data.masks[i] == kind] = rgb
        ax[0, j].imshow(img, interpolation="nearest")
        ax[0, j].set_title(f"#{i} grade {data.labels[i]}", fontsize=8)
        ax[1, j].imshow(over, interpolation="nearest")
        ax[1, j].set_title(f"{int((data.masks[i] > 0).sum())} lesion px", fontsize=7)
    for a in np.asarray(ax).ravel():
        a.set_xticks([]), a.set_yticks([])
    handles = [Patch(color=_KIND_COLOURS[k], label=KIND_NAMES[k]) for k in _KIND_COLOURS]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"synth_lesions ({data.size} px, seed {data.seed})", fontsize=9)
    return fig
