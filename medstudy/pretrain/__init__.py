"""The one pretraining loop (notebook 01): every init arm, every SSL method, and curricula.

``pretrain(cfg)`` turns a :class:`~medstudy.config.PretrainConfig` into an encoder checkpoint and
tidy metrics under ``results/pretrain/<run_id>/`` (DESIGN §7)::

    config.json  manifest.json  metrics.csv  DONE
    history.csv        one row per epoch: stage, method, epoch, step, loss, knn_acc, img_per_s, …
    encoder.pt         the backbone (``medstudy.models.save_checkpoint``)
    stage<i>_<m>.pt    curriculum only: the backbone after stage i (marks the stage finished)
    lightning/…/last.ckpt   resume points (deleted once the run is DONE)

Arms (:func:`medstudy.arms.arm_plan`): ``scratch``, ``natural_sup`` and ``natural_ssl`` train
nothing: their seeded random init or natural weights (``natural_ssl``: the release
``cfg.natural_ssl_weights``) are saved, and their kNN accuracy is logged so that "SSL beats random
init" is measurable. ``ssl:<m>`` trains method ``m`` from a seeded random init,
``natural_sup+ssl:<m>`` from the natural weights (Srinivasan et al. 2022), and ``curriculum``
trains the ``cfg.curriculum`` stages one after another on the same backbone (de Andrés Tamé
et al. 2023; each stage's length comes from its ``"<method>:<epochs>"`` entry, ``cfg.epochs``
is not used).

The loop runs on Lightning (``LightningModule`` + ``Trainer``): SGD/LARS/AdamW with a per-step
cosine schedule after a linear warm-up, bf16 autocast on GPU only (fp32 on CPU), channels_last
memory format on every device (measured +20 % for ResNet-20 at 28 px on this 2-core CPU,
``benchmarks/README.md``), a progress bar with the loss and throughput, a checkpoint at the end of every epoch and
exact resumption from it. Training images live on the device as one uint8 tensor (a split of the
memory-mapped cache is read per batch and copied to a GPU through pinned memory,
``non_blocking``: :func:`medstudy.data.tensors.to_device`); the DataLoader only yields index
batches (no workers, no PIL) and augmentation is batched on the device (:mod:`medstudy.augment`).
``cfg.torch_compile`` compiles every backbone stage in place
(:func:`medstudy.pretrain.module.compile_stages`; a compiled run has its own run id). The LR of
every method follows the linear scaling rule ``base_lr x batch_size / base_batch`` of its
recipe (:class:`medstudy.ssl.base.OptimRecipe`).

Reproducibility: every random stream is derived from ``(cfg.seed, stage, epoch)`` — the batch
order, the augmentation generator, SparK's masks — and model initialisation is seeded inside
``torch.random.fork_rng``, so the global RNG is never read. On CPU the same config gives the same
loss sequence, and a run killed after any epoch and resumed ends with identical weights.

Online monitor: after every epoch a weighted kNN classifier (k = ``cfg.knn_k``, cosine, T = 0.07,
as solo-learn) on the pretraining train set scores the val split. The per-epoch numbers go to
``history.csv``; ``metrics.csv`` holds the final ``knn_acc`` (protocol ``knn_monitor``, split
``val``) and final training ``loss`` (protocol ``pretrain``, split ``train``).
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import pandas as pd
import torch

from medstudy import paths
from medstudy.arms import ArmPlan, StagePlan, arm_plan
from medstudy.augment import recipe_for_dataset
from medstudy.config import PretrainConfig
from medstudy.data import Split, TensorSplit, load_split, sample_fraction
from medstudy.data.loaders import file_md5
from medstudy.evaluate.batches import AtomicCheckpointIO
from medstudy.evaluate.knn import knn_accuracy
from medstudy.locks import pending
from medstudy.models import (
    RESNET20_FILE,
    Backbone,
    WeightsError,
    create_backbone,
    load_checkpoint,
    save_checkpoint,
)
from medstudy.pretrain import distributed
from medstudy.pretrain.module import (
    HISTORY_COLUMNS,
    PretrainModule,
    _EpochEnd,
    _EpochPermutation,
    _Indices,
    _write_history,
    method_lr,
    param_groups,
)
from medstudy.pretrain.plots import plot_history, plot_views
from medstudy.results import Run, is_done, metric_rows, read_metrics, run_id
from medstudy.runtime import (
    derive_seed,
    precision,
    quiet_lightning,
    resolve_device,
    seeded,
)
from medstudy.ssl import get_method
from medstudy.weights import check_weights_file, release_id, weights_file

__all__ = [
    "HISTORY_COLUMNS",
    "PretrainResult",
    "load_encoder",
    "load_pretrain_data",
    "method_lr",
    "param_groups",
    "plot_history",
    "plot_views",
    "pretrain",
]

STAGE = "pretrain"
ENCODER_FILE = "encoder.pt"
HISTORY_FILE = "history.csv"


# ------------------------------------------------------------------------------ results ----
@dataclass
class PretrainResult:
    """What notebook 01 shows and later notebooks load.

    ``metrics``: ``{"knn_acc": final val kNN accuracy, "loss": final epoch's mean loss}`` (no
    ``loss`` for arms that train nothing). ``cached``: loaded from a finished run.
    """

    run_id: str
    run_dir: Path
    checkpoint: Path
    history: pd.DataFrame
    metrics: dict[str, float]
    cached: bool


# --------------------------------------------------------------------------------- data -----
@dataclass
class PretrainData:
    train: Split
    val: Split
    inputs: dict[str, str]  # {input name: md5} for the run id
    weights: dict[str, str | None] | None = None  # a local natural-weights file's provenance


def _split_md5(split: Split) -> str:
    """The file md5, or for generated data the md5 of its arrays."""
    if split.provenance.md5:
        return split.provenance.md5
    digest = hashlib.md5(np.ascontiguousarray(split.images).tobytes())
    digest.update(np.ascontiguousarray(split.labels).tobytes())
    return digest.hexdigest()


# Files behind each backbone's natural_sup weights (timm's come from its hub, named instead).
NATURAL_WEIGHT_FILES: dict[str, str] = {"resnet20_cifar": RESNET20_FILE}


def natural_weights_file(cfg: PretrainConfig, init: str) -> Path | None:
    """The local file of ``init``'s natural weights that ``cfg`` names (``natural_weights``
    for ``natural_sup``, ``natural_ssl_file`` for ``natural_ssl``), or None."""
    value = {"natural_sup": cfg.natural_weights, "natural_ssl": cfg.natural_ssl_file}.get(init)
    return weights_file(value or "")


def _natural_weights_id(cfg: PretrainConfig, init: str) -> str:
    """What identifies the natural weights in the run id: a local file's md5 (checked against
    its checksums.json declaration), else the default file's md5, the hub model or the
    release URL. Offline, a download the run would need fails here, before any work."""
    local = natural_weights_file(cfg, init)
    if init == "natural_ssl":
        return release_id(cfg.natural_ssl_weights, local)
    if local is not None:
        return str(check_weights_file(local).md5)
    if cfg.backbone in NATURAL_WEIGHT_FILES:
        path = paths.data_dir() / NATURAL_WEIGHT_FILES[cfg.backbone]
        if not path.exists():
            create_backbone(cfg.backbone, init="natural_sup")  # raises the WeightsError naming it
        return file_md5(path)
    return f"{cfg.backbone}:hub-pretrained"


def load_pretrain_data(cfg: PretrainConfig, plan: ArmPlan | None = None) -> PretrainData:
    """The (possibly subsampled) train split, the val split and the run's input md5s."""
    plan = plan or arm_plan(cfg.arm, cfg.epochs, cfg.curriculum)
    natural: dict[str, str] = {}
    weights = None
    if plan.init != "scratch":  # first: unavailable weights fail before the data is read
        natural["natural_weights"] = _natural_weights_id(cfg, plan.init)
        local = natural_weights_file(cfg, plan.init)
        weights = check_weights_file(local).as_dict() if local is not None else None
    train = load_split(cfg.dataset, "train", size=cfg.image_size)
    val = load_split(cfg.dataset, "val", size=cfg.image_size)
    if 0 < cfg.max_train < len(train):
        # Stratified and seeded (multi-label sets: see ``sample_fractions``).
        train = train.subset(sample_fraction(train.labels, cfg.max_train / len(train), cfg.seed))
    if 0 < cfg.max_val < len(val):  # the kNN monitor's val images (a plumbing run only)
        val = val.subset(sample_fraction(val.labels, cfg.max_val / len(val), 0))
    inputs = {f"{cfg.dataset}.train": _split_md5(train), f"{cfg.dataset}.val": _split_md5(val)}
    return PretrainData(train, val, {**inputs, **natural}, weights)


def _resume_path(run_dir: Path, stage_index: int, method: str) -> Path:
    """Where stage ``stage_index``'s Lightning checkpoint (the resume point) lives."""
    return run_dir / "lightning" / f"stage{stage_index}_{method}" / "last.ckpt"


def _fit_stage(
    backbone: Backbone,
    stage: StagePlan,
    stage_index: int,
    cfg: PretrainConfig,
    data: PretrainData,
    run_dir: Path,
    history: list[dict[str, Any]],
    device: torch.device,
    progress: bool,
    callbacks: Sequence[L.Callback],
) -> list[dict[str, Any]]:
    """Train one stage (resuming from its last checkpoint if there is one); returns the
    history so far (earlier stages' rows + this stage's)."""
    spec = get_method(stage.method)
    info = data.train.info
    recipe = recipe_for_dataset(spec.recipe, cfg.dataset, info.n_channels)
    with seeded(derive_seed(cfg.seed, "heads", stage_index)):
        method = spec.build(backbone)
    train = TensorSplit.from_split(data.train)
    val = TensorSplit.from_split(data.val)
    ranks = distributed.world(cfg)
    local_batch = min(cfg.batch_size, len(train)) // ranks  # cfg.batch_size: the global batch
    epoch_offset = int(history[-1]["epoch"]) if history else 0
    module = PretrainModule(
        method, spec, recipe, train, val, info.n_classes, cfg, stage_index, history, epoch_offset
    )
    loader = torch.utils.data.DataLoader(
        _Indices(len(train)),
        sampler=_EpochPermutation(len(train), cfg.seed, stage_index, local_batch, ranks),
        batch_size=local_batch,
        drop_last=True,  # a last batch of 1 would break BatchNorm and in-batch negatives
    )
    ckpt = _resume_path(run_dir, stage_index, stage.method)
    ckpt_dir = ckpt.parent
    with quiet_lightning():
        trainer = L.Trainer(
            **distributed.trainer_options(cfg, device),
            max_epochs=stage.epochs,
            precision=precision(device),  # type: ignore[arg-type]
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            callbacks=[_EpochEnd(ckpt, run_dir / HISTORY_FILE), *callbacks],
            plugins=[AtomicCheckpointIO()],
            limit_val_batches=0,
            num_sanity_val_steps=0,
            default_root_dir=ckpt_dir,
        )
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt if ckpt.exists() else None)
    backbone.load_state_dict(method.encoder().state_dict())
    if ranks > 1:
        # fit ran in forked workers: Lightning loaded rank 0's weights into `module`; its
        # history is in the checkpoint rank 0 wrote at the last epoch's end
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
        return list(checkpoint["medstudy_history"])
    return module.history


# ---------------------------------------------------------------------------- the API -------
def _initial_backbone(cfg: PretrainConfig, init: str) -> Backbone:
    """The seeded random init (same as ``create_backbone(name, seed=cfg.seed)``) or the
    natural weights (from ``cfg``'s local file if it names one), without touching the caller's
    global RNG."""
    with seeded(cfg.seed):
        return create_backbone(
            cfg.backbone,
            init=init,
            weights_path=natural_weights_file(cfg, init),
            seed=cfg.seed,
            ssl_weights=cfg.natural_ssl_weights,
        )


def _init_row(
    backbone: Backbone, cfg: PretrainConfig, data: PretrainData, device: torch.device
) -> dict[str, Any]:
    """The history row of the initial weights (epoch 0): their kNN accuracy."""
    t0 = time.perf_counter()
    acc = knn_accuracy(
        backbone.to(device),
        TensorSplit.from_split(data.train, device),
        TensorSplit.from_split(data.val, device),
        data.train.info.n_classes,
        cfg.knn_k,
    )
    return {
        "stage": -1,
        "method": "init",
        "epoch": 0,
        "step": 0,
        "loss": math.nan,
        "knn_acc": acc,
        "img_per_s": math.nan,
        "epoch_time_s": 0.0,
        "knn_time_s": time.perf_counter() - t0,
    }


def _load_cached(rid: str) -> PretrainResult:
    run_dir = paths.run_dir(STAGE, rid)
    metrics = read_metrics(STAGE, rid)
    return PretrainResult(
        run_id=rid,
        run_dir=run_dir,
        checkpoint=run_dir / ENCODER_FILE,
        history=pd.read_csv(run_dir / HISTORY_FILE),
        metrics=dict(zip(metrics["metric"], metrics["value"].astype(float), strict=True)),
        cached=True,
    )


def pretrain(
    cfg: PretrainConfig, progress: bool = True, callbacks: Sequence[L.Callback] = ()
) -> PretrainResult:
    """Run (or load, if finished) the pretraining job described by ``cfg``.

    ``callbacks`` are extra Lightning callbacks for every SSL stage (they run after this loop's
    own epoch-end checkpoint). The return value is the same for a fresh and a cached run.
    A job with ``replicates`` makes several runs: call this on each of ``cfg.runs()``.
    """
    if cfg.replicates:
        raise ValueError(
            f"pretrain() makes one run; cfg has replicates {list(cfg.replicates)}: call it on "
            "each config of cfg.runs()"
        )
    plan = arm_plan(cfg.arm, cfg.epochs, cfg.curriculum)
    device = resolve_device(cfg.device)
    data = load_pretrain_data(cfg, plan)
    rid = run_id(cfg.identity(), data.inputs)
    with pending(STAGE, rid) as todo:  # waits while another process computes this run
        if not todo:
            return _load_cached(rid)
        provenance = {
            "train": data.train.provenance.as_dict(),
            "val": data.val.provenance.as_dict(),
            "n_train": len(data.train),
            "n_val": len(data.val),
            "train_ids_md5": hashlib.md5("\n".join(data.train.ids).encode()).hexdigest(),
            "stages": [f"{s.method}:{s.epochs}" for s in plan.stages],
        }
        if data.weights is not None:
            provenance["natural_weights"] = data.weights
        # Belt and braces: nothing in the loop draws from the global RNGs (see the module doc).
        L.seed_everything(cfg.seed, workers=False, verbose=False)
        with Run(
            STAGE,
            cfg.identity(),
            inputs=data.inputs,
            data=provenance,
            seed=cfg.seed,
            device=str(device),
        ) as run:
            history = _run_plan(cfg, plan, data, run.dir, device, progress, callbacks)
            _write_history(run.dir / HISTORY_FILE, history)
            final = history[-1]
            base = {
                "stage": STAGE,
                "dataset": cfg.dataset,
                "arm": cfg.arm,
                "fraction": None,
                "seed": cfg.seed,
            }
            metrics = {"knn_acc": float(final["knn_acc"])}
            run.log_metrics(
                metric_rows({**base, "protocol": "knn_monitor", "split": "val"}, metrics)
            )
            if not math.isnan(final["loss"]):
                metrics["loss"] = float(final["loss"])
                run.log_metrics(
                    metric_rows(
                        {**base, "protocol": "pretrain", "split": "train"}, {"loss": final["loss"]}
                    )
                )
        # The encoder and metrics are final: the resume points are no longer needed.
        shutil.rmtree(run.dir / "lightning", ignore_errors=True)
        return PretrainResult(
            rid, run.dir, run.dir / ENCODER_FILE, pd.DataFrame(history), metrics, cached=False
        )


def _run_plan(
    cfg: PretrainConfig,
    plan: ArmPlan,
    data: PretrainData,
    run_dir: Path,
    device: torch.device,
    progress: bool,
    callbacks: Sequence[L.Callback],
) -> list[dict[str, Any]]:
    """Initial weights, then every stage; a finished stage (its ``stage<i>_<m>.pt`` exists) is
    loaded instead of retrained, so a stopped curriculum resumes at its stage."""
    backbone = _initial_backbone(cfg, plan.init)
    history: list[dict[str, Any]] = []
    for i, stage in enumerate(plan.stages):
        stage_file = run_dir / f"stage{i}_{stage.method}.pt"
        if stage_file.exists():
            meta = load_checkpoint(backbone, stage_file)
            history = list(meta["history"])  # type: ignore[call-overload]
            continue
        if i == 0 and not _resume_path(run_dir, i, stage.method).exists():
            history = [_init_row(backbone, cfg, data, device)]
        backbone = backbone.to(device)
        history = _fit_stage(
            backbone, stage, i, cfg, data, run_dir, history, device, progress, callbacks
        )
        backbone = backbone.cpu()
        save_checkpoint(backbone, stage_file, history=history, method=stage.method)
    if not plan.stages:
        history = [_init_row(backbone, cfg, data, device)]
    save_checkpoint(
        backbone.cpu(),
        run_dir / ENCODER_FILE,
        dataset=cfg.dataset,
        arm=cfg.arm,
        seed=cfg.seed,
        stages=[f"{s.method}:{s.epochs}" for s in plan.stages],
    )
    return history


def load_encoder(cfg: PretrainConfig) -> Backbone:
    """The encoder of ``cfg``'s arm, in eval-ready form (CPU).

    ``scratch``: the seeded random init; ``natural_sup`` / ``natural_ssl``: the natural-image
    weights (none of them needs a run). Any trained arm: the checkpoint of its finished pretraining run, or an error
    saying how to produce it.
    """
    plan = arm_plan(cfg.arm, cfg.epochs, cfg.curriculum)
    if not plan.stages:
        return _initial_backbone(cfg, plan.init)
    data = load_pretrain_data(cfg, plan)
    rid = run_id(cfg.identity(), data.inputs)
    if not is_done(STAGE, rid):
        raise WeightsError(
            f"no finished pretrain run for {cfg.dataset}/{cfg.arm} (run_id {rid}, expected "
            f"{paths.run_dir(STAGE, rid)}): run notebook 01 first / run_all.sh --only 01"
        )
    backbone = create_backbone(cfg.backbone)
    load_checkpoint(backbone, paths.run_dir(STAGE, rid) / ENCODER_FILE)
    return backbone
