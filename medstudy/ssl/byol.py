"""BYOL: an online network predicts a momentum target's projection of another view, no
negatives (Grill et al. 2020, NeurIPS, arXiv:2006.07733).

lightly's ``BYOLProjectionHead``/``BYOLPredictionHead`` and ``NegativeCosineSimilarity``
(symmetrised over the two views); the target's momentum follows lightly's
``cosine_schedule`` from 0.99 to 1 (0.996 in the paper, whose runs are 100× longer).
"""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule

from medstudy.augment import BYOL as BYOL_RECIPE
from medstudy.models import Backbone
from medstudy.ssl.base import MethodSpec, SSLMethod, StepContext, momentum_copy


class BYOL(SSLMethod):
    def __init__(self, backbone: Backbone, momentum_start: float = 0.99) -> None:
        super().__init__(backbone)
        self.momentum_start = momentum_start
        self.projection_head = BYOLProjectionHead(backbone.feature_dim, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.target_backbone = momentum_copy(self.backbone)
        self.target_projection_head = momentum_copy(self.projection_head)
        self.criterion = NegativeCosineSimilarity()

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> torch.Tensor:
        both = torch.cat(views[:2])
        p0, p1 = self.prediction_head(self.projection_head(self.backbone(both))).chunk(2)
        with torch.no_grad():
            z0, z1 = self.target_projection_head(self.target_backbone(both)).chunk(2)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def on_step_end(self, ctx: StepContext) -> None:
        m = cosine_schedule(ctx.step, ctx.max_steps, self.momentum_start, 1.0)
        update_momentum(self.backbone, self.target_backbone, m=m)
        update_momentum(self.projection_head, self.target_projection_head, m=m)


SPEC = MethodSpec(
    name="byol",
    build=BYOL,
    recipe=BYOL_RECIPE,
    default_lr=0.06,
    optimizer="sgd",
    reference="Grill et al. 2020, Bootstrap Your Own Latent, NeurIPS",
    family="distillation",
)
