"""DINO: self-distillation with no labels, multi-crop (Caron et al. 2021, ICCV,
arXiv:2104.14294).

The student (backbone + lightly's ``DINOProjectionHead``) sees every crop of the recipe (2
global crops at 28 px; no local crops, as in lightly's CIFAR-10 benchmark); the teacher, its
momentum average, sees the 2 global crops; lightly's ``DINOLoss`` (centering + sharpening;
teacher temperature 0.04, student 0.1). ResNet settings from the authors' README: batch-norm in
the head, the last layer frozen during the first epoch of 100, i.e. the first 1 % of the steps
(:data:`FREEZE_FRACTION`, counted in steps so that a 1-epoch run or a ``dino:1`` curriculum
stage still trains it). The teacher's momentum follows ``cosine_schedule`` to 1 from
:func:`~medstudy.ssl.base.ema_momentum_start` (the paper's 0.996 for runs over 2 500 steps,
lower for shorter ones, so that the teacher keeps < 1 % of the random init). As in the paper,
the kept encoder is the teacher.
"""

from __future__ import annotations

import warnings

import torch
from lightly.loss import DINOLoss
from lightly.models.modules.heads import DINOProjectionHead
from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule

from medstudy.augment import DINO as DINO_RECIPE
from medstudy.models import Backbone
from medstudy.ssl.base import (
    LIGHTLY_CIFAR10_SGD,
    MethodSpec,
    SSLMethod,
    StepContext,
    ema_momentum_start,
    frozen_steps,
    momentum_copy,
)

N_GLOBAL = 2
OUTPUT_DIM = 1024
FREEZE_FRACTION = 0.01  # the last layer is frozen for the first 1 % of the steps (1 epoch of 100)
MOMENTUM_LONG_RUN = 0.996  # the paper's teacher momentum start (ImageNet)


class DINO(SSLMethod):
    def __init__(self, backbone: Backbone, momentum_long_run: float = MOMENTUM_LONG_RUN) -> None:
        super().__init__(backbone)
        self.momentum_long_run = momentum_long_run

        def make_head() -> DINOProjectionHead:
            # lightly's head uses the old ``nn.utils.weight_norm`` (FutureWarning in torch 2.x);
            # the parametrisation is the same, so the warning is noise here.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return DINOProjectionHead(
                    backbone.feature_dim,
                    512,
                    128,
                    OUTPUT_DIM,
                    batch_norm=True,
                    freeze_last_layer=-1,
                )

        self.projection_head = make_head()
        self.teacher_backbone = momentum_copy(self.backbone)
        self.teacher_projection_head = momentum_copy(self.projection_head, make_head)
        self.criterion = DINOLoss(output_dim=OUTPUT_DIM, teacher_temp=0.04, student_temp=0.1)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> torch.Tensor:
        globals_ = torch.cat(views[:N_GLOBAL])
        with torch.no_grad():
            teacher = self.teacher_projection_head(self.teacher_backbone(globals_))
        student = [self.projection_head(self.backbone(globals_))]
        if len(views) > N_GLOBAL:
            student.append(self.projection_head(self.backbone(torch.cat(views[N_GLOBAL:]))))
        return self.criterion(
            list(teacher.chunk(N_GLOBAL)),
            list(torch.cat(student).chunk(len(views))),
            teacher_temp=0.04,
        )

    def on_after_backward(self, ctx: StepContext) -> None:
        if ctx.step < frozen_steps(FREEZE_FRACTION, ctx.max_steps):
            for p in self.projection_head.last_layer.parameters():
                p.grad = None

    def on_step_end(self, ctx: StepContext) -> None:
        start = ema_momentum_start(ctx.max_steps, self.momentum_long_run)
        m = cosine_schedule(ctx.step, ctx.max_steps, start, 1.0)
        update_momentum(self.backbone, self.teacher_backbone, m=m)
        update_momentum(self.projection_head, self.teacher_projection_head, m=m)

    def encoder(self) -> Backbone:
        return self.teacher_backbone  # type: ignore[return-value]


SPEC = MethodSpec(
    name="dino",
    build=DINO,
    recipe=DINO_RECIPE,
    optim=LIGHTLY_CIFAR10_SGD,
    reference="Caron et al. 2021, Emerging Properties in Self-Supervised Vision Transformers, ICCV",
    family="distillation",
)
