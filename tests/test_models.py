"""medstudy.models: registry, strict natural weights, timm path, checkpoints, heads."""

from __future__ import annotations

import shutil

import pytest
import torch

from medstudy.data import INFO
from medstudy.models import (
    BACKBONES,
    Classifier,
    ResNet20Cifar,
    WeightsError,
    build_head,
    create_backbone,
    load_checkpoint,
    load_resnet20_cifar10,
    logits_to_scores,
    save_checkpoint,
)

# Logits of the CIFAR-10 ResNet-20 (with its own CIFAR head) on a fixed, RNG-free input,
# recorded once from the offline checkpoint. They pin both the architecture (option-A shortcuts,
# BN placement) and the strict weight mapping: a wrong mapping changes every value.
FIXED_LOGITS = [
    [4.26821, 1.71941, 3.89925, -3.98454, -0.66197, -4.65310, -5.90603, 1.42665, 2.25141, 1.58865],
    [5.51266, 2.26857, 4.00326, -3.63156, -2.89905, -4.14384, -5.40621, 1.63619, 0.85096, 1.75693],
]


def _fixed_input() -> torch.Tensor:
    return (
        torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32) % 97
    ) / 97 * 2 - 1


def test_resnet20_shape_and_params():
    b = ResNet20Cifar()
    assert b.feature_dim == 64 and b.stage_channels == [16, 16, 32, 64]
    # He et al.: 0.27 M parameters = 269 072 in the backbone + 650 in the CIFAR-10 head.
    assert sum(p.numel() for p in b.parameters()) == 269072
    outs = b.forward_stages(torch.zeros(2, 3, 28, 28))
    assert [tuple(o.shape[2:]) for o in outs] == [(28, 28), (28, 28), (14, 14), (7, 7)]
    assert b(torch.zeros(2, 3, 28, 28)).shape == (2, 64)


@pytest.mark.realdata
def test_resnet20_natural_weights_load_strictly_and_logits_are_stable(real_data_dir):
    b = ResNet20Cifar()
    head = load_resnet20_cifar10(b)
    b.eval()
    with torch.no_grad():
        logits = b(_fixed_input()) @ head["linear.weight"].T + head["linear.bias"]
    assert torch.allclose(logits, torch.tensor(FIXED_LOGITS), atol=1e-4)


@pytest.mark.realdata
def test_natural_sup_differs_from_scratch_and_scratch_is_seeded(real_data_dir):
    nat = create_backbone("resnet20_cifar", "natural_sup")
    s1 = create_backbone("resnet20_cifar", "scratch", seed=3)
    s2 = create_backbone("resnet20_cifar", "scratch", seed=3)
    s3 = create_backbone("resnet20_cifar", "scratch", seed=4)
    w = "stages.0.conv1.weight"
    assert torch.equal(s1.state_dict()[w], s2.state_dict()[w])
    assert not torch.equal(s1.state_dict()[w], s3.state_dict()[w])
    assert not torch.equal(nat.state_dict()[w], s1.state_dict()[w])


@pytest.mark.realdata
def test_resnet20_checkpoint_missing_key_or_shape_fails(real_data_dir, tmp_path):
    ckpt = torch.load(real_data_dir / "resnet20_cifar10.th", map_location="cpu", weights_only=False)
    state = dict(ckpt["state_dict"])
    state.pop("module.layer2.1.conv1.weight")
    bad = tmp_path / "resnet20_cifar10.th"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(WeightsError, match=r"md5"):  # the md5 check fires first …
        load_resnet20_cifar10(ResNet20Cifar(), bad)
    import json

    from medstudy.data.loaders import file_md5

    (tmp_path / "checksums.json").write_text(
        json.dumps({"resnet20_cifar10.th": {"md5": file_md5(bad), "source": "test"}})
    )
    with pytest.raises(WeightsError, match=r"not a resnet20_cifar checkpoint: missing="):
        load_resnet20_cifar10(ResNet20Cifar(), bad)  # … and a declared file still loads strictly
    state = dict(ckpt["state_dict"])
    state["module.layer3.0.conv1.weight"] = torch.zeros(64, 32, 5, 5)
    torch.save({"state_dict": state}, bad)
    (tmp_path / "checksums.json").write_text(
        json.dumps({"resnet20_cifar10.th": {"md5": file_md5(bad), "source": "test"}})
    )
    with pytest.raises(WeightsError, match=r"shape mismatches=\[\('layer3.0.conv1.weight'"):
        load_resnet20_cifar10(ResNet20Cifar(), bad)


def test_missing_natural_weights_never_fall_back_to_random(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSTUDY_DATA_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match=r"resnet20_cifar10\.th.*md5 1f38c81c"):
        create_backbone("resnet20_cifar", "natural_sup")


def test_unknown_backbone_and_init_list_valid():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet21'; valid: \['resnet20_cifar'"):
        create_backbone("resnet21")
    with pytest.raises(ValueError, match=r"unknown timm model 'notamodel'"):
        create_backbone("timm:notamodel")
    with pytest.raises(ValueError, match=r"unknown init 'imagenet'; valid"):
        create_backbone("resnet20_cifar", "imagenet")
    assert "resnet20_cifar" in BACKBONES


def test_timm_offline_needs_a_local_checkpoint(tmp_path):
    with pytest.raises(WeightsError, match=r"MEDSTUDY_OFFLINE is set; give a local timm"):
        create_backbone("timm:resnet18", "natural_sup")
    # An explicit local timm checkpoint is the offline path: it loads strictly (tests/
    # test_weights.py checks every tensor and each release layout).
    src = create_backbone("timm:resnet18", seed=1)
    path = tmp_path / "resnet18.pt"
    torch.save(src.model.state_dict(), path)
    loaded = create_backbone("timm:resnet18", "natural_sup", weights_path=path, seed=2)
    k = "model.conv1.weight"
    assert torch.equal(loaded.state_dict()[k], src.state_dict()[k])
    assert loaded.feature_dim == 512 and loaded.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 512)


def test_checkpoint_for_another_backbone_names_the_file(tmp_path):
    path = tmp_path / "enc.pt"
    save_checkpoint(ResNet20Cifar(), path, arm="ssl:simclr")
    assert load_checkpoint(ResNet20Cifar(), path) == {"arm": "ssl:simclr"}
    other = create_backbone("timm:resnet18")
    with pytest.raises(WeightsError, match=r"enc\.pt holds weights for backbone 'resnet20_cifar'"):
        load_checkpoint(other, path)
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, path)
    with pytest.raises(WeightsError, match=r"enc\.pt does not fit backbone"):
        load_checkpoint(ResNet20Cifar(), path)
    path.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match=r"enc\.pt: cannot be read"):
        load_checkpoint(ResNet20Cifar(), path)


@pytest.mark.parametrize(
    ("name", "width"), [("pneumoniamnist", 2), ("retinamnist", 5), ("chestmnist", 14)]
)
def test_heads_from_info(name, width):
    info = INFO[name]
    model = Classifier(ResNet20Cifar(), build_head(info, 64))
    logits = model(torch.zeros(3, 3, 28, 28))
    assert logits.shape == (3, width)
    scores = logits_to_scores(info, logits)
    if info.is_multilabel:
        assert ((scores > 0) & (scores < 1)).all()
    else:
        assert torch.allclose(scores.sum(1), torch.ones(3))


def test_atomic_checkpoint_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "enc.pt"

    def crash(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(ResNet20Cifar(), path)
    assert list(tmp_path.iterdir()) == []
    shutil.rmtree(tmp_path)
