"""The one pretraining loop (notebook 01): every init arm, every SSL method, and curricula.

``pretrain(cfg)`` turns a :class:`~medstudy.config.PretrainConfig` into an encoder checkpoint and
tidy metrics under ``results/pretrain/<run_id>/`` (DESIGN §7)::

    config.json  manifest.json  metrics.csv  DONE
    history.csv        one row per epoch: stage, method, epoch, step, loss, knn_acc, img_per_s, …
    encoder.pt         the backbone (``medstudy.models.save_checkpoint``)
    stage<i>_<m>.pt    curriculum only: the backbone after stage i (marks the stage finished)
    lightning/…/last.ckpt   resume points (deleted once the run is DONE)

Arms (:data:`ARM_PLANS`): ``scratch`` and ``natural_sup`` train nothing: their seeded random
init or natural weights are saved, and their kNN accuracy is logged so that "SSL beats random
init" is measurable. ``ssl:<m>`` trains method ``m`` from a seeded random init,
``natural_sup+ssl:<m>`` from the natural weights (Srinivasan et al. 2022), and ``curriculum``
trains the ``cfg.curriculum`` stages one after another on the same backbone (de Andrés Tamé
et al. 2023; each stage's length comes from its ``"<method>:<epochs>"`` entry, ``cfg.epochs``
is not used).

The loop runs on Lightning (``LightningModule`` + ``Trainer``): SGD/LARS/AdamW with a per-step
cosine schedule after a linear warm-up, bf16 autocast on GPU only (fp32 on CPU), channels_last
memory format on every device (measured +20 % for ResNet-20 at 28 px on this 2-core CPU,
``benchmarks/README.md``), a progress bar with the loss and throughput, a checkpoint at the end of every epoch and
exact resumption from it. Training images live on the device as one uint8 tensor; the
DataLoader only yields index batches (no workers, no PIL) and augmentation is batched on the
device (:mod:`medstudy.augment`).

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

import contextlib
import hashlib
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as L
import numpy as np
import pandas as pd
import torch
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from medstudy import paths
from medstudy.augment import AugmentRecipe, make_views, recipe_for_dataset
from medstudy.config import ConfigError, PretrainConfig
from medstudy.data import Split, TensorSplit, load_split, sample_fraction
from medstudy.evaluate.features import extract_features
from medstudy.evaluate.knn import knn_predict
from medstudy.models import (
    RESNET20_FILE,
    Backbone,
    WeightsError,
    create_backbone,
    load_checkpoint,
    save_checkpoint,
)
from medstudy.results import Run, atomic_write, is_done, metric_rows, run_id
from medstudy.ssl import get_method
from medstudy.ssl.base import MethodSpec, SSLMethod, StepContext

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STAGE = "pretrain"
ENCODER_FILE = "encoder.pt"
HISTORY_FILE = "history.csv"
KNN_TEMPERATURE = 0.07  # solo-learn / InstDisc
WARMUP_FRACTION = 0.1  # linear lr warm-up over the first 10 % of steps, then cosine decay
HISTORY_COLUMNS: tuple[str, ...] = (
    "stage",
    "method",
    "epoch",
    "step",
    "loss",
    "knn_acc",
    "img_per_s",
    "epoch_time_s",
    "knn_time_s",
)

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------------- plans ----
@dataclass(frozen=True)
class StagePlan:
    method: str
    epochs: int


@dataclass(frozen=True)
class ArmPlan:
    """How an arm is made: the initial weights, then zero or more SSL stages."""

    init: str  # "scratch" | "natural_sup"
    stages: tuple[StagePlan, ...]


def _not_offline(cfg: PretrainConfig, _: str) -> ArmPlan:
    raise NotImplementedError(
        "arm 'natural_ssl' needs self-supervised ImageNet ResNet-50 weights (DINO: torch.hub "
        "'facebookresearch/dino:main' 'dino_resnet50'; SwAV: 'facebookresearch/swav:main' "
        "'resnet50'; SimCLR: converted TF checkpoints), which must be downloaded; this study's "
        "offline profiles do not include them and loading them is not wired in yet. Use "
        "'natural_sup' (supervised natural-image weights) or 'natural_sup+ssl:<method>'."
    )


def _parse_curriculum(stages: Sequence[str]) -> tuple[StagePlan, ...]:
    plans = []
    for entry in stages:
        method, _, epochs = entry.partition(":")
        get_method(method)
        plans.append(StagePlan(method, int(epochs)))
    if not plans:
        raise ConfigError("arm 'curriculum' needs at least one '<method>:<epochs>' stage")
    return tuple(plans)


# Registry of arms: prefix → plan. The longest matching prefix wins ("natural_sup+ssl:" before
# "natural_sup"); exact names have no suffix.
ARM_PLANS: dict[str, Callable[[PretrainConfig, str], ArmPlan]] = {
    "scratch": lambda cfg, _: ArmPlan("scratch", ()),
    "natural_sup": lambda cfg, _: ArmPlan("natural_sup", ()),
    "natural_ssl": _not_offline,
    "ssl:": lambda cfg, m: ArmPlan("scratch", (StagePlan(get_method(m).name, cfg.epochs),)),
    "natural_sup+ssl:": lambda cfg, m: ArmPlan(
        "natural_sup", (StagePlan(get_method(m).name, cfg.epochs),)
    ),
    "curriculum": lambda cfg, _: ArmPlan("scratch", _parse_curriculum(cfg.curriculum)),
}


def arm_plan(cfg: PretrainConfig) -> ArmPlan:
    """The plan for ``cfg.arm`` (see :data:`ARM_PLANS`)."""
    for key in sorted(ARM_PLANS, key=len, reverse=True):
        if key.endswith(":") and cfg.arm.startswith(key):
            return ARM_PLANS[key](cfg, cfg.arm.removeprefix(key))
        if cfg.arm == key:
            return ARM_PLANS[key](cfg, "")
    raise ConfigError(f"unknown arm {cfg.arm!r}; valid prefixes/names: {sorted(ARM_PLANS)}")


# ------------------------------------------------------------------------------- seeding ----
def derive_seed(*keys: object) -> int:
    """A 63-bit seed from ``keys`` (e.g. ``(seed, "augment", stage, epoch)``), stable across
    runs and platforms (unlike ``hash``)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the global torch RNG inside the block only (module constructors draw from it);
    the caller's RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# --------------------------------------------------------------------------------- data -----
@dataclass
class PretrainData:
    train: Split
    val: Split
    inputs: dict[str, str]  # {input name: md5} for the run id


def _split_md5(split: Split) -> str:
    """The file md5, or for generated data the md5 of its arrays."""
    if split.provenance.md5:
        return split.provenance.md5
    digest = hashlib.md5(np.ascontiguousarray(split.images).tobytes())
    digest.update(np.ascontiguousarray(split.labels).tobytes())
    return digest.hexdigest()


# Files behind each backbone's natural_sup weights (timm's come from its hub, named instead).
NATURAL_WEIGHT_FILES: dict[str, str] = {"resnet20_cifar": RESNET20_FILE}


def _natural_weights_id(backbone: str) -> str:
    from medstudy.data.loaders import file_md5

    if backbone in NATURAL_WEIGHT_FILES:
        path = paths.data_dir() / NATURAL_WEIGHT_FILES[backbone]
        if not path.exists():
            create_backbone(backbone, init="natural_sup")  # raises the WeightsError naming it
        return file_md5(path)
    return f"{backbone}:hub-pretrained"


def load_pretrain_data(cfg: PretrainConfig, plan: ArmPlan | None = None) -> PretrainData:
    """The (possibly subsampled) train split, the val split and the run's input md5s."""
    plan = plan or arm_plan(cfg)
    train = load_split(cfg.dataset, "train", size=cfg.image_size)
    val = load_split(cfg.dataset, "val", size=cfg.image_size)
    if 0 < cfg.max_train < len(train):
        # Stratified and seeded (multi-label sets: see ``sample_fractions``).
        train = train.subset(sample_fraction(train.labels, cfg.max_train / len(train), cfg.seed))
    inputs = {f"{cfg.dataset}.train": _split_md5(train), f"{cfg.dataset}.val": _split_md5(val)}
    if plan.init == "natural_sup":
        inputs["natural_weights"] = _natural_weights_id(cfg.backbone)
    return PretrainData(train, val, inputs)


def _device(cfg: PretrainConfig) -> torch.device:
    """``cfg.device`` made concrete; "cuda" without a GPU is an error, never a CPU fallback."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is available; use device='cpu'")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


# --------------------------------------------------------------------------- kNN monitor ----
def knn_scores(
    backbone: Backbone, train: TensorSplit, val: TensorSplit, n_classes: int, k: int
) -> np.ndarray:
    """The monitor's weighted kNN votes (cosine, T = ``KNN_TEMPERATURE``) for every val image."""
    train_feats = extract_features(backbone, train)
    val_feats = extract_features(backbone, val)
    train_y = train.labels.cpu().numpy()
    return knn_predict(train_feats, train_y, val_feats, n_classes, k, KNN_TEMPERATURE)


def knn_accuracy(
    backbone: Backbone, train: TensorSplit, val: TensorSplit, n_classes: int, k: int
) -> float:
    """Val accuracy of the weighted kNN classifier on the backbone's frozen features.

    Multi-label tasks: the mean over labels of the per-label accuracy at a 0.5 vote.
    """
    scores = knn_scores(backbone, train, val, n_classes, k)
    val_y = val.labels.cpu().numpy()
    if val_y.ndim == 2:
        return float(((scores >= 0.5) == (val_y > 0)).mean())
    return float((scores.argmax(axis=1) == val_y).mean())


# --------------------------------------------------------------------------- Lightning ------
class _Indices(torch.utils.data.Dataset[int]):
    """Index ``i`` → ``i``: the DataLoader only batches indices into the on-device tensor."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _EpochPermutation(torch.utils.data.Sampler[int]):
    """A permutation per epoch from ``(seed, stage, epoch)``; Lightning calls ``set_epoch``."""

    def __init__(self, n: int, seed: int, stage: int) -> None:
        self.n, self.seed, self.stage, self.epoch = n, seed, stage, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.stage, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written via temp file + rename: a kill mid-write leaves the previous
    checkpoint intact instead of a truncated one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], float], torch.optim.Optimizer]] = {
    "sgd": lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9),
    # LARS (You et al. 2017) as in lightly's large-batch benchmarks.
    "lars": lambda groups, lr: LARS(groups, lr=lr, momentum=0.9),
    "adamw": lambda groups, lr: torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95)),
}


def param_groups(method: SSLMethod, cfg: PretrainConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: weight decay except on norms and biases (lightly's
    ``get_weight_decay_parameters``), and for arms that start from natural-image weights
    (``natural_sup+ssl:*``) the backbone at ``lr * natural_lr_mult`` while the fresh heads train
    at ``lr``. Frozen (momentum) parameters are left out; empty groups are dropped."""
    decay, no_decay = get_weight_decay_parameters([method])
    natural = arm_plan(cfg).init == "natural_sup"
    mult = cfg.natural_lr_mult if natural else 1.0
    in_backbone = {id(p) for p in method.backbone.parameters()}
    groups = []
    for plist, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
        for backbone in (True, False):
            params = [p for p in plist if p.requires_grad and (id(p) in in_backbone) == backbone]
            if params:
                groups.append(
                    {"params": params, "weight_decay": wd, "lr": cfg.lr * (mult if backbone else 1)}
                )
    return groups


class PretrainModule(L.LightningModule):
    """One SSL stage: augmentation → method loss; kNN monitor and history at each epoch end."""

    def __init__(
        self,
        method: SSLMethod,
        spec: MethodSpec,
        recipe: AugmentRecipe,
        train: TensorSplit,
        val: TensorSplit,
        n_classes: int,
        cfg: PretrainConfig,
        stage_index: int,
        history: list[dict[str, Any]],
        epoch_offset: int,
    ) -> None:
        super().__init__()
        self.method = method
        self.spec = spec
        self.recipe = recipe
        self.train_data, self.val_data = train, val
        self.n_classes = n_classes
        self.cfg = cfg
        self.stage_index = stage_index
        self.history = list(history)
        self.epoch_offset = epoch_offset
        self._generator: torch.Generator | None = None
        self._ctx: StepContext | None = None
        self._loss_sum = 0.0
        self._n_steps = 0
        self._n_images = 0
        self._epoch_t0 = 0.0
        self._step_t0: float | None = None
        self._max_steps = 1

    # -- setup ----------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        groups = param_groups(self.method, self.cfg)
        optimizer = OPTIMIZERS[self.spec.optimizer](groups, self.cfg.lr)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = CosineWarmupScheduler(
            optimizer, warmup_epochs=int(WARMUP_FRACTION * total), max_epochs=total
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_fit_start(self) -> None:
        self.train_data = _to_device(self.train_data, self.device)
        self.val_data = _to_device(self.val_data, self.device)
        self.method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def on_train_start(self) -> None:
        self._max_steps = int(self.trainer.estimated_stepping_batches)

    def on_train_epoch_start(self) -> None:
        seed = derive_seed(self.cfg.seed, "augment", self.stage_index, self.current_epoch)
        self._generator = _generator(self.device, seed)
        self._loss_sum, self._n_steps, self._n_images = 0.0, 0, 0
        self._epoch_t0 = time.perf_counter()
        self._step_t0 = None

    # -- step -----------------------------------------------------------------------------
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        assert self._generator is not None
        now = time.perf_counter()
        images = self.train_data.images[batch.to(self.device)]
        views = [
            v.contiguous(memory_format=torch.channels_last)
            for v in make_views(images, self.recipe, self._generator)
        ]
        self._ctx = StepContext(
            step=self.global_step,
            max_steps=self._max_steps,
            epoch=self.current_epoch,
            max_epochs=int(self.trainer.max_epochs or 1),
            generator=self._generator,
        )
        loss = self.method.training_step(views, self._ctx)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{self.spec.name}: non-finite loss {loss.item()} at step {self.global_step} "
                f"(epoch {self.current_epoch}); lower the learning rate (cfg.lr={self.cfg.lr})"
            )
        self._loss_sum += float(loss.detach())
        self._n_steps += 1
        self._n_images += int(batch.numel())
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, batch_size=batch.numel())
        if self._step_t0 is not None:  # throughput of the previous full step
            rate = batch.numel() / max(now - self._step_t0, 1e-9)
            self.log("img_s", rate, prog_bar=True, on_step=True, batch_size=batch.numel())
        self._step_t0 = now
        return loss

    def on_after_backward(self) -> None:
        assert self._ctx is not None
        self.method.on_after_backward(self._ctx)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        assert self._ctx is not None
        self.method.on_step_end(self._ctx)

    # -- epoch end (called by _EpochEnd, before the checkpoint is written) -----------------
    def end_epoch(self) -> dict[str, Any]:
        train_time = time.perf_counter() - self._epoch_t0
        t0 = time.perf_counter()
        acc = knn_accuracy(
            self.method.encoder(), self.train_data, self.val_data, self.n_classes, self.cfg.knn_k
        )
        row = {
            "stage": self.stage_index,
            "method": self.spec.name,
            "epoch": self.epoch_offset + self.current_epoch + 1,
            "step": int(self.global_step),
            "loss": self._loss_sum / max(self._n_steps, 1),
            "knn_acc": acc,
            "img_per_s": self._n_images / max(train_time, 1e-9),
            "epoch_time_s": train_time,
            "knn_time_s": time.perf_counter() - t0,
        }
        self.history.append(row)
        return row

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["medstudy_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint["medstudy_history"])


class _EpochEnd(L.Callback):
    """kNN monitor + history.csv, then the resume checkpoint, at the end of every epoch.

    Runs before any user callback (it is first in the list), so a callback that stops the run
    after an epoch finds that epoch's checkpoint already written.
    """

    def __init__(self, ckpt_path: Path, history_path: Path) -> None:
        self.ckpt_path = ckpt_path
        self.history_path = history_path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, PretrainModule)
        pl_module.end_epoch()
        _write_history(self.history_path, pl_module.history)
        trainer.save_checkpoint(self.ckpt_path)


def _to_device(split: TensorSplit, device: torch.device) -> TensorSplit:
    if split.images.device == device:
        return split
    return TensorSplit(
        split.images.to(device), split.labels.to(device), split.ids, split.name, split.split
    )


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    df = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's start-up banner and its warnings about things done on purpose here
    (no DataLoader workers: batches are index slices; no validation loop: kNN runs at epoch
    end; no logger)."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for pattern in (
            ".*does not have many workers.*",
            ".*number of training batches.*smaller than the logging interval.*",
            ".*You called `self.log.*` but have no logger configured.*",
            ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
        ):
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            logger.setLevel(level)


def _precision(device: torch.device) -> str:
    # bf16 autocast on GPU only: CPU autocast is slower for these small convs and would change
    # the numbers of the CPU profile.
    return "bf16-mixed" if device.type == "cuda" else "32-true"


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
    batch_size = min(cfg.batch_size, len(train))
    epoch_offset = int(history[-1]["epoch"]) if history else 0
    module = PretrainModule(
        method, spec, recipe, train, val, info.n_classes, cfg, stage_index, history, epoch_offset
    )
    loader = torch.utils.data.DataLoader(
        _Indices(len(train)),
        sampler=_EpochPermutation(len(train), cfg.seed, stage_index),
        batch_size=batch_size,
        drop_last=True,  # a last batch of 1 would break BatchNorm and in-batch negatives
    )
    ckpt = _resume_path(run_dir, stage_index, stage.method)
    ckpt_dir = ckpt.parent
    with _quiet_lightning():
        trainer = L.Trainer(
            accelerator=device.type if device.type == "cpu" else "gpu",
            devices=1,
            max_epochs=stage.epochs,
            precision=_precision(device),  # type: ignore[arg-type]
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            callbacks=[_EpochEnd(ckpt, run_dir / HISTORY_FILE), *callbacks],
            plugins=[_AtomicCheckpointIO()],
            limit_val_batches=0,
            num_sanity_val_steps=0,
            default_root_dir=ckpt_dir,
        )
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt if ckpt.exists() else None)
    backbone.load_state_dict(method.encoder().state_dict())
    return module.history


# ---------------------------------------------------------------------------- the API -------
def _initial_backbone(cfg: PretrainConfig, init: str) -> Backbone:
    """The seeded random init (same as ``create_backbone(name, seed=cfg.seed)``) or the
    natural weights, without touching the caller's global RNG."""
    with seeded(cfg.seed):
        return create_backbone(cfg.backbone, init=init, seed=cfg.seed)


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
    metrics = pd.read_csv(run_dir / "metrics.csv")
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
    """
    plan = arm_plan(cfg)
    device = _device(cfg)
    data = load_pretrain_data(cfg, plan)
    rid = run_id(cfg, data.inputs)
    if is_done(STAGE, rid):
        return _load_cached(rid)
    provenance = {
        "train": data.train.provenance.as_dict(),
        "val": data.val.provenance.as_dict(),
        "n_train": len(data.train),
        "n_val": len(data.val),
        "train_ids_md5": hashlib.md5("\n".join(data.train.ids).encode()).hexdigest(),
        "stages": [f"{s.method}:{s.epochs}" for s in plan.stages],
    }
    # Belt and braces: nothing in the loop draws from the global RNGs (see the module doc).
    L.seed_everything(cfg.seed, workers=False, verbose=False)
    with Run(
        STAGE, cfg, inputs=data.inputs, data=provenance, seed=cfg.seed, device=str(device)
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
        run.log_metrics(metric_rows({**base, "protocol": "knn_monitor", "split": "val"}, metrics))
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

    ``scratch``: the seeded random init; ``natural_sup``: the natural-image weights (neither
    needs a run). Any trained arm: the checkpoint of its finished pretraining run, or an error
    saying how to produce it.
    """
    plan = arm_plan(cfg)
    if not plan.stages:
        return _initial_backbone(cfg, plan.init)
    data = load_pretrain_data(cfg, plan)
    rid = run_id(cfg, data.inputs)
    if not is_done(STAGE, rid):
        raise WeightsError(
            f"no finished pretrain run for {cfg.dataset}/{cfg.arm} (run_id {rid}, expected "
            f"{paths.run_dir(STAGE, rid)}): run notebook 01 first / run_all.sh --only 01"
        )
    backbone = create_backbone(cfg.backbone)
    load_checkpoint(backbone, paths.run_dir(STAGE, rid) / ENCODER_FILE)
    return backbone


# -------------------------------------------------------------------------------- plots -----
def plot_views(dataset: str, method: str, n: int = 6, seed: int = 0) -> Figure:
    """The first ``n`` train images of ``dataset`` (top row) and each of ``method``'s views of
    them (one row per view), as the method's recipe makes them for this dataset."""
    import matplotlib.pyplot as plt

    spec = get_method(method)
    split = load_split(dataset, "train")
    recipe = recipe_for_dataset(spec.recipe, dataset, split.info.n_channels)
    images = TensorSplit.from_split(split.subset(np.arange(min(n, len(split))))).images
    views = make_views(images, recipe, _generator(torch.device("cpu"), seed), model_input=False)
    rows = [images.float() / 255, *views]
    fig, axes = plt.subplots(
        len(rows), images.shape[0], figsize=(1.3 * images.shape[0], 1.3 * len(rows)), squeeze=False
    )
    for r, batch in enumerate(rows):
        for c in range(batch.shape[0]):
            ax = axes[r, c]
            img = batch[c].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel("original" if r == 0 else f"view {r}", fontsize=8)
    fig.suptitle(f"{method} views of {dataset} ({recipe.reference})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_history(history: pd.DataFrame) -> Figure:
    """Training loss and val kNN accuracy per epoch; curriculum stages are shaded."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(9, 3.2))
    trained = history[history["method"] != "init"]
    for method, part in trained.groupby("stage", sort=True):
        label = str(part["method"].iloc[0])
        ax_loss.plot(part["epoch"], part["loss"], marker="o", label=f"{method}: {label}")
    ax_knn.plot(history["epoch"], history["knn_acc"], marker="o", color="k")
    for stage, part in trained.groupby("stage", sort=True):
        if int(stage) % 2 == 1:
            for ax in (ax_loss, ax_knn):
                ax.axvspan(part["epoch"].min() - 0.5, part["epoch"].max() + 0.5, alpha=0.1)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="SSL loss (per stage)")
    if not trained.empty:
        ax_loss.legend(fontsize=8)
    ax_knn.set(xlabel="epoch (0 = initial weights)", ylabel="val kNN accuracy", title="kNN monitor")
    fig.tight_layout()
    return fig
