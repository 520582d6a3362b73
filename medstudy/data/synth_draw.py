"""Rendering primitives of the synthetic fundus images: vessel trees, fundus disc, lesions.

:func:`render` turns a sampled scene (:mod:`medstudy.data.synth_sample`) into images, the lesion
masks, the instance map and per-lesion visible area and bounding box, in chunks of images
(``_CHUNK_PIXELS``) so intermediate arrays stay in cache. The only random draws here are the
vessel templates (:func:`draw_vessel_trees`) and the sensor noise (one draw per chunk, in
:func:`render`); both are part of the generator's fixed draw order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medstudy.data.synth_sample import Anatomy, LesionSet
from medstudy.data.synth_spec import MA, REF_SIZE

__all__ = ["Rendering", "draw_vessel_trees", "render"]

_CHUNK_PIXELS = 1 << 16  # images per rendering chunk = this / size**2 (keeps arrays in cache)
_N_VESSEL_TEMPLATES = 12  # vessel trees per call; x2 with the mirrored (other-eye) versions
_VESSEL_STEP = 0.3  # px along a curve: dense enough that the nearest sample ~ nearest point
_TRI_SD = math.sqrt(2 * (256**2 - 1) / 12)  # sd of u1 + u2 with u ~ U{0..255} (~104.5)
_BG_RGB = np.array([0.02, 0.015, 0.01], dtype=np.float32)
_VESSEL_RGB_LOSS = np.array([0.5, 0.75, 0.65], dtype=np.float32)  # vessels absorb G/B more
_F32 = np.float32


@dataclass(frozen=True, eq=False)
class Rendering:
    """Output of :func:`render`.

    ``images`` uint8 ``(n, size, size, 3)``, ``masks`` uint8 and ``instance`` int32
    ``(n, size, size)``; per sampled lesion its visible ``area`` (px), ``bbox``
    ``(y0, x0, y1, x1)`` (exclusive ends) and ``order`` (drawing order renumbered over the
    visible lesions of its image; meaningless for lesions with ``area == 0``).
    """

    images: np.ndarray
    masks: np.ndarray
    instance: np.ndarray
    area: np.ndarray
    bbox: np.ndarray
    order: np.ndarray


# --------------------------------------------------------------------------------------------
# Vessel tree templates
# --------------------------------------------------------------------------------------------


def draw_vessel_trees(
    rng: np.random.Generator, size: int, eye_right: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Vessel-darkness templates and the template index of each image.

    Returns ``(bank, template)``: ``bank`` float32 ``(2T, 2*size+1, 2*size+1)`` in [0, 1] with
    the optic disc at the centre ``(size, size)``; templates ``0..T-1`` are drawn for an optic
    disc on the right of the fundus (temporal side to the left), ``T..2T-1`` are their mirror
    images for the other eye. Each tree has the two temporal arcades curving around the
    macula, two short nasal vessels, and a few side branches; width and contrast taper along
    each vessel. Cropping a template per image (centred on its optic disc) is far cheaper than
    drawing curves per image.
    """
    s = size / REF_SIZE
    c = 2 * size + 1
    grid = np.stack(np.meshgrid(np.arange(c), np.arange(c), indexing="ij"), -1).reshape(-1, 2)
    bank = np.zeros((2 * _N_VESSEL_TEMPLATES, c, c), dtype=np.float32)
    for tpl in range(_N_VESSEL_TEMPLATES):
        bank[tpl] = _darkness(_vessel_tree(rng, size), grid, s).reshape(c, c)
        bank[_N_VESSEL_TEMPLATES + tpl] = bank[tpl, :, ::-1]  # the other eye
    offset = np.where(eye_right, 0, _N_VESSEL_TEMPLATES)
    template = rng.integers(0, _N_VESSEL_TEMPLATES, eye_right.shape[0]) + offset
    return bank, template


def _vessel_curve(
    rng: np.random.Generator,
    size: int,
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
    s = size / REF_SIZE
    m = max(int(length / _VESSEL_STEP), 2)
    t = np.arange(m) * _VESSEL_STEP
    phi = phi0 + kappa * t + 0.12 * np.sin(t / (2.5 * s) + rng.uniform(0, 2 * np.pi))
    y = y0 - np.cumsum(np.sin(phi)) * _VESSEL_STEP
    x = x0 + np.cumsum(np.cos(phi)) * _VESSEL_STEP
    f = t / t[-1]
    w = (width[0] + (width[1] - width[0]) * f) * s
    d = depth[0] + (depth[1] - depth[0]) * f
    return y, x, w, d, phi


def _vessel_tree(rng: np.random.Generator, size: int) -> list[tuple[np.ndarray, ...]]:
    """The vessel curves of one tree, optic disc at ``(size, size)`` on the right."""
    rot = rng.uniform(-0.25, 0.25)  # whole-tree tilt
    parts = []
    for sign in (1.0, -1.0):  # superior / inferior half of the tree
        # Temporal arcade: leaves up-left (down-left) and curves around the macula.
        arc = _vessel_curve(
            rng,
            size,
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
                _vessel_curve(
                    rng,
                    size,
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
            _vessel_curve(
                rng,
                size,
                size,
                size,
                phi0=sign * rng.uniform(0.4, 0.9) + rot,
                kappa=-sign * rng.uniform(0.5, 1.5) / size,
                length=rng.uniform(0.25, 0.4) * size,
                width=(0.75, 0.45),
                depth=(0.6, 0.4),
            )
        )
    return parts


def _darkness(parts: list[tuple[np.ndarray, ...]], grid: np.ndarray, s: float) -> np.ndarray:
    """Vessel darkness at each ``grid`` point ``(P, 2)`` from the curve samples ``parts``."""
    from scipy.spatial import cKDTree  # scipy only when generating; keep the import cheap

    ys, xs, ws, ds, _ = (np.concatenate(c) for c in zip(*parts, strict=True))
    # Nearest curve sample of every template pixel (exact enough with 0.3-px steps).
    dist, idx = cKDTree(np.stack([ys, xs], -1)).query(grid, distance_upper_bound=3.5 * s + 1.5)
    hit = np.isfinite(dist)
    v = np.zeros(grid.shape[0])
    # Gaussian cross-section: a vessel is darkest on its axis and fades over ~w px.
    v[hit] = ds[idx[hit]] * np.exp(-((dist[hit] / ws[idx[hit]]) ** 2))
    return v


# --------------------------------------------------------------------------------------------
# Images in chunks
# --------------------------------------------------------------------------------------------


def render(
    rng: np.random.Generator,
    anatomy: Anatomy,
    lesions: LesionSet,
    bank: np.ndarray,
    template: np.ndarray,
    size: int,
) -> Rendering:
    """Render every image: fundus, vessels, lesions (later lesion wins), FOV edge and noise."""
    n, n_les = anatomy.cy.shape[0], lesions.image.shape[0]
    out = Rendering(
        images=np.empty((n, size, size, 3), dtype=np.uint8),
        masks=np.zeros((n, size, size), dtype=np.uint8),
        instance=np.zeros((n, size, size), dtype=np.int32),
        area=np.zeros(n_les, dtype=np.int64),
        bbox=np.zeros((n_les, 4), dtype=np.int64),
        order=np.zeros(n_les, dtype=np.int64),
    )
    vessel_windows = np.lib.stride_tricks.sliding_window_view(bank, (size, size), axis=(1, 2))
    # Window half-widths covering the largest lesion (+1 px for rounding the centre), with a
    # small window for microaneurysms (most lesions) and a large one for the rest.
    is_ma = lesions.kind == MA
    groups = [
        (~is_ma, int(math.ceil(float(lesions.a[~is_ma].max(initial=1.0)))) + 1),
        (is_ma, int(math.ceil(float(lesions.a[is_ma].max(initial=1.0)))) + 1),
    ]
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    for i0 in range(0, n, chunk):
        sl = slice(i0, min(n, i0 + chunk))
        r0 = (size - anatomy.od_cy[sl]).astype(np.int64)
        c0 = (size - anatomy.od_cx[sl]).astype(np.int64)
        img, edge = _draw_fundus(anatomy, sl, vessel_windows[template[sl], r0, c0], size)
        j0, j1 = np.searchsorted(lesions.image, [sl.start, sl.stop])
        if j1 > j0:
            _draw_lesions(out, img, lesions, groups, sl.start, slice(j0, j1), size)
        out.images[sl] = _expose(rng, img, edge, anatomy.noise_sd[sl])
    return out


def _col(v: np.ndarray, sl: slice) -> np.ndarray:
    """``v[sl]`` as float32 ``(b, 1, 1)`` for broadcasting over a chunk of images."""
    return v[sl].astype(_F32)[:, None, None]


def _draw_fundus(
    anatomy: Anatomy, sl: slice, vessel_crop: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 ``(b, size, size, 3)`` retina of images ``sl`` (no lesions, edge, noise) and
    the soft FOV ``edge`` weight ``(b, size, size)``."""
    s = size / REF_SIZE
    ax = np.arange(size, dtype=_F32)
    a = anatomy
    # Squared distances via (b, size, 1) + (b, 1, size) broadcasting: 1 full-size op each.
    dy = ax[None, :] - _col(a.cy, sl)[:, :, 0]
    dx = ax[None, :] - _col(a.cx, sl)[:, :, 0]
    r2 = dy[:, :, None] ** 2 + dx[:, None, :] ** 2
    rn2 = r2 / _col(a.radius, sl) ** 2
    # Soft FOV edge over ~1 scaled px (anti-aliasing); the FOV itself is r <= radius.
    edge = np.clip((1.0 - np.sqrt(rn2)) * (_col(a.radius, sl) / s) + 0.5, 0.0, 1.0)
    shade = _col(a.gain, sl) * (1.0 - _col(a.vignette, sl) * rn2)
    my = (ax[None, :] - _col(a.mac_cy, sl)[:, :, 0]) ** 2
    mx = (ax[None, :] - _col(a.mac_cx, sl)[:, :, 0]) ** 2
    mac = np.clip(1.0 - (my[:, :, None] + mx[:, None, :]) / _col(a.mac_r, sl) ** 2, 0.0, 1.0)
    shade *= 1.0 - _col(a.mac_depth, sl) * mac
    oy = (ax[None, :] - _col(a.od_cy, sl)[:, :, 0]) ** 2
    ox = (ax[None, :] - _col(a.od_cx, sl)[:, :, 0]) ** 2
    # Optic disc: flat-topped bright spot (plateau inside ~0.6 radius, then fades).
    od_rn2 = (oy[:, :, None] + ox[:, None, :]) / _col(a.od_radius, sl) ** 2
    od = np.clip(1.6 * (1.0 - od_rn2), 0.0, 1.0)
    od *= 0.9
    vessel = vessel_crop * _col(a.vessel_contrast, sl)
    vessel *= 1.0 - 0.6 * od  # vessels fade over the bright optic disc head

    img = np.empty((*edge.shape, 3), dtype=_F32)
    for ch in range(3):
        x = shade * a.base_rgb[sl, ch].astype(_F32)[:, None, None]
        x = x * (1.0 - od) + od * (_col(a.gain, sl) * a.od_rgb[sl, ch].astype(_F32)[:, None, None])
        x *= 1.0 - _VESSEL_RGB_LOSS[ch] * vessel
        img[..., ch] = x
    return img, edge


def _draw_lesions(
    out: Rendering,
    img: np.ndarray,
    lesions: LesionSet,
    groups: list[tuple[np.ndarray, int]],
    i0: int,
    ls: slice,
    size: int,
) -> None:
    """Draw lesions ``ls`` (all of images ``i0..``) into ``img`` and record them in ``out``."""
    les = lesions
    pix, who = _rasterise(les, groups, i0, ls, img.shape[0], size)
    gl = ls.start + who  # global lesion index
    n_chunk = ls.stop - ls.start
    out.area[ls] = np.bincount(who, minlength=n_chunk)
    _, rem = np.divmod(pix, size * size)
    pyy, pxx = np.divmod(rem, size)
    lo_y, lo_x = np.full(n_chunk, size), np.full(n_chunk, size)
    hi_y, hi_x = np.full(n_chunk, -1), np.full(n_chunk, -1)
    np.minimum.at(lo_y, who, pyy), np.minimum.at(lo_x, who, pxx)
    np.maximum.at(hi_y, who, pyy), np.maximum.at(hi_x, who, pxx)
    out.bbox[ls] = np.stack([lo_y, lo_x, hi_y + 1, hi_x + 1], 1)
    # Renumber within each image if a lesion vanished (drop rule in the synth module doc).
    dropped = out.area[ls] == 0
    cd = np.cumsum(dropped) - dropped
    first = np.searchsorted(les.image[ls], les.image[ls])  # first lesion of the same image
    out.order[ls] = les.order[ls] - (cd - cd[first])
    out.masks.reshape(-1)[i0 * size * size + pix] = les.kind[gl]
    out.instance.reshape(-1)[i0 * size * size + pix] = out.order[gl] + 1
    # Colour: blend towards the lesion colour, strongest at the centre (1 - 0.35 rho^2).
    ry, rx = pyy - les.cy[gl], pxx - les.cx[gl]
    uu = ry * les.cos[gl] + rx * les.sin[gl]
    vv = -ry * les.sin[gl] + rx * les.cos[gl]
    rho2p = np.minimum((uu / les.a[gl]) ** 2 + (vv / les.b[gl]) ** 2, 1.0)
    a_p = (les.alpha[gl] * (1.0 - 0.35 * rho2p)).astype(_F32)[:, None]
    img_flat = img.reshape(-1, 3)
    img_flat[pix] = (1.0 - a_p) * img_flat[pix] + a_p * les.rgb[gl].astype(_F32)


def _rasterise(
    les: LesionSet, groups: list[tuple[np.ndarray, int]], i0: int, ls: slice, b: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels covered by lesions ``ls`` of images ``i0..i0+b-1`` and the lesion shown at each.

    Returns ``(pix, who)``: flat pixel indices within the chunk and the index (within ``ls``)
    of the lesion drawn last there. Each lesion is an ellipse tested on a ``(2h+1)^2`` window
    around its rounded centre, ``h`` from its group in ``groups``; the centre pixel is always
    covered so every lesion has at least one pixel before overlaps are resolved.
    """
    flats, ranks = [], []
    for group, h in groups:
        gi = ls.start + np.flatnonzero(group[ls])
        if gi.size == 0:
            continue
        w = np.arange(-h, h + 1)
        py = np.rint(les.cy[gi]).astype(np.int64)[:, None] + w  # (L, W)
        px = np.rint(les.cx[gi]).astype(np.int64)[:, None] + w
        ddy = (py - les.cy[gi, None]).astype(_F32)[:, :, None]
        ddx = (px - les.cx[gi, None]).astype(_F32)[:, None, :]
        cs, sn = les.cos[gi, None, None], les.sin[gi, None, None]
        u = (ddy * cs + ddx * sn) * (1.0 / les.a[gi]).astype(_F32)[:, None, None]
        v = (ddx * cs - ddy * sn) * (1.0 / les.b[gi]).astype(_F32)[:, None, None]
        inside = u * u + v * v <= 1.0
        inside[:, h, h] = True  # the centre pixel: every lesion has >= 1 pixel
        inside &= ((py >= 0) & (py < size))[:, :, None]
        inside &= ((px >= 0) & (px < size))[:, None, :]
        rows = (les.image[gi, None] - i0) * size + np.clip(py, 0, size - 1)  # (L, W)
        flat = rows[:, :, None] * size + np.clip(px, 0, size - 1)[:, None, :]
        flats.append(flat[inside])
        ranks.append(np.broadcast_to((gi - ls.start + 1)[:, None, None], inside.shape)[inside])
    # Later lesion wins a shared pixel: keep the highest drawing rank per pixel.
    winner = np.zeros(b * size * size, dtype=np.int64)
    np.maximum.at(winner, np.concatenate(flats), np.concatenate(ranks))
    pix = np.flatnonzero(winner)
    return pix, winner[pix] - 1


def _expose(
    rng: np.random.Generator, img: np.ndarray, edge: np.ndarray, noise_sd: np.ndarray
) -> np.ndarray:
    """FOV edge, black background, sensor noise and quantisation to uint8."""
    img = img * edge[..., None] + _BG_RGB * (1.0 - edge[..., None])
    # Triangular noise from two uniform bytes: ~Gaussian-looking, 10x cheaper than
    # standard_normal (which dominated the run time).
    u8 = rng.integers(0, 256, (2, *img.shape), dtype=np.uint8)
    noise = u8[0].astype(_F32)
    noise += u8[1]
    noise -= 255.0
    img += noise * (noise_sd / _TRI_SD).astype(_F32)[:, None, None, None]
    np.clip(img * 255.0 + 0.5, 0.0, 255.0, out=img)
    return img.astype(np.uint8)
