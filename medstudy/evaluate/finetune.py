"""The supervised training loop: full fine-tuning of a backbone + head, and (the same loop) DVME.

One Lightning loop (``lightning.pytorch``) serves every supervised fit of the study, as the SSL
pretraining loop serves every pretext task:

- data are in-memory tensors sliced into batches (:class:`TensorBatches`): no DataLoader workers,
  no PIL (DESIGN §5); shuffling uses an explicit seeded ``torch.Generator``;
- the val split is scored after every epoch with the task's primary metric
  (``PRIMARY_METRIC``: AUC, or quadratic kappa for ordinal grading); the best-val weights are
  kept in memory and are the ones returned (and evaluated), and training stops after
  ``patience`` epochs without improvement (early stopping; never during a frozen warm-up).
  ``TrainSettings.select_on`` may name another val metric for this selection;
- a pretrained backbone gets a lower learning rate than the head (``backbone_lr_mult``), and may
  be frozen for the first ``warmup_frozen_epochs`` epochs (linear-probe-then-fine-tune warm-up,
  as in Wolf et al. 2023, Sci Rep, SparK vs contrastive pretraining for CT);
- a tiny train set (a 1 % label fraction: a few dozen images) would get one optimiser step per
  epoch; ``min_steps_per_epoch`` makes an epoch repeat the (reshuffled) data up to that many
  steps, so every fraction gets a comparable optimisation budget per val check;
- class imbalance: none by default (the loss sees the training prevalence, and imbalance is
  visible in balanced accuracy / macro F1); ``class_weighted_loss=True`` switches to inverse-
  frequency weighted cross-entropy (``pos_weight`` for multi-label BCE);
- CPU fp32; the device is explicit (:func:`medstudy.runtime.resolve_device`) and never
  switched silently.

Same seed, same device and same thread count → identical weights and metrics (tests pin it).

Data contract: image inputs are uint8 (N, C, H, W) tensors (:class:`TensorSplit`), turned into
model input by ``to_float`` → (augmentation, train only) → ``to_model_input``. Labels are int64
(N,) or 0/1 (N, L) for multi-label tasks. Scores are probabilities (``logits_to_scores``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch import nn

from medstudy.augment import AugmentRecipe, ViewTransform, augment_batch, recipe_for_dataset
from medstudy.data.info import DatasetInfo
from medstudy.data.tensors import TensorSplit, to_float, to_model_input
from medstudy.metrics import PRIMARY_METRIC, SELECT_METRICS, compute_metrics
from medstudy.models import Backbone, Classifier, build_head, logits_to_scores
from medstudy.runtime import make_generator, precision, quiet_lightning, seeded_build

#: A batch transform: ``(inputs, train, generator) -> inputs`` applied on the training device.
InputTransform = Callable[
    [tuple[torch.Tensor, ...], bool, torch.Generator], tuple[torch.Tensor, ...]
]
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


# ------------------------------------------------------------------------------------- data --
class TensorBatches:
    """Re-iterable batches ``(*inputs, labels)`` of in-memory tensors (one epoch per ``iter``).

    ``inputs`` share the first (sample) axis with ``labels``. With ``shuffle`` the order of every
    epoch is drawn from ``generator`` (CPU), so a seeded generator fixes all epochs.
    """

    def __init__(
        self,
        inputs: Sequence[torch.Tensor],
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        min_batches: int = 1,
    ) -> None:
        if shuffle and generator is None:
            raise ValueError("shuffle=True needs an explicit torch.Generator (seeded runs)")
        if min_batches > 1 and not shuffle:
            raise ValueError("min_batches > 1 repeats the data, which only makes sense shuffled")
        n = int(labels.shape[0])
        if any(int(x.shape[0]) != n for x in inputs):
            raise ValueError("every input must have as many rows as labels")
        self.inputs, self.labels = tuple(inputs), labels
        self.batch_size, self.shuffle, self.generator = batch_size, shuffle, generator
        per_pass = math.ceil(n / batch_size)
        #: Passes over the data per epoch: enough for ``min_batches`` batches (a tiny label
        #: fraction would otherwise get one optimiser step per epoch).
        self.passes = max(1, math.ceil(min_batches / max(per_pass, 1)))

    def __len__(self) -> int:
        return self.passes * math.ceil(int(self.labels.shape[0]) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = int(self.labels.shape[0])
        for _ in range(self.passes):
            if self.shuffle:
                order = torch.randperm(n, generator=self.generator)
            else:
                order = torch.arange(n)
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size].to(self.labels.device)
                if self.shuffle and len(idx) == 1 and n > 1:
                    # A lone training sample breaks BatchNorm on 1x1 maps (timm ResNets at
                    # 28 px); with shuffling it is a different sample each time: nothing lost.
                    continue
                yield (*(x[idx] for x in self.inputs), self.labels[idx])


# ----------------------------------------------------------------------------- augmentation --
#: Light fine-tuning augmentation: a mild random resized crop and a horizontal flip, no colour
#: jitter (label-relevant intensity, e.g. exudates, must survive). Rotation-invariant datasets
#: (histology, dermoscopy) also get vertical flips and 90° rotations via ``recipe_for_dataset``.
FINETUNE_RECIPE = AugmentRecipe(
    "finetune",
    (ViewTransform(crop_scale=(0.7, 1.0), jitter_prob=0.0, grayscale_prob=0.0),),
    "light crop + flip, as in the MedMNIST-style supervised baselines",
)


def image_transform(augment: bool, dataset: str = "", n_channels: int = 3) -> InputTransform:
    """uint8 images → model input; with ``augment``, :data:`FINETUNE_RECIPE` (batched on the
    device, :func:`medstudy.augment.augment_batch`) when training. Eval is never augmented."""
    view = recipe_for_dataset(FINETUNE_RECIPE, dataset, n_channels).views[0] if augment else None

    def transform(
        inputs: tuple[torch.Tensor, ...], train: bool, generator: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        x = to_float(inputs[0])
        if train and view is not None:
            x = augment_batch(x, view, generator)
        return (to_model_input(x),)

    return transform


def _identity(
    inputs: tuple[torch.Tensor, ...], train: bool, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    return inputs


# --------------------------------------------------------------------------------- settings --
@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one supervised fit (see the module docstring for their meaning).

    ``lr`` is the head's learning rate; parameters under ``model.backbone`` get
    ``lr * backbone_lr_mult`` (``0`` = backbone frozen throughout). The schedule is a per-step
    cosine decay to 0 over ``max_epochs`` (Loshchilov & Hutter 2017), so early stopping ends it
    early rather than changing it.
    """

    max_epochs: int = 20
    patience: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    backbone_lr_mult: float = 1.0
    warmup_frozen_epochs: int = 0
    augment: bool = False
    class_weighted_loss: bool = False
    select_on: str = ""  # val metric for early stopping / best epoch; "" = PRIMARY_METRIC
    min_steps_per_epoch: int = 1  # small train sets repeat (reshuffled) up to this many steps

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {list(OPTIMIZERS)}")
        for name in ("max_epochs", "patience", "batch_size", "min_steps_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.select_on not in SELECT_METRICS:
            raise ValueError(f"unknown select_on {self.select_on!r}; valid: {list(SELECT_METRICS)}")
        if self.lr <= 0 or self.backbone_lr_mult < 0 or self.warmup_frozen_epochs < 0:
            raise ValueError("lr must be > 0, backbone_lr_mult and warmup_frozen_epochs >= 0")


@dataclass
class FitResult:
    """A finished fit: ``model`` holds the best-val weights (eval mode, on the training device).

    ``val_scores`` are the best epoch's val probabilities, identical to
    :func:`predict_scores` of ``model`` on val (tests pin it). ``history`` has one row per epoch: ``epoch, steps, train_loss, val_<metric>, lr, frozen,
    seconds``.
    """

    model: nn.Module
    best_epoch: int
    best_value: float
    metric: str
    epochs_run: int
    history: pd.DataFrame
    wall_time_s: float
    settings: TrainSettings
    #: the returned model's val probabilities (float64 (N, K), val order), scored at its epoch
    val_scores: np.ndarray | None = None
    extra: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------------- the loop --------
def class_weights(info: DatasetInfo, labels: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights ``N / (K * n_k)`` (multi-label: ``pos_weight = n_neg / n_pos``)."""
    y = labels.to(torch.float64)
    if info.is_multilabel:
        pos = y.sum(0).clamp_min(1.0)
        return ((y.shape[0] - pos) / pos).to(torch.float32)
    counts = torch.bincount(labels.reshape(-1), minlength=info.n_classes).to(torch.float64)
    return (y.shape[0] / (info.n_classes * counts.clamp_min(1.0))).to(torch.float32)


class SupervisedModule(pl.LightningModule):
    """Lightning wrapper of any ``model(*inputs) -> logits`` trained with the task loss."""

    def __init__(
        self,
        model: nn.Module,
        info: DatasetInfo,
        settings: TrainSettings,
        transform: InputTransform,
        steps_per_epoch: int,
        aug_seed: int,
        loss_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model, self.info, self.settings = model, info, settings
        self.transform = transform
        self.steps_per_epoch = steps_per_epoch
        self.aug_seed = aug_seed
        self.metric = settings.select_on or PRIMARY_METRIC[info.task]
        if info.is_multilabel:
            self.loss_fn: nn.Module = nn.BCEWithLogitsLoss(pos_weight=loss_weights)
        else:
            self.loss_fn = nn.CrossEntropyLoss(weight=loss_weights)
        self.best_value = -math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_val_scores: np.ndarray | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, float]] = []
        self._train_loss: list[torch.Tensor] = []
        self._val_scores: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._epoch_t0 = 0.0
        self._aug_gen: torch.Generator | None = None

    # -- freezing ---------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module | None:
        return getattr(self.model, "backbone", None)

    def frozen(self, epoch: int) -> bool:
        return self.backbone is not None and (
            self.settings.backbone_lr_mult == 0 or epoch < self.settings.warmup_frozen_epochs
        )

    def on_train_epoch_start(self) -> None:
        self._epoch_t0 = time.perf_counter()
        if self._aug_gen is None:
            self._aug_gen = make_generator(self.device, self.aug_seed)
        backbone = self.backbone
        if backbone is None:
            return
        frozen = self.frozen(self.current_epoch)
        # A frozen backbone is also kept in eval mode, so its BatchNorm statistics stay those
        # of the pretrained encoder during the warm-up (a true linear-probe phase).
        backbone.train(not frozen)
        for p in backbone.parameters():
            p.requires_grad_(not frozen)

    # -- steps ------------------------------------------------------------------------------
    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs)

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.float() if self.info.is_multilabel else labels.reshape(-1)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        *inputs, labels = batch
        assert self._aug_gen is not None
        x = self.transform(tuple(inputs), True, self._aug_gen)
        loss = self.loss_fn(self.model(*x), self._targets(labels))
        self._train_loss.append(loss.detach())
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        *inputs, labels = batch
        x = self.transform(tuple(inputs), False, make_generator("cpu", 0))
        # float64, as predict_scores: the best epoch's scores are the returned model's val
        # predictions (the caller need not predict val again)
        self._val_scores.append(logits_to_scores(self.info, self.model(*x)).double().cpu())
        self._val_labels.append(labels.cpu())

    def on_validation_epoch_end(self) -> None:
        scores = torch.cat(self._val_scores).numpy()
        labels = torch.cat(self._val_labels).numpy()
        self._val_scores.clear()
        self._val_labels.clear()
        # the selection metric on float32 scores, as it always was (same best epoch)
        value = compute_metrics(
            self.info.task, labels, scores.astype(np.float32), self.info.n_classes, self.info.name
        )[self.metric]
        epoch = self.current_epoch
        loss = torch.stack(self._train_loss).mean().item() if self._train_loss else math.nan
        steps = len(self._train_loss)
        self._train_loss.clear()
        self.history.append(
            {
                "epoch": epoch,
                "steps": steps,
                "train_loss": loss,
                f"val_{self.metric}": value,
                "lr": self.trainer.optimizers[0].param_groups[-1]["lr"],
                "frozen": self.frozen(epoch),
                "seconds": time.perf_counter() - self._epoch_t0,
            }
        )
        if math.isfinite(value) and value > self.best_value:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best_val_scores = scores
        else:
            if self.best_state is None:  # keep *some* weights even if val is undefined so far
                self.best_state = {
                    k: v.detach().clone() for k, v in self.model.state_dict().items()
                }
                self.best_epoch = epoch
                self.best_val_scores = scores
            # Patience only counts once the whole network trains: a frozen warm-up that
            # plateaus must not end the run before fine-tuning has started.
            if self.backbone is None or epoch >= self.settings.warmup_frozen_epochs:
                self.bad_epochs += 1
        if self.bad_epochs >= self.settings.patience:
            self.trainer.should_stop = True

    # -- optimiser --------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, object]:
        s = self.settings
        backbone_ids = {id(p) for p in self.backbone.parameters()} if self.backbone else set()
        head = [p for p in self.model.parameters() if id(p) not in backbone_ids]
        groups = [{"params": head, "lr": s.lr}]
        if self.backbone is not None and s.backbone_lr_mult > 0:
            groups.insert(
                0, {"params": list(self.backbone.parameters()), "lr": s.lr * s.backbone_lr_mult}
            )
        if s.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=True
            )
        else:
            opt = torch.optim.AdamW(groups, lr=s.lr, weight_decay=s.weight_decay)
        total = max(1, s.max_epochs * self.steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fit_supervised(
    model: nn.Module,
    train_inputs: Sequence[torch.Tensor],
    train_labels: torch.Tensor,
    val_inputs: Sequence[torch.Tensor],
    val_labels: torch.Tensor,
    info: DatasetInfo,
    settings: TrainSettings,
    seed: int,
    device: torch.device | str = "cpu",
    transform: InputTransform = _identity,
    eval_batch_size: int = 512,
) -> FitResult:
    """Train ``model`` (``model(*inputs) -> logits``) with early stopping on val.

    ``seed`` fixes the batch order and the augmentation draws (the model's initialisation is
    the caller's, see :func:`medstudy.runtime.seeded`). Returns the best-val weights (module docstring).
    """
    device = torch.device(device)
    t0 = time.perf_counter()
    train = TensorBatches(
        train_inputs,
        train_labels,
        settings.batch_size,
        shuffle=True,
        generator=make_generator("cpu", seed),
        min_batches=settings.min_steps_per_epoch,
    )
    val = TensorBatches(val_inputs, val_labels, eval_batch_size)
    weights = class_weights(info, train_labels).to(device) if settings.class_weighted_loss else None
    module = SupervisedModule(
        model, info, settings, transform, len(train), aug_seed=seed + 1, loss_weights=weights
    )
    model.train()  # Lightning keeps sub-module modes; a frozen encoder arrives in eval mode
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=[device.index or 0] if device.type == "cuda" else 1,
            max_epochs=settings.max_epochs,
            precision=precision(device),  # type: ignore[arg-type]
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            # Not Lightning's deterministic flag: it flips a process-wide torch switch. The CPU
            # kernels used here are deterministic for a fixed thread count (tests pin it).
            deterministic=False,
        )
        # Dropout draws from torch's global generator; fork it and seed it so a fit is
        # reproducible and leaves the caller's RNG state untouched.
        fork = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork):
            torch.manual_seed(seed + 2)
            trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    if module.best_state is None:
        raise RuntimeError("training finished without a single validation epoch")
    model.load_state_dict(module.best_state)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return FitResult(
        model=model,
        best_epoch=module.best_epoch,
        best_value=module.best_value,
        metric=module.metric,
        epochs_run=len(module.history),
        history=pd.DataFrame(module.history),
        wall_time_s=time.perf_counter() - t0,
        settings=settings,
        val_scores=module.best_val_scores,
    )


@torch.no_grad()
def predict_scores(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    info: DatasetInfo,
    transform: InputTransform = _identity,
    batch_size: int = 512,
) -> np.ndarray:
    """Probabilities of ``model`` (eval mode) for every row of ``inputs``: float64 (N, K)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    n = int(inputs[0].shape[0])
    dummy = make_generator("cpu", 0)
    for start in range(0, n, batch_size):
        batch = tuple(x[start : start + batch_size].to(device) for x in inputs)
        logits = model(*transform(batch, False, dummy))
        out.append(logits_to_scores(info, logits).double().cpu())
    return torch.cat(out).numpy()


# ------------------------------------------------------------------------- fine-tuning --------
def finetune(
    backbone: Backbone,
    train: TensorSplit,
    val: TensorSplit,
    info: DatasetInfo,
    settings: TrainSettings,
    seed: int,
    device: torch.device | str = "cpu",
) -> FitResult:
    """Fine-tune ``backbone`` + a new linear head on ``train``; early stopping on ``val``.

    The head's initialisation, the batch order and the augmentation all derive from ``seed``.
    ``backbone`` is modified in place (pass a fresh copy per run). Returns a :class:`FitResult`
    whose ``model`` is a :class:`Classifier` with the best-val weights.
    """
    device = torch.device(device)
    head = seeded_build(lambda: build_head(info, backbone.feature_dim), seed)
    model = Classifier(backbone, head).to(device)
    return fit_supervised(
        model,
        (train.images,),
        train.labels,
        (val.images,),
        val.labels,
        info,
        settings,
        seed,
        device,
        transform=image_transform(settings.augment, info.name, info.n_channels),
    )


def predict_split(model: nn.Module, split: TensorSplit, info: DatasetInfo) -> np.ndarray:
    """Probabilities of a fine-tuned :class:`Classifier` on a whole (uint8) split."""
    return predict_scores(model, (split.images,), info, transform=image_transform(False))
