"""MoCo v2: contrastive learning against a queue of momentum-encoded keys (He et al. 2020,
CVPR, arXiv:1911.05722; Chen et al. 2020, arXiv:2003.04297).

The query encoder (backbone + 2-layer MLP head, lightly's ``MoCoProjectionHead``) is trained; the
key encoder is its exponential moving average (``update_momentum``); negatives come from a
memory queue, lightly's ``NTXentLoss(memory_bank_size=...)``. As in the paper the loss is
asymmetric: query from view 0, key from view 1.

Small-data settings (lightly's CIFAR-10 benchmark): queue 4096, temperature 0.1 (0.2 in the
paper), momentum 0.99 (0.999 for ImageNet's 5000 steps per epoch).
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import MoCoProjectionHead
from lightly.models.utils import update_momentum

from medstudy.augment import MOCOV2
from medstudy.models import Backbone
from medstudy.ssl.base import LIGHTLY_CIFAR10_SGD, MethodSpec, SSLMethod, StepContext, momentum_copy

QUEUE_SIZE = 4096
PROJECTION_DIM = 128


class MoCoV2(SSLMethod):
    def __init__(
        self,
        backbone: Backbone,
        queue_size: int = QUEUE_SIZE,
        temperature: float = 0.1,
        momentum: float = 0.99,
    ) -> None:
        super().__init__(backbone)
        self.momentum = momentum
        self.projection_head = MoCoProjectionHead(backbone.feature_dim, 512, PROJECTION_DIM)
        self.key_backbone = momentum_copy(self.backbone)
        self.key_projection_head = momentum_copy(self.projection_head)
        self.criterion = NTXentLoss(
            # under DDP the keys of every rank enter the queue (identical on all ranks)
            temperature=temperature,
            memory_bank_size=(queue_size, PROJECTION_DIM),
            gather_distributed=True,
        )

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> torch.Tensor:
        query = self.projection_head(self.backbone(views[0]))
        # MoCo's shuffle-BN only matters across GPUs (per-device BN statistics); on one device
        # the key batch's BN statistics do not depend on the order, so it is omitted. Under DDP
        # it is not implemented either: each rank's keys use that rank's BN statistics (or the
        # global batch's with sync_batchnorm), see medstudy.ssl.distributed.
        with torch.no_grad():
            key = self.key_projection_head(self.key_backbone(views[1]))
        return self.criterion(query, key)

    def on_step_end(self, ctx: StepContext) -> None:
        update_momentum(self.backbone, self.key_backbone, m=self.momentum)
        update_momentum(self.projection_head, self.key_projection_head, m=self.momentum)


SPEC = MethodSpec(
    name="mocov2",
    build=MoCoV2,
    recipe=MOCOV2,
    optim=LIGHTLY_CIFAR10_SGD,
    reference="Chen et al. 2020, Improved Baselines with Momentum Contrastive Learning",
    family="contrastive",
)
