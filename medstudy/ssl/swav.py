"""SwAV: swapped prediction of online cluster assignments, with multi-crop (Caron et al. 2020,
NeurIPS, arXiv:2006.09882).

lightly's ``SwaVProjectionHead``, ``SwaVPrototypes`` and ``SwaVLoss`` (Sinkhorn-Knopp codes,
temperature 0.1, epsilon 0.05, 3 iterations). Two 28 px global crops (:data:`medstudy.augment.SWAV`,
no local crops at 28 px, as in lightly's CIFAR-10 benchmark); codes are computed from the global
crops only, and local crops, when a recipe has them (views 3+), are predicted too.

Small batches (<= 256) make Sinkhorn's equipartition over one batch too coarse, so, as the paper
(App. A.6), lightly's queue example and its ImageNet benchmark do (its CIFAR-10 benchmark has
no queue), the codes are computed over the batch plus a queue of
earlier global-crop projections (``MemoryBankModule``), from ``queue_start_epoch`` on and once the
queue holds real projections. Prototypes are frozen for the first 5 % of steps (the paper
freezes them for the first epoch of 400–800).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules.heads import SwaVProjectionHead, SwaVPrototypes
from lightly.models.modules.memory_bank import MemoryBankModule
from torch import nn

from medstudy.augment import SWAV as SWAV_RECIPE
from medstudy.models import Backbone
from medstudy.ssl.base import MethodSpec, OptimRecipe, SSLMethod, StepContext, frozen_steps

N_GLOBAL = 2
PROJECTION_DIM = 128


class SwAV(SSLMethod):
    def __init__(
        self,
        backbone: Backbone,
        n_prototypes: int = 128,
        queue_size: int = 1024,
        queue_start_epoch: int = 1,
        frozen_fraction: float = 0.05,
    ) -> None:
        super().__init__(backbone)
        self.projection_head = SwaVProjectionHead(backbone.feature_dim, 512, PROJECTION_DIM)
        self.prototypes = SwaVPrototypes(PROJECTION_DIM, n_prototypes)
        # under DDP Sinkhorn normalises over every rank's codes (lightly all-reduces the sums)
        self.criterion = SwaVLoss(
            temperature=0.1,
            sinkhorn_epsilon=0.05,
            sinkhorn_iterations=3,
            sinkhorn_gather_distributed=True,
        )
        self.queue_start_epoch = queue_start_epoch
        self.frozen_fraction = frozen_fraction
        self.queues = nn.ModuleList(
            MemoryBankModule(size=(queue_size, PROJECTION_DIM), feature_dim_first=False)
            for _ in range(N_GLOBAL)
        )
        # How many real projections the queues hold (persistent, so a resumed run agrees).
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection_head(self.backbone(x)), dim=1)

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> torch.Tensor:
        self.prototypes.normalize()
        n = views[0].shape[0]
        # Same-size crops share one backbone pass (BatchNorm over all crops of a resolution).
        globals_ = self._project(torch.cat(views[:N_GLOBAL])).chunk(N_GLOBAL)
        locals_ = (
            self._project(torch.cat(views[N_GLOBAL:])).chunk(len(views) - N_GLOBAL)
            if len(views) > N_GLOBAL
            else ()
        )
        queue_logits = None
        if ctx.epoch >= self.queue_start_epoch:
            with torch.no_grad():
                banks = [q(z, update=True)[1] for q, z in zip(self.queues, globals_, strict=True)]
                if int(self.queue_filled) >= self.queues[0].size[0]:
                    queue_logits = [self.prototypes(b) for b in banks]
                self.queue_filled += n
        return self.criterion(
            high_resolution_outputs=[self.prototypes(z) for z in globals_],
            low_resolution_outputs=[self.prototypes(z) for z in locals_],
            queue_outputs=queue_logits,
        )

    def on_after_backward(self, ctx: StepContext) -> None:
        if ctx.step < frozen_steps(self.frozen_fraction, ctx.max_steps):
            for p in self.prototypes.parameters():
                p.grad = None


SPEC = MethodSpec(
    name="swav",
    build=SwAV,
    recipe=SWAV_RECIPE,
    # lightly's CIFAR-10 benchmark trains SwAV with Adam, not its SGD: the reference
    # bench_ssl_reference compares against
    optim=OptimRecipe(
        "adam",
        1e-3,
        128,
        1e-6,
        "lightly CIFAR-10 benchmark SwaVModel: Adam 1e-3 x batch/128, weight decay 1e-6",
    ),
    reference="Caron et al. 2020, Unsupervised Learning of Visual Features by Contrasting "
    "Cluster Assignments, NeurIPS",
    family="clustering",
)
