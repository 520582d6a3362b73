"""Scoring attributions against ground-truth masks (claim C7), pure numpy/scipy:

- mask metrics: positive attribution mass inside a mask (= Score-CAM's energy-based pointing
  game), the pointing game with a tolerance, and the pixel-level AUC;
- the same metrics per lesion size class of ``synth_lesions`` (minute / small / large);
- lung fields of chest X-rays by documented image processing (Otsu thresholds, morphology, the
  two largest components), with a figure to check them.

The attributions themselves come from :mod:`medstudy.attribution`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import ndimage
from scipy import stats as sps

from medstudy.data.synth import SynthLesions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Size classes of ``synth_lesions`` (``medstudy.data.synth.SIZE_CLASSES``; "large" is the rest).
SIZE_CLASS_ORDER: tuple[str, ...] = ("minute", "small", "large")


# --------------------------------------------------------------------------------------------
# Mask metrics
# --------------------------------------------------------------------------------------------
def _attr_and_mask(attr: npt.ArrayLike, mask: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(attr, dtype=np.float64)
    m = np.asarray(mask)
    if a.ndim == 2:
        a = a[None]
    if m.ndim == 2:
        m = m[None]
    if a.ndim != 3 or a.shape != m.shape:
        raise ValueError(
            f"attr and mask must both be (N, H, W) of the same shape, got {a.shape} and {m.shape}"
        )
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("mask must be boolean (or 0/1)")
        m = m.astype(bool)
    if not np.all(np.isfinite(a)):
        raise ValueError("attr contains NaN or inf")
    return a, m


def mass_in_mask(attr: npt.ArrayLike, mask: npt.ArrayLike) -> np.ndarray:
    """Fraction of the positive attribution mass inside the mask, per image.

    ``sum(max(a, 0) * mask) / sum(max(a, 0))``: only evidence *for* the target counts (negative
    IG / occlusion values are evidence against it and are dropped, not netted). In [0, 1]; a
    uniform map scores the mask's area fraction (chance level). NaN for an image with no
    positive mass (nothing to locate) or an empty mask (no target).
    """
    a, m = _attr_and_mask(attr, mask)
    pos = np.clip(a, 0.0, None)
    total = pos.sum(axis=(1, 2))
    inside = (pos * m).sum(axis=(1, 2))
    ok = (total > 0) & m.any(axis=(1, 2))
    out = np.full(a.shape[0], np.nan)
    out[ok] = inside[ok] / total[ok]
    return out


# Score-CAM's "energy-based pointing game" (Wang et al. 2020, sec. 4.2) is
# sum_{bbox} L / (sum_{bbox} L + sum_{outside} L) on a ReLU'd (non-negative) saliency map L:
# the positive mass inside the region over the total positive mass, i.e. exactly
# mass_in_mask. Wang et al. use the object's bounding box as the region; pass a box mask to
# reproduce that, the lesion mask to score pixels.
energy_pointing_game = mass_in_mask


def pointing_game(attr: npt.ArrayLike, mask: npt.ArrayLike, tolerance: float = 0) -> np.ndarray:
    """Pointing game (Zhang et al. 2018): 1.0 if the map's top pixel lies in the mask, else 0.0.

    The top pixel is ``np.argmax`` of the raw map (first maximum in row-major order on ties).
    ``tolerance`` (px) dilates the mask by a Euclidean disc: a hit is a top pixel whose centre
    is within ``tolerance`` of a mask pixel's centre (Zhang et al. use 15 px at ImageNet size).
    NaN for an empty mask or a constant map (no top pixel).
    """
    a, m = _attr_and_mask(attr, mask)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    n = a.shape[0]
    flat = a.reshape(n, -1)
    top = flat.argmax(axis=1)
    out = np.full(n, np.nan)
    for i in range(n):
        if not m[i].any() or flat[i].max() == flat[i].min():
            continue
        region = m[i]
        if tolerance > 0:
            region = ndimage.distance_transform_edt(~m[i]) <= tolerance
        out[i] = float(region.reshape(-1)[top[i]])
    return out


def pixel_auc(attr: npt.ArrayLike, mask: npt.ArrayLike) -> np.ndarray:
    """ROC AUC of attribution values as a pixel classifier of the mask, per image.

    Mask pixels are the positives; ties count 1/2 (midranks), so the value equals
    ``sklearn.metrics.roc_auc_score(mask[i].ravel(), attr[i].ravel())``. The raw (signed) map
    is used. 0.5 is chance. NaN when the mask is empty or covers the whole image.
    """
    a, m = _attr_and_mask(attr, mask)
    n = a.shape[0]
    flat_a = a.reshape(n, -1)
    flat_m = m.reshape(n, -1)
    n_pos = flat_m.sum(axis=1)
    n_neg = flat_m.shape[1] - n_pos
    ranks = sps.rankdata(flat_a, axis=1)
    rank_sum = (ranks * flat_m).sum(axis=1)
    out = np.full(n, np.nan)
    ok = (n_pos > 0) & (n_neg > 0)
    out[ok] = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return out


def lesion_masks_by_size(
    data: SynthLesions, size_classes: Sequence[str] = SIZE_CLASS_ORDER
) -> dict[str, np.ndarray]:
    """``{size_class: bool (N, H, W)}``: pixels of the visible lesions of each size class.

    Built from ``data.instance`` (lesion id per pixel) and ``data.lesions`` (its
    ``size_class``, "minute" / "small" / "large" by visible area, see
    :data:`medstudy.data.synth.SIZE_CLASSES`); the classes partition ``data.masks > 0``.
    """
    valid = set(SIZE_CLASS_ORDER)
    bad = [c for c in size_classes if c not in valid]
    if bad:
        raise ValueError(f"unknown size class(es) {bad}; valid: {list(SIZE_CLASS_ORDER)}")
    n = len(data)
    les = data.lesions
    n_slots = int(les["lesion"].max()) + 2 if len(les) else 1
    lut = np.full((n, n_slots), -1, dtype=np.int64)  # (image, lesion + 1) -> class index
    cls_idx = {c: i for i, c in enumerate(SIZE_CLASS_ORDER)}
    lut[les["image"].to_numpy(), les["lesion"].to_numpy() + 1] = [
        cls_idx[c] for c in les["size_class"]
    ]
    per_pixel = lut[np.arange(n)[:, None, None], data.instance]
    return {c: per_pixel == cls_idx[c] for c in size_classes}


def metrics_by_size(
    attr: npt.ArrayLike,
    lesion_masks_by_size: Mapping[str, npt.ArrayLike],
    sample_ids: npt.ArrayLike | None = None,
    tolerance: float = 0,
) -> pd.DataFrame:
    """Tidy ``(sample_id, size_class, metric, value)`` table of the mask metrics per lesion size.

    Metrics per image and size class: ``mass_in_mask``, ``pointing_game`` (with
    ``tolerance``), ``pixel_auc`` and ``area_fraction`` (the mask's share of the image: the
    chance level of the first two). Images with no lesion of a class get no row for it;
    NaN values (e.g. a map with no positive mass) are kept. The denominators are whole images,
    so compare arms within a size class; across classes the area differs by design.
    ``sample_ids`` default to ``0..N-1``.
    """
    a = np.asarray(attr, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"attr must be (N, H, W), got shape {a.shape}")
    n = a.shape[0]
    ids = np.arange(n) if sample_ids is None else np.asarray(sample_ids)
    if ids.shape != (n,):
        raise ValueError(f"sample_ids must have shape ({n},), got {ids.shape}")
    frames = []
    for size_class, mask in lesion_masks_by_size.items():
        _, m = _attr_and_mask(a, mask)
        present = m.any(axis=(1, 2))
        values = {
            "mass_in_mask": mass_in_mask(a, m),
            "pointing_game": pointing_game(a, m, tolerance=tolerance),
            "pixel_auc": pixel_auc(a, m),
            "area_fraction": m.mean(axis=(1, 2)),
        }
        for metric, v in values.items():
            frames.append(
                pd.DataFrame(
                    {
                        "sample_id": ids[present],
                        "size_class": size_class,
                        "metric": metric,
                        "value": v[present],
                    }
                )
            )
    if not frames:
        return pd.DataFrame(columns=["sample_id", "size_class", "metric", "value"])
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Lung fields on chest X-rays
# --------------------------------------------------------------------------------------------
def otsu_threshold(values: npt.ArrayLike, nbins: int = 256) -> float:
    """Otsu (1979) threshold: the histogram bin centre maximising the between-class variance
    (``skimage.filters.threshold_otsu``'s rule: foreground is ``values > threshold``)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return lo
    hist, edges = np.histogram(v, bins=nbins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist)
    w1 = np.cumsum(hist[::-1])[::-1]
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.cumsum((hist * centres)[::-1]) / np.maximum(w1[::-1], 1))[::-1]
    # Between-class variance for a split after bin k: w0[k] w1[k+1] (m0[k] - m1[k+1])^2.
    between = w0[:-1] * w1[1:] * (m0[:-1] - m1[1:]) ** 2
    return float(centres[int(np.argmax(between))])


def _grey(images: npt.ArrayLike) -> np.ndarray:
    """(N, H, W) or (H, W) float; a 4-D stack's channel axis (last or second, size 1 or 3) is
    averaged out."""
    a = np.asarray(images, dtype=np.float64)
    if a.ndim == 4:
        if a.shape[-1] in (1, 3):
            a = a.mean(axis=-1)
        elif a.shape[1] in (1, 3):
            a = a.mean(axis=1)
    return a


def _convex_hull_mask(region: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie in the convex hull of the ``region`` pixel centres."""
    from scipy.spatial import Delaunay, QhullError

    pts = np.argwhere(region)
    if len(pts) < 3:
        return region.copy()
    try:
        tri = Delaunay(pts)
    except QhullError:  # collinear pixels: no 2-D hull
        return region.copy()
    grid = np.indices(region.shape).reshape(2, -1).T
    return (tri.find_simplex(grid) >= 0).reshape(region.shape) | region


def _lung_mask_one(
    img: np.ndarray, n_components: int, min_area_frac: float, radius: int
) -> np.ndarray:
    h, w = img.shape
    lo, hi = np.percentile(img, [1, 99])
    if hi <= lo:
        return np.zeros((h, w), dtype=bool)
    x = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    min_area = max(1, int(round(min_area_frac * h * w)))
    se = ndimage.generate_binary_structure(2, 1)
    if radius > 1:
        se = ndimage.iterate_structure(se, radius)
    # 1. Body: tissue and bone are brighter than the air around the patient and in the lungs.
    body = ndimage.binary_opening(x > otsu_threshold(x), structure=se)
    lab, k = ndimage.label(body)
    if k == 0:
        return np.zeros((h, w), dtype=bool)
    sizes = ndimage.sum_labels(body, lab, index=np.arange(1, k + 1))
    body = np.isin(lab, 1 + np.flatnonzero(sizes >= min_area))
    # 2. Thorax: the convex hull of the body, which encloses the lungs even where the chest wall
    #    is thin or cut by the image border (a hole fill alone would then leak).
    thorax = _convex_hull_mask(body)
    if thorax.sum() < min_area:
        return np.zeros((h, w), dtype=bool)
    # 3. Lungs: the dark (air) part of the thorax, by Otsu on the inverted intensity in the thorax.
    inv = 1.0 - x
    dark = thorax & (inv > otsu_threshold(inv[thorax]))
    # 4. Morphology: opening cuts thin dark bridges (trachea, rib gaps) and speckle; closing
    #    smooths the outline; hole filling restores vessels/hila inside the fields.
    dark = ndimage.binary_opening(dark, structure=se)
    dark = ndimage.binary_closing(dark, structure=se) & thorax
    dark = ndimage.binary_fill_holes(dark)
    # 5. Keep the largest components (the two lungs), each at least min_area pixels.
    lab, k = ndimage.label(dark)
    if k == 0:
        return np.zeros((h, w), dtype=bool)
    sizes = ndimage.sum_labels(dark, lab, index=np.arange(1, k + 1))
    order = np.argsort(-sizes, kind="stable")[:n_components]
    keep = [i + 1 for i in order if sizes[i] >= min_area]
    return np.isin(lab, keep)


def lung_field_mask(
    images: npt.ArrayLike,
    n_components: int = 2,
    min_area_frac: float = 0.01,
    radius: int = 1,
) -> np.ndarray:
    """Boolean lung-field masks of grey chest X-rays ``(N, H, W)`` (or one ``(H, W)`` image).

    Unsupervised image processing (no model), designed for 28 px MedMNIST CXRs, per image:

    1. intensities rescaled to [0, 1] between their 1st and 99th percentiles (exposure
       invariance);
    2. body = pixels above the image's Otsu threshold (soft tissue and bone are bright),
       binary-opened, components smaller than ``min_area_frac`` of the image dropped;
    3. thorax = convex hull of the body;
    4. lungs = thorax pixels whose *inverted* intensity is above the Otsu threshold of the
       inverted intensities inside the thorax (air is dark);
    5. binary opening, then closing (cross structuring element of ``radius`` px), restricted to
       the thorax; holes filled;
    6. the ``n_components`` (2) largest 4-connected components of at least ``min_area_frac`` of
       the image are kept.

    Uses scipy.ndimage and scipy.spatial only. It is a heuristic: check it visually with
    :func:`plot_lung_masks` on the data set at hand. Images may be uint8 or float; a
    4-D stack's channel axis (size 1 or 3, last or second) is averaged out.
    """
    a = _grey(images)
    single = a.ndim == 2
    if single:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"images must be (N, H, W) or (H, W) grey, got shape {np.shape(images)}")
    if n_components < 1 or not 0.0 <= min_area_frac < 1.0 or radius < 1:
        raise ValueError("need n_components >= 1, 0 <= min_area_frac < 1 and radius >= 1")
    out = np.stack([_lung_mask_one(img, n_components, min_area_frac, radius) for img in a])
    return out[0] if single else out


def plot_lung_masks(
    images: npt.ArrayLike, masks: npt.ArrayLike, ncols: int = 8, titles: Sequence[str] | None = None
) -> Figure:
    """Grid of grey images with their lung masks overlaid (red fill and outline), for checking."""
    import matplotlib.pyplot as plt

    a = _grey(images)
    m = np.asarray(masks, dtype=bool)
    if a.ndim == 2:
        a, m = a[None], m[None]
    if a.shape != m.shape:
        raise ValueError(
            f"images and masks must have the same (N, H, W) shape: {a.shape}, {m.shape}"
        )
    n = a.shape[0]
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.5 * ncols, 1.6 * nrows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_xticks([]), ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(a[i], cmap="gray", interpolation="nearest")
        over = np.zeros((*m[i].shape, 4))
        over[m[i]] = (1.0, 0.1, 0.1, 0.35)
        ax.imshow(over, interpolation="nearest")
        if m[i].any() and not m[i].all():
            ax.contour(m[i].astype(float), levels=[0.5], colors="red", linewidths=0.6)
        label = titles[i] if titles is not None else f"#{i}"
        ax.set_title(f"{label} ({int(m[i].sum())} px)", fontsize=7)
    fig.suptitle("lung-field masks", fontsize=9)
    fig.tight_layout()
    return fig
