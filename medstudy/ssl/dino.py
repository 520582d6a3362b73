"""DINO: self-distillation with no labels, multi-crop (Caron et al. 2021, ICCV,
arXiv:2104.14294).

The student (backbone + lightly's ``DINOProjectionHead``) sees all crops (2 global 28 px + 4
local 12 px); the teacher, its momentum average, sees the 2 global crops; lightly's ``DINOLoss``
(centering + sharpening; teacher temperature 0.04, student 0.1). ResNet settings from the
authors' README: batch-norm in the head, the last layer frozen during the first epoch. The
teacher's momentum follows ``cosine_schedule`` from 0.99 to 1 (0.996 for ImageNet-length runs).
As in the paper, the kept encoder is the teacher.
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
from medstudy.ssl.base import MethodSpec, SSLMethod, StepContext, momentum_copy

N_GLOBAL = 2
OUTPUT_DIM = 1024


class DINO(SSLMethod):
    def __init__(self, backbone: Backbone, momentum_start: float = 0.99) -> None:
        super().__init__(backbone)
        self.momentum_start = momentum_start

        def make_head() -> DINOProjectionHead:
            # lightly's head uses the old ``nn.utils.weight_norm`` (FutureWarning in torch 2.x);
            # the parametrisation is the same, so the warning is noise here.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return DINOProjectionHead(
                    backbone.feature_dim, 512, 128, OUTPUT_DIM, batch_norm=True, freeze_last_layer=1
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
        self.projection_head.cancel_last_layer_gradients(ctx.epoch)

    def on_step_end(self, ctx: StepContext) -> None:
        m = cosine_schedule(ctx.step, ctx.max_steps, self.momentum_start, 1.0)
        update_momentum(self.backbone, self.teacher_backbone, m=m)
        update_momentum(self.projection_head, self.teacher_projection_head, m=m)

    def encoder(self) -> Backbone:
        return self.teacher_backbone  # type: ignore[return-value]


SPEC = MethodSpec(
    name="dino",
    build=DINO,
    recipe=DINO_RECIPE,
    default_lr=0.06,
    optimizer="sgd",
    reference="Caron et al. 2021, Emerging Properties in Self-Supervised Vision Transformers, ICCV",
    family="distillation",
)
