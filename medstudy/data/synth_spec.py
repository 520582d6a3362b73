"""What the synthetic lesion data set means: lesion kinds, size classes and the grade rule.

The single source of the definitions that the sampler (:mod:`medstudy.data.synth_sample`), the
renderer (:mod:`medstudy.data.synth_draw`) and the lesion table (:mod:`medstudy.data.synth`)
share. The public names are re-exported by :mod:`medstudy.data.synth`; import them from there.

The grade (0-4) loosely follows the International Clinical Diabetic Retinopathy severity scale
(Wilkinson et al., Ophthalmology 2003) but is *not* a clinical scale: see
:func:`grade_from_lesions` for the exact rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "EXU",
    "EX_MANY",
    "GRADE_PROBS",
    "HAEM",
    "KIND_NAMES",
    "MA",
    "MA_FEW_MAX",
    "MA_MANY",
    "REF_SIZE",
    "SIZE_CLASSES",
    "grade_from_lesions",
    "grades_from_table",
    "size_class_of",
    "size_class_thresholds",
]

REF_SIZE = 28
"""Image size (px) at which the geometric constants are quoted; they scale with size/28."""

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
    """Vectorised grade rule shared by :func:`grade_from_lesions` and :func:`grades_from_table`."""
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
