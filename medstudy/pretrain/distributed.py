"""Data-parallel pretraining (Lightning DDP): how the ranks are started, and who writes.

``PretrainConfig.devices`` processes train one run; ``batch_size`` is the global batch, each
rank taking its 1/world share of every step (``module._EpochPermutation``), so the run sees the
same images per step, the same LR and the same number of steps as in one process. What the SSL
losses exchange between ranks is described in :mod:`medstudy.ssl.distributed`.

What runs in this version: N ranks **forked on the CPU** (gloo) from the one process that asks
for them (a notebook, papermill, a script): Lightning's fork launcher, since the ``ddp``
launcher re-runs ``sys.argv``, which a Jupyter kernel cannot. Only ``fit`` runs in the workers:
the parent alone writes the run folder (config, manifest, metrics, DONE, encoder); inside
``fit`` rank 0 alone writes ``history.csv`` and the resume checkpoint, and the parent takes
rank 0's weights back (Lightning's launcher) and its history (from that checkpoint).

Not runnable yet, and refused before any work: several ranks on a GPU (a forked child cannot
use CUDA once the parent has, and the parent does: the kNN monitor's init row), several nodes,
and processes started by torchrun/srun (each would run the whole ``pretrain()``; there is no
rank-0 gate on the run folder). ``sync_batchnorm`` is wired (SparK's sparse BN all-reduces its
sums) but needs a GPU, so it is refused with the rest.

Buffers are not broadcast from rank 0 at each step (DDP ``forward_sync_buffers=False``; they
are at init): every buffer that must agree between ranks is made to agree by its own collective
(MoCo's queue, DINO's centre), and SwAV keeps a queue per rank. BatchNorm running statistics
are per rank (rank 0's are saved).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.strategies import DDPStrategy

from medstudy.config import PretrainConfig


def world(cfg: PretrainConfig) -> int:
    """Ranks of the run: ``devices x num_nodes``."""
    return cfg.devices * cfg.num_nodes


def external_environment() -> ClusterEnvironment | None:
    """The launcher that started this process as one of several (torchrun, srun), or None."""
    if TorchElasticEnvironment.detect() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return TorchElasticEnvironment()
    if SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return SLURMEnvironment()
    return None


def trainer_options(cfg: PretrainConfig, device: torch.device) -> dict[str, Any]:
    """The ``L.Trainer`` arguments that place the run on its device(s) and ranks.

    Several ranks are forked from this process (Lightning's fork launcher, gloo): the only
    launch this version runs. ``PretrainConfig`` already refuses several ranks on a GPU and
    several nodes (:func:`medstudy.config.base.validate_parallel`); a process that torchrun or
    srun started as one of several is refused here, before ``fit``: each would run the whole
    ``pretrain()`` and write the run folder."""
    accelerator = "cpu" if device.type == "cpu" else "gpu"
    base = {"accelerator": accelerator, "use_distributed_sampler": False}
    if world(cfg) == 1:
        return {**base, "devices": 1, "num_nodes": 1}
    env = external_environment()
    if env is not None:
        raise ValueError(
            f"this process is one of {env.world_size()} started by an external launcher "
            "(torchrun/srun), which this version does not support; run one process with "
            f"devices={cfg.devices} instead"
        )
    strategy = DDPStrategy(
        # fork the workers (works in a Jupyter kernel, unlike the popen launcher, which re-runs
        # sys.argv)
        cluster_environment=LightningEnvironment(),
        start_method="fork",
        process_group_backend="gloo",
        forward_sync_buffers=False,  # (buffers are synced once, at init)
    )
    return {**base, "devices": cfg.devices, "num_nodes": 1, "strategy": strategy}
