"""medstudy.config: strict construction from notebook parameters."""

from __future__ import annotations

import pytest

from medstudy.config import ClaimsConfig, ConfigError, PretrainConfig, TransferConfig


def test_defaults_build_and_are_frozen():
    cfg = PretrainConfig.from_params(dataset="retinamnist", arm="natural_sup")
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]
    assert cfg.to_dict()["dataset"] == "retinamnist"


def test_unknown_parameter_names_valid_fields():
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['epoch'\].*valid: \["):
        PretrainConfig.from_params(epoch=3)


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("epochs", "3", r"'epochs' must be an int"),
        ("epochs", 2.5, r"'epochs' must be an int"),
        ("seed", True, r"'seed' must be an int"),
        ("lr_scale", "fast", r"'lr_scale' must be a float"),
        ("curriculum", "simclr:1", r"'curriculum' must be a list"),
        ("dataset", 3, r"'dataset' must be a string"),
    ],
)
def test_wrong_types_name_the_field(field, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        PretrainConfig.from_params(**{field: value})


def test_int_is_accepted_for_float_and_lists_become_tuples():
    cfg = TransferConfig.from_params(fractions=[1], seeds=[0, 1], arms=["scratch"])
    assert cfg.fractions == (1.0,) and cfg.seeds == (0, 1)


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({"dataset": "mnist"}, r"unknown dataset 'mnist'; valid: \[.*'pneumoniamnist'"),
        ({"arm": "ssl:simclrr"}, r"unknown SSL method 'simclrr'; valid: \["),
        ({"arm": "imagenet"}, r"unknown arm 'imagenet'; valid: \['scratch'"),
        ({"backbone": "resnet18"}, r"unknown backbone 'resnet18'"),
        ({"epochs": -1}, r"'epochs' must be >= 0"),
        ({"curriculum": ["simclr"]}, r"curriculum stage 'simclr' must be"),
        ({"arm": "natural_ssl"}, r"natural_ssl.*needs backbone 'timm:resnet50'"),
        ({"natural_ssl_weights": "simclr"}, r"unknown natural_ssl_weights 'simclr'; valid"),
        ({"natural_weights": "/no/such.pth"}, r"'natural_weights': weights file not found"),
        ({"device": "tpu"}, r"'device' must be one of"),
        ({"natural_lr_mult": 0.0}, r"'natural_lr_mult' must be > 0"),
    ],
)
def test_bad_pretrain_values(params, pattern):
    with pytest.raises(ConfigError, match=pattern):
        PretrainConfig.from_params(**params)


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({"fractions": [0.0]}, r"fractions must be in \(0, 1\], got 0.0"),
        ({"fractions": [1.5]}, r"fractions must be in \(0, 1\], got 1.5"),
        ({"protocols": ["svm"]}, r"unknown protocol 'svm'; valid: \['linear', 'knn', 'finetune'"),
        ({"fusion_arms": ["scratch"]}, r"'fusion_arms' needs >= 2"),
        ({"fusion_modes": ["mean"]}, r"unknown fusion mode 'mean'"),
        ({"arms": []}, r"must be non-empty"),
        ({"finetune_select_on": "loss"}, r"unknown finetune_select_on 'loss'; valid: \['', 'auc'"),
        (
            {"dataset": "pneumoniamnist", "finetune_select_on": "qwk"},
            r"'qwk' needs an ordinal dataset; 'pneumoniamnist' is binary-class",
        ),
    ],
)
def test_bad_transfer_values(params, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TransferConfig.from_params(**params)


def test_transfer_rebuilds_the_pretrain_config():
    cfg = TransferConfig.from_params(
        dataset="retinamnist", pretrain_epochs=3, pretrain_seed=2, pretrain_natural_lr_mult=0.1
    )
    pre = cfg.pretrain_config("ssl:spark")
    assert (pre.dataset, pre.arm, pre.epochs, pre.seed) == ("retinamnist", "ssl:spark", 3, 2)
    assert pre.natural_lr_mult == 0.1
    # every pretrain_* field of TransferConfig reaches the PretrainConfig it rebuilds, except
    # pretrain_paired, which is not a setting of notebook 01 but picks the seed of each unit's
    # encoder (tests/test_grid.py::test_paired_units_use_the_encoder_of_their_own_seed)
    mirrored = {f.removeprefix("pretrain_") for f in cfg.to_dict() if f.startswith("pretrain_")}
    assert mirrored - {"paired"} <= set(pre.to_dict()) and "paired" not in pre.to_dict()
    assert TransferConfig.from_params(dataset="retinamnist", finetune_select_on="qwk")


def test_claims_config():
    with pytest.raises(ConfigError, match=r"unknown correction 'bonferroni'; valid"):
        ClaimsConfig.from_params(correction="bonferroni")
    with pytest.raises(ConfigError, match=r"'alpha' must be in \(0, 1\)"):
        ClaimsConfig.from_params(alpha=1.0)


def test_identity_leaves_out_unless_default_fields_at_their_default_only() -> None:
    """An execution option marked ``identity: unless_default`` keeps old run ids at its default
    and enters the identity (so the run id) when set."""
    from dataclasses import dataclass, field

    from medstudy.config.base import StageConfig

    @dataclass(frozen=True)
    class Toy(StageConfig):
        lr: float = 0.1
        note: str = field(default="", metadata={"display": True})
        devices: int = field(default=1, metadata={"identity": "unless_default"})

    assert Toy().identity() == {"lr": 0.1}
    assert Toy(note="x").identity() == {"lr": 0.1}
    assert Toy(devices=2).identity() == {"lr": 0.1, "devices": 2}
