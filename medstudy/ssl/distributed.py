"""Collectives the SSL losses use under data-parallel training (DDP); no-ops in one process.

Every rank computes the loss of the *global* batch from embeddings gathered with
:func:`gather` (lightly's ``GatherLayer``: ``all_gather`` forward, ``all_reduce`` sum of the
gradients backward, then the local slice). With W ranks each computing the same global loss L,
the local embeddings receive W·∂L/∂z and DDP's gradient mean divides by W: the parameters get
exactly ∇L, the gradient of the single-process loss on the concatenated batch (the per-device
BatchNorm statistics aside). The loss value each rank logs is then the global loss.

What each method exchanges (:mod:`medstudy.pretrain.distributed` launches the ranks):

- SimCLR: both views' projections are gathered; every view is contrasted against all
  2·W·N − 2 others (the paper's global negatives).
- MoCo v2: the queue is filled with the keys of all ranks (lightly's
  ``MemoryBankModule(gather_distributed=True)``: ``concat_all_gather`` before the enqueue), so
  every rank holds the same queue, as in the MoCo paper. Queries see their own rank's
  positive key. MoCo's shuffle-BN is not implemented: the key encoder's BatchNorm uses each
  rank's own N keys (or the global batch with ``sync_batchnorm``).
- Barlow Twins: both views' projections are gathered, so the batch standardisation and the
  cross-correlation matrix are over the global batch.
- SwAV: Sinkhorn-Knopp normalises over all ranks (lightly's
  ``sinkhorn_gather_distributed``: ``all_reduce`` of the code sums); each rank keeps a queue of
  its own projections, as SwAV's code does.
- DINO: lightly's centre update already averages the teacher outputs over ranks.
- BYOL and SparK: per-sample losses; DDP's gradient mean is the global mean. SparK's sparse
  BatchNorm uses the global visible positions when BatchNorm is synchronised
  (:func:`all_reduce_sum`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.utils.dist import gather as _lightly_gather


def world_size() -> int:
    """Number of processes of the current process group (1 outside DDP)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside DDP)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank, concatenated in rank order along dim 0; gradients flow back to each
    rank's own slice (summed over the ranks' losses). ``x`` itself outside DDP."""
    if world_size() == 1:
        return x
    return torch.cat(_lightly_gather(x.contiguous()), dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over the ranks, differentiable (the backward pass sums the gradients of
    every rank's loss, as torch's SyncBatchNorm does). ``x`` itself outside DDP."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x, op=dist.ReduceOp.SUM)
