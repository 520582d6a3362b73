"""BYOL: an online network predicts a momentum target's projection of another view, no
negatives (Grill et al. 2020, NeurIPS, arXiv:2006.07733).

lightly's ``BYOLProjectionHead``/``BYOLPredictionHead`` and ``NegativeCosineSimilarity``
(symmetrised over the two views). Each view has its own backbone pass, so batch norm sees N
images per view, as in the paper and lightly's benchmark (one pass over both views would
normalise over 2N). The target's momentum follows lightly's ``cosine_schedule`` to 1 from
:func:`~medstudy.ssl.base.ema_momentum_start`: the paper's 0.996 for runs over 2 500 steps,
lower for shorter ones, so that the target keeps < 1 % of the random init by the end.
"""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule

from medstudy.augment import BYOL as BYOL_RECIPE
from medstudy.models import Backbone
from medstudy.ssl.base import (
    LIGHTLY_CIFAR10_SGD,
    MethodSpec,
    SSLMethod,
    StepContext,
    ema_momentum_start,
    momentum_copy,
)

MOMENTUM_LONG_RUN = 0.996  # the paper's target momentum start (ImageNet)


class BYOL(SSLMethod):
    def __init__(self, backbone: Backbone, momentum_long_run: float = MOMENTUM_LONG_RUN) -> None:
        super().__init__(backbone)
        self.momentum_long_run = momentum_long_run
        self.projection_head = BYOLProjectionHead(backbone.feature_dim, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.target_backbone = momentum_copy(self.backbone)
        self.target_projection_head = momentum_copy(self.projection_head)
        self.criterion = NegativeCosineSimilarity()

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> torch.Tensor:
        p0, p1 = (self.prediction_head(self.projection_head(self.backbone(v))) for v in views[:2])
        with torch.no_grad():
            z0, z1 = (self.target_projection_head(self.target_backbone(v)) for v in views[:2])
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def on_step_end(self, ctx: StepContext) -> None:
        start = ema_momentum_start(ctx.max_steps, self.momentum_long_run)
        m = cosine_schedule(ctx.step, ctx.max_steps, start, 1.0)
        update_momentum(self.backbone, self.target_backbone, m=m)
        update_momentum(self.projection_head, self.target_projection_head, m=m)


SPEC = MethodSpec(
    name="byol",
    build=BYOL,
    recipe=BYOL_RECIPE,
    optim=LIGHTLY_CIFAR10_SGD,
    reference="Grill et al. 2020, Bootstrap Your Own Latent, NeurIPS",
    family="distillation",
)
