"""The interpretability stage (notebook 05): where the fine-tuned models look (claim C7).

``run_interpret(cfg)`` finds every finished transfer unit of ``cfg`` (dataset × arm × seed at
``cfg.fraction`` with ``cfg.protocol``) through :func:`medstudy.results.find_runs`, rebuilds its
network (:func:`medstudy.transfer.load_unit_classifier`) and, on one fixed seeded sample of test
images (:func:`select_sample`; the same for every arm and seed, so arms pair image by image),
scores the maps of ``cfg.methods`` (:data:`medstudy.attribution.ATTRIBUTIONS`) against
ground-truth regions with :func:`medstudy.masks.metrics_by_size`: on ``synth_lesions`` every
lesion (region ``"all"``) and each size class (``"minute"``, ``"small"``, ``"large"``; only
images with lesions are sampled); on chest X-rays the lung fields (``"lung"``,
:func:`medstudy.masks.lung_field_mask`).

**Attribution target: the true label**, not the predicted class. C7 asks whether the evidence
for the lesion-defined grade lies on the lesions; explaining each model's own prediction would
make the explained output differ between arms and seeds wherever they disagree, so the paired
comparison would no longer ask one question of one image.

Also per unit: the cascading-randomisation sanity check (Adebayo et al. 2018) per method on the
first ``cfg.sanity_images`` sampled images (a flagged method ignores the weights and is left out
of C7), and on ``synth_lesions`` the accuracy with the minute lesions erased
(:func:`minute_erased`): does the task need them?

One result per unit in ``results/interpretability/<run_id>/``: per-sample tidy rows (the
identifying columns, ``sample_id``, ``y_true``, ``method``, ``size_class``, ``metric``,
``value``), their means in ``metrics.csv`` (``<metric>:<method>:<size_class>``), and the
sanity cascades, flags and timings in the details. The run_id hashes the source unit's run_id,
the methods and options, the md5 of the sampled ids and the scoring settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from medstudy.attribution import attribute, cascading_randomisation, sanity_flag
from medstudy.config import InterpretConfig
from medstudy.data import Split, load_split
from medstudy.data.synth import SynthLesions, fov_masks, grades_from_table
from medstudy.distortions import modality_of
from medstudy.evaluate.batches import image_transform
from medstudy.evaluate.finetune import predict_scores
from medstudy.locks import pending
from medstudy.masks import (
    SIZE_CLASS_ORDER,
    lesion_masks_by_size,
    lung_field_mask,
    metrics_by_size,
    plot_lung_masks,
)
from medstudy.results import (
    PREDICTION_KEYS,
    Run,
    metric_rows,
    read_details,
    read_metrics,
    read_predictions,
    run_id,
)
from medstudy.runtime import derive_seed, resolve_device
from medstudy.stats import bootstrap_ci
from medstudy.transfer import find_source_unit, load_unit_classifier
from medstudy.transfer import unit_paths as transfer_unit_paths
from medstudy.transfer.data import ids_hash

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STAGE = "interpretability"
#: Every map is computed and every cascade randomised with these seeds: the same for all arms.
ATTRIBUTION_SEED = 0
SANITY_SEED = 0
#: Per-sample metrics of each (method, region). ``area_fraction`` is the region's share of the
#: image: the chance level of ``mass_in_mask`` (and of the strict pointing game), the same for
#: every arm.
MASK_METRICS: tuple[str, ...] = ("mass_in_mask", "pointing_game", "pixel_auc", "area_fraction")
LESION_REGIONS: tuple[str, ...] = ("all", *SIZE_CLASS_ORDER)
LUNG = "lung"
#: ``method`` of the per-sample rows of the minute-lesion erasure check.
ERASURE = "erasure"


@dataclass(frozen=True)
class Sample:
    """The scored test images: ``test`` (the sampled subset, ids kept) and ``regions``
    (``{region: bool (n, H, W)}``, e.g. ``"all"``, ``"minute"``, …, ``"lung"``)."""

    test: Split
    regions: dict[str, np.ndarray]

    def images(self) -> torch.Tensor:
        """uint8 (n, C, H, W), the layout :func:`medstudy.attribution.attribute` takes."""
        return torch.from_numpy(np.ascontiguousarray(self.test.images.transpose(0, 3, 1, 2)))


def uses_lung_fields(cfg: InterpretConfig) -> bool:
    return cfg.lung_fields and modality_of(cfg.dataset) == "cxr"


def select_sample(cfg: InterpretConfig) -> Sample:
    """``cfg.n_images`` test images (0: all eligible) drawn with a seed derived from the dataset
    and image size only, so every arm, seed and method scores the same images; samples are
    nested (a larger ``n_images`` keeps the smaller sample). On ``synth_lesions`` only images
    with at least one lesion are eligible (an image without lesions has nothing to point at)."""
    test = load_split(cfg.dataset, "test", cfg.image_size)
    synth = test.extras.get("synth")
    regions: dict[str, np.ndarray] = {}
    if isinstance(synth, SynthLesions):
        regions = {"all": synth.masks > 0, **lesion_masks_by_size(synth)}
        eligible = np.flatnonzero(regions["all"].any(axis=(1, 2)))
    else:
        eligible = np.arange(len(test))
    rng = np.random.default_rng(derive_seed(STAGE, "sample", cfg.dataset, cfg.image_size))
    k = len(eligible) if cfg.n_images == 0 else min(cfg.n_images, len(eligible))
    idx = np.sort(rng.permutation(eligible)[:k])
    regions = {r: m[idx] for r, m in regions.items()}
    if uses_lung_fields(cfg):
        regions[LUNG] = lung_field_mask(test.images[idx])
    return Sample(test.subset(idx), regions)


def source_unit(cfg: InterpretConfig, arm: str, seed: int) -> str:
    """The run_id of the transfer unit (arm, seed) this stage reads."""
    return find_source_unit(cfg, arm, seed)


def attribution_options(cfg: InterpretConfig, method: str) -> dict[str, Any]:
    """The options of ``method`` that ``cfg`` overrides (hashed into the run id)."""
    return {"n_steps": cfg.ig_steps} if method == "integrated_gradients" else {}


# --------------------------------------------------------------------------------------------
# Minute lesions erased
# --------------------------------------------------------------------------------------------
def inpaint_median(
    images: np.ndarray, erase: np.ndarray, valid: np.ndarray, radius: int = 2, max_radius: int = 16
) -> np.ndarray:
    """``images`` uint8 (N, H, W, C) with every ``erase`` pixel replaced by the per-channel
    median of the ``valid`` pixels of the original image in the (2r + 1)² window around it;
    ``r`` starts at ``radius`` and doubles for pixels whose window holds no valid pixel."""
    out = images.copy()
    todo = np.argwhere(erase)
    r = radius
    while len(todo) and r <= max_radius:
        k = 2 * r + 1
        pad = ((0, 0), (r, r), (r, r))
        img = np.pad(images.astype(np.float32), (*pad, (0, 0)))
        ok = np.pad(valid, pad)
        n, y, x = todo.T
        win = np.lib.stride_tricks.sliding_window_view(img, (k, k), axis=(1, 2))[n, y, x]
        win_ok = np.lib.stride_tricks.sliding_window_view(ok, (k, k), axis=(1, 2))[n, y, x]
        found = win_ok.any(axis=(1, 2))
        vals = np.where(win_ok[:, None], win, np.nan)[found].reshape(found.sum(), img.shape[-1], -1)
        out[n[found], y[found], x[found]] = np.rint(np.nanmedian(vals, axis=-1)).astype(np.uint8)
        todo, r = todo[~found], 2 * r
    if len(todo):
        raise ValueError(f"{len(todo)} pixel(s) have no valid pixel within {max_radius} px")
    return out


@dataclass(frozen=True)
class Erased:
    """Test images with minute lesions: ``index`` into the test split, ``images`` uint8
    (n, H, W, C) with those lesions inpainted, ``regraded`` the grade of the remaining lesions."""

    index: np.ndarray
    images: np.ndarray
    regraded: np.ndarray


@lru_cache(maxsize=2)
def minute_erased(image_size: int) -> Erased:
    """The ``synth_lesions`` test images that have a minute lesion, with every minute lesion
    erased: its pixels inpainted by :func:`inpaint_median` from the image's own background (the
    field of view minus every lesion pixel, so no other lesion leaks in). Lesions are drawn with
    hard edges (no halo outside the mask), so the mask covers them; the inpainted spot lacks the
    sensor noise of its surroundings, a ≤ 6 px smooth patch. ``regraded`` applies the grade rule
    to the remaining lesions (a model that reads the minute lesions should follow it)."""
    test = load_split("synth_lesions", "test", image_size)
    synth = test.extras["synth"]
    assert isinstance(synth, SynthLesions)
    minute = lesion_masks_by_size(synth, ("minute",))["minute"]
    index = np.flatnonzero(minute.any(axis=(1, 2)))
    valid = fov_masks(synth)[index] & (synth.masks[index] == 0)
    images = inpaint_median(synth.images[index], minute[index], valid)
    les = synth.lesions
    regraded = grades_from_table(les[les["size_class"] != "minute"], len(synth))[index]
    return Erased(index, images, regraded)


def _erasure(
    cfg: InterpretConfig, model: torch.nn.Module
) -> tuple[dict[str, float], pd.DataFrame, dict[str, Any]]:
    test = load_split(cfg.dataset, "test", cfg.image_size)
    er = minute_erased(cfg.image_size)
    y = test.labels[er.index]

    def predict(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        scores = predict_scores(model, (x,), test.info, transform=image_transform(False))
        return scores.argmax(axis=1)

    orig, erased = predict(test.images[er.index]), predict(er.images)
    correct = {
        "original": orig == y,
        "minute_erased": erased == y,
        "minute_erased_regraded": erased == er.regraded,
    }
    values = {f"accuracy:{k}": float(v.mean()) for k, v in correct.items()}
    # ordinal grades: < 0 when the model lowers the grade once the minute lesions are gone
    values["grade_shift:minute_erased"] = float((erased - orig).mean())
    values["n_images:minute_erased"] = float(len(y))
    k = len(correct)
    rows = pd.DataFrame(
        {
            "sample_id": np.tile(test.ids[er.index], k),
            "y_true": np.tile(y, k),
            "method": ERASURE,
            "size_class": "minute",
            "metric": np.repeat([f"correct_{m}" for m in correct], len(y)),
            "value": np.concatenate(list(correct.values())).astype(np.float64),
        }
    )
    return values, rows, {"n_images": len(y), "regraded_changed": int((er.regraded != y).sum())}


def unit_config(cfg: InterpretConfig, arm: str, seed: int, src: str, sample: Sample) -> dict:
    """The resolved config of one unit (hashed into its run id)."""
    return {
        "dataset": cfg.dataset,
        "arm": arm,
        "seed": seed,
        "protocol": cfg.protocol,
        "fraction": cfg.fraction,
        "image_size": cfg.image_size,
        "source": f"{cfg.source_stage}/{src}",
        "methods": list(cfg.methods),
        "method_options": {m: attribution_options(cfg, m) for m in cfg.methods},
        "sample_ids_md5": ids_hash(sample.test.ids),
        "target": "true label",
        "regions": sorted(sample.regions),
        "pointing_tolerance": cfg.pointing_tolerance,
        "sanity": [cfg.sanity_images, cfg.sanity_threshold] if cfg.sanity_check else None,
        "erase_minute": cfg.erase_minute and "minute" in sample.regions,
    }


def run_interpret(cfg: InterpretConfig) -> pd.DataFrame:
    """Run (or load) every (arm, seed) unit of ``cfg``; returns tidy metrics with ``run_id``.

    Every source unit is located before any work, so a missing fine-tuned model fails at once.
    """
    device = resolve_device(cfg.device)
    sources = {(arm, seed): source_unit(cfg, arm, seed) for arm in cfg.arms for seed in cfg.seeds}
    sample = select_sample(cfg)
    prov = sample.test.provenance
    inputs = {f"{cfg.dataset}.test": prov.md5 or prov.source}
    frames = []
    for (arm, seed), src in sources.items():
        config = unit_config(cfg, arm, seed, src, sample)
        rid = run_id(config, inputs)
        with pending(STAGE, rid) as todo:
            if todo:
                _evaluate(cfg, config, inputs, src, sample, device)
        frames.append(read_metrics(STAGE, rid))
    return pd.concat(frames, ignore_index=True)


def _score(
    cfg: InterpretConfig, model: torch.nn.Module, sample: Sample, method: str
) -> tuple[pd.DataFrame, dict[str, float], float]:
    """Per-sample mask metrics of one method, their means, and the seconds per image."""
    t0 = time.perf_counter()
    images, target, ids = sample.images(), sample.test.labels, sample.test.ids
    opts = attribution_options(cfg, method)
    maps = attribute(model, images, target, method, seed=ATTRIBUTION_SEED, **opts)
    seconds = (time.perf_counter() - t0) / max(len(ids), 1)
    scores = metrics_by_size(maps, sample.regions, ids, cfg.pointing_tolerance)
    y_true = scores["sample_id"].map(dict(zip(ids.tolist(), target.tolist(), strict=True)))
    means = scores.groupby(["metric", "size_class"], sort=False)["value"].mean()
    values = {
        f"{m}:{r}" if m == "area_fraction" else f"{m}:{method}:{r}": v
        for (m, r), v in means.items()
    }
    return scores.assign(y_true=y_true, method=method), values, seconds


def _sanity(
    cfg: InterpretConfig, model: torch.nn.Module, sample: Sample, method: str
) -> tuple[list[dict[str, Any]], bool, dict[str, float]]:
    """The cascade on the first ``cfg.sanity_images`` sampled images, the flag, metric rows."""
    k = min(cfg.sanity_images, len(sample.test))
    x, target = sample.images()[:k], sample.test.labels[:k]
    opts = attribution_options(cfg, method)
    cascade = cascading_randomisation(model, x, target, method, seed=SANITY_SEED, **opts)
    final = float(cascade["spearman"].iloc[-1])
    # Every fully randomised map constant (final NaN): such maps cannot follow the trained
    # ones, i.e. the method did respond to the weights, so it is not flagged.
    flag = bool(np.isfinite(final) and sanity_flag(cascade, cfg.sanity_threshold))
    values = {f"sanity_spearman:{method}": final, f"sanity_flag:{method}": float(flag)}
    return cascade.to_dict("records"), flag, values


def _evaluate(
    cfg: InterpretConfig,
    config: dict[str, Any],
    inputs: dict[str, str],
    src: str,
    sample: Sample,
    device: torch.device,
) -> None:
    model = load_unit_classifier(cfg.source_stage, src, str(device))
    seed = int(config["seed"])
    ident = (STAGE, cfg.dataset, config["arm"], cfg.protocol, cfg.fraction, seed, "test")
    base = dict(zip(PREDICTION_KEYS, (*ident, None, None), strict=True))
    regions = {r: int(m.any(axis=(1, 2)).sum()) for r, m in sample.regions.items()}
    details: dict[str, Any] = {"source": src, "n_images": len(sample.test), "regions": regions}
    details.update(target="true label", seconds_per_image={}, sanity={}, sanity_flag={})
    t_start = time.perf_counter()
    prov = {"test": sample.test.provenance.as_dict()}
    with Run(STAGE, config, inputs, prov, seed, str(device)) as run:
        frames, values = [], {}
        for method in cfg.methods:
            frame, means, details["seconds_per_image"][method] = _score(cfg, model, sample, method)
            frames.append(frame)
            values.update(means)
            if cfg.sanity_check:
                cascade, flag, rows = _sanity(cfg, model, sample, method)
                details["sanity"][method], details["sanity_flag"][method] = cascade, flag
                values.update(rows)
        if config["erase_minute"]:
            er_values, er_rows, details["erasure"] = _erasure(cfg, model)
            values.update(er_values)
            frames.append(er_rows)
        per_sample = pd.concat(frames, ignore_index=True).assign(**base)
        cols = [*PREDICTION_KEYS, "sample_id", "y_true", "method", "size_class", "metric", "value"]
        run.log_metrics(metric_rows(base, values))
        run.save_predictions(per_sample[cols].astype({"y_true": np.int64}))
        details["seconds"] = round(time.perf_counter() - t_start, 3)
        run.save_details(details)


# --------------------------------------------------------------------------------------------
# Tables and figures (from saved results; the overlays recompute a few maps)
# --------------------------------------------------------------------------------------------
def interpret_predictions(metrics: pd.DataFrame) -> pd.DataFrame:
    """The per-sample rows of every unit in ``metrics`` (with a ``run_id`` column)."""
    rids = list(dict.fromkeys(metrics["run_id"]))
    return pd.concat([read_predictions(STAGE, r).assign(run_id=r) for r in rids], ignore_index=True)


def _mean(_: np.ndarray, values: np.ndarray) -> float:
    return float(np.mean(values))


def mask_metric_table(
    metrics: pd.DataFrame, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> pd.DataFrame:
    """Mean of each mask metric per arm × method × region with a 95 % BCa bootstrap CI.

    Per image the value is first averaged over the arm's seeds (NaN values, e.g. a map with no
    positive mass, skipped); the CI then resamples images (:func:`medstudy.stats.bootstrap_ci`),
    so it is the sampling uncertainty of the image set for the seed-averaged arm. ``n_images``
    counts images with a value; ``area_fraction`` is the region's mean share of the image (the
    chance level of ``mass_in_mask``).
    """
    df = interpret_predictions(metrics)
    df = df[df["method"] != ERASURE]
    is_area = df["metric"] == "area_fraction"
    chance = df[is_area].groupby("size_class")["value"].mean().rename("area_fraction")
    df = df[~is_area]
    keys = ["arm", "method", "size_class", "metric"]
    per_image = df.groupby([*keys, "sample_id"], sort=False)["value"].mean()
    n_seeds = df.groupby(keys, sort=False)["seed"].nunique()
    rows = []
    for key, values in per_image.groupby(level=list(range(len(keys))), sort=False):
        v = values.dropna().to_numpy()
        ci = (np.mean(v) if len(v) else np.nan, np.nan, np.nan)
        if len(v) >= 2:
            res = bootstrap_ci(_mean, np.zeros(len(v)), v, n_boot=n_boot, alpha=alpha, seed=seed)
            ci = (res.estimate, res.ci_low, res.ci_high)
        rows.append((*key, *ci, len(v), int(n_seeds[key])))
    table = pd.DataFrame(rows, columns=[*keys, "mean", "ci_low", "ci_high", "n_images", "n_seeds"])
    table = table.join(chance, on="size_class")
    arms = list(dict.fromkeys(metrics["arm"]))
    table = table.assign(
        _r=table["size_class"].map([*LESION_REGIONS, LUNG].index), _a=table["arm"].map(arms.index)
    ).sort_values(["metric", "method", "_r", "_a"], kind="stable")
    return table.drop(columns=["_r", "_a"]).reset_index(drop=True)


def sanity_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The cascading randomisation per unit and method: the mean Spearman correlation with the
    trained model's maps after each block is randomised (columns, top block first), and
    ``flagged`` (insensitive to the weights: left out of C7)."""
    rows = []
    units = metrics[["arm", "seed", "run_id"]].drop_duplicates()
    for arm, seed, rid in units.itertuples(index=False):
        details = read_details(STAGE, rid)
        for method, cascade in details.get("sanity", {}).items():
            steps = {f"random {c['randomised']}": c["spearman"] for c in cascade}
            flagged = details["sanity_flag"][method]
            rows.append({"arm": arm, "seed": seed, "method": method, **steps, "flagged": flagged})
    return pd.DataFrame(rows)


def erasure_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per arm (mean over seeds): accuracy on the test images with minute lesions, original and
    with those lesions erased (against the original grade, and against the grade of the
    remaining lesions), the mean change of the predicted grade, and the number of images."""
    sel = metrics[metrics["metric"].str.contains(":minute_erased|:original", regex=True)]
    if sel.empty:
        return pd.DataFrame(columns=["arm", "n_seeds"])
    table = sel.pivot_table(
        index="arm", columns="metric", values="value", aggfunc="mean", sort=False
    )
    table["n_seeds"] = sel.groupby("arm")["seed"].nunique()
    return table.reset_index().rename_axis(columns=None)


def plot_overlays(cfg: InterpretConfig, n: int | None = None) -> Figure:
    """Rows: ``n`` sampled test images (default ``cfg.n_overlay``). Columns: the image, its
    ground-truth regions (lesions coloured by size class, or the lung fields), then the
    positive part of the attribution map of every arm × method (seed ``cfg.seeds[0]``), with
    the region outlined. The maps are recomputed (deterministic: the ones that were scored)."""
    import matplotlib.pyplot as plt

    sample = select_sample(cfg)
    # images with a minute lesion (the claim's point) first
    has = sample.regions.get("minute", np.zeros((len(sample.test), 1, 1), bool)).any(axis=(1, 2))
    idx = np.argsort(~has, kind="stable")[: cfg.n_overlay if n is None else n]
    images, target = sample.images()[idx], sample.test.labels[idx]
    outline = sample.regions["all" if "all" in sample.regions else LUNG][idx]
    maps = {}
    for arm in cfg.arms:
        model = load_unit_classifier(cfg.source_stage, source_unit(cfg, arm, cfg.seeds[0]))
        for method in cfg.methods:
            opts = attribution_options(cfg, method)
            maps[arm, method] = attribute(
                model, images, target, method, seed=ATTRIBUTION_SEED, **opts
            )
    ncols = 2 + len(maps)
    fig, axes = plt.subplots(
        len(idx), ncols, figsize=(1.25 * ncols, 1.35 * len(idx) + 0.4), squeeze=False
    )
    shown = images.permute(0, 2, 3, 1).numpy()
    grey = shown.mean(axis=-1) / 255.0
    colours = {
        "minute": (1, 0, 1),
        "small": (1, 0.85, 0),
        "large": (0, 0.9, 1),
        LUNG: (1, 0.2, 0.2),
    }
    for row, i in enumerate(idx):
        ax = axes[row]
        ax[0].imshow(shown[row].squeeze(), cmap="gray", vmin=0, vmax=255)
        ax[0].set_ylabel(f"{sample.test.ids[i].rsplit(':', 1)[-1]}\ny={target[row]}", fontsize=6)
        over = np.repeat(0.6 * grey[row][..., None], 3, axis=-1)
        for region, rgb in colours.items():
            if region in sample.regions:
                over[sample.regions[region][i]] = rgb
        ax[1].imshow(over)
        for col, ((arm, method), m) in enumerate(maps.items(), start=2):
            pos = np.clip(m[row], 0, None)
            ax[col].imshow(grey[row], cmap="gray", vmin=0, vmax=1)
            ax[col].imshow(pos / (pos.max() or 1.0), cmap="inferno", alpha=0.65, vmin=0, vmax=1)
            if outline[row].any():
                ax[col].contour(
                    outline[row].astype(float), levels=[0.5], colors="cyan", linewidths=0.5
                )
            if row == 0:
                ax[col].set_title(f"{arm}\n{method.replace('_', ' ')}", fontsize=6)
    axes[0, 0].set_title("image", fontsize=6)
    axes[0, 1].set_title("lung fields" if LUNG in sample.regions else "lesions by size", fontsize=6)
    for a in axes.ravel():
        a.set_xticks([]), a.set_yticks([])
    fig.suptitle(f"{cfg.dataset}: attribution of the true class (positive part)", fontsize=8)
    fig.tight_layout()
    return fig


def plot_lung_fields(cfg: InterpretConfig, n: int | None = None) -> Figure | None:
    """The lung-field masks of the first ``n`` sampled images (default ``cfg.n_lung_figure``),
    to check the heuristic by eye (:func:`medstudy.masks.plot_lung_masks`); ``None`` when the
    dataset is not a chest X-ray (no lung fields are scored)."""
    if not uses_lung_fields(cfg):
        return None
    sample = select_sample(cfg)
    k = cfg.n_lung_figure if n is None else n
    ids = [s.rsplit(":", 1)[-1] for s in sample.test.ids[:k]]
    return plot_lung_masks(sample.test.images[:k], sample.regions[LUNG][:k], titles=ids)


def unit_paths(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per interpretability unit in ``metrics`` with its results folder."""
    return transfer_unit_paths(metrics, stage=STAGE)
