"""Transfer orchestration for notebooks 02 (all labels) and 03 (label fractions).

``run_transfer(cfg)`` evaluates every arm × protocol × fraction × seed of a
:class:`~medstudy.config.TransferConfig`, plus DVME fusion of ``cfg.fusion_arms``. Each of those
is one *unit*: its own :class:`~medstudy.results.Run` in ``results/<stage>/<run_id>/`` holding

- ``metrics.csv``: tidy rows for the val and the test split (``metric_rows``);
- ``predictions.parquet``: per-sample probabilities with sample ids for val and test;
- ``details.json``: n_train, the train-subset hash, and the protocol's choices (selected L2,
  best epoch, …); fine-tuning adds ``history.csv`` and ``finetuned.pt``, the linear probe
  ``probe.npz``, DVME ``dvme.pt``.

The run_id hashes the unit's resolved config: dataset, arm, protocol, fraction, seed, backbone,
image size, the md5 of the train subset's sample ids, the protocol's hyper-parameters and
the encoder's *weights fingerprint* (md5 of its state_dict: a re-trained encoder gives new runs,
the same weights reached by another notebook-01 config give the same ones; that config is
recorded in details.json), plus the data files' md5s. A finished unit is skipped. The stage is
not hashed: notebook 03 copies the identical units notebook 02 finished (:func:`reuse_unit`).

Sampling rules: val and test are always complete. ``max_train > 0`` first caps train to a
seeded stratified subset (seed :data:`CAP_SEED`, the same for every unit, so "100 %" is one
set); label fractions then subsample that pool with ``sample_fractions(pool.labels, fractions,
seed)`` (stratified, nested across fractions, ≥ 1 example per class).

Encoders: ``load_encoder(cfg.pretrain_config(arm))``. ``scratch`` is a random initialisation
seeded by the unit's seed (a fresh init per seed, as a from-scratch baseline should vary);
every pretrained arm uses the encoder pretrained with ``cfg.pretrain_seed``. Frozen features are
extracted once per (encoder, split) and cached in ``results/features/<key>.npz``.

Fine-tuning: :func:`~medstudy.evaluate.finetune.finetune` with ``cfg.finetune_*``; a pretrained
backbone gets ``finetune_lr * backbone_lr_mult`` and the frozen warm-up, ``scratch`` trains
every layer at ``finetune_lr`` from the first epoch (there is nothing to protect).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medstudy import paths
from medstudy.config import TransferConfig
from medstudy.data import SPLITS, Split, TensorSplit, load_split, sample_fraction, sample_fractions
from medstudy.data.info import DatasetInfo
from medstudy.evaluate.dvme import DVME_SETTINGS, train_dvme
from medstudy.evaluate.features import extract_features
from medstudy.evaluate.finetune import (
    TrainSettings,
    finetune,
    predict_split,
    resolve_device,
)
from medstudy.evaluate.knn import knn_predict
from medstudy.evaluate.linear import L2_GRID, MAX_ITER, fit_linear_probe
from medstudy.metrics import compute_metrics
from medstudy.models import Backbone, Classifier, save_checkpoint
from medstudy.results import (
    DONE_FILE,
    Run,
    atomic_write,
    atomic_write_text,
    config_hash,
    is_done,
    metric_rows,
    now_iso,
    predictions_frame,
    run_id,
    write_json,
)

EVAL_SPLITS: tuple[str, ...] = ("val", "test")
CAP_SEED = 0  # the train cap is part of the data definition, not of a unit's seed
KNN_K = 20  # Wu et al. 2018 / DINO's weighted kNN monitor
KNN_TEMPERATURE = 0.07
FUSION_ARM = "fusion"
FEATURES_STAGE = "features"
#: Stages that run :func:`run_transfer` (notebooks 02 and 03); they share identical units.
TRANSFER_STAGES: tuple[str, ...] = ("transfer", "label_efficiency")


# ------------------------------------------------------------------------------- data --------
@dataclass
class TransferData:
    """The splits of one dataset as used by every unit: ``splits["train"]`` is the capped pool."""

    splits: dict[str, Split]
    info: DatasetInfo
    inputs: dict[str, str]  # {data file or source: md5} for run ids
    provenance: dict[str, Any]


def load_transfer_data(cfg: TransferConfig) -> TransferData:
    """Load train/val/test; cap train to ``cfg.max_train`` (stratified, :data:`CAP_SEED`)."""
    splits = {s: load_split(cfg.dataset, s, cfg.image_size) for s in SPLITS}
    train = splits["train"]
    if 0 < cfg.max_train < len(train):
        idx = sample_fraction(train.labels, cfg.max_train / len(train), CAP_SEED)
        splits["train"] = train.subset(idx)
    info = train.info
    prov = train.provenance
    # The file name, not its path: moving the data dir must not invalidate finished runs.
    key = Path(prov.file).name if prov.file else f"{cfg.dataset}@{cfg.image_size}"
    inputs = {key: prov.md5 or prov.source}
    provenance = {s: sp.provenance.as_dict() for s, sp in splits.items()}
    return TransferData(splits, info, inputs, provenance)


def ids_hash(ids: np.ndarray) -> str:
    """md5 of sample ids: identifies a subset whatever pool or cap produced it."""
    return hashlib.md5("\n".join(np.asarray(ids).tolist()).encode()).hexdigest()


# ---------------------------------------------------------------------------- encoders -------
@dataclass
class Encoder:
    """A frozen encoder and its identity (weights md5 + the notebook-01 config it came from)."""

    arm: str
    backbone: Backbone
    fingerprint: str
    pretrain: dict[str, Any]


def weights_fingerprint(module: torch.nn.Module) -> str:
    """md5 over the names, dtypes, shapes and bytes of a state_dict: the weights' identity."""
    h = hashlib.md5()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def encoder_seed(cfg: TransferConfig, arm: str, seed: int) -> int:
    """Seed of the encoder a unit uses: the unit's seed for ``scratch``, else the pretrain seed."""
    return seed if arm == "scratch" else cfg.pretrain_seed


def load_arm_encoder(cfg: TransferConfig, arm: str, seed: int, device: torch.device) -> Encoder:
    """The encoder of ``arm`` for a unit of seed ``seed`` (see :func:`encoder_seed`)."""
    from medstudy.ssl import load_encoder

    pcfg = cfg.pretrain_config(arm, seed=encoder_seed(cfg, arm, seed))
    backbone = load_encoder(pcfg)
    backbone.eval()
    return Encoder(arm, backbone.to(device), weights_fingerprint(backbone), pcfg.to_dict())


def cached_features(
    encoder: Encoder, split: Split, image_size: int, device: torch.device
) -> np.ndarray:
    """Frozen features (N, D) of ``split`` by ``encoder``, cached on disk by content.

    The cache key hashes the encoder fingerprint, the dataset, split, size, the split's md5 and
    its sample ids, so a capped train pool has its own entry. The file stores the ids too and a
    mismatch on load is an error naming the file.
    """
    key = config_hash(
        {
            "encoder": encoder.fingerprint,
            "backbone": encoder.backbone.name,
            "dataset": split.name,
            "split": split.split,
            "image_size": image_size,
            "data": split.provenance.md5 or split.provenance.source,
            "ids": ids_hash(split.ids),
        }
    )
    path = paths.results_dir() / FEATURES_STAGE / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                feats, ids = z["features"], z["ids"]
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"{path}: unreadable feature cache ({type(err).__name__}: {err}); delete it to "
                "recompute"
            ) from err
        if not np.array_equal(ids, split.ids):
            raise ValueError(f"{path}: cached feature ids do not match {split.name}/{split.split}")
        return feats
    feats = extract_features(encoder.backbone, TensorSplit.from_split(split, device))
    feats = np.asarray(feats, dtype=np.float32)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, features=feats, ids=split.ids)

    atomic_write(path, write)
    return feats


class EncoderBank:
    """Loads each (arm, encoder seed) once and caches its features per split."""

    def __init__(self, cfg: TransferConfig, data: TransferData, device: torch.device) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        self._encoders: dict[tuple[str, int], Encoder] = {}
        self._features: dict[tuple[str, int, str], np.ndarray] = {}

    def encoder(self, arm: str, seed: int) -> Encoder:
        key = (arm, encoder_seed(self.cfg, arm, seed))
        if key not in self._encoders:
            self._encoders[key] = load_arm_encoder(self.cfg, arm, seed, self.device)
        return self._encoders[key]

    def features(self, arm: str, seed: int, split: str) -> np.ndarray:
        key = (arm, encoder_seed(self.cfg, arm, seed), split)
        if key not in self._features:
            self._features[key] = cached_features(
                self.encoder(arm, seed), self.data.splits[split], self.cfg.image_size, self.device
            )
        return self._features[key]


# ------------------------------------------------------------------------------- units -------
@dataclass
class Unit:
    """One cached evaluation: arm × protocol × fraction × seed (or a DVME fusion)."""

    arm: str
    protocol: str
    fraction: float
    seed: int
    arms: tuple[str, ...]  # the encoders it reads: (arm,) or the fusion arms
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> dict[str, Any]:
        return {"arm": self.arm, "protocol": self.protocol, "fraction": self.fraction}


def finetune_settings(cfg: TransferConfig, arm: str) -> TrainSettings:
    """The fine-tuning hyper-parameters of ``arm`` (module docstring: scratch vs pretrained)."""
    pretrained = arm != "scratch"
    return TrainSettings(
        max_epochs=cfg.finetune_epochs,
        patience=cfg.patience,
        batch_size=cfg.batch_size,
        optimizer="sgd",
        lr=cfg.finetune_lr,
        backbone_lr_mult=cfg.backbone_lr_mult if pretrained else 1.0,
        warmup_frozen_epochs=cfg.warmup_frozen_epochs if pretrained else 0,
        augment=cfg.finetune_augment,
        select_on=cfg.finetune_select_on,
        min_steps_per_epoch=cfg.finetune_min_steps,
    )


def plan_units(cfg: TransferConfig) -> list[Unit]:
    """Every unit of ``cfg`` in execution order (seed, fraction, arm, protocol; then DVME)."""
    units: list[Unit] = []
    ft_arms = set(cfg.finetune_arms or cfg.arms)
    ft_fracs = {float(f) for f in (cfg.finetune_fractions or cfg.fractions)}
    fracs = sorted({float(f) for f in cfg.fractions} | ft_fracs, reverse=True)
    for seed in cfg.seeds:
        for fraction in fracs:
            for arm in dict.fromkeys((*cfg.arms, *sorted(ft_arms - set(cfg.arms)))):
                for protocol in cfg.protocols:
                    if protocol == "finetune":
                        if arm not in ft_arms or fraction not in ft_fracs:
                            continue
                        params = asdict(finetune_settings(cfg, arm))
                    elif arm not in cfg.arms or fraction not in cfg.fractions:
                        continue
                    elif protocol == "linear":
                        params = {"l2_grid": list(L2_GRID), "max_iter": MAX_ITER}
                    else:
                        params = {"k": KNN_K, "temperature": KNN_TEMPERATURE}
                    units.append(Unit(arm, protocol, fraction, seed, (arm,), params))
            if cfg.fusion_arms and fraction in cfg.fractions:
                for mode in cfg.fusion_modes:
                    params = {"tokens": mode, **asdict(DVME_SETTINGS)}
                    units.append(
                        Unit(FUSION_ARM, f"dvme_{mode}", fraction, seed, cfg.fusion_arms, params)
                    )
    return units


def unit_config(
    cfg: TransferConfig, unit: Unit, bank: EncoderBank, train_hash: str
) -> dict[str, Any]:
    """The resolved config hashed into the unit's run_id (module docstring)."""
    encoders = {a: bank.encoder(a, unit.seed) for a in unit.arms}
    # The stage is deliberately not part of the unit: notebooks 02 and 03 share their
    # 100 %-label units (see :func:`reuse_unit`).
    return {
        "dataset": cfg.dataset,
        "arm": unit.arm,
        "protocol": unit.protocol,
        "fraction": unit.fraction,
        "seed": unit.seed,
        "backbone": cfg.backbone,
        "image_size": cfg.image_size,
        # The train subset by its sample ids (covers max_train, the fraction and the seed).
        "train_ids_md5": train_hash,
        # The weights' md5 identifies an encoder exactly; the notebook-01 config that made it
        # goes to details.json, so that e.g. natural_sup units survive a change of
        # pretrain_epochs (same weights, same result).
        "encoders": {a: e.fingerprint for a, e in encoders.items()},
        "params": unit.params,
    }


def _knn_scores(
    train_f: np.ndarray, train_y: np.ndarray, query_f: np.ndarray, info: DatasetInfo
) -> np.ndarray:
    """Weighted-kNN scores (:func:`knn_predict`; multi-label: one vote per label)."""
    labels = train_y if info.is_multilabel else train_y.reshape(-1)
    return knn_predict(train_f, labels, query_f, info.n_classes, KNN_K, KNN_TEMPERATURE)


@dataclass
class UnitContext:
    """Everything a protocol needs to evaluate one unit."""

    unit: Unit
    run: Run
    bank: EncoderBank
    data: TransferData
    train_idx: np.ndarray
    device: torch.device

    @property
    def y_train(self) -> np.ndarray:
        return self.data.splits["train"].labels[self.train_idx]

    def features(self, split: str, arm: str | None = None) -> np.ndarray:
        """Frozen features of ``split`` (train: the unit's subset) by ``arm`` (default: its own)."""
        feats = self.bank.features(arm or self.unit.arm, self.unit.seed, split)
        return feats[self.train_idx] if split == "train" else feats


Scores = dict[str, np.ndarray]
Protocol = Callable[[UnitContext], tuple[Scores, dict[str, Any]]]


def _linear(ctx: UnitContext) -> tuple[Scores, dict[str, Any]]:
    val_y = ctx.data.splits["val"].labels
    probe = fit_linear_probe(
        ctx.features("train"), ctx.y_train, ctx.features("val"), val_y, ctx.data.info
    )
    state = probe.state()
    atomic_write(ctx.run.path("probe.npz"), lambda tmp: _savez(tmp, state))
    details = {"l2": probe.l2, "val_by_l2": {str(k): v for k, v in probe.val_by_l2.items()}}
    return {s: probe.predict_scores(ctx.features(s)) for s in EVAL_SPLITS}, details


def _knn(ctx: UnitContext) -> tuple[Scores, dict[str, Any]]:
    train_f = ctx.features("train")
    info = ctx.data.info
    return {s: _knn_scores(train_f, ctx.y_train, ctx.features(s), info) for s in EVAL_SPLITS}, {}


def _finetune(ctx: UnitContext) -> tuple[Scores, dict[str, Any]]:
    unit, info, device = ctx.unit, ctx.data.info, ctx.device
    backbone = copy.deepcopy(ctx.bank.encoder(unit.arm, unit.seed).backbone)
    tensors = {s: TensorSplit.from_split(ctx.data.splits[s], device) for s in EVAL_SPLITS}
    train = TensorSplit.from_split(ctx.data.splits["train"].subset(ctx.train_idx), device)
    settings = TrainSettings(**unit.params)
    fit = finetune(backbone, train, tensors["val"], info, settings, unit.seed, device)
    atomic_write(ctx.run.path("history.csv"), lambda tmp: fit.history.to_csv(tmp, index=False))
    save_checkpoint(
        fit.model.backbone,
        ctx.run.path("finetuned.pt"),
        head_state=fit.model.head.state_dict(),
        arm=unit.arm,
        dataset=info.name,
        best_epoch=fit.best_epoch,
    )
    details = {
        "best_epoch": fit.best_epoch,
        "best_val": fit.best_value,
        "selection_metric": fit.metric,
        "epochs_run": fit.epochs_run,
        "fit_seconds": round(fit.wall_time_s, 3),
    }
    return {s: predict_split(fit.model, tensors[s], info) for s in EVAL_SPLITS}, details


def _dvme(ctx: UnitContext) -> tuple[Scores, dict[str, Any]]:
    unit = ctx.unit
    feats = {s: [ctx.features(s, a) for a in unit.arms] for s in ("train", *EVAL_SPLITS)}
    settings = TrainSettings(**{k: v for k, v in unit.params.items() if k != "tokens"})
    probe = train_dvme(
        feats["train"],
        ctx.y_train,
        feats["val"],
        ctx.data.splits["val"].labels,
        ctx.data.info,
        unit.params["tokens"],
        unit.seed,
        settings,
        ctx.device,
    )
    payload = {
        "state_dict": probe.model.state_dict(),
        "means": probe.means,
        "scales": probe.scales,
        "arms": list(unit.arms),
        "tokens": unit.params["tokens"],
    }
    atomic_write(ctx.run.path("dvme.pt"), lambda tmp: torch.save(payload, tmp))
    details = {
        "best_epoch": probe.fit.best_epoch,
        "best_val": probe.fit.best_value,
        "epochs_run": probe.fit.epochs_run,
        "fused_arms": list(unit.arms),
    }
    return {s: probe.predict_scores(feats[s]) for s in EVAL_SPLITS}, details


#: Protocol registry: unit protocol (``dvme_<mode>`` → ``dvme``) → its evaluation.
PROTOCOL_RUNNERS: dict[str, Protocol] = {
    "linear": _linear,
    "knn": _knn,
    "finetune": _finetune,
    "dvme": _dvme,
}


def _evaluate_unit(ctx: UnitContext) -> tuple[Scores, dict[str, Any]]:
    """Fit the unit's protocol on its train subset; return val/test scores and details."""
    key = ctx.unit.protocol.split("_")[0]
    if key not in PROTOCOL_RUNNERS:
        raise ValueError(
            f"unknown protocol {ctx.unit.protocol!r}; valid: {sorted(PROTOCOL_RUNNERS)}"
        )
    return PROTOCOL_RUNNERS[key](ctx)


def _savez(tmp: Path, arrays: dict[str, np.ndarray]) -> None:
    with tmp.open("wb") as f:
        np.savez(f, **arrays)


def reuse_unit(rid: str, stage: str) -> bool:
    """Copy a finished identical unit from another transfer stage into ``stage``.

    Notebook 03's 100 %-label units are notebook 02's (same run_id: the stage is not hashed).
    The copy rewrites the ``stage`` column of metrics and predictions and records its origin in
    ``details.json``; the manifest is kept as is (it describes the computation that ran).
    Returns False if no other stage holds the unit.
    """
    for other in TRANSFER_STAGES:
        if other == stage or not is_done(other, rid):
            continue
        src, dst = paths.run_dir(other, rid), paths.run_dir(stage, rid)
        dst.mkdir(parents=True, exist_ok=True)
        (dst / DONE_FILE).unlink(missing_ok=True)
        for f in sorted(src.iterdir()):
            if f.name == DONE_FILE or f.name.startswith("."):
                continue
            if f.name == "metrics.csv":
                df = pd.read_csv(f).assign(stage=stage)
                atomic_write(dst / f.name, lambda tmp, df=df: df.to_csv(tmp, index=False))
            elif f.suffix == ".parquet":
                df = pd.read_parquet(f).assign(stage=stage)
                atomic_write(dst / f.name, lambda tmp, df=df: df.to_parquet(tmp, index=False))
            elif f.name == "details.json":
                details = {**json.loads(f.read_text()), "copied_from": f"{other}/{rid}"}
                write_json(dst / f.name, details)
            else:
                atomic_write(dst / f.name, lambda tmp, f=f: shutil.copyfile(f, tmp))
        atomic_write_text(dst / DONE_FILE, now_iso() + "\n")  # last: the copy is complete
        return True
    return False


def _read_unit_metrics(stage: str, rid: str) -> pd.DataFrame:
    df = pd.read_csv(paths.run_dir(stage, rid) / "metrics.csv")
    df["run_id"] = rid
    return df


def run_transfer(cfg: TransferConfig, stage: str = "transfer") -> pd.DataFrame:
    """Run (or load) every unit of ``cfg``; return their tidy metrics with a ``run_id`` column.

    Columns: ``METRIC_COLUMNS`` + ``run_id``; one row per (unit, split ∈ {val, test}, metric).
    Raises before any training if an arm's encoder is unavailable (e.g. notebook 01 has not
    been run for an SSL arm): ``load_encoder`` names the missing run.
    """
    device = resolve_device(cfg.device)
    data = load_transfer_data(cfg)
    bank = EncoderBank(cfg, data, device)
    pool = data.splits["train"]
    info = data.info
    units = plan_units(cfg)
    # Load every encoder first: a missing pretraining run fails before hours of other work.
    for unit in units:
        for arm in unit.arms:
            bank.encoder(arm, unit.seed)
    frames = []
    fraction_cache: dict[int, dict[float, np.ndarray]] = {}
    all_fracs = sorted({u.fraction for u in units})
    for unit in units:
        if unit.seed not in fraction_cache:
            fraction_cache[unit.seed] = sample_fractions(pool.labels, all_fracs, unit.seed)
        train_idx = fraction_cache[unit.seed][unit.fraction]
        config = unit_config(cfg, unit, bank, ids_hash(pool.ids[train_idx]))
        rid = run_id(config, data.inputs)
        if not is_done(stage, rid) and not reuse_unit(rid, stage):
            t0 = time.perf_counter()
            with Run(stage, config, data.inputs, data.provenance, unit.seed, str(device)) as run:
                ctx = UnitContext(unit, run, bank, data, train_idx, device)
                scores, details = _evaluate_unit(ctx)
                rows, preds = [], []
                for s in EVAL_SPLITS:
                    split = data.splits[s]
                    base = {
                        "stage": stage,
                        "dataset": cfg.dataset,
                        **unit.base,
                        "seed": unit.seed,
                        "split": s,
                    }
                    values = compute_metrics(
                        info.task, split.labels, scores[s], info.n_classes, info.name
                    )
                    rows.extend(metric_rows(base, values))
                    preds.append(predictions_frame(base, split.ids, split.labels, scores[s]))
                run.log_metrics(rows)
                run.save_predictions(pd.concat(preds, ignore_index=True))
                details.update(
                    pretrain={a: bank.encoder(a, unit.seed).pretrain for a in unit.arms},
                    n_train=int(len(train_idx)),
                    n_train_pool=len(pool),
                    seconds=round(time.perf_counter() - t0, 3),
                )
                write_json(run.path("details.json"), details)
        frames.append(_read_unit_metrics(stage, rid))
    return pd.concat(frames, ignore_index=True)


def unit_paths(metrics: pd.DataFrame, stage: str = "transfer") -> pd.DataFrame:
    """One row per unit in ``metrics`` (from :func:`run_transfer`) with its results folder."""
    cols = ["arm", "protocol", "fraction", "seed", "run_id"]
    units = metrics[cols].drop_duplicates().reset_index(drop=True)
    units["path"] = [str(paths.run_dir(stage, r)) for r in units["run_id"]]
    return units


def feature_cache_dir() -> Path:
    """Where frozen features are cached (``results/features``)."""
    return paths.results_dir() / FEATURES_STAGE


def load_unit_classifier(stage: str, rid: str, device: str = "cpu") -> Classifier:
    """The model of a finished ``linear`` or ``finetune`` unit as one :class:`Classifier`
    (normalised image → logits), for the robustness and attribution notebooks.

    - ``finetune``: the saved best-val backbone and head (``finetuned.pt``);
    - ``linear``: the frozen encoder (rebuilt from the notebook-01 config in details.json and
      checked against the weights md5 the unit was computed with) and the probe folded into a
      linear head: ``((x - mean) / scale) @ W + b == x @ (W / scale) + (b - (mean / scale) @ W)``.

    ``knn`` and DVME units have no single-network form and raise ``ValueError``.
    """
    from medstudy.config import PretrainConfig
    from medstudy.models import WeightsError, create_backbone, load_checkpoint
    from medstudy.ssl import load_encoder

    run_dir = paths.run_dir(stage, rid)
    if not is_done(stage, rid):
        raise FileNotFoundError(f"{run_dir}: not a finished unit")
    config = json.loads((run_dir / "config.json").read_text())
    protocol, arm = config["protocol"], config["arm"]
    if protocol == "finetune":
        backbone = create_backbone(config["backbone"])
        meta = load_checkpoint(backbone, run_dir / "finetuned.pt")
        state = meta["head_state"]
        head = torch.nn.Linear(backbone.feature_dim, int(state["weight"].shape[0]))
        head.load_state_dict(state)
    elif protocol == "linear":
        details = json.loads((run_dir / "details.json").read_text())
        backbone = load_encoder(PretrainConfig.from_params(**details["pretrain"][arm]))
        if weights_fingerprint(backbone) != config["encoders"][arm]:
            raise WeightsError(
                f"{run_dir}: the encoder of {arm!r} no longer matches the weights this unit was "
                "computed with (notebook 01 re-run?); re-run the transfer notebook"
            )
        with np.load(run_dir / "probe.npz") as z:
            mean, scale, w, b = z["mean"], z["scale"], z["weight"], z["bias"]
        head = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy((w / scale[:, None]).T))
            head.bias.copy_(torch.from_numpy(b - (mean / scale) @ w))
    else:
        raise ValueError(
            f"unit {rid} is {protocol!r}: only 'linear' and 'finetune' units are networks"
        )
    return Classifier(backbone, head).to(resolve_device(device)).eval()
