"""The representations stage (notebook 04): per-layer statistics of the learned features (C9).

``run_representations(cfg)`` takes a fixed, seeded, stratified sample of the test split
(:func:`sample_split`, ``cfg.n_samples`` images, the same for every arm and seed) and, for every
*unit* (source × arm × seed), records the output of every backbone stage
(:func:`medstudy.repstats.layer_features`, global-average-pooled) and its statistics:

- ``effective_rank@<layer>`` (Roy & Vetterli 2007; centred features), ``condition_number@<layer>``
  (the DR study's, standardised outputs) and ``eigenvalue_<k>@<layer>``, k = 1 …
  ``min(n_spectrum, N, D)``, the PCA spectrum of the standardised outputs;
- ``alignment@<layer>`` and ``uniformity@<layer>`` (Wang & Isola 2020; uniformity averaged over
  the two views, as in their code) on the first two views of ``cfg.views_recipe`` for the
  modality, drawn from a generator seeded by dataset and recipe: every unit sees the same views.

Sources: ``"pretrained"`` is notebook 01's encoder of the arm (``load_encoder`` through
:meth:`RepresentationsConfig.transfer_config`, with transfer's seed rule: ``scratch`` is seeded
by the unit's seed, a pretrained arm uses ``pretrain_seed`` unless ``pretrain_paired``; a unit's
``seed`` is that *encoder* seed, so an unpaired SSL arm has one unit, never copies).
``"finetuned"`` is the backbone of notebook 02's fine-tuned unit (protocol finetune, label
fraction 1.0), found by :func:`medstudy.results.find_runs`. Every encoder is located before
any work, so a missing run fails at once, naming it.

One cached :class:`~medstudy.results.Run` per unit in ``results/representations/<run_id>/``;
the run_id hashes the encoder's weights fingerprint (and the fine-tuned source unit's run_id),
the md5 of the sample ids, the spectrum length and the views recipe.

Per-sample data for the claims layer
------------------------------------
A representation statistic is a property of a *set* of cases, so there is no per-case score to
save. The honest per-case record is the features themselves: each run holds
``features_<layer>.npz`` (``features`` (N, D) float32, ``sample_id``, ``labels``), exactly the
arrays the metrics were computed from. :func:`load_features` reads one layer;
:func:`paired_features` gives the ``per_seed`` input of the claims layer's seed × case test with
a :data:`CASE_STATISTICS` metric (C9, :mod:`medstudy.claims.case_evaluators`).

From the saved features: :func:`statistics_table` (CIs over cases), :func:`cka_table` (linear CKA
between arms per layer, between layers per arm), :func:`embeddings` (seeded t-SNE, cached as
runs of this stage whose config has ``"kind": "embedding"`` and no metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations_with_replacement
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from medstudy import paths, repstats
from medstudy.augment import RECIPES, augment_batch, recipe_for_dataset
from medstudy.config import RepresentationsConfig
from medstudy.data import Split, TensorSplit, load_split, sample_fraction, to_float, to_model_input
from medstudy.locks import pending
from medstudy.models import Backbone
from medstudy.results import (
    Run,
    atomic_write,
    finished_run_ids,
    metric_rows,
    read_details,
    read_metrics,
    run_id,
)
from medstudy.runtime import derive_seed, make_generator, resolve_device
from medstudy.transfer import find_unit, ids_hash, load_unit_classifier, weights_fingerprint
from medstudy.transfer import unit_paths as transfer_unit_paths
from medstudy.transfer.encoders import encoder_seed, load_arm_encoder

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STAGE = "representations"
SAMPLE_SEED = 0  # the test sample is part of the data definition, the same for every unit
FINETUNE_STAGE, FINETUNE_PROTOCOL, FINETUNE_FRACTION = "transfer", "finetune", 1.0
LAST = "last"
TSNE_MAX_ITER = 500  # half sklearn's default: ~2 s per 500 points on one core, same picture
TSNE_SEED = 0
EMBEDDING_FILE, FEATURES_FILE = "embedding.npz", "features_{}.npz"
#: ``metric(labels, features) -> float`` for :func:`medstudy.stats.seed_case_test`.
CASE_STATISTICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "effective_rank": lambda _y, f: repstats.effective_rank(f),
    "condition_number": lambda _y, f: repstats.condition_number(f),
}


@dataclass(frozen=True)
class LayerFeatures:
    """One layer of one unit: ``features`` (N, D) float32 rows in ``sample_id`` order."""

    layer: str
    sample_id: np.ndarray
    labels: np.ndarray
    features: np.ndarray


@dataclass
class Unit:
    """A located encoder: its identity (hashed) and how to load it (only when needed)."""

    source: str
    arm: str
    seed: int
    identity: dict[str, Any]
    provenance: dict[str, Any]
    load: Callable[[], Backbone]


def sample_split(cfg: RepresentationsConfig) -> Split:
    """The test split, or a stratified seeded sample of ~``cfg.n_samples`` of it."""
    test = load_split(cfg.dataset, "test", cfg.image_size)
    if 0 < cfg.n_samples < len(test):
        test = test.subset(sample_fraction(test.labels, cfg.n_samples / len(test), SAMPLE_SEED))
    return test


def source_unit(cfg: RepresentationsConfig, arm: str, seed: int) -> str:
    """The run_id of notebook 02's fine-tuned unit (arm, seed) (:func:`find_unit`)."""
    return find_unit(
        FINETUNE_STAGE,
        dataset=cfg.dataset,
        arm=arm,
        protocol=FINETUNE_PROTOCOL,
        seed=seed,
        fraction=FINETUNE_FRACTION,
        backbone=cfg.backbone,
        image_size=cfg.image_size,
    )


def plan_units(cfg: RepresentationsConfig, device: torch.device) -> list[Unit]:
    """Every unit of ``cfg``, located (and fingerprinted) before any work."""
    tcfg = cfg.transfer_config()
    units: list[Unit] = []
    if "pretrained" in cfg.sources:
        seen: set[tuple[str, int]] = set()
        for arm in cfg.arms:
            for s in cfg.seeds:
                es = encoder_seed(tcfg, arm, s)
                if (arm, es) in seen:
                    continue
                seen.add((arm, es))
                enc = load_arm_encoder(tcfg, arm, es, torch.device("cpu"))

                def load(arm: str = arm, es: int = es) -> Backbone:
                    return load_arm_encoder(tcfg, arm, es, device).backbone

                ident = {"encoder": enc.fingerprint}
                units.append(Unit("pretrained", arm, es, ident, {"pretrain": enc.pretrain}, load))
    if "finetuned" in cfg.sources:
        for arm in cfg.finetune_arms or cfg.arms:
            for s in cfg.seeds:
                src = source_unit(cfg, arm, s)

                def load_ft(src: str = src) -> Backbone:
                    return load_unit_classifier(FINETUNE_STAGE, src, str(device)).backbone

                ident = {
                    "encoder": weights_fingerprint(load_ft()),
                    "source_unit": f"transfer/{src}",
                }
                units.append(Unit("finetuned", arm, s, ident, {"source": src}, load_ft))
    return units


def _views(cfg: RepresentationsConfig, images: torch.Tensor, n_channels: int) -> list[torch.Tensor]:
    """The two augmented views of the sample (model input), the same for every unit."""
    recipe = recipe_for_dataset(RECIPES[cfg.views_recipe], cfg.dataset, n_channels)
    gen = make_generator(images.device, derive_seed(STAGE, cfg.dataset, cfg.views_recipe))
    x = to_float(images)
    return [to_model_input(augment_batch(x, v, gen)) for v in recipe.views[:2]]


def run_representations(cfg: RepresentationsConfig) -> pd.DataFrame:
    """Run (or load) every unit of ``cfg``; tidy metrics (``METRIC_COLUMNS`` + ``run_id``)."""
    device = resolve_device(cfg.device)
    sample = sample_split(cfg)
    units = plan_units(cfg, device)
    images = TensorSplit.from_split(sample, device, lazy=False).images  # views of all
    inputs = {f"{cfg.dataset}.test": sample.provenance.md5 or sample.provenance.source or ""}
    views: list[torch.Tensor] | None = None
    frames = []
    for unit in units:
        config = {"dataset": cfg.dataset, "arm": unit.arm, "source": unit.source, "seed": unit.seed}
        config.update(backbone=cfg.backbone, image_size=cfg.image_size, **unit.identity)
        config.update(sample_ids_md5=ids_hash(sample.ids), n_spectrum=cfg.n_spectrum)
        config.update(views_recipe=cfg.views_recipe)
        rid = run_id(config, inputs)
        with pending(STAGE, rid) as todo:
            if todo:
                views = views or _views(cfg, images, sample.info.n_channels)
                _compute(cfg, unit, config, inputs, sample, images, views, device)
        frames.append(read_metrics(STAGE, rid))
    return pd.concat(frames, ignore_index=True)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a file object: np.savez would append ".npz" to a path
            np.savez(fh, **arrays)

    atomic_write(path, write)


def _compute(
    cfg: RepresentationsConfig,
    unit: Unit,
    config: dict[str, Any],
    inputs: dict[str, str],
    sample: Split,
    images: torch.Tensor,
    views: list[torch.Tensor],
    device: torch.device,
) -> None:
    t0 = time.perf_counter()
    backbone = unit.load()
    data = {"n_samples": len(sample), "test": sample.provenance.as_dict()}
    with Run(STAGE, config, inputs, data, unit.seed, str(device)) as run:
        clean = repstats.layer_features(backbone, images)
        v1, v2 = (repstats.layer_features(backbone, v) for v in views)
        values: dict[str, float] = {}
        for layer, f in clean.items():
            values[f"effective_rank@{layer}"] = repstats.effective_rank(f)
            values[f"condition_number@{layer}"] = repstats.condition_number(f)
            values[f"alignment@{layer}"] = repstats.alignment(v1[layer], v2[layer])
            values[f"uniformity@{layer}"] = np.mean(
                [repstats.uniformity(v[layer]) for v in (v1, v2)]
            )
            spectrum = repstats.pca_spectrum(f, n_components=min(cfg.n_spectrum, *f.shape))
            values.update({f"eigenvalue_{k}@{layer}": v for k, v in enumerate(spectrum, 1)})
            _save_npz(
                run.path(FEATURES_FILE.format(layer)),
                features=f,
                sample_id=sample.ids,
                labels=sample.labels,
            )
        fraction = FINETUNE_FRACTION if unit.source == "finetuned" else None
        base = {"stage": STAGE, "dataset": cfg.dataset, "arm": unit.arm, "protocol": unit.source}
        base.update(fraction=fraction, seed=unit.seed, split="test")
        run.log_metrics(metric_rows(base, values))
        dims = {k: int(v.shape[1]) for k, v in clean.items()}
        seconds = round(time.perf_counter() - t0, 3)
        run.save_details(
            {**unit.provenance, "layers": list(clean), "dims": dims, "seconds": seconds}
        )


# ------------------------------------------------------------------ reading the features ----
def _unit_dir(rid: str, root: Path | None) -> Path:
    if rid not in finished_run_ids(STAGE, root):
        where = (root / STAGE / rid) if root is not None else paths.run_dir(STAGE, rid)
        raise FileNotFoundError(f"{where}: not a finished {STAGE} run")
    return (root / STAGE / rid) if root is not None else paths.run_dir(STAGE, rid)


def unit_layers(rid: str, root: Path | None = None) -> list[str]:
    """The layer names of a finished unit, first to last."""
    _unit_dir(rid, root)
    return list(read_details(STAGE, rid, root)["layers"])


def load_features(rid: str, layer: str = LAST, root: Path | None = None) -> LayerFeatures:
    """The saved features of one layer (``"last"``: the last stage) of a finished unit."""
    run_dir = _unit_dir(rid, root)
    layers = unit_layers(rid, root)
    name = layers[-1] if layer == LAST else layer
    if name not in layers:
        raise ValueError(f"unknown layer {layer!r} of {rid}; valid: {[LAST, *layers]}")
    path = run_dir / FEATURES_FILE.format(name)
    try:
        with np.load(path, allow_pickle=False) as z:
            return LayerFeatures(name, z["sample_id"], z["labels"], z["features"])
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: unreadable features ({type(err).__name__}: {err})") from err


def _units(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per unit: dataset, source, arm, seed, run_id (sorted)."""
    cols = ["dataset", "protocol", "arm", "seed", "run_id"]
    u = metrics[cols].drop_duplicates().rename(columns={"protocol": "source"})
    return u.sort_values(["dataset", "source", "arm", "seed"]).reset_index(drop=True)


def paired_units(
    metrics: pd.DataFrame, arm: str, reference: str = "scratch", source: str = "pretrained"
) -> list[tuple[int, str, str]]:
    """``[(seed, run_id of arm, run_id of reference)]`` for every seed both arms hold for
    ``source`` (sorted). ``metrics`` must hold one dataset."""
    units = _units(metrics)
    if units["dataset"].nunique() > 1:
        raise ValueError(f"metrics hold datasets {sorted(units['dataset'].unique())}; pass one")
    units = units[units["source"] == source]
    by = {a: dict(zip(g["seed"], g["run_id"], strict=True)) for a, g in units.groupby("arm")}
    shared = sorted(set(by.get(arm, {})) & set(by.get(reference, {})))
    return [(int(s), by[arm][s], by[reference][s]) for s in shared]


def paired_features(
    metrics: pd.DataFrame,
    arm: str,
    reference: str = "scratch",
    source: str = "pretrained",
    layer: str = LAST,
    root: Path | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``[(labels, features_arm, features_reference)]`` for every seed both arms share (sorted,
    :func:`paired_units`), on the same cases: the ``per_seed`` input of
    :func:`medstudy.stats.seed_case_test`. ``metrics`` must hold one dataset (e.g. one run of
    :func:`run_representations`)."""
    out = []
    for s, ra, rb in paired_units(metrics, arm, reference, source):
        a, b = load_features(ra, layer, root), load_features(rb, layer, root)
        if not np.array_equal(a.sample_id, b.sample_id):
            raise ValueError(f"{arm} and {reference} (seed {s}) hold different samples")
        out.append((a.labels, a.features, b.features))
    return out


# ------------------------------------------------------------------------- derived tables ----
def layer_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Statistic × layer per source and arm, mean over seeds (the spectrum left out)."""
    m = metrics[~metrics["metric"].str.startswith("eigenvalue_")].copy()
    m[["statistic", "layer"]] = m["metric"].str.split("@", n=1, expand=True)
    keys = ["dataset", "protocol", "arm", "layer"]
    t = m.pivot_table(index=keys, columns="statistic", values="value", aggfunc="mean")
    t["n_seeds"] = m.groupby(keys)["seed"].nunique()
    return t.reset_index().rename(columns={"protocol": "source"}).rename_axis(columns=None)


def spectra(metrics: pd.DataFrame) -> pd.DataFrame:
    """The PCA spectra as rows: dataset, source, arm, seed, layer, component, eigenvalue."""
    m = metrics[metrics["metric"].str.startswith("eigenvalue_")]
    name = m["metric"].str.extract(r"^eigenvalue_(\d+)@(.+)$")
    out = m[["dataset", "protocol", "arm", "seed"]].rename(columns={"protocol": "source"})
    out = out.assign(layer=name[1], component=name[0].astype(int), eigenvalue=m["value"])
    return out.reset_index(drop=True)


def _normal_ci(estimate: float, replicates: np.ndarray) -> tuple[float, float]:
    half = 1.959963984540054 * float(np.std(replicates, ddof=1))  # z_0.975
    return float(estimate) - half, float(estimate) + half


def statistics_table(
    metrics: pd.DataFrame, n_boot: int = 200, layer: str = LAST, root: Path | None = None
) -> pd.DataFrame:
    """Effective rank and condition number of ``layer`` per (dataset, source, arm): the mean
    over seeds with a 95 % CI over *cases*, and the paired difference from ``scratch`` over the
    seeds both hold.

    Each replicate resamples the N cases once (``derive_seed(STAGE, dataset, source)``), the
    same rows for every arm and seed, so the difference is paired. The CI is ``estimate ± 1.96
    SE`` with the bootstrap SE: duplicated rows lower both statistics within a replicate, which
    moved percentile intervals wholly off the estimate in tests. It covers test cases only;
    seed variance enters the claims layer's seed × case test (bootstrap variance only, too).
    """
    rows = []
    for (ds, source), units in _units(metrics).groupby(["dataset", "source"], sort=True):
        feats = {
            (r.arm, r.seed): load_features(r.run_id, layer, root).features
            for r in units.itertuples()
        }
        n = next(iter(feats.values())).shape[0]
        rng = np.random.default_rng(derive_seed(STAGE, ds, source))
        idx = rng.integers(0, n, (n_boot, n))
        for stat, fn in CASE_STATISTICS.items():
            est = {k: fn(None, f) for k, f in feats.items()}
            boot = {k: np.array([fn(None, f[i]) for i in idx]) for k, f in feats.items()}
            for arm in sorted(units["arm"].unique()):
                seeds = sorted(s for a, s in feats if a == arm)
                ref = sorted(s for a, s in feats if a == "scratch" and s in seeds)
                row = {"dataset": ds, "source": source, "arm": arm, "statistic": stat}
                row["n_seeds"] = len(seeds)
                row["estimate"] = float(np.mean([est[arm, s] for s in seeds]))
                rep = np.mean([boot[arm, s] for s in seeds], axis=0)
                row["ci_low"], row["ci_high"] = _normal_ci(row["estimate"], rep)
                row["n_paired_seeds"] = len(ref) if arm != "scratch" else 0
                if row["n_paired_seeds"]:
                    d = [est[arm, s] - est["scratch", s] for s in ref]
                    drep = np.mean([boot[arm, s] - boot["scratch", s] for s in ref], axis=0)
                    row["diff_vs_scratch"] = float(np.mean(d))
                    row["diff_ci_low"], row["diff_ci_high"] = _normal_ci(np.mean(d), drep)
                rows.append(row)
    return pd.DataFrame(rows)


def cka_table(
    metrics: pd.DataFrame, debiased: bool = False, root: Path | None = None
) -> pd.DataFrame:
    """Linear CKA from the saved features, per (dataset, source, seed): ``kind="arms"``, every
    pair of arms (itself included) at each layer; ``kind="layers"``, every pair of layers
    within an arm. Each unordered pair appears once (CKA is symmetric)."""
    rows = []
    for (ds, source, seed), units in _units(metrics).groupby(["dataset", "source", "seed"]):
        rids = dict(zip(units["arm"], units["run_id"], strict=True))
        layers = unit_layers(next(iter(rids.values())), root)
        f = {(a, ly): load_features(r, ly, root).features for a, r in rids.items() for ly in layers}
        base = {"dataset": ds, "source": source, "seed": seed}
        for ly in layers:
            for a, b in combinations_with_replacement(sorted(rids), 2):
                cka = repstats.linear_cka(f[a, ly], f[b, ly], debiased)
                rows.append({**base, "kind": "arms", "arm_a": a, "layer_a": ly, "arm_b": b,
                             "layer_b": ly, "cka": cka})  # fmt: skip
        for a in sorted(rids):
            for la, lb in combinations_with_replacement(layers, 2):
                cka = repstats.linear_cka(f[a, la], f[a, lb], debiased)
                rows.append({**base, "kind": "layers", "arm_a": a, "layer_a": la, "arm_b": a,
                             "layer_b": lb, "cka": cka})  # fmt: skip
    return pd.DataFrame(rows)


def embeddings(metrics: pd.DataFrame, perplexity: float = 30.0) -> pd.DataFrame:
    """2-D t-SNE (sklearn, seeded, PCA init) of the last layer of each (dataset, source, arm)'s
    first seed; each embedding is cached as its own run keyed by the unit and the settings.
    ``label`` is the class (multi-label: the number of positive labels)."""
    from sklearn.manifold import TSNE

    frames = []
    for r in _units(metrics).groupby(["dataset", "source", "arm"]).head(1).itertuples():
        feats = load_features(r.run_id)
        perp = float(min(perplexity, (len(feats.features) - 1) / 3))  # sklearn needs < N
        config = {"kind": "embedding", "unit": r.run_id, "layer": feats.layer, "method": "tsne"}
        config.update(perplexity=perp, max_iter=TSNE_MAX_ITER, seed=TSNE_SEED)
        rid = run_id(config)
        with pending(STAGE, rid) as todo:
            if todo:
                kw = {"perplexity": perp, "max_iter": TSNE_MAX_ITER, "random_state": TSNE_SEED}
                xy = TSNE(2, init="pca", **kw).fit_transform(feats.features.astype(np.float64))
                with Run(STAGE, config, seed=TSNE_SEED) as run:
                    _save_npz(run.path(EMBEDDING_FILE), xy=xy, sample_id=feats.sample_id)
        with np.load(paths.run_dir(STAGE, rid) / EMBEDDING_FILE, allow_pickle=False) as z:
            xy = z["xy"]
        labels = feats.labels
        label = labels.sum(axis=1) if labels.ndim == 2 and labels.shape[1] > 1 else labels
        frame = pd.DataFrame({"sample_id": feats.sample_id, "label": np.ravel(label)})
        keys = {"dataset": r.dataset, "source": r.source, "arm": r.arm, "seed": r.seed}
        frames.append(frame.assign(**keys, x=xy[:, 0], y=xy[:, 1]))
    return pd.concat(frames, ignore_index=True)


def unit_paths(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per unit in ``metrics`` with its results folder."""
    return transfer_unit_paths(metrics, stage=STAGE).rename(columns={"protocol": "source"})


# ------------------------------------------------------------------------------- figures ----
def _grid(n_rows: int, n_cols: int, size: float = 2.4) -> tuple[Figure, np.ndarray]:
    import matplotlib.pyplot as plt

    return plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows), squeeze=False)


def plot_spectra(metrics: pd.DataFrame) -> Figure:
    """PCA eigen-spectra (standardised outputs), log-log: a row per source, a panel per layer,
    a line per arm (mean over seeds)."""
    sp = spectra(metrics)
    sources, layers = list(dict.fromkeys(sp["source"])), list(dict.fromkeys(sp["layer"]))
    fig, axes = _grid(len(sources), len(layers))
    for i, source in enumerate(sources):
        for j, layer in enumerate(layers):
            ax = axes[i, j]
            sel = sp[(sp["source"] == source) & (sp["layer"] == layer)]
            mean = sel.groupby(["arm", "component"])["eigenvalue"].mean()
            floor = 1e-9 * mean.max()  # round-off eigenvalues of rank-deficient layers
            for arm, curve in mean[mean > floor].groupby(level="arm"):
                ax.plot(curve.index.get_level_values("component"), curve.to_numpy(), label=arm)
            ax.set(xscale="log", yscale="log", title=f"{source} · {layer}")
            ax.title.set_fontsize(8)
    axes[0, -1].legend(fontsize=6)
    fig.supxlabel("PCA component", fontsize=8)
    fig.supylabel("eigenvalue", fontsize=8)
    fig.tight_layout()
    return fig


def plot_cka(cka: pd.DataFrame, kind: str = "arms") -> Figure:
    """CKA heatmaps (mean over seeds): ``kind="arms"``, arm × arm per layer; ``"layers"``,
    layer × layer per arm. A row of panels per source."""
    if kind not in ("arms", "layers"):
        raise ValueError(f"unknown kind {kind!r}; valid: ['arms', 'layers']")
    c = cka[cka["kind"] == kind]
    axes_of = {"arms": ("arm_a", "arm_b", "layer_a"), "layers": ("layer_a", "layer_b", "arm_a")}
    axis_a, axis_b, panel = axes_of[kind]
    sources, panels = list(dict.fromkeys(c["source"])), list(dict.fromkeys(c[panel]))
    fig, axes = _grid(len(sources), len(panels), 2.6)
    for i, source in enumerate(sources):
        for j, p in enumerate(panels):
            sel = c[(c["source"] == source) & (c[panel] == p)]
            m = sel.groupby([axis_a, axis_b])["cka"].mean().unstack()
            names = list(dict.fromkeys(sel[axis_a]))  # (x, x) pairs put every name here
            m = m.reindex(index=names, columns=names)
            m = m.combine_first(m.T)  # fill the symmetric half
            ax = axes[i, j]
            im = ax.imshow(m.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
            ax.set_yticks(range(len(names)), names if j == 0 else [], fontsize=6)
            ax.set_title(f"{source} · {p}", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="linear CKA")
    return fig


def plot_embeddings(emb: pd.DataFrame) -> Figure:
    """The t-SNE embeddings: a row per source, a panel per arm, points coloured by label."""
    sources, arms = list(dict.fromkeys(emb["source"])), list(dict.fromkeys(emb["arm"]))
    fig, axes = _grid(len(sources), len(arms))
    for i, source in enumerate(sources):
        for j, arm in enumerate(arms):
            ax = axes[i, j]
            sel = emb[(emb["source"] == source) & (emb["arm"] == arm)]
            sc = ax.scatter(sel["x"], sel["y"], c=sel["label"], s=4, cmap="tab10", vmin=0, vmax=9)
            ax.set(xticks=[], yticks=[])
            ax.set_title(f"{source} · {arm} (seed {sel['seed'].min()})", fontsize=8)
    axes[0, -1].legend(*sc.legend_elements(), title="label", fontsize=6)
    fig.tight_layout()
    return fig
