"""The base of every stage config: strict construction, type checks, shared validators."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar, get_args, get_origin, get_type_hints

from medstudy import arms, paths
from medstudy.data.info import INFO
from medstudy.data.manifest import manifest_file
from medstudy.models import validate_backbone
from medstudy.runtime import DEVICES
from medstudy.weights import SSL_RELEASES, WeightsError, check_weights_file, weights_file

C = TypeVar("C", bound="StageConfig")

PROTOCOLS: tuple[str, ...] = ("linear", "knn", "finetune")
FUSION_MODES: tuple[str, ...] = ("encoders", "dims", "concat")


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
    """A dataset must be in INFO, or be a ``<name>.npz`` or a manifest ``<name>.csv`` in the
    data dir (the manifest's rows are checked when it is loaded, and by the grid before any
    job runs)."""
    if name in INFO or (paths.data_dir() / f"{name}.npz").exists():
        return name
    if manifest_file(name).exists():
        return name
    raise ConfigError(
        f"unknown dataset {name!r}; valid: {sorted(INFO)} "
        f"or any MedMNIST-format <name>.npz or manifest <name>.csv in {paths.data_dir()}"
    )


def validate_image_size(dataset: str, size: int) -> int:
    """A MedMNIST dataset exists at its released sizes only; ``synth_lesions`` is drawn at
    >= 16 px (checked here so that a profile fails in ``validate_jobs``, not mid-run); any size
    must be > 0."""
    _positive("image_size", size)
    info = INFO.get(dataset)
    if info is not None and info.source == "medmnist" and size not in info.md5:
        raise ConfigError(
            f"parameter 'image_size'={size} is not released for {dataset}; valid: {sorted(info.md5)}"
        )
    if dataset == "synth_lesions" and size < 16:
        raise ConfigError(f"parameter 'image_size' must be >= 16 for synth_lesions, got {size}")
    return size


def validate_arm(arm: str) -> str:
    """Arms: scratch, natural_sup, natural_ssl, ssl:<m>, natural_sup+ssl:<m>, curriculum."""
    try:
        return arms.validate_arm(arm)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def validate_backbone_name(name: str) -> str:
    try:
        return validate_backbone(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def validate_weights_file(name: str, value: str) -> str:
    """A local-weights parameter: ``""`` (none), or a file that exists (absolute, or relative
    to the data dir) and matches its ``checksums.json`` declaration if it has one."""
    path = weights_file(value)
    if path is not None:
        try:
            check_weights_file(path)
        except WeightsError as err:
            raise ConfigError(f"parameter {name!r}: {err}") from None
    return value


def validate_ssl_weights(name: str, value: str) -> str:
    """A ``natural_ssl`` release: a key of :data:`medstudy.weights.SSL_RELEASES`."""
    if value not in SSL_RELEASES:
        raise ConfigError(f"unknown {name} {value!r}; valid: {sorted(SSL_RELEASES)}")
    return value


def validate_device(device: str) -> str:
    if device not in DEVICES:
        raise ConfigError(f"parameter 'device' must be one of {list(DEVICES)}, got {device!r}")
    return device


def validate_parallel(
    devices: int, num_nodes: int, sync_batchnorm: bool, device: str, prefix: str = ""
) -> None:
    """Data-parallel settings: ``devices`` and ``num_nodes`` >= 1 (several CPU processes are
    allowed: gloo, as the tests run them); ``sync_batchnorm`` needs several processes (else it
    changes nothing but the run id) and a GPU (torch's DDP refuses SyncBatchNorm on CPU)."""
    for name, value in (("devices", devices), ("num_nodes", num_nodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"parameter '{prefix}{name}' must be an int >= 1, got {value!r}")
    # What this version cannot run, refused before any work (README, "Multi-GPU (DDP)"):
    # - several processes on a GPU: the ranks are forked from the notebook's process (the only
    #   launcher a Jupyter kernel allows), and a forked child cannot use CUDA once the parent has
    #   (it has: the init row's kNN monitor runs on the device before fit);
    # - several nodes: they need one process per device started by torchrun/srun, where every
    #   process would run the whole pretrain() and write the run folder (no rank-0 gate yet).
    if devices * num_nodes > 1 and device != "cpu":
        raise ConfigError(
            f"parameter '{prefix}devices'={devices} with device {device!r}: multi-GPU DDP is not "
            "runnable in this version (forked ranks cannot use CUDA after the parent did); "
            f"valid: {prefix}devices=1 on a GPU, or several CPU processes (gloo) with device 'cpu'"
        )
    if num_nodes > 1:
        raise ConfigError(
            f"parameter '{prefix}num_nodes'={num_nodes}: multi-node runs need an external "
            "launcher (torchrun/srun), which this version does not support; valid: 1"
        )
    if sync_batchnorm and devices * num_nodes == 1:
        raise ConfigError(
            f"parameter '{prefix}sync_batchnorm'=True needs several processes "
            f"({prefix}devices x {prefix}num_nodes > 1); with one it would change nothing"
        )
    if sync_batchnorm and device == "cpu":
        raise ConfigError(
            f"parameter '{prefix}sync_batchnorm'=True needs device 'cuda' (or 'auto' on a GPU "
            "machine): torch's DistributedDataParallel refuses SyncBatchNorm on CPU"
        )


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

    @classmethod
    def from_namespace(cls: type[C], namespace: Mapping[str, Any]) -> C:
        """The config from a notebook's namespace (its parameters cell): every field found there
        is taken, through :meth:`from_params` (types checked). A notebook builds its config in
        one line, ``Config.from_namespace(globals())``; tests/test_notebooks.py checks that every
        parameter of the notebook is a field with the same default."""
        return cls.from_params(
            **{f.name: namespace[f.name] for f in fields(cls) if f.name in namespace}
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def identity(self) -> dict[str, Any]:
        """The fields that define the computation (hashed into a run id): every field except
        display-only ones (``field(metadata={"display": True})``), job-level ones that say
        which runs a notebook job makes (``field(metadata={"job": True})``), and execution
        options that are left at their default (``field(metadata={"identity":
        "unless_default"})``): a field added later this way (say ``devices`` or
        ``torch_compile``) leaves every existing run id, and so every cached result, as it was,
        while a run that sets it gets its own id."""
        out = {}
        for f in fields(self):
            if f.metadata.get("display") or f.metadata.get("job"):
                continue
            value = getattr(self, f.name)
            if f.metadata.get("identity") == "unless_default" and value == f.default:
                continue
            out[f.name] = value
        return out
