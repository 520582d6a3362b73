"""Data-parallel pretraining (DDP) on 2 CPU processes with the gloo backend.

The collectives of the SSL losses (medstudy.ssl.distributed) are checked against the
single-process computation on the concatenated batch; one tiny SimCLR job runs through
``pretrain()`` with ``devices=2`` (Lightning's fork launcher) and is checked for single writes,
a finite loss, negatives from both ranks and identical weights on both ranks. Only CPU/gloo is
tested here: never a GPU, NCCL or several nodes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightly.loss import BarlowTwinsLoss, NTXentLoss
from torch import nn
from torch.nn import functional as F

from medstudy.config import ConfigError, PretrainConfig, TransferConfig
from medstudy.models import create_backbone, load_checkpoint
from medstudy.pretrain import distributed as pdist
from medstudy.pretrain import module as pmodule
from medstudy.pretrain import pretrain
from medstudy.pretrain.module import _EpochPermutation
from medstudy.ssl import distributed as sdist
from medstudy.ssl import simclr
from medstudy.ssl.barlowtwins import BarlowTwins
from medstudy.ssl.mocov2 import PROJECTION_DIM, MoCoV2
from medstudy.ssl.simclr import SimCLR
from medstudy.ssl.spark import _sparse_batch_norm, sparse_mode

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

WORLD = 2
N = 4  # images per rank
DIM = 16


# ------------------------------------------------------------------------------ harness ----
def _worker(rank: int, tmp: str, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD)
    try:
        fn(rank, Path(tmp), *args)
    finally:
        dist.destroy_process_group()


def _on_ranks(tmp: Path, fn: Callable[..., None], *args: Any) -> list[dict[str, Any]]:
    """Run ``fn(rank, tmp, *args)`` in WORLD forked processes joined by a gloo group; each
    saves its outputs to ``tmp/out<rank>.pt``, returned in rank order."""
    mp.start_processes(_worker, args=(str(tmp), fn, args), nprocs=WORLD, start_method="fork")
    return [torch.load(tmp / f"out{r}.pt", weights_only=False) for r in range(WORLD)]


def _embeddings(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(WORLD * N, DIM, generator=g), torch.randn(WORLD * N, DIM, generator=g)


def _identity_heads(method: nn.Module) -> nn.Module:
    """The method's loss path on given embeddings (backbone and heads replaced by identities;
    the per-device BatchNorm of a real backbone would make the two computations differ)."""
    for name in ("backbone", "projection_head", "key_backbone", "key_projection_head"):
        if hasattr(method, name):
            setattr(method, name, nn.Identity())
    return method


# ---------------------------------------------------- losses of the global batch --------
def _method_loss_rank(rank: int, tmp: Path, name: str) -> None:
    z0_all, z1_all = _embeddings()
    mine = slice(rank * N, (rank + 1) * N)
    z0, z1 = (z[mine].clone().requires_grad_() for z in (z0_all, z1_all))
    backbone = create_backbone("resnet20_cifar")
    method = _identity_heads(SimCLR(backbone) if name == "simclr" else BarlowTwins(backbone))
    loss = method.training_step([z0, z1], None)  # type: ignore[arg-type]
    loss.backward()
    torch.save({"loss": loss.detach(), "g0": z0.grad, "g1": z1.grad}, tmp / f"out{rank}.pt")


@pytest.mark.parametrize("name", ["simclr", "barlowtwins"])
def test_global_loss_equals_the_single_process_loss_on_the_concatenated_batch(
    name: str, tmp_path: Path
) -> None:
    outs = _on_ranks(tmp_path, _method_loss_rank, name)
    z0_all, z1_all = (z.clone().requires_grad_() for z in _embeddings())
    criterion = NTXentLoss(temperature=0.5) if name == "simclr" else BarlowTwinsLoss(5e-3)
    single = criterion(z0_all, z1_all)
    single.backward()
    for rank, out in enumerate(outs):
        # every rank computes the loss of the whole global batch ...
        assert torch.allclose(out["loss"], single.detach(), rtol=1e-5, atol=1e-5)
        # ... and its embeddings get W x the single-process gradient, which DDP's mean over
        # the W ranks turns into exactly that gradient
        mine = slice(rank * N, (rank + 1) * N)
        assert torch.allclose(out["g0"] / WORLD, z0_all.grad[mine], atol=1e-6)  # type: ignore[index]
        assert torch.allclose(out["g1"] / WORLD, z1_all.grad[mine], atol=1e-6)  # type: ignore[index]
    # and the per-rank loss differs from a loss of the local batch alone
    local = criterion(z0_all[:N].detach(), z1_all[:N].detach())
    assert not torch.allclose(outs[0]["loss"], local)


# ---------------------------------------------------------------------- MoCo's queue -----
def _moco_rank(rank: int, tmp: Path) -> None:
    g = torch.Generator().manual_seed(1)
    q_all, k_all = torch.randn(2, WORLD * N, PROJECTION_DIM, generator=g)
    mine = slice(rank * N, (rank + 1) * N)
    torch.manual_seed(5)  # lightly draws the initial queue from the global RNG
    method = _identity_heads(MoCoV2(create_backbone("resnet20_cifar"), queue_size=32))
    bank0 = method.criterion.memory_bank.bank.clone()
    loss = method.training_step([q_all[mine].clone().requires_grad_(), k_all[mine]], None)  # type: ignore[arg-type]
    out = {"bank0": bank0, "bank": method.criterion.memory_bank.bank.clone(), "loss": loss}
    torch.save({k: v.detach() for k, v in out.items()}, tmp / f"out{rank}.pt")


def test_moco_queue_holds_the_keys_of_every_rank_and_is_the_same_on_all(tmp_path: Path) -> None:
    outs = _on_ranks(tmp_path, _moco_rank)
    g = torch.Generator().manual_seed(1)
    _, k_all = torch.randn(2, WORLD * N, PROJECTION_DIM, generator=g)
    for out in outs:
        # one step enqueued the W x N keys of both ranks, in rank order, normalised ...
        assert torch.allclose(out["bank"][: WORLD * N], F.normalize(k_all, dim=1), atol=1e-6)
        # ... and left the rest of the queue as it was
        assert torch.equal(out["bank"][WORLD * N :], out["bank0"][WORLD * N :])
        assert math.isfinite(float(out["loss"]))
    assert torch.equal(outs[0]["bank"], outs[1]["bank"])


# ------------------------------------------------------------- SparK's sparse BN -----
def _bn_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(WORLD * N, 3, 4, 4, generator=g) * 2 + 1
    mask = (torch.rand(WORLD * N, 1, 4, 4, generator=g) < 0.5).float()
    w = torch.randn(x.shape, generator=g)  # a loss weighting the outputs
    affine = torch.randn(2, 3, generator=g)
    return x, mask, w, affine


def _bn(cls: type[nn.Module], affine: torch.Tensor) -> nn.Module:
    bn = cls(3)
    with torch.no_grad():
        bn.weight.copy_(affine[0])  # type: ignore[operator]
        bn.bias.copy_(affine[1])  # type: ignore[operator]
    return bn


def _sparse_bn_rank(rank: int, tmp: Path) -> None:
    x_all, mask_all, w_all, affine = _bn_data()
    mine = slice(rank * N, (rank + 1) * N)
    x = x_all[mine].clone().requires_grad_()
    bn = _bn(nn.SyncBatchNorm, affine)
    out = _sparse_batch_norm(bn, x, mask_all[mine])  # type: ignore[arg-type]
    (out * w_all[mine]).sum().backward()
    # sparse_mode patches the SyncBatchNorm layers DDP's conversion makes
    net = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))
    with sparse_mode(net, torch.ones(1, 1, 1, 1)):
        patched = "forward" in vars(net[0])
    saved = {"out": out, "grad": x.grad, "mean": bn.running_mean, "var": bn.running_var}
    saved = {k: v.detach() for k, v in saved.items()}  # type: ignore[union-attr]
    torch.save({**saved, "wgrad": bn.weight.grad, "patched": patched}, tmp / f"out{rank}.pt")


def test_spark_sparse_batch_norm_under_sync_bn_uses_the_union_of_the_ranks(
    tmp_path: Path,
) -> None:
    outs = _on_ranks(tmp_path, _sparse_bn_rank)
    x_all, mask_all, w_all, affine = _bn_data()
    x_all.requires_grad_()
    bn = _bn(nn.BatchNorm2d, affine)
    single = _sparse_batch_norm(bn, x_all, mask_all)  # type: ignore[arg-type]
    (single * w_all).sum().backward()
    for rank, out in enumerate(outs):
        mine = slice(rank * N, (rank + 1) * N)
        assert torch.allclose(out["out"], single[mine].detach(), atol=1e-5)
        assert torch.allclose(out["grad"], x_all.grad[mine], atol=1e-5)  # type: ignore[index]
        assert torch.allclose(out["mean"], bn.running_mean, atol=1e-6)  # type: ignore[arg-type]
        assert torch.allclose(out["var"], bn.running_var, atol=1e-5)  # type: ignore[arg-type]
        assert out["patched"]
    wgrad = sum(out["wgrad"] for out in outs)
    assert torch.allclose(wgrad, bn.weight.grad, atol=1e-4)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ the sampler -----
def test_ranks_take_disjoint_shards_of_the_single_process_batches() -> None:
    n, batch = 23, 3
    single = _EpochPermutation(n, seed=0, stage=1)
    single.set_epoch(2)
    order = single.indices(0)
    shards = []
    for rank in range(WORLD):
        s = _EpochPermutation(n, seed=0, stage=1, batch=batch, world=WORLD)
        s.set_epoch(2)
        shards.append(s.indices(rank))
        assert len(shards[-1]) == len(s) == n // (WORLD * batch) * batch
    assert not set(shards[0]) & set(shards[1])
    # step s of the ranks together is the single-process run's global batch s
    steps = n // (WORLD * batch)
    for step in range(steps):
        together = [i for sh in shards for i in sh[step * batch : (step + 1) * batch]]
        assert together == order[step * WORLD * batch : (step + 1) * WORLD * batch]


# ------------------------------------------------------------------- config and launch -----
def test_parallel_fields_leave_existing_run_ids_alone_and_enter_the_id_when_set() -> None:
    default = PretrainConfig()
    assert not {"devices", "num_nodes", "sync_batchnorm"} & set(default.identity())
    two = PretrainConfig(devices=2)
    assert two.identity()["devices"] == 2 and two.identity() != default.identity()
    transfer = TransferConfig()
    assert not {k for k in transfer.identity() if k.startswith("pretrain_")} & {
        "pretrain_devices",
        "pretrain_num_nodes",
        "pretrain_sync_batchnorm",
    }
    # notebooks 02/03 find the encoder of a DDP run: the mirror reaches the pretrain config
    pre = TransferConfig(pretrain_devices=2).pretrain_config("ssl:simclr")
    assert pre.identity() == PretrainConfig(devices=2).identity()


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({"devices": 0}, r"parameter 'devices' must be an int >= 1, got 0"),
        ({"num_nodes": -1}, r"parameter 'num_nodes' must be an int >= 1, got -1"),
        ({"devices": 3}, r"parameter 'batch_size'=256 .* multiple of devices x num_nodes = 3"),
        ({"sync_batchnorm": True}, r"'sync_batchnorm'=True needs several processes"),
        ({"devices": 2, "sync_batchnorm": True}, r"'sync_batchnorm'=True needs device 'cuda'"),
        ({"devices": True}, r"parameter 'devices' must be an int"),
        # not runnable in this version, refused before any work (config/base.validate_parallel)
        ({"devices": 2, "device": "cuda"}, r"'devices'=2 with device 'cuda': multi-GPU DDP is not"),
        ({"devices": 2, "device": "auto"}, r"'devices'=2 with device 'auto': multi-GPU DDP is not"),
        ({"num_nodes": 2}, r"'num_nodes'=2: multi-node runs need an external launcher"),
    ],
)
def test_bad_parallel_values_name_the_parameter(params: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        PretrainConfig.from_params(**params)


def test_bad_transfer_mirror_names_its_parameter() -> None:
    with pytest.raises(ConfigError, match=r"'pretrain_devices' must be an int >= 1"):
        TransferConfig.from_params(pretrain_devices=0)


def test_launch_options_single_and_forked_cpu() -> None:
    cpu = torch.device("cpu")
    one = pdist.trainer_options(PretrainConfig(), cpu)
    assert one["devices"] == 1 and "strategy" not in one
    two = pdist.trainer_options(PretrainConfig(devices=2), cpu)
    assert two["devices"] == 2 and two["strategy"]._start_method == "fork"


# ------------------------------------------------------------------ one real DDP job -----
class _RecordWeights(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = pl_module.method.backbone.state_dict()  # type: ignore[union-attr]
        torch.save(state, self.out / f"weights{trainer.global_rank}.pt")


def test_two_process_simclr_job_writes_once_and_trains_on_both_ranks_negatives(
    tmp_path: Path, results_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    gather, write_history = sdist.gather, pmodule._write_history
    calls: list[int] = []  # per process (forked): the gathers of this rank

    def recording_gather(x: torch.Tensor) -> torch.Tensor:
        out = gather(x)
        if len(calls) < 2:  # step 0's two views
            torch.save({"local": x.detach(), "gathered": out.detach()},
                       rec / f"gather_r{sdist.rank()}_{len(calls)}.pt")  # fmt: skip
        calls.append(1)
        return out

    def recording_write_history(path: Path, rows: list[dict[str, Any]]) -> None:
        with open(rec / "history_writes.txt", "a") as f:
            f.write(f"{sdist.rank()} {os.getpid()}\n")
        write_history(path, rows)

    monkeypatch.setattr(simclr, "gather", recording_gather)
    monkeypatch.setattr(pmodule, "_write_history", recording_write_history)
    cfg = PretrainConfig(
        dataset="synth_lesions", arm="ssl:simclr", max_train=48, epochs=1, batch_size=8,
        devices=2,
    )  # fmt: skip
    result = pretrain(cfg, progress=False, callbacks=[_RecordWeights(rec)])

    # one run folder, one DONE, one row per metric and per epoch
    runs = list((results_tmp / "pretrain").iterdir())
    assert runs == [result.run_dir]
    assert len(list(results_tmp.rglob("DONE"))) == 1
    metrics = pd.read_csv(result.run_dir / "metrics.csv")
    assert sorted(metrics["metric"]) == ["knn_acc", "loss"]
    history = pd.read_csv(result.run_dir / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    assert history["step"].iloc[-1] == 48 // 8  # global batches of 8: 4 images per rank
    assert json.loads((result.run_dir / "config.json").read_text())["devices"] == 2
    assert json.loads((result.run_dir / "manifest.json").read_text())["run_id"] == result.run_id
    # inside fit only rank 0 wrote history.csv (once per epoch), and it is what was returned
    writers = (rec / "history_writes.txt").read_text().split()
    assert writers[0::2] == ["0"] and len(writers) == 2
    assert result.history["loss"].tolist()[1:] == history["loss"].tolist()[1:]
    assert math.isfinite(result.metrics["loss"]) and math.isfinite(history["loss"].iloc[-1])

    # the loss of each rank saw the embeddings of both ranks: 2 x 4 rows per view, the
    # local ones of rank r at rows 4r..4r+3, the same gathered tensor on both ranks
    for view in range(2):
        got = [torch.load(rec / f"gather_r{r}_{view}.pt") for r in range(WORLD)]
        local = torch.cat([g["local"] for g in got])
        assert got[0]["local"].shape[0] == N
        for g in got:
            assert g["gathered"].shape[0] == WORLD * N
            assert torch.allclose(g["gathered"], local)

    # every rank ended with the same trained parameters, and encoder.pt holds them
    weights = [torch.load(rec / f"weights{r}.pt") for r in range(WORLD)]
    backbone = create_backbone(cfg.backbone)
    load_checkpoint(backbone, result.checkpoint)
    saved = backbone.state_dict()
    params = {name for name, _ in backbone.named_parameters()}
    for name in params:
        assert torch.equal(weights[0][name], weights[1][name]), name
        assert torch.equal(weights[0][name], saved[name]), name
    # (BatchNorm running statistics are per rank; encoder.pt has rank 0's)
    assert all(torch.equal(weights[0][k], saved[k]) for k in saved)
    # and a second call loads the finished run
    assert pretrain(cfg, progress=False).cached
