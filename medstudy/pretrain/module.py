"""The Lightning side of the pretraining loop: one SSL stage as a ``LightningModule``.

Batches are index slices of the on-device uint8 training tensor (no DataLoader workers, no
PIL); augmentation is batched on the device; the batch order, the augmentation and SparK's
masks come from generators derived from ``(cfg.seed, stage, epoch)``, so a stage killed after
any epoch and resumed from its checkpoint ends with identical weights. Each method trains with
its own optimiser recipe (:class:`~medstudy.ssl.base.OptimRecipe`: SGD, Adam or LAMB, the LR
scaled linearly with the batch size) on a per-step cosine schedule after a linear warm-up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pandas as pd
import torch
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import nn

from medstudy.arms import arm_plan
from medstudy.augment import AugmentRecipe, make_views
from medstudy.config import PretrainConfig
from medstudy.data import TensorSplit
from medstudy.evaluate.knn import knn_accuracy
from medstudy.results import atomic_write
from medstudy.runtime import derive_seed, make_generator
from medstudy.ssl import MethodSpec, SSLMethod, StepContext
from medstudy.ssl import distributed as dist
from medstudy.ssl.base import OptimRecipe

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
    """A permutation per epoch from ``(seed, stage, epoch)``; Lightning calls ``set_epoch``.

    Under DDP (``world`` ranks, read from the process group when iterated) every global batch
    of ``world * batch`` consecutive indices of that one permutation is cut into ``world``
    contiguous shards, rank r taking the r-th: the ranks' batches are disjoint, every rank has
    the same number of them, and together they are the single-process run's batches.
    """

    def __init__(self, n: int, seed: int, stage: int, batch: int = 1, world: int = 1) -> None:
        self.n, self.seed, self.stage, self.epoch = n, seed, stage, 0
        self.batch, self.world = batch, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.world == 1:
            return self.n
        return self.n // (self.world * self.batch) * self.batch

    def indices(self, rank: int) -> list[int]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.stage, self.epoch))
        perm = torch.randperm(self.n, generator=g)
        if self.world == 1:
            return perm.tolist()
        steps = self.n // (self.world * self.batch)
        shards = perm[: steps * self.world * self.batch].view(steps, self.world, self.batch)
        return shards[:, rank].reshape(-1).tolist()

    def __iter__(self) -> Iterator[int]:
        if dist.world_size() != self.world:
            raise RuntimeError(
                f"the sampler was built for {self.world} rank(s), the process group has "
                f"{dist.world_size()}"
            )
        return iter(self.indices(dist.rank()))


def _lamb(groups: list[dict[str, Any]], recipe: OptimRecipe) -> torch.optim.Optimizer:
    from timm.optim import Lamb  # SparK's LAMB is timm's; clip 5 is SparK's global grad clip

    return Lamb(groups, lr=groups[0]["lr"], betas=recipe.betas, max_grad_norm=5.0)


#: Builders by :data:`medstudy.ssl.base.OPTIMIZERS` name; LR and weight decay are per group.
OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], OptimRecipe], torch.optim.Optimizer]] = {
    "sgd": lambda groups, r: torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=r.momentum),
    "adam": lambda groups, r: torch.optim.Adam(groups, lr=groups[0]["lr"], betas=r.betas),
    "lamb": _lamb,
}


def method_lr(spec: MethodSpec, cfg: PretrainConfig) -> float:
    """``spec``'s recipe LR at the run's batch size (linear rule), times ``cfg.lr_scale``."""
    return spec.optim.lr(cfg.batch_size) * cfg.lr_scale


def param_groups(method: SSLMethod, spec: MethodSpec, cfg: PretrainConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: the recipe's weight decay except on norms and biases
    (lightly's ``get_weight_decay_parameters``), and for arms that start from natural-image
    weights (``natural_sup+ssl:*``) the backbone at ``lr * natural_lr_mult`` while the fresh
    heads train at ``lr`` (:func:`method_lr`). Frozen (momentum) parameters are left out;
    empty groups are dropped."""
    decay, no_decay = get_weight_decay_parameters([method])
    natural = arm_plan(cfg.arm, cfg.epochs, cfg.curriculum).init == "natural_sup"
    mult = cfg.natural_lr_mult if natural else 1.0
    lr = method_lr(spec, cfg)
    in_backbone = {id(p) for p in method.backbone.parameters()}
    groups = []
    for plist, wd in ((decay, spec.optim.weight_decay), (no_decay, 0.0)):
        for backbone in (True, False):
            params = [p for p in plist if p.requires_grad and (id(p) in in_backbone) == backbone]
            if params:
                groups.append(
                    {"params": params, "weight_decay": wd, "lr": lr * (mult if backbone else 1)}
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
        groups = param_groups(self.method, self.spec, self.cfg)
        optimizer = OPTIMIZERS[self.spec.optim.name](groups, self.spec.optim)
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
        if self.cfg.torch_compile:
            compile_stages(self.method.backbone)

    def on_train_start(self) -> None:
        self._max_steps = int(self.trainer.estimated_stepping_batches)

    def on_train_epoch_start(self) -> None:
        seed = derive_seed(self.cfg.seed, "augment", self.stage_index, self.current_epoch)
        if self.trainer.world_size > 1:  # each rank its own views (and SparK masks)
            seed = derive_seed(seed, "rank", self.global_rank)
        self._generator = make_generator(self.device, seed)
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
            image_channels=int(images.shape[1]),
        )
        loss = self.method.training_step(views, self._ctx)
        if not torch.isfinite(loss):
            # The epoch as history.csv numbers it (1 = the first trained epoch), so that the
            # message and the last good row / checkpoint of the run folder agree.
            epoch = self.epoch_offset + self.current_epoch + 1
            raise FloatingPointError(
                f"{self.spec.name}: non-finite loss {loss.item()} at step {self.global_step} "
                f"(epoch {epoch}); lower the learning rate (lr {method_lr(self.spec, self.cfg):.3g}"
                f" = the {self.spec.optim.name} recipe's at batch {self.cfg.batch_size} x "
                f"lr_scale {self.cfg.lr_scale})"
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
        epoch = self.epoch_offset + self.current_epoch + 1
        stage_end = self.current_epoch + 1 >= int(self.trainer.max_epochs or 0)
        acc = math.nan  # not monitored this epoch (cfg.knn_every)
        if epoch % self.cfg.knn_every == 0 or stage_end:
            acc = knn_accuracy(
                self.method.encoder(), self.train_data, self.val_data, self.n_classes,
                self.cfg.knn_k,
            )  # fmt: skip
        loss, n_images = self._loss_sum / max(self._n_steps, 1), self._n_images
        if self.trainer.world_size > 1:  # the mean over ranks, all ranks' images
            both = torch.tensor([loss, n_images], dtype=torch.float64, device=self.device)
            both = self.trainer.strategy.reduce(both, reduce_op="sum")
            loss, n_images = float(both[0]) / self.trainer.world_size, int(both[1])
        row = {
            "stage": self.stage_index,
            "method": self.spec.name,
            "epoch": epoch,
            "step": int(self.global_step),
            "loss": loss,
            "knn_acc": acc,
            "img_per_s": n_images / max(train_time, 1e-9),
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
        if trainer.is_global_zero:  # under DDP rank 0 writes (the checkpoint: Lightning's rule)
            _write_history(self.history_path, pl_module.history)
        trainer.save_checkpoint(self.ckpt_path)


def compile_stages(backbone: nn.Module) -> None:
    """``torch.compile`` every stage of ``backbone`` in place (``nn.Module.compile``), for
    ``PretrainConfig.torch_compile``.

    Stages, not the method: every method reaches the backbone through them (its ``forward``
    runs the stages in turn, SparK calls them one by one under its sparse hooks, which the
    compiled code keeps: tests/test_gpu_paths.py), while the heads, the losses and the
    generator-driven masking stay eager. In place, so ``state_dict`` keys, checkpoints and the
    momentum copies are those of the eager module. A stage already compiled is left as is."""
    for stage in backbone.stages:  # type: ignore[union-attr]
        if getattr(stage, "_compiled_call_impl", None) is None:
            stage.compile()


def _to_device(split: TensorSplit, device: torch.device) -> TensorSplit:
    if split.images.device == device:
        return split
    return TensorSplit(
        split.images.to(device), split.labels.to(device), split.ids, split.name, split.split
    )


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    df = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
