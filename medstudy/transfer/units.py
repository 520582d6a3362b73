"""Transfer units (arm × protocol × fraction × seed, or a DVME fusion) and the protocols that
evaluate them: ``PROTOCOL_RUNNERS`` maps a unit's protocol to its evaluation."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medstudy.config import TransferConfig
from medstudy.data import TensorSplit, sample_fractions
from medstudy.data.info import DatasetInfo
from medstudy.evaluate.dvme import DVME_SETTINGS, train_dvme
from medstudy.evaluate.finetune import TrainSettings, finetune, predict_split
from medstudy.evaluate.knn import KNN_K, KNN_TEMPERATURE, knn_predict
from medstudy.evaluate.linear import L2_GRID, MAX_ITER, fit_linear_probe
from medstudy.models import save_checkpoint
from medstudy.results import Run, atomic_write
from medstudy.transfer.data import TransferData
from medstudy.transfer.encoders import EncoderBank

EVAL_SPLITS: tuple[str, ...] = ("val", "test")
FUSION_ARM = "fusion"


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


#: The selection val split keeps at least this many images per class when it shrinks with the
#: label fraction (``val_labels == "fraction"``), so early stopping and the probe's L2 choice
#: see every class.
MIN_VAL_PER_CLASS = 5


def train_fraction(cfg: TransferConfig, fraction: float, n_train: int) -> float:
    """The fraction of the train split a unit labels: ``fraction`` itself, capped at
    ``max_train / n_train`` when fractions are of the whole split (``fractions_of == "split"``),
    which keeps the subsets nested (one seeded permutation per class)."""
    if cfg.fractions_of == "split" and 0 < cfg.max_train < n_train:
        return min(float(fraction), cfg.max_train / n_train)
    return float(fraction)


def unit_subsets(
    cfg: TransferConfig, data: TransferData, seed: int
) -> dict[float, dict[str, np.ndarray]]:
    """``{fraction: {"train": indices[, "val": indices]}}`` for every fraction of ``cfg`` and
    one seed: train subsets stratified and nested across fractions; with
    ``val_labels == "fraction"`` the selection val split shrinks to the same fraction (>=
    :data:`MIN_VAL_PER_CLASS` per class), else it is used whole."""
    fracs = sorted({float(f) for f in (*cfg.fractions, *cfg.finetune_fractions)})
    train, val = data.splits["train"], data.splits["val"]
    effective = {f: train_fraction(cfg, f, len(train)) for f in fracs}
    train_idx = sample_fractions(train.labels, sorted(set(effective.values())), seed)
    out: dict[float, dict[str, np.ndarray]] = {f: {"train": train_idx[effective[f]]} for f in fracs}
    if cfg.val_labels == "fraction":
        val_idx = sample_fractions(val.labels, fracs, seed, MIN_VAL_PER_CLASS)
        for f in fracs:
            if len(val_idx[f]) < len(val):
                out[f]["val"] = val_idx[f]
    return out


def unit_config(
    cfg: TransferConfig,
    unit: Unit,
    bank: EncoderBank,
    train_hash: str,
    val_hash: str = "",
    test_hash: str = "",
) -> dict[str, Any]:
    """The resolved config hashed into the unit's run_id (module docstring). ``val_hash``
    identifies a shrunk selection val split ("" = the whole val split, and no key, so units
    with the whole val keep the run ids they always had)."""
    encoders = {a: bank.encoder(a, unit.seed) for a in unit.arms}
    # The stage is deliberately not part of the unit: notebooks 02 and 03 share their
    # 100 %-label units (see :func:`reuse_unit`).
    extra = {"val_ids_md5": val_hash} if val_hash else {}
    if test_hash:  # a capped test split (max_test); the whole split adds no key
        extra["test_ids_md5"] = test_hash
    return {
        **extra,
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
    """Everything a protocol needs to evaluate one unit.

    ``subsets`` maps a split to the unit's rows of it: always ``train`` (the labelled subset),
    and ``val`` when the selection val split shrinks with the label fraction; a split not in
    it is used whole (test always is).
    """

    unit: Unit
    run: Run
    bank: EncoderBank
    data: TransferData
    subsets: dict[str, np.ndarray]
    device: torch.device
    keep_model: bool = True  # write the fine-tuned weights (finetuned.pt); TransferConfig

    def tensors(self, name: str) -> TensorSplit:
        """The unit's view of split ``name`` as a :class:`TensorSplit`; a memory-mapped split
        stays lazy (its subset selects rows, reading none)."""
        return TensorSplit.from_split(
            self.data.splits[name], self.device, indices=self.subsets.get(name)
        )

    def labels(self, name: str) -> np.ndarray:
        whole = self.data.splits[name].labels
        return whole[self.subsets[name]] if name in self.subsets else whole

    def ids(self, name: str) -> np.ndarray:
        whole = self.data.splits[name].ids
        return whole[self.subsets[name]] if name in self.subsets else whole

    def features(self, split: str, arm: str | None = None) -> np.ndarray:
        """Frozen features of the unit's view of ``split`` by ``arm`` (default: its own)."""
        feats = self.bank.features(arm or self.unit.arm, self.unit.seed, split)
        return feats[self.subsets[split]] if split in self.subsets else feats


Scores = dict[str, np.ndarray]
Protocol = Callable[[UnitContext], tuple[Scores, dict[str, Any]]]


def _linear(ctx: UnitContext) -> tuple[Scores, dict[str, Any]]:
    probe = fit_linear_probe(
        ctx.features("train"),
        ctx.labels("train"),
        ctx.features("val"),
        ctx.labels("val"),
        ctx.data.info,
    )
    state = probe.state()
    atomic_write(ctx.run.path("probe.npz"), lambda tmp: _savez(tmp, state))
    details = {"l2": probe.l2, "val_by_l2": {str(k): v for k, v in probe.val_by_l2.items()}}
    return {s: probe.predict_scores(ctx.features(s)) for s in EVAL_SPLITS}, details


def _knn(ctx: UnitContext) -> tuple[Scores, dict[str, Any]]:
    train_f = ctx.features("train")
    info = ctx.data.info
    y = ctx.labels("train")
    return {s: _knn_scores(train_f, y, ctx.features(s), info) for s in EVAL_SPLITS}, {}


def _finetune(ctx: UnitContext) -> tuple[Scores, dict[str, Any]]:
    unit, info, device = ctx.unit, ctx.data.info, ctx.device
    backbone = copy.deepcopy(ctx.bank.encoder(unit.arm, unit.seed).backbone)
    tensors = {s: ctx.tensors(s) for s in EVAL_SPLITS}
    train = ctx.tensors("train")
    settings = TrainSettings(**unit.params)
    # the run folder keeps a per-epoch history.csv and resume checkpoint: a killed unit
    # resumes after its last finished epoch (run_transfer removes the checkpoint once the unit
    # is finished, so a kill while its results are written does not retrain it either)
    fit = finetune(
        backbone, train, tensors["val"], info, settings, unit.seed, device, run_dir=ctx.run.dir
    )
    # (history.csv: written by the fit at every epoch end, the last write is the whole history)
    if ctx.keep_model:
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
    # val: the best epoch's scores, kept by the fit (identical to predicting val again)
    assert fit.val_scores is not None
    scores = {s: predict_split(fit.model, tensors[s], info) for s in EVAL_SPLITS if s != "val"}
    return {"val": fit.val_scores, **scores}, details


def _dvme(ctx: UnitContext) -> tuple[Scores, dict[str, Any]]:
    unit = ctx.unit
    feats = {s: [ctx.features(s, a) for a in unit.arms] for s in ("train", *EVAL_SPLITS)}
    settings = TrainSettings(**{k: v for k, v in unit.params.items() if k != "tokens"})
    probe = train_dvme(
        feats["train"],
        ctx.labels("train"),
        feats["val"],
        ctx.labels("val"),
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


def evaluate_unit(ctx: UnitContext) -> tuple[Scores, dict[str, Any]]:
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
