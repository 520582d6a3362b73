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
- with a ``run_dir``, the whole state (weights, optimiser, schedule, the best epoch so
  far, the history and every generator) is saved at the end of each epoch (atomically), and a
  fit that finds it resumes after that epoch instead of from epoch 0, ending with the same
  weights and history as an uninterrupted fit (tests pin it); a non-finite training loss stops
  the fit with ``FloatingPointError`` naming the epoch and step, and the last good epoch's
  checkpoint stays;
- fp32 on CPU, bf16 autocast on GPU (:func:`medstudy.runtime.precision`); the device is explicit
  (:func:`medstudy.runtime.resolve_device`) and never switched silently.

Same seed, same device and same thread count → identical weights and metrics (tests pin it).

Data contract: image inputs are uint8 (N, C, H, W) tensors (:class:`TensorSplit`), turned into
model input by ``to_float`` → (augmentation, train only) → ``to_model_input``. Labels are int64
(N,) or 0/1 (N, L) for multi-label tasks. Scores are probabilities (``logits_to_scores``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch import nn

from medstudy.data.info import DatasetInfo
from medstudy.data.tensors import TensorSplit, to_device
from medstudy.evaluate.batches import (
    AtomicCheckpointIO,
    InputTransform,
    TensorBatches,
    _identity,
    image_transform,
)
from medstudy.metrics import PRIMARY_METRIC, SELECT_METRICS, compute_metrics
from medstudy.models import Backbone, Classifier, build_head, logits_to_scores
from medstudy.results import atomic_write
from medstudy.runtime import make_generator, precision, quiet_lightning, seeded_build

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


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
        batch_generator: torch.Generator | None = None,
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
        #: the train batches' generator (its state goes into the resume checkpoint)
        self.batch_generator = batch_generator
        self._stopped = False  # restored from a checkpoint of a fit that had stopped early

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
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at epoch {self.current_epoch} "
                f"(history.csv numbering), step {self.global_step}; lower the learning rate "
                f"(lr={self.settings.lr}, backbone_lr_mult={self.settings.backbone_lr_mult}). "
                "The last good epoch's resume checkpoint, if the fit keeps one, is left in place."
            )
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
            self._stopped = True

    # -- resume -----------------------------------------------------------------------------
    def on_train_start(self) -> None:
        if self._stopped:  # resumed from the checkpoint of the epoch that stopped the fit
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["medstudy_fit"] = {
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            # a tensor: Lightning loads checkpoints with torch.load(weights_only=True)
            "best_val_scores": None
            if self.best_val_scores is None
            else torch.from_numpy(self.best_val_scores),
            "bad_epochs": self.bad_epochs,
            "stopped": self._stopped,
            "history": self.history,
            "batch_generator": self.batch_generator.get_state() if self.batch_generator else None,
            "aug_generator": self._aug_gen.get_state() if self._aug_gen is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device)
            if self.device.type == "cuda"
            else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["medstudy_fit"]
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.best_state = state["best_state"]
        scores = state["best_val_scores"]
        self.best_val_scores = None if scores is None else scores.numpy()
        self.bad_epochs, self._stopped = state["bad_epochs"], state["stopped"]
        self.history = list(state["history"])
        if self.batch_generator is not None and state["batch_generator"] is not None:
            self.batch_generator.set_state(state["batch_generator"])
        if state["aug_generator"] is not None:
            self._aug_gen = make_generator(self.device, self.aug_seed)
            self._aug_gen.set_state(state["aug_generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

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
    run_dir: Path | None = None,
) -> FitResult:
    """Train ``model`` (``model(*inputs) -> logits``) with early stopping on val.

    ``seed`` fixes the batch order and the augmentation draws (the model's initialisation is
    the caller's, see :func:`medstudy.runtime.seeded`). Returns the best-val weights (module
    docstring). With ``run_dir``, every epoch end writes ``run_dir/history.csv`` and the resume
    checkpoint ``run_dir/``:data:`RESUME_FILE`, and a fit that finds that checkpoint resumes
    from it (the caller removes it once the fit's results are saved).
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
        model,
        info,
        settings,
        transform,
        len(train),
        aug_seed=seed + 1,
        loss_weights=weights,
        batch_generator=train.generator,
    )
    model.train()  # Lightning keeps sub-module modes; a frozen encoder arrives in eval mode
    resume = run_dir / RESUME_FILE if run_dir is not None else None
    callbacks = [_FitEpochEnd(run_dir)] if run_dir is not None else []
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
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO()],
            # Not Lightning's deterministic flag: it flips a process-wide torch switch. The CPU
            # kernels used here are deterministic for a fixed thread count (tests pin it).
            deterministic=False,
        )
        # Dropout draws from torch's global generator; fork it and seed it so a fit is
        # reproducible and leaves the caller's RNG state untouched.
        fork = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork):
            torch.manual_seed(seed + 2)
            ckpt = resume if resume is not None and resume.exists() else None
            trainer.fit(module, train_dataloaders=train, val_dataloaders=val, ckpt_path=ckpt)
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


#: The resume checkpoint of a fit with a ``run_dir`` (:func:`fit_supervised`).
RESUME_FILE = "resume.ckpt"


class _FitEpochEnd(pl.Callback):
    """history.csv, then the resume checkpoint, at the end of every epoch (after its val check
    and the best-epoch bookkeeping): a kill loses at most the epoch in progress."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, SupervisedModule)
        history = pd.DataFrame(pl_module.history)
        atomic_write(self.run_dir / "history.csv", lambda tmp: history.to_csv(tmp, index=False))
        trainer.save_checkpoint(self.run_dir / RESUME_FILE)


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
        batch = tuple(to_device(x[start : start + batch_size], device) for x in inputs)
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
    run_dir: Path | None = None,
) -> FitResult:
    """Fine-tune ``backbone`` + a new linear head on ``train``; early stopping on ``val``;
    ``run_dir``: per-epoch history and resume checkpoint (:func:`fit_supervised`).

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
        run_dir=run_dir,
    )


def predict_split(model: nn.Module, split: TensorSplit, info: DatasetInfo) -> np.ndarray:
    """Probabilities of a fine-tuned :class:`Classifier` on a whole (uint8) split."""
    return predict_scores(model, (split.images,), info, transform=image_transform(False))
