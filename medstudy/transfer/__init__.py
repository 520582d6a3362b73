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

Sampling rules: test is complete unless ``max_test > 0`` caps it (a plumbing run only); val
(model selection only) is complete unless ``max_val > 0`` caps it (stratified,
:data:`CAP_SEED`). ``max_train > 0`` first caps train to a seeded stratified subset (seed
:data:`CAP_SEED`, the same for every unit, so "100 %" is one set); label fractions then subsample that pool with ``sample_fractions(pool.labels, fractions,
seed)`` (stratified, nested across fractions, ≥ 1 example per class).

Encoders: ``load_encoder(cfg.pretrain_config(arm))``. ``scratch`` is a random initialisation
seeded by the unit's seed (a fresh init per seed, as a from-scratch baseline should vary);
every pretrained arm uses the encoder pretrained with ``cfg.pretrain_seed``, or with the unit's
own seed when ``cfg.pretrain_paired`` (pretraining replicates: seed s ↔ encoder of seed s). Frozen features are
extracted once per (encoder, split) and cached in ``results/features/<key>.npz``.

Fine-tuning: :func:`~medstudy.evaluate.finetune.finetune` with ``cfg.finetune_*``; a pretrained
backbone gets ``finetune_lr * backbone_lr_mult`` and the frozen warm-up, ``scratch`` trains
every layer at ``finetune_lr`` from the first epoch (there is nothing to protect).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from medstudy import paths
from medstudy.config import PretrainConfig, TransferConfig
from medstudy.data.info import INFO
from medstudy.evaluate.finetune import RESUME_FILE
from medstudy.locks import pending
from medstudy.metrics import compute_metrics
from medstudy.models import Classifier, WeightsError, create_backbone, load_checkpoint
from medstudy.pretrain import load_encoder
from medstudy.results import (
    Run,
    copy_run,
    find_runs,
    is_current,
    is_done,
    metric_rows,
    predictions_frame,
    read_config,
    read_details,
    read_metrics,
    run_id,
)
from medstudy.runtime import resolve_device
from medstudy.transfer.data import CAP_SEED, TransferData, ids_hash, load_transfer_data
from medstudy.transfer.encoders import (
    Encoder,
    EncoderBank,
    cached_features,
    feature_cache_dir,
    weights_fingerprint,
)
from medstudy.transfer.units import (
    EVAL_SPLITS,
    FUSION_ARM,
    PROTOCOL_RUNNERS,
    Unit,
    UnitContext,
    evaluate_unit,
    finetune_settings,
    plan_units,
    unit_config,
    unit_subsets,
)

#: Stages that run :func:`run_transfer` (notebooks 02 and 03); they share identical units.
TRANSFER_STAGES: tuple[str, ...] = ("transfer", "label_efficiency")

__all__ = [
    "CAP_SEED",
    "EVAL_SPLITS",
    "FUSION_ARM",
    "PROTOCOL_RUNNERS",
    "TRANSFER_STAGES",
    "Encoder",
    "EncoderBank",
    "TransferData",
    "Unit",
    "cached_features",
    "feature_cache_dir",
    "find_source_unit",
    "find_unit",
    "finetune_settings",
    "ids_hash",
    "load_transfer_data",
    "load_unit_classifier",
    "plan_units",
    "reuse_unit",
    "run_transfer",
    "unit_paths",
    "weights_fingerprint",
]


def reuse_unit(rid: str, stage: str) -> bool:
    """Copy a finished identical unit from another transfer stage into ``stage``
    (:func:`medstudy.results.copy_run`): notebook 03's 100 %-label units are notebook 02's (same
    run_id: the stage is not hashed). Returns False if no other stage holds the unit."""
    for other in TRANSFER_STAGES:
        if other != stage and is_current(other, rid):
            copy_run(rid, other, stage)
            return True
    return False


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
    subsets: dict[int, dict[float, dict[str, np.ndarray]]] = {}
    for unit in units:
        if unit.seed not in subsets:
            subsets[unit.seed] = unit_subsets(cfg, data, unit.seed)
        sub = subsets[unit.seed][unit.fraction]
        # A unit whose selection val split is not the whole file's (a label-fraction subset, or
        # capped by max_val) hashes its val ids; one on the whole split keeps its old run id.
        val_ids = data.splits["val"].ids
        val_hash = ""
        if "val" in sub:
            val_hash = ids_hash(val_ids[sub["val"]])
        elif data.val_capped:
            val_hash = ids_hash(val_ids)
        train_hash = ids_hash(pool.ids[sub["train"]])
        config = unit_config(cfg, unit, bank, train_hash, val_hash, data.test_hash)
        rid = run_id(config, data.inputs)
        with pending(stage, rid) as todo:  # waits while another process computes the unit
            if todo and not reuse_unit(rid, stage):
                t0 = time.perf_counter()
                with Run(
                    stage, config, data.inputs, data.provenance, unit.seed, str(device)
                ) as run:
                    ctx = UnitContext(unit, run, bank, data, sub, device, cfg.keep_finetuned)
                    scores, details = evaluate_unit(ctx)
                    rows, preds = [], []
                    for s in EVAL_SPLITS:
                        y, ids = ctx.labels(s), ctx.ids(s)
                        base = {
                            "stage": stage,
                            "dataset": cfg.dataset,
                            **unit.base,
                            "seed": unit.seed,
                            "split": s,
                        }
                        values = compute_metrics(info.task, y, scores[s], info.n_classes, info.name)
                        rows.extend(metric_rows(base, values))
                        preds.append(predictions_frame(base, ids, y, scores[s]))
                    run.log_metrics(rows)
                    run.save_predictions(pd.concat(preds, ignore_index=True))
                    details.update(
                        pretrain={a: bank.encoder(a, unit.seed).pretrain for a in unit.arms},
                        n_train=int(len(sub["train"])),
                        n_train_pool=len(pool),
                        n_val=len(ctx.labels("val")),
                        seconds=round(time.perf_counter() - t0, 3),
                    )
                    run.save_details(details)
                # finished (DONE): a fine-tuning unit's resume point is no longer needed
                run.path(RESUME_FILE).unlink(missing_ok=True)
        frames.append(read_metrics(stage, rid))
    return pd.concat(frames, ignore_index=True)


def unit_paths(metrics: pd.DataFrame, stage: str = "transfer") -> pd.DataFrame:
    """One row per unit in ``metrics`` (from :func:`run_transfer`) with its results folder."""
    cols = ["arm", "protocol", "fraction", "seed", "run_id"]
    units = metrics[cols].drop_duplicates().reset_index(drop=True)
    units["path"] = [str(paths.run_dir(stage, r)) for r in units["run_id"]]
    return units


def load_unit_classifier(stage: str, rid: str, device: str = "cpu") -> Classifier:
    """The model of a finished ``linear`` or ``finetune`` unit as one :class:`Classifier`
    (normalised image → logits), for the robustness and attribution notebooks.

    - ``finetune``: the saved best-val backbone and head (``finetuned.pt``);
    - ``linear``: the frozen encoder (rebuilt from the notebook-01 config in details.json and
      checked against the weights md5 the unit was computed with) and the probe folded into a
      linear head: ``((x - mean) / scale) @ W + b == x @ (W / scale) + (b - (mean / scale) @ W)``.

    ``knn`` and DVME units have no single-network form and raise ``ValueError``.
    """
    run_dir = paths.run_dir(stage, rid)
    if not is_done(stage, rid):
        raise FileNotFoundError(f"{run_dir}: not a finished unit")
    config = read_config(stage, rid)
    protocol, arm = config["protocol"], config["arm"]
    if protocol == "finetune":
        backbone = create_backbone(config["backbone"])
        path = run_dir / "finetuned.pt"
        meta = load_checkpoint(backbone, path)
        state = meta.get("head_state")
        if not isinstance(state, dict) or "weight" not in state:
            raise WeightsError(f"{path}: no task head ('head_state'): not a fine-tuned model")
        n_out, info = int(state["weight"].shape[0]), INFO.get(config["dataset"])
        if info is not None and n_out != info.n_outputs:
            raise WeightsError(
                f"{path}: its head has {n_out} outputs, but {config['dataset']} "
                f"({info.task}) needs {info.n_outputs}: a checkpoint for another task"
            )
        head = torch.nn.Linear(backbone.feature_dim, n_out)
        head.load_state_dict(state)
    elif protocol == "linear":
        details = read_details(stage, rid)
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


def find_unit(stage: str, **where: object) -> str:
    """The run_id of the one finished unit of ``stage`` whose config matches ``where`` (e.g.
    dataset, arm, protocol, fraction, seed, image_size). None or several is an error naming
    them, never a silent pick: later stages (04–06) find notebook 02's models this way."""
    found = find_runs(stage, where)
    if len(found) != 1:
        what = "no finished" if not found else f"{len(found)} finished ({found})"
        raise FileNotFoundError(
            f"{what} {stage} unit(s) for {where}: run notebook 02 for this dataset and arm first "
            "(run_all.sh --only 02), or remove stale runs so that one remains"
        )
    return found[0]


def find_source_unit(cfg: Any, arm: str, seed: int) -> str:
    """:func:`find_unit` for a later stage's config that names its source units by
    ``source_stage``, ``dataset``, ``protocol``, ``fraction`` and ``image_size`` (05, 06)."""
    return find_unit(
        cfg.source_stage,
        dataset=cfg.dataset,
        arm=arm,
        protocol=cfg.protocol,
        fraction=cfg.fraction,
        seed=seed,
        image_size=cfg.image_size,
    )
