"""medstudy.weights and the timm path of medstudy.models: natural-image weights from local files
in each published layout, loaded strictly through the configs; md5 declarations; offline errors;
pretrained tags; the timm backbone's own keys, its stages (SparK) and our checkpoints."""

from __future__ import annotations

import copy
import json
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

from medstudy import paths
from medstudy.augment import make_views
from medstudy.config import ConfigError, PretrainConfig, TransferConfig
from medstudy.data.loaders import file_md5
from medstudy.models import (
    TimmBackbone,
    WeightsError,
    create_backbone,
    load_checkpoint,
    save_checkpoint,
    validate_backbone,
)
from medstudy.pretrain import load_encoder, load_pretrain_data, pretrain
from medstudy.ssl import get_method
from medstudy.ssl.base import StepContext
from medstudy.weights import SSL_RELEASES

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

State = dict[str, torch.Tensor]


def _source(arch: str, seed: int) -> State:
    """A real timm/torchvision-format state dict (with its ImageNet ``fc``), every tensor
    distinct from a fresh model's: seeded weights and non-default BatchNorm statistics."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)
    state = model.state_dict()
    g = torch.Generator().manual_seed(seed)
    for key, t in state.items():
        if key.endswith("running_mean"):
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        elif key.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif key.endswith("num_batches_tracked"):
            t.fill_(1234)
    return state


def _backbone_part(state: State) -> State:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _dino(state: State) -> Any:  # the teacher backbone, fc replaced by Identity: no head
    return _backbone_part(state)


def _swav(state: State) -> Any:  # DataParallel keys, projection MLP and prototypes
    heads = {
        "projection_head.0.weight": torch.randn(8, 2048),
        "projection_head.1.running_mean": torch.zeros(8),
        "projection_head.3.weight": torch.randn(4, 8),
        "prototypes.weight": torch.randn(5, 4),
    }
    return {f"module.{k}": v for k, v in {**_backbone_part(state), **heads}.items()}


def _mocov2(state: State) -> Any:  # main_moco.py's checkpoint of the MoCo module
    backbone = _backbone_part(state)
    inner = {f"module.encoder_q.{k}": v for k, v in backbone.items()}
    inner.update(
        {
            "module.encoder_q.fc.0.weight": torch.randn(8, 2048),
            "module.encoder_q.fc.0.bias": torch.randn(8),
            "module.encoder_q.fc.2.weight": torch.randn(4, 8),
            "module.encoder_q.fc.2.bias": torch.randn(4),
            "module.encoder_k.conv1.weight": torch.randn(64, 3, 7, 7),
            "module.encoder_k.fc.2.bias": torch.randn(4),
            "module.queue": torch.randn(4, 16),
            "module.queue_ptr": torch.zeros(1, dtype=torch.long),
        }
    )
    optimizer = {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0]}]}
    return {"epoch": 800, "arch": "resnet50", "state_dict": inner, "optimizer": optimizer}


RELEASE_FORMATS: dict[str, Callable[[State], Any]] = {
    "dino": _dino,
    "swav": _swav,
    "mocov2": _mocov2,
}


@pytest.fixture(scope="module")
def resnet50() -> State:
    return _source("resnet50", seed=7)


@pytest.fixture(scope="module")
def release_files(resnet50: State, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("releases")
    files = {}
    for name, layout in RELEASE_FORMATS.items():
        files[name] = root / Path(SSL_RELEASES[name].url).name
        torch.save(layout(resnet50), files[name])
    return files


def _fixed_input() -> torch.Tensor:
    x = torch.arange(2 * 3 * 64 * 64, dtype=torch.float32).reshape(2, 3, 64, 64) % 101 / 50 - 1
    return x.contiguous(memory_format=torch.channels_last)


def _assert_loaded(backbone: TimmBackbone, arch: str, source: State) -> None:
    """Every tensor of ``backbone`` is the source's (classifier aside), and its features on a
    fixed input are those of a timm model loaded with the source directly."""
    expected = _backbone_part(source)
    got = backbone.state_dict()
    assert set(got) == {f"model.{k}" for k in expected}
    for key, tensor in expected.items():
        assert torch.equal(got[f"model.{key}"], tensor), key
    reference = timm.create_model(arch, pretrained=False, num_classes=0)
    reference.load_state_dict(expected)
    reference = reference.to(memory_format=torch.channels_last).eval()
    with torch.no_grad():
        assert torch.equal(backbone.eval()(_fixed_input()), reference(_fixed_input()))


# ----------------------------------------------------------------------- the timm backbone --
def test_timm_backbone_state_dict_is_timms_own_and_stages_are_its_modules() -> None:
    backbone = create_backbone("timm:resnet18", seed=0)
    assert isinstance(backbone, TimmBackbone)
    plain = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    assert list(backbone.state_dict()) == [f"model.{k}" for k in plain]
    m = backbone.model
    stem, *layers = backbone.stages
    assert list(stem) == [m.conv1, m.bn1, m.act1, m.maxpool]
    assert layers == [m.layer1, m.layer2, m.layer3, m.layer4]
    assert backbone.stage_channels == [64, 64, 128, 256, 512]
    with torch.no_grad():  # the stage-by-stage forward is timm's own forward
        assert torch.equal(backbone.eval()(_fixed_input()), m(_fixed_input()))
    # a copy (momentum encoders: BYOL, DINO, MoCo) runs through its own modules, not the original's
    twin = copy.deepcopy(backbone)
    assert twin.stages[0][0] is twin.model.conv1 and twin.stages[4] is twin.model.layer4


def test_save_and_load_checkpoint_round_trip_a_timm_backbone(tmp_path: Path) -> None:
    src = create_backbone("timm:resnet18", seed=1)
    path = tmp_path / "enc.pt"
    save_checkpoint(src, path, arm="natural_sup")
    dst = create_backbone("timm:resnet18", seed=2)
    assert load_checkpoint(dst, path) == {"arm": "natural_sup"}
    a, b = src.state_dict(), dst.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_spark_trains_a_step_through_the_stages_of_a_timm_resnet() -> None:
    # 64 px, not 32: at stride 32 a 32 px image is one patch, which SparK's 60 % mask hides
    # entirely (round(0.4) = 0 visible), so no gradient is defined there.
    backbone = create_backbone("timm:resnet18", seed=0)
    spec = get_method("spark")
    method = spec.build(backbone)
    assert method.downsample == 32 and method.level_stage == {4: 1, 8: 2, 16: 3, 32: 4}
    images = torch.randint(0, 256, (4, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    views = make_views(images.to(torch.uint8), spec.recipe, torch.Generator().manual_seed(0))
    before = backbone.model.conv1.weight.detach().clone()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    loss = method.training_step(views, StepContext(0, 1, 0, 1, torch.Generator().manual_seed(1)))
    loss.backward()
    opt.step()
    grads = [p.grad for p in backbone.parameters()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert not torch.equal(backbone.model.conv1.weight, before)  # the stem trained


# ------------------------------------------------------------------------------ natural_sup --
@pytest.mark.parametrize("layout", ["plain", "training checkpoint"])
def test_natural_sup_loads_a_local_timm_checkpoint(
    layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSTUDY_DATA_DIR", str(tmp_path))
    source = _source("resnet18", seed=3)
    saved = (
        source
        if layout == "plain"
        else {"state_dict": {f"module.{k}": v for k, v in source.items()}}
    )
    torch.save(saved, tmp_path / "resnet18_in1k.pth")
    # a relative path is a file of the data dir
    cfg = PretrainConfig(
        arm="natural_sup", backbone="timm:resnet18", natural_weights="resnet18_in1k.pth"
    )
    backbone = load_encoder(cfg)
    assert isinstance(backbone, TimmBackbone)
    _assert_loaded(backbone, "resnet18", source)


def test_natural_sup_rejects_another_architecture_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(_source("resnet18", seed=3), path)
    with pytest.raises(WeightsError, match=r"resnet18\.pth does not fit ResNet.*missing") as err:
        create_backbone("timm:resnet50", "natural_sup", weights_path=path)
    assert "layer1.0.conv3.weight" in str(err.value) and "shape mismatches" in str(err.value)


def test_natural_sup_offline_without_a_file_names_the_parameter() -> None:
    with pytest.raises(
        WeightsError, match=r"MEDSTUDY_OFFLINE is set; give a local timm .*natural_weights"
    ):
        create_backbone("timm:resnet18", "natural_sup")


# ------------------------------------------------------------------------------ natural_ssl --
@pytest.mark.parametrize("name", sorted(RELEASE_FORMATS))
def test_natural_ssl_release_loads_every_tensor(
    name: str, resnet50: State, release_files: dict[str, Path]
) -> None:
    cfg = PretrainConfig(
        arm="natural_ssl",
        backbone="timm:resnet50",
        natural_ssl_weights=name,
        natural_ssl_file=str(release_files[name]),
    )
    backbone = load_encoder(cfg)
    assert isinstance(backbone, TimmBackbone)
    _assert_loaded(backbone, "resnet50", resnet50)


def test_natural_ssl_release_from_the_download_path(
    resnet50: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDSTUDY_OFFLINE")
    asked = []

    def fake_hub(url: str, **kwargs: Any) -> Any:
        asked.append((url, kwargs.get("weights_only")))
        return _swav(resnet50)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_hub)
    backbone = create_backbone("timm:resnet50", "natural_ssl", ssl_weights="swav")
    assert asked == [(SSL_RELEASES["swav"].url, True)]
    _assert_loaded(backbone, "resnet50", resnet50)  # type: ignore[arg-type]


def test_natural_ssl_offline_fails_before_any_work(
    results_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = SSL_RELEASES["dino"].url
    cfg = PretrainConfig(arm="natural_ssl", backbone="timm:resnet50", dataset="synth_lesions")
    message = rf"{url}, and MEDSTUDY_OFFLINE is set.*natural_ssl_file"
    with pytest.raises(WeightsError, match=message):
        pretrain(cfg, progress=False)
    assert not paths.stage_dir("pretrain").exists()  # no run folder: nothing was started
    with pytest.raises(WeightsError, match=message):
        load_encoder(cfg)
    # no network: the download fails, with the same two ways out, never random weights
    monkeypatch.delenv("MEDSTUDY_OFFLINE")

    def no_network(url: str, **kwargs: Any) -> Any:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(
        WeightsError, match=rf"{url}, and the download failed \(URLError.*natural_ssl_file"
    ):
        load_encoder(cfg)


def test_wrong_or_truncated_release_files_are_named(
    resnet50: State, release_files: dict[str, Path], tmp_path: Path
) -> None:
    def build(name: str, path: Path) -> None:
        create_backbone("timm:resnet50", "natural_ssl", weights_path=path, ssl_weights=name)

    # one tensor missing (a truncated file): an error, never that tensor left at random
    path = tmp_path / "dino_edited.pth"
    truncated = _dino(resnet50)
    del truncated["layer3.2.bn2.running_var"]
    torch.save(truncated, path)
    with pytest.raises(
        WeightsError,
        match=r"dino_edited\.pth \(dino release\) does not fit .*: 1 missing "
        r"\['layer3\.2\.bn2\.running_var'\], 0 unexpected",
    ):
        build("dino", path)
    # one key too many: a head the release's layout does not have
    torch.save({**_dino(resnet50), "head.last_layer.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(
        WeightsError, match=r"0 missing \[\], 1 unexpected \['head\.last_layer\.weight'\]"
    ):
        build("dino", path)
    # a resnet18 checkpoint for the resnet50 release: missing keys and wrong shapes
    torch.save(_backbone_part(_source("resnet18", seed=3)), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"r18\.pth \(dino release\) does not fit .*missing"):
        build("dino", tmp_path / "r18.pth")
    # one release's file read as another: its layout does not match
    with pytest.raises(WeightsError, match=r"is not the mocov2 release: expected .*'state_dict'"):
        build("mocov2", release_files["swav"])
    with pytest.raises(WeightsError, match=r"\(swav release\) does not fit .*unexpected \['epoch'"):
        build("swav", release_files["mocov2"])
    with pytest.raises(
        WeightsError, match=r"\(dino release\) does not fit .*unexpected \['module\."
    ):
        build("dino", release_files["swav"])
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pth: cannot be read as a torch checkpoint"):
        build("dino", tmp_path / "junk.pth")


def test_natural_ssl_needs_a_resnet50_and_a_known_release() -> None:
    with pytest.raises(ConfigError, match=r"natural_ssl.*needs backbone 'timm:resnet50'"):
        PretrainConfig(arm="natural_ssl", backbone="timm:resnet18")
    with pytest.raises(ConfigError, match=r"unknown natural_ssl_weights 'simclr'; valid: \['dino'"):
        PretrainConfig(natural_ssl_weights="simclr")
    with pytest.raises(ConfigError, match=r"unknown pretrain_natural_ssl_weights 'byol'"):
        TransferConfig(pretrain_natural_ssl_weights="byol")
    # a pretrained tag names other weights of the same network
    assert PretrainConfig(arm="natural_ssl", backbone="timm:resnet50.a1_in1k")


# ---------------------------------------------------------- local files: existence and md5 --
def test_missing_weights_file_is_a_config_error_naming_parameter_and_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSTUDY_DATA_DIR", str(tmp_path))
    missing = tmp_path / "dino_resnet50_pretrain.pth"
    with pytest.raises(
        ConfigError, match=rf"parameter 'natural_ssl_file': weights file not found: {missing}"
    ):
        PretrainConfig(natural_ssl_file="dino_resnet50_pretrain.pth")
    with pytest.raises(
        ConfigError, match=r"'pretrain_natural_weights': weights file not found: /no/"
    ):
        TransferConfig(pretrain_natural_weights="/no/such/file.pth")
    with pytest.raises(WeightsError, match=rf"weights file not found: {missing}"):
        create_backbone("timm:resnet50", "natural_ssl", weights_path=missing)


def test_declared_md5_is_checked_and_recorded_in_the_run_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSTUDY_DATA_DIR", str(tmp_path))
    path = tmp_path / "resnet18_in1k.pth"
    torch.save(_source("resnet18", seed=3), path)
    declare = {"md5": "0" * 32, "source": "timm resnet18 copied from the cluster"}
    (tmp_path / "checksums.json").write_text(json.dumps({path.name: declare}))
    params = dict(arm="natural_sup", backbone="timm:resnet18", natural_weights=path.name)
    with pytest.raises(
        ConfigError, match=r"'natural_weights': .*resnet18_in1k\.pth: md5 .* declared"
    ):
        PretrainConfig(**params)
    with pytest.raises(WeightsError, match=r"resnet18_in1k\.pth: md5 .*checksums\.json"):
        create_backbone("timm:resnet18", "natural_sup", weights_path=path)
    md5 = file_md5(path)
    (tmp_path / "checksums.json").write_text(json.dumps({path.name: {**declare, "md5": md5}}))
    data = load_pretrain_data(PretrainConfig(**params))
    assert data.inputs["natural_weights"] == md5  # so it enters the run id, like data md5s
    assert data.weights == {
        "file": str(path),
        "md5": md5,
        "status": "declared-non-official",
        "source": declare["source"],
    }


# ---------------------------------------------------------------------------- backbone names --
def test_pretrained_tags_are_accepted_and_unknown_ones_named() -> None:
    assert validate_backbone("timm:resnet50.a1_in1k") == "timm:resnet50.a1_in1k"
    assert PretrainConfig(backbone="timm:resnet50.a1_in1k").backbone == "timm:resnet50.a1_in1k"
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'nonsense_tag' .*'a1_in1k'"):
        validate_backbone("timm:resnet50.nonsense_tag")
    with pytest.raises(ConfigError, match=r"'nonsense_tag'"):
        PretrainConfig(backbone="timm:resnet50.nonsense_tag")
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet51'"):
        validate_backbone("timm:resnet51.a1_in1k")
