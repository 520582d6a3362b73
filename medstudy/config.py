"""One frozen dataclass per stage, built from a notebook's papermill parameters.

``Stage.from_params(**params)`` rejects unknown names (listing the valid ones) and wrong types
(naming the field) before any work; ``__post_init__`` checks values (dataset, arm, method,
fraction in (0, 1], …) and names the valid choices. A config is the input of ``run_id``.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar, get_args, get_origin, get_type_hints

from medstudy import paths
from medstudy.data.info import INFO
from medstudy.data.sampling import validate_fraction

C = TypeVar("C", bound="StageConfig")

BASE_ARMS: tuple[str, ...] = ("scratch", "natural_sup", "natural_ssl", "curriculum")
PROTOCOLS: tuple[str, ...] = ("linear", "knn", "finetune")
FUSION_MODES: tuple[str, ...] = ("encoders", "dims", "concat")
#: Val metrics that may select the fine-tuning epoch (higher is better); "" = the task's primary.
SELECT_METRICS: tuple[str, ...] = ("", "auc", "accuracy", "balanced_accuracy", "macro_f1", "qwk")


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type, or has an invalid value."""


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a simple annotation; ints are accepted where floats are expected."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in get_args(annotation):
            try:
                return _check_type(name, value, option)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"parameter {name!r}={value!r} matches none of {annotation}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"parameter {name!r} must be None, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(
                f"parameter {name!r} must be a list, got {type(value).__name__} {value!r}"
            )
        (item,) = get_args(annotation)[:1] or (Any,)
        return tuple(_check_type(f"{name}[{i}]", v, item) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"parameter {name!r} must be a dict, got {value!r}")
        return value
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"parameter {name!r} must be a float, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"parameter {name!r} must be an int, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"parameter {name!r} must be true/false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"parameter {name!r} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation} for {name}")  # a bug in this module


def validate_dataset(name: str) -> str:
    """A dataset must be in INFO or be a ``<name>.npz`` in the data dir."""
    if name in INFO or (paths.data_dir() / f"{name}.npz").exists():
        return name
    raise ConfigError(
        f"unknown dataset {name!r}; valid: {sorted(INFO)} "
        f"or any MedMNIST-format <name>.npz in {paths.data_dir()}"
    )


def ssl_method_names() -> list[str]:
    from medstudy.ssl import METHODS

    return sorted(METHODS)


def validate_method(method: str) -> str:
    valid = ssl_method_names()
    if method not in valid:
        raise ConfigError(f"unknown SSL method {method!r}; valid: {valid}")
    return method


def validate_arm(arm: str) -> str:
    """Arms: scratch, natural_sup, natural_ssl, ssl:<m>, natural_sup+ssl:<m>, curriculum."""
    for prefix in ("ssl:", "natural_sup+ssl:"):
        if arm.startswith(prefix):
            validate_method(arm.removeprefix(prefix))
            return arm
    if arm in BASE_ARMS:
        return arm
    methods = ssl_method_names()
    raise ConfigError(
        f"unknown arm {arm!r}; valid: {list(BASE_ARMS)} + "
        f"{['ssl:' + m for m in methods]} + {['natural_sup+ssl:' + m for m in methods]}"
    )


def validate_backbone_name(name: str) -> str:
    from medstudy.models import validate_backbone

    try:
        return validate_backbone(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"parameter {name!r} must be {'>= 0' if allow_zero else '> 0'}: {value}")


@dataclass(frozen=True)
class StageConfig:
    """Base: strict construction from parameters."""

    stage: ClassVar[str] = ""

    @classmethod
    def from_params(cls: type[C], **params: Any) -> C:
        hints = get_type_hints(cls)
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {unknown} for {cls.__name__}; valid: {sorted(valid)}"
            )
        checked = {k: _check_type(k, v, hints[k]) for k, v in params.items()}
        return cls(**checked)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class PretrainConfig(StageConfig):
    """Notebook 01: one init arm on one dataset."""

    stage: ClassVar[str] = "pretrain"
    dataset: str = "synth_lesions"
    arm: str = "ssl:simclr"
    backbone: str = "resnet20_cifar"
    image_size: int = 28
    epochs: int = 1
    batch_size: int = 256
    lr: float = 0.06
    # Backbone LR = lr * this for arms that start from natural-image weights
    # (natural_sup+ssl:*); the fresh heads always train at lr. Below 1 keeps the natural
    # features from being erased by the first large SSL steps.
    natural_lr_mult: float = 1.0
    weight_decay: float = 5e-4
    max_train: int = 0  # 0 = the whole train split
    curriculum: tuple[str, ...] = ("simclr:1", "spark:1")  # "method:epochs" stages
    knn_k: int = 20
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        validate_dataset(self.dataset)
        validate_arm(self.arm)
        validate_backbone_name(self.backbone)
        _positive("image_size", self.image_size)
        _positive("epochs", self.epochs, allow_zero=True)
        _positive("batch_size", self.batch_size)
        _positive("lr", self.lr)
        _positive("natural_lr_mult", self.natural_lr_mult)
        _positive("max_train", self.max_train, allow_zero=True)
        _positive("knn_k", self.knn_k)
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError("parameter 'device' must be one of ['cpu', 'cuda', 'auto']")
        for stage in self.curriculum:
            method, _, epochs = stage.partition(":")
            validate_method(method)
            if not epochs.isdigit() or int(epochs) < 1:
                raise ConfigError(f"curriculum stage {stage!r} must be '<method>:<epochs>' (>=1)")
        if self.arm == "natural_ssl" and not self.backbone.startswith("timm:"):
            raise ConfigError(
                "arm 'natural_ssl' (DINO/SwAV/SimCLR ImageNet weights) needs a timm backbone "
                "and a download; valid backbones for it: timm:resnet50"
            )


@dataclass(frozen=True)
class TransferConfig(StageConfig):
    """Notebooks 02 and 03: protocols on frozen or fine-tuned encoders, at label fractions."""

    stage: ClassVar[str] = "transfer"
    dataset: str = "synth_lesions"
    arms: tuple[str, ...] = ("scratch", "natural_sup")
    protocols: tuple[str, ...] = ("linear", "knn")
    fractions: tuple[float, ...] = (1.0,)
    seeds: tuple[int, ...] = (0,)
    finetune_arms: tuple[str, ...] = ()  # () = every arm when "finetune" is a protocol
    finetune_fractions: tuple[float, ...] = ()  # () = every fraction
    finetune_epochs: int = 20
    finetune_lr: float = 0.05
    backbone_lr_mult: float = 0.1  # pretrained backbone LR = finetune_lr * this
    warmup_frozen_epochs: int = 0
    finetune_augment: bool = True  # random resized crop + flip on train batches
    finetune_select_on: str = ""  # val metric for early stopping / best epoch; "" = primary
    finetune_min_steps: int = 1  # min optimiser steps per epoch (small fractions repeat data)
    patience: int = 5
    batch_size: int = 128
    max_train: int = 0
    fusion_arms: tuple[str, ...] = ()  # DVME inputs; () = no fusion
    fusion_modes: tuple[str, ...] = ("encoders", "dims", "concat")
    backbone: str = "resnet20_cifar"
    image_size: int = 28
    pretrain_epochs: int = 1
    pretrain_batch_size: int = 256
    pretrain_lr: float = 0.06
    pretrain_natural_lr_mult: float = 1.0
    pretrain_max_train: int = 0
    pretrain_curriculum: tuple[str, ...] = ("simclr:1", "spark:1")
    pretrain_seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        validate_dataset(self.dataset)
        validate_backbone_name(self.backbone)
        for arm in (*self.arms, *self.fusion_arms, *self.finetune_arms):
            validate_arm(arm)
        for p in self.protocols:
            if p not in PROTOCOLS:
                raise ConfigError(f"unknown protocol {p!r}; valid: {list(PROTOCOLS)}")
        for m in self.fusion_modes:
            if m not in FUSION_MODES:
                raise ConfigError(f"unknown fusion mode {m!r}; valid: {list(FUSION_MODES)}")
        for f in (*self.fractions, *self.finetune_fractions):
            try:
                validate_fraction(f, "fractions")
            except (TypeError, ValueError) as err:
                raise ConfigError(str(err)) from None
        if not self.arms or not self.seeds or not self.fractions:
            raise ConfigError("parameters 'arms', 'seeds' and 'fractions' must be non-empty")
        if len(self.fusion_arms) == 1:
            raise ConfigError("parameter 'fusion_arms' needs >= 2 encoders (or none)")
        for name in ("finetune_epochs", "batch_size", "patience", "finetune_min_steps"):
            _positive(name, getattr(self, name))
        _positive("finetune_lr", self.finetune_lr)
        _positive("backbone_lr_mult", self.backbone_lr_mult, allow_zero=True)
        if self.finetune_select_on not in SELECT_METRICS:
            raise ConfigError(
                f"unknown finetune_select_on {self.finetune_select_on!r}; "
                f"valid: {list(SELECT_METRICS)}"
            )
        if self.finetune_select_on == "qwk" and self.dataset in INFO:
            if INFO[self.dataset].task != "ordinal-regression":
                raise ConfigError(
                    f"finetune_select_on 'qwk' needs an ordinal dataset; {self.dataset!r} is "
                    f"{INFO[self.dataset].task}"
                )

    def pretrain_config(self, arm: str, seed: int | None = None) -> PretrainConfig:
        """The notebook-01 config that produced ``arm``'s encoder (to find its checkpoint)."""
        return PretrainConfig(
            dataset=self.dataset,
            arm=arm,
            backbone=self.backbone,
            image_size=self.image_size,
            epochs=self.pretrain_epochs,
            batch_size=self.pretrain_batch_size,
            lr=self.pretrain_lr,
            natural_lr_mult=self.pretrain_natural_lr_mult,
            max_train=self.pretrain_max_train,
            curriculum=self.pretrain_curriculum,
            seed=self.pretrain_seed if seed is None else seed,
            device=self.device,
        )


@dataclass(frozen=True)
class ClaimsConfig(StageConfig):
    """Notebook 07: statistics over every finished result."""

    stage: ClassVar[str] = "claims"
    alpha: float = 0.05
    correction: str = "holm"
    n_boot: int = 2000
    seed: int = 0
    profile: str = "quick"
    datasets: tuple[str, ...] = field(default_factory=tuple)  # () = every dataset with results

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"parameter 'alpha' must be in (0, 1), got {self.alpha}")
        if self.correction not in ("holm", "fdr_bh"):
            raise ConfigError(f"unknown correction {self.correction!r}; valid: ['holm', 'fdr_bh']")
        _positive("n_boot", self.n_boot)
