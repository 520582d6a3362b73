"""Barlow Twins: make the cross-correlation of two views' embeddings the identity (Zbontar et
al. 2021, ICML, arXiv:2103.03230).

lightly's ``BarlowTwinsProjectionHead`` (3 layers; 1024 wide instead of 8192, for a 64-d
ResNet-20 feature) and ``BarlowTwinsLoss`` (lambda 5e-3, the paper's value). Each view has its
own backbone pass, so batch norm sees N images per view, as in the paper and lightly's
benchmark.
"""

from __future__ import annotations

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules.heads import BarlowTwinsProjectionHead

from medstudy.augment import BARLOWTWINS
from medstudy.models import Backbone
from medstudy.ssl.base import LIGHTLY_CIFAR10_SGD, MethodSpec, SSLMethod, StepContext
from medstudy.ssl.distributed import gather


class BarlowTwins(SSLMethod):
    def __init__(self, backbone: Backbone, width: int = 1024) -> None:
        super().__init__(backbone)
        self.projection_head = BarlowTwinsProjectionHead(backbone.feature_dim, width, width)
        self.criterion = BarlowTwinsLoss(lambda_param=5e-3)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> torch.Tensor:
        z0, z1 = (self.projection_head(self.backbone(v)) for v in views[:2])
        # Under DDP: standardisation and cross-correlation over the global batch
        return self.criterion(gather(z0), gather(z1))


SPEC = MethodSpec(
    name="barlowtwins",
    build=BarlowTwins,
    recipe=BARLOWTWINS,
    optim=LIGHTLY_CIFAR10_SGD,
    reference="Zbontar et al. 2021, Barlow Twins: Self-Supervised Learning via Redundancy "
    "Reduction, ICML",
    family="redundancy",
)
