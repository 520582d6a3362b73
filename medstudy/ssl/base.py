"""The base of every SSL method: a module owning the backbone and its heads.

A method is ~50 lines on top of :class:`SSLMethod` (as in solo-learn's ``BaseMethod``): it builds
lightly's heads and loss in ``__init__`` and maps a list of views to a scalar loss in
:meth:`SSLMethod.training_step`. The pretraining loop (:mod:`medstudy.pretrain`) owns the
optimiser, schedule, checkpoints and online evaluation, so methods stay free of training code.

Randomness a method needs beyond the views (SparK's masks) comes from ``ctx.generator``, never
from the global RNG, so runs are reproducible and resumable.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medstudy.augment import AugmentRecipe
from medstudy.models import Backbone

#: Optimisers a recipe may name (built by :mod:`medstudy.pretrain.module`): SGD with momentum
#: (lightly's CIFAR-10 benchmark), Adam (its SwAV) and LAMB (SparK; timm's ``Lamb``).
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "lamb")


@dataclass(frozen=True)
class OptimRecipe:
    """A method's optimiser, with its source: the LR follows the linear scaling rule.

    ``lr(batch_size) = base_lr * batch_size / base_batch`` (Goyal et al. 2017; lightly's
    benchmarks write it ``lr_factor = batch_size / 128``, SparK ``base_lr * bs / 256``), so a
    recipe stated for one batch size trains at the same per-image step size at any other.
    The schedule (linear warm-up over 10 % of the steps, then cosine) is the loop's, for every
    method alike. Weight decay skips norms and biases (lightly's ``get_weight_decay_parameters``).
    """

    name: str  # one of OPTIMIZERS
    base_lr: float
    base_batch: int
    weight_decay: float
    source: str
    momentum: float = 0.9  # SGD
    betas: tuple[float, float] = (0.9, 0.999)  # Adam, LAMB

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; valid: {list(OPTIMIZERS)}")
        if self.base_lr <= 0 or self.base_batch < 1 or self.weight_decay < 0:
            raise ValueError(
                f"optimiser recipe needs base_lr > 0, base_batch >= 1, weight_decay >= 0; got "
                f"{self.base_lr}, {self.base_batch}, {self.weight_decay}"
            )
        if not self.source:
            raise ValueError("an optimiser recipe must cite its source")

    def lr(self, batch_size: int) -> float:
        """The learning rate at ``batch_size`` by the linear scaling rule."""
        return self.base_lr * batch_size / self.base_batch


#: lightly's CIFAR-10 benchmark (``benchmarks/cifar10_benchmark.py``), every model but SwAV:
#: ``SGD(lr=6e-2 * lr_factor, momentum=0.9, weight_decay=5e-4)`` with ``lr_factor = batch/128``.
LIGHTLY_CIFAR10_SGD = OptimRecipe(
    "sgd",
    0.06,
    128,
    5e-4,
    "lightly CIFAR-10 benchmark: SGD 6e-2 x batch/128, momentum 0.9, wd 5e-4",
)


@dataclass
class StepContext:
    """Where training is, for schedules (momentum, temperature, frozen layers) and masks."""

    step: int  # optimiser steps done before this one
    max_steps: int
    epoch: int
    max_epochs: int
    generator: torch.Generator
    # channels of the images before ``to_model_input`` (1 = grey copied into 3 channels)
    image_channels: int = 3


class SSLMethod(nn.Module):
    """Backbone + method-specific heads; ``training_step(views, ctx) -> loss``.

    ``self.backbone`` is the encoder that is kept after pretraining (for momentum methods it is
    the online/student network, the one the optimiser trains).
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def on_step_end(self, ctx: StepContext) -> None:
        """Called after each optimiser step (momentum encoders update here)."""

    def on_after_backward(self, ctx: StepContext) -> None:
        """Called between backward and the optimiser step (e.g. cancel gradients)."""

    def encoder(self) -> Backbone:
        """The backbone kept after pretraining (DINO overrides this with its teacher)."""
        return self.backbone

    # Non-persistent buffers (lightly's memory banks / queues) are not in ``state_dict``; keep
    # them in the extra state so that a killed-and-resumed run continues exactly.
    def get_extra_state(self) -> dict[str, torch.Tensor]:
        state = {}
        for mod_name, module in self.named_modules():
            for buf_name in getattr(module, "_non_persistent_buffers_set", ()):
                buf = module._buffers.get(buf_name)
                if buf is not None:
                    state[f"{mod_name}.{buf_name}" if mod_name else buf_name] = buf.detach().clone()
        return state

    def set_extra_state(self, state: Any) -> None:
        if not state:
            return
        modules = dict(self.named_modules())
        for key, value in state.items():
            mod_name, _, buf_name = key.rpartition(".")
            module = modules[mod_name]
            module._buffers[buf_name] = value.to(module._buffers[buf_name].device)


#: Fraction of the random initialisation an EMA encoder may still hold at the end of a run.
EMA_INIT_RESIDUE = math.exp(-5)  # 0.7 %


def ema_momentum_start(max_steps: int, long_run: float) -> float:
    """The EMA momentum to start a cosine schedule to 1 from, for a run of ``max_steps`` steps.

    ``long_run`` is the paper's value (BYOL and DINO: 0.996 for ImageNet runs of 10^5+ steps).
    Over T steps a cosine schedule from m₀ to 1 keeps ∏ m_t ≈ exp(−(1 − m₀)·T/2) of the random
    init in the EMA encoder: 45 % after 160 steps at m₀ = 0.99. The start is therefore
    ``min(long_run, 1 − 2·5/T)``, so that at most :data:`EMA_INIT_RESIDUE` (e^-5) of the init
    is left at the end: the paper's value for any run longer than 2 500 steps, 0.9375 at 160
    steps, 0.967 at 300, 0.64 at 28 (the teacher then follows the student closely).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    return min(long_run, 1.0 - 2.0 * -math.log(EMA_INIT_RESIDUE) / max_steps)


def frozen_steps(fraction: float, max_steps: int) -> int:
    """Steps a freeze lasts when it is a share of the run (SwAV's prototypes, DINO's last
    layer): ``ceil(fraction * max_steps)``, at least one step for any fraction > 0."""
    return math.ceil(fraction * max_steps)


def momentum_copy(module: nn.Module, factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """A frozen twin with the same weights, for a momentum (EMA) encoder (MoCo, BYOL, DINO).

    ``factory`` builds a fresh instance for modules that cannot be deep-copied (a
    ``weight_norm`` layer, as in DINO's head, holds a non-leaf weight tensor).
    """
    from lightly.models.utils import deactivate_requires_grad

    if factory is None:
        twin = copy.deepcopy(module)
    else:
        twin = factory()
        twin.load_state_dict(module.state_dict())
    deactivate_requires_grad(twin)
    return twin


@dataclass(frozen=True)
class MethodSpec:
    """A registry row: how to build the method, its views and its optimiser.

    Every curriculum stage trains with its own method's ``optim`` (LR scaled to the run's
    batch size, times ``PretrainConfig.lr_scale``).
    """

    name: str
    build: Callable[[Backbone], SSLMethod]
    recipe: AugmentRecipe
    optim: OptimRecipe
    reference: str
    family: str  # "contrastive" | "distillation" | "redundancy" | "clustering" | "masked"

    @property
    def n_views(self) -> int:
        return self.recipe.n_views
