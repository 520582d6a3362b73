"""The GPU code paths, exercised on the CPU: SparK's sparse BatchNorm under bf16 autocast, its
decoder width and mask grid by backbone, ``torch_compile``, pinned host-to-device batches, and a
device audit of a tiny pretraining + fine-tuning run under bf16 autocast (the GPU's precision).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from medstudy import pretrain as pretrain_stage
from medstudy.config import PretrainConfig, RepresentationsConfig, TransferConfig
from medstudy.data import load_split
from medstudy.data.info import INFO
from medstudy.data.tensors import MemmapImages, TensorSplit, to_device
from medstudy.models import create_backbone
from medstudy.pretrain import module as pretrain_module
from medstudy.results import config_hash
from medstudy.ssl import get_method
from medstudy.ssl.base import StepContext
from medstudy.ssl.spark import SparK, _sparse_batch_norm, small_grid_message

# the module (the package's ``finetune`` attribute is the function of that name)
finetune_mod = importlib.import_module("medstudy.evaluate.finetune")

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _ctx(seed: int = 0) -> StepContext:
    return StepContext(0, 10, 0, 1, torch.Generator().manual_seed(seed))


# ------------------------------------------------------------ sparse BN under bf16 autocast --
def _visible_bn_reference(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SparK's own sparse BN (BatchNorm1d over the gathered visible positions), in float32."""
    visible = mask.expand_as(x).permute(0, 2, 3, 1)[..., 0]
    rows = x.permute(0, 2, 3, 1)
    out = torch.zeros_like(rows)
    out[visible] = torch.nn.BatchNorm1d(x.shape[1])(rows[visible])
    return out.permute(0, 3, 1, 2)


def _one_pass_variance(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The one-pass masked variance E[x²] − E[x]² in ``x``'s own dtype (no fp32 upcast)."""
    x = x * mask
    count = mask.sum()
    mean = x.sum(dim=(0, 2, 3)) / count
    return ((x * x).sum(dim=(0, 2, 3)) / count - mean * mean).clamp_min(0.0)


def test_sparse_batch_norm_statistics_are_fp32_under_bf16_autocast() -> None:
    # Channels with a large mean and a small spread (mean 8, std 0.5): E[x²] ≈ 64.25 where
    # bf16's spacing is 0.5, so in bf16 the variance 0.25 is lost to rounding.
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 4, 14, 14, generator=g) * 0.5 + 8.0).to(torch.bfloat16)
    active = torch.rand(8, 1, 7, 7, generator=g) < 0.4
    mask = active.repeat_interleave(2, 2).repeat_interleave(2, 3)
    expected = _visible_bn_reference(x.float(), mask)
    true_var = _one_pass_variance(x.float(), mask.float())
    # the bf16 one-pass formula misses the variance badly (so this test can fail) ...
    naive = _one_pass_variance(x, mask.to(torch.bfloat16)).float()
    assert ((naive - true_var).abs() / true_var).max() > 0.3, (naive, true_var)
    # ... while the sparse BN computes its statistics in fp32 and returns the input's dtype
    bn = torch.nn.BatchNorm2d(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _sparse_batch_norm(bn, x, mask.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    # tolerance: bf16 rounding of outputs of size ~3 (spacing 1/64); a variance off by 30 %
    # shifts them by > 0.3
    torch.testing.assert_close(out.float(), expected, atol=0.04, rtol=0.01)
    assert bn.running_mean.dtype == torch.float32
    count = mask.sum()
    unbiased = true_var * count / (count - 1)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * unbiased, rtol=1e-4, atol=0)


# --------------------------------------------------------------- decoder width, mask grid --
def test_spark_decoder_width_follows_sparks_rule() -> None:
    small = get_method("spark").build(create_backbone("resnet20_cifar", seed=0))
    assert isinstance(small, SparK)
    assert small.decoder_width == 64  # ResNet-20's 64 channels: its width before the rule
    assert [p.out_channels for p in small.densify_projs] == [64, 32, 16]
    # the very parameters of the ResNet-20 SparK before the rule (commit eac807b)
    shapes = ";".join(
        f"{k}:{tuple(v.shape)}" for k, v in small.state_dict().items() if hasattr(v, "shape")
    )
    assert hashlib.md5(shapes.encode()).hexdigest() == "ba356fde92b5e612bd3a0ca52450bfa5"
    assert sum(p.numel() for p in small.parameters()) == 436611
    assert small.head.out_channels == 3  # the grey target is sliced from it (test_ssl)
    big = SparK(create_backbone("timm:resnet50", seed=0))
    assert big.decoder_width == 768  # SparK's LightDecoder width for ResNet-50
    assert big.downsample == 32
    convs = [p for p in big.densify_projs]
    assert (convs[0].in_channels, convs[0].out_channels) == (2048, 768)
    assert [p.out_channels for p in convs] == [768, 384, 192, 96, 48, 24]  # strides 32 … 1
    assert big.has_skip == [True, True, True, True, False, False]  # stem + layer1 at stride 4
    assert big.decoder[-1].conv[-1].num_features == 24  # 768 halved 5 times
    assert SparK(create_backbone("resnet20_cifar", seed=0), decoder_width=32).decoder_width == 32
    with pytest.raises(ValueError, match="decoder_width must be >= 1"):
        SparK(create_backbone("resnet20_cifar", seed=0), decoder_width=0)


def test_spark_at_a_2x2_mask_grid_warns_once_and_trains() -> None:
    method = SparK(create_backbone("timm:resnet18", seed=0))  # stride 32, as ResNet-50
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match=r"2x2 mask grid: 2 of 4 patches masked \(ratio 0.50"):
        loss = method.training_step([x], _ctx())
    assert torch.isfinite(loss)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per method, not per step
        method.training_step([x], _ctx(1))
        # ResNet-20 at 28 px: a 7x7 grid, no warning
        get_method("spark").build(create_backbone("resnet20_cifar", seed=0)).training_step(
            [torch.randn(4, 3, 28, 28)], _ctx()
        )
    assert "image_size >= 128" in small_grid_message(64, 32, 0.6)


# -------------------------------------------------------------------------- torch_compile --
def test_torch_compile_is_an_execution_option_that_keeps_existing_run_ids() -> None:
    # run ids of the defaults, computed before torch_compile existed (commit eac807b)
    assert config_hash(PretrainConfig().identity()) == PRETRAIN_DEFAULT_ID
    assert config_hash(TransferConfig().identity()) == TRANSFER_DEFAULT_ID
    assert "torch_compile" not in PretrainConfig().identity()
    assert PretrainConfig(torch_compile=True).identity()["torch_compile"] is True
    # 02/03/04 find a compiled pretraining run through their pretrain_torch_compile mirror
    on = TransferConfig(pretrain_torch_compile=True).pretrain_config("ssl:simclr")
    assert on.identity() == PretrainConfig(arm="ssl:simclr", torch_compile=True).identity()
    rep = RepresentationsConfig(pretrain_torch_compile=True, arms=("scratch",))
    assert rep.transfer_config().pretrain_config("ssl:spark").torch_compile is True


PRETRAIN_DEFAULT_ID = "8224d310afee"
TRANSFER_DEFAULT_ID = "766777161601"


@pytest.mark.slow
def test_compiled_stages_give_the_eager_spark_loss() -> None:
    # Real inductor compilation on the CPU (36 s on the 2-core dev machine, nearly all of it
    # compiling); SparK's sparse hooks must survive compilation.
    eager = get_method("spark").build(create_backbone("resnet20_cifar", seed=0))
    compiled = get_method("spark").build(create_backbone("resnet20_cifar", seed=0))
    compiled.load_state_dict(eager.state_dict())
    pretrain_module.compile_stages(compiled.backbone)
    assert all(s._compiled_call_impl is not None for s in compiled.backbone.stages)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    x = torch.randn(8, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    want = eager.training_step([x], _ctx())
    got = compiled.training_step([x], _ctx())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    got.backward()
    assert all(p.grad is not None for p in compiled.backbone.parameters())


# ---------------------------------------------------------------------------- pin_memory --
@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Pinning needs a CUDA driver; on this CPU the tensors pinned are recorded (a copy)."""
    calls: list[torch.Tensor] = []

    def fake_pin(self: torch.Tensor) -> torch.Tensor:
        calls.append(self)
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    return calls


def test_batches_go_through_pinned_memory_only_to_cuda(
    pinned: list[torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    assert to_device(x, "cpu") is x and not pinned  # already there: no copy, no pinning
    assert to_device(x, "meta").device.type == "meta" and not pinned  # not CUDA: plain copy
    # pin=True is the CUDA branch (pinned host copy, then non_blocking) on a device we have
    assert to_device(x, torch.device("meta"), pin=True).device.type == "meta"
    assert len(pinned) == 1 and torch.equal(pinned[0], x)
    # The memmap cache's batches take that path: the staged host batch is the plain one.
    array = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    idx = torch.tensor([7, 1, 3])
    plain = MemmapImages(array)[idx]
    assert torch.equal(plain, torch.from_numpy(array[[7, 1, 3]]).permute(0, 3, 1, 2))
    monkeypatch.setattr(
        "medstudy.data.tensors.to_device", lambda b, d, pin=None: to_device(b, d, pin=True)
    )
    staged = MemmapImages(array, device="meta")[idx]
    assert staged.device.type == "meta" and staged.shape == plain.shape
    assert len(pinned) == 2 and torch.equal(pinned[1], plain)


# -------------------------------------------------------------------------- device audit --
class _DeviceAudit(TorchFunctionMode):
    """Records the devices and floating dtypes of every tensor a torch function returns."""

    def __init__(self) -> None:
        super().__init__()
        self.devices: set[str] = set()
        self.dtypes: set[torch.dtype] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.devices.add(t.device.type)
                if t.is_floating_point():
                    self.dtypes.add(t.dtype)
        return out


@contextlib.contextmanager
def _bf16_everywhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The GPU's precision (bf16-mixed) for the pretraining and fine-tuning Trainers."""
    monkeypatch.setattr(pretrain_stage, "precision", lambda device: "bf16-mixed")
    monkeypatch.setattr(finetune_mod, "precision", lambda device: "bf16-mixed")
    yield


def test_device_audit_of_pretraining_and_finetuning_under_bf16(
    results_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: list[Any] = []
    monkeypatch.setattr(pretrain_module, "compile_stages", compiled.append)  # wiring only
    audit = _DeviceAudit()
    cfg = PretrainConfig(
        dataset="synth_lesions", arm="ssl:spark", max_train=64, epochs=1, batch_size=32,
        torch_compile=True,
    )  # fmt: skip
    with _bf16_everywhere(monkeypatch), audit:
        result = pretrain_stage.pretrain(cfg, progress=False)
    assert np.isfinite(result.metrics["loss"]) and np.isfinite(result.metrics["knn_acc"])
    assert len(compiled) == 1  # torch_compile reached the loop (compilation: the test above)
    assert audit.devices == {"cpu"}
    assert torch.bfloat16 in audit.dtypes  # autocast was on: convolutions ran in bf16
    # Fine-tuning the pretrained encoder, same precision.
    from medstudy.evaluate.finetune import TrainSettings, finetune

    backbone = pretrain_stage.load_encoder(cfg)
    assert next(backbone.parameters()).dtype == torch.float32  # weights stay fp32
    train = TensorSplit.from_split(
        load_split("synth_lesions", "train", size=28).subset(np.arange(64))
    )
    val = TensorSplit.from_split(load_split("synth_lesions", "val", size=28).subset(np.arange(32)))
    audit = _DeviceAudit()
    settings = TrainSettings(max_epochs=1, batch_size=32, lr=0.01)
    with _bf16_everywhere(monkeypatch), audit:
        fit = finetune(backbone, train, val, INFO["synth_lesions"], settings, seed=0)
    assert np.isfinite(fit.history["train_loss"]).all()
    assert audit.devices == {"cpu"} and torch.bfloat16 in audit.dtypes
