"""Data-parallel pretraining (Lightning DDP): how the ranks are started, and who writes.

``PretrainConfig.devices`` x ``num_nodes`` processes train one run; ``batch_size`` is the global
batch, each rank taking its 1/world share of every step (``module._EpochPermutation``), so the
run sees the same images per step, the same LR and the same number of steps as on one device.
What the SSL losses exchange between ranks is described in :mod:`medstudy.ssl.distributed`.

Two ways to start the ranks:

- **one process asks for N devices** (a notebook, papermill, a script; one node): Lightning's
  fork launcher (``ddp_notebook`` / ``ddp_fork``) forks N workers for ``trainer.fit`` only —
  the ``ddp`` strategy's launcher re-runs ``sys.argv``, which a Jupyter kernel cannot. Only
  ``fit`` runs in the workers: the parent process alone writes the run folder (config,
  manifest, metrics, DONE, encoder); inside ``fit`` rank 0 alone writes ``history.csv`` and
  the resume checkpoint, and the parent takes rank 0's weights back (Lightning's launcher) and
  its history (from that checkpoint).
- **an external launcher started one process per device** (``torchrun``, ``srun``): every
  process runs the whole ``pretrain()``; rank 0 owns the run folder and the others write
  nothing (:func:`launch_rank`, :func:`medstudy.pretrain.pretrain`).

Backend: NCCL on GPU, gloo on CPU (the tests run 2 CPU processes with gloo). Buffers are not
broadcast from rank 0 at each step (DDP ``forward_sync_buffers=False``; they are at init): every buffer that must agree
between ranks is made to agree by its own collective (MoCo's queue, DINO's centre), and SwAV
keeps a queue per rank. BatchNorm running statistics are then per rank (rank 0's are saved),
unless ``sync_batchnorm`` (GPU only) makes them global.
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


def launch_rank(cfg: PretrainConfig) -> int:
    """This process's global rank under an external launcher (0 for every other launch),
    checked against the config: the launcher must start exactly ``devices x num_nodes``
    processes, ``devices`` per node."""
    env = external_environment()
    if env is None:
        return 0
    if env.world_size() != world(cfg):
        raise ValueError(
            f"the launcher started {env.world_size()} processes but the config asks for "
            f"devices x num_nodes = {cfg.devices} x {cfg.num_nodes} = {world(cfg)}; set "
            "'devices' to the processes per node and 'num_nodes' to the nodes"
        )
    return env.global_rank()


def trainer_options(cfg: PretrainConfig, device: torch.device) -> dict[str, Any]:
    """The ``L.Trainer`` arguments that place the run on its device(s) and ranks."""
    accelerator = "cpu" if device.type == "cpu" else "gpu"
    base = {"accelerator": accelerator, "use_distributed_sampler": False}
    if world(cfg) == 1:
        return {**base, "devices": 1, "num_nodes": 1}
    if cfg.sync_batchnorm and device.type != "cuda":
        raise ValueError(
            f"sync_batchnorm=True needs a GPU (device resolved to {device.type!r}): torch's "
            "DistributedDataParallel refuses SyncBatchNorm on CPU"
        )
    env = external_environment()
    if env is None and cfg.num_nodes > 1:
        raise ValueError(
            f"num_nodes={cfg.num_nodes}: a multi-node run needs one process per device started "
            "by a launcher (srun, or torchrun on every node); see README 'Multi-GPU (DDP)'"
        )
    strategy = DDPStrategy(
        # under a launcher the processes exist already (Lightning's "popen" launcher then
        # starts nothing); else fork the workers (works in a Jupyter kernel, unlike popen)
        cluster_environment=env or LightningEnvironment(),
        start_method="popen" if env is not None else "fork",
        process_group_backend="nccl" if device.type == "cuda" else "gloo",
        forward_sync_buffers=False,  # (buffers are synced once, at init)
    )
    return {
        **base,
        "devices": cfg.devices,
        "num_nodes": cfg.num_nodes,
        "strategy": strategy,
        "sync_batchnorm": cfg.sync_batchnorm,
    }
