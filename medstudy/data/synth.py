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

Layout: this module holds the data container, the generator (a fixed sequence of steps over
one RNG), the lesion table, the splits and the plot; :mod:`medstudy.data.synth_spec` defines
kinds, size classes and the grade rule, :mod:`medstudy.data.synth_sample` samples the scene
(counts, anatomy, lesion geometry and placement) and :mod:`medstudy.data.synth_draw` renders
it (vessel trees, fundus, lesions, noise). Import the public names from here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medstudy.data.synth_draw import Rendering, draw_vessel_trees, render
from medstudy.data.synth_sample import (
    Anatomy,
    LesionSet,
    sample_anatomy,
    sample_counts,
    sample_lesions,
)
from medstudy.data.synth_spec import (
    EX_MANY,
    EXU,
    GRADE_PROBS,
    HAEM,
    KIND_NAMES,
    MA,
    MA_FEW_MAX,
    MA_MANY,
    REF_SIZE,
    SIZE_CLASSES,
    grade_from_lesions,
    grades_from_table,
    size_class_of,
    size_class_thresholds,
)

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
# Generator
# --------------------------------------------------------------------------------------------


def generate_synth_lesions(n: int, size: int = 28, seed: int = 0) -> SynthLesions:
    """Generate ``n`` fundus-like images of ``size`` px with lesion masks and grades.

    Args:
        n: number of images (>= 0).
        size: image side in px (>= 16; the look is tuned at 28 and 64).
        seed: seed of ``np.random.default_rng``; same ``(n, size, seed)`` -> identical output.

    Steps: sample grades (:data:`GRADE_PROBS`) -> lesion counts consistent with the grade ->
    per-image anatomy and colour -> vessel trees -> lesion shapes and non-overlapping positions
    -> render in chunks of images (background, vignetting, macula, optic disc, vessels, lesions,
    noise) -> masks, instance map and lesion table from the rendered pixels -> labels from the
    table.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng(seed)
    # Every step draws from the one generator: their order defines the data set, so moving a
    # step (or a draw inside one) changes every image of every seed.
    grades = rng.choice(len(GRADE_PROBS), size=n, p=GRADE_PROBS)
    counts = sample_counts(rng, grades)
    anatomy = sample_anatomy(rng, n, size)
    bank, template = draw_vessel_trees(rng, size, anatomy.eye_right)
    lesions = sample_lesions(rng, counts, anatomy, size / REF_SIZE)
    rendering = render(rng, anatomy, lesions, bank, template, size)
    table = _lesion_table(lesions, rendering, size)
    return SynthLesions(
        images=rendering.images,
        # From the final table, not the sampled grades: a dropped lesion can change the grade.
        labels=grades_from_table(table, n),
        masks=rendering.masks,
        instance=rendering.instance,
        lesions=table,
        fundus=_fundus_table(anatomy),
        size=int(size),
        seed=int(seed),
    )


def _lesion_table(lesions: LesionSet, rendering: Rendering, size: int) -> pd.DataFrame:
    """One row per *visible* lesion (see :class:`SynthLesions` for the columns)."""
    keep = rendering.area > 0
    kind = lesions.kind[keep]
    area = rendering.area[keep]
    bbox = rendering.bbox[keep]
    return pd.DataFrame(
        {
            "image": lesions.image[keep],
            "lesion": rendering.order[keep],
            "kind": np.array(KIND_NAMES, dtype=object)[kind],
            "kind_id": kind.astype(np.int64),
            "size_class": size_class_of(area, size),
            "area_px": area,
            "cy": lesions.cy[keep],
            "cx": lesions.cx[keep],
            "y0": bbox[:, 0],
            "x0": bbox[:, 1],
            "y1": bbox[:, 2],
            "x1": bbox[:, 3],
        }
    )


def _fundus_table(anatomy: Anatomy) -> pd.DataFrame:
    """One row per image: field of view, optic disc and eye (see :class:`SynthLesions`)."""
    a = anatomy
    return pd.DataFrame(
        {
            "cy": a.cy,
            "cx": a.cx,
            "radius": a.radius,
            "od_cy": a.od_cy,
            "od_cx": a.od_cx,
            "od_radius": a.od_radius,
            "eye": np.where(a.eye_right, "right", "left"),
        }
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
