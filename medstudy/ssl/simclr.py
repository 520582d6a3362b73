"""SimCLR: contrastive learning with in-batch negatives (Chen et al. 2020, ICML,
arXiv:2002.05709).

Two views per image, a 2-layer MLP projection and the NT-Xent loss over the 2N views; lightly's
``SimCLRProjectionHead`` and ``NTXentLoss``. Sizes follow lightly's CIFAR-10 benchmark (hidden
512, output 128, temperature 0.5), the setting closest to 28–32 px images. Under DDP the
negatives are those of the global batch (:mod:`medstudy.ssl.distributed`).
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import SimCLRProjectionHead

from medstudy.augment import SIMCLR
from medstudy.models import Backbone
from medstudy.ssl.base import LIGHTLY_CIFAR10_SGD, MethodSpec, SSLMethod, StepContext
from medstudy.ssl.distributed import gather


class SimCLR(SSLMethod):
    def __init__(self, backbone: Backbone, temperature: float = 0.5) -> None:
        super().__init__(backbone)
        self.projection_head = SimCLRProjectionHead(backbone.feature_dim, 512, 128)
        self.criterion = NTXentLoss(temperature=temperature)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> torch.Tensor:
        # One backbone pass over both views: BatchNorm sees 2N images, as in the paper.
        z0, z1 = self.projection_head(self.backbone(torch.cat(views))).chunk(2)
        # Under DDP: the global batch's 2·W·N views (medstudy.ssl.distributed)
        return self.criterion(gather(z0), gather(z1))


SPEC = MethodSpec(
    name="simclr",
    build=SimCLR,
    recipe=SIMCLR,
    optim=LIGHTLY_CIFAR10_SGD,
    reference="Chen et al. 2020, A Simple Framework for Contrastive Learning, ICML",
    family="contrastive",
)
