"""One frozen dataclass per stage, built from a notebook's papermill parameters.

``Stage.from_params(**params)`` rejects unknown names (listing the valid ones) and wrong types
(naming the field) before any work; ``__post_init__`` checks values (dataset, arm, method,
fraction in (0, 1], …) and names the valid choices. A config is the input of ``run_id``.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar, get_args, get_origin, get_type_hints

from medstudy import arms, paths
from medstudy.data.info import INFO
from medstudy.data.sampling import validate_fraction
from medstudy.distortions import DISTORTIONS, SEVERITIES
from medstudy.metrics import SELECT_METRICS
from medstudy.models import validate_backbone
from medstudy.runtime import DEVICES
from medstudy.ssl import get_method

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
    """A dataset must be in INFO or be a ``<name>.npz`` in the data dir."""
    if name in INFO or (paths.data_dir() / f"{name}.npz").exists():
        return name
    raise ConfigError(
        f"unknown dataset {name!r}; valid: {sorted(INFO)} "
        f"or any MedMNIST-format <name>.npz in {paths.data_dir()}"
    )


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


def validate_device(device: str) -> str:
    if device not in DEVICES:
        raise ConfigError(f"parameter 'device' must be one of {list(DEVICES)}, got {device!r}")
    return device


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
        display-only ones (``field(metadata={"display": True})``)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("display")
        }


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
    max_train: int = 512  # 0 = the whole train split
    curriculum: tuple[str, ...] = ("simclr:1", "spark:1")  # "method:epochs" stages
    knn_k: int = 20
    seed: int = 0
    device: str = "cpu"
    # the SSL recipe whose augmented views notebook 01 shows
    views_method: str = field(default="simclr", metadata={"display": True})

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
        try:
            get_method(self.views_method)
        except ValueError as err:
            raise ConfigError(f"parameter 'views_method': {err}") from None
        validate_device(self.device)
        try:
            arms.parse_curriculum(self.curriculum)
        except ValueError as err:
            raise ConfigError(f"parameter 'curriculum': {err}") from None
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
    protocols: tuple[str, ...] = ("linear", "knn", "finetune")
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
    # "pool": fractions are of the train split capped to max_train (seed-fixed pool);
    # "split": of the whole train split, max_train capping each unit's labelled count.
    fractions_of: str = "pool"
    # "full": model selection (probe L2, early stopping) on the whole val split; "fraction":
    # on a val subset of the same label fraction, >= 5 per class (a realistic low-label study).
    val_labels: str = "full"
    fusion_arms: tuple[str, ...] = ()  # DVME inputs; () = no fusion
    fusion_modes: tuple[str, ...] = ("encoders", "dims", "concat")
    backbone: str = "resnet20_cifar"
    image_size: int = 28
    pretrain_epochs: int = 1
    pretrain_batch_size: int = 256
    pretrain_lr: float = 0.06
    pretrain_natural_lr_mult: float = 1.0
    pretrain_max_train: int = 512
    pretrain_curriculum: tuple[str, ...] = ("simclr:1", "spark:1")
    pretrain_seed: int = 0
    # Pretraining replicates (DESIGN §6): downstream seed s uses the encoder pretrained with
    # seed s, so CIs over seeds cover the pretraining's randomness; False: every seed uses the
    # encoder of pretrain_seed (one pretraining run per arm).
    pretrain_paired: bool = False
    device: str = "cpu"
    n_boot: int = field(default=500, metadata={"display": True})  # replicates of plotted CIs

    def __post_init__(self) -> None:
        validate_dataset(self.dataset)
        validate_backbone_name(self.backbone)
        validate_device(self.device)
        _positive("n_boot", self.n_boot)
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
        for name, value, valid in (
            ("fractions_of", self.fractions_of, ("pool", "split")),
            ("val_labels", self.val_labels, ("full", "fraction")),
        ):
            if value not in valid:
                raise ConfigError(f"unknown {name} {value!r}; valid: {list(valid)}")
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
class LabelEfficiencyConfig(TransferConfig):
    """Notebook 03: the transfer protocols at label fractions (stratified, nested, seeded)."""

    stage: ClassVar[str] = "label_efficiency"
    protocols: tuple[str, ...] = ("linear", "knn")
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)


@dataclass(frozen=True)
class RobustnessConfig(StageConfig):
    """Notebook 06: every fine-tuned model of the transfer stage under the distortion suite."""

    stage: ClassVar[str] = "robustness"
    dataset: str = "pneumoniamnist"
    arms: tuple[str, ...] = ("scratch", "natural_sup")
    seeds: tuple[int, ...] = (0,)
    protocol: str = "finetune"  # the transfer units to distort: finetune or linear
    fraction: float = 1.0  # their label fraction
    source_stage: str = "transfer"  # the stage whose units are read (notebook 02)
    image_size: int = 28  # the units' image size
    distortions: tuple[str, ...] = ()  # () = the dataset's modality suite
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    max_test: int = 0  # cap on test images (stratified, seed 0); 0 = the whole test split
    device: str = "cpu"
    example_index: int = field(default=0, metadata={"display": True})  # image of the grid

    def __post_init__(self) -> None:
        validate_dataset(self.dataset)
        validate_device(self.device)
        for arm in self.arms:
            validate_arm(arm)
        if not self.arms or not self.seeds:
            raise ConfigError("parameters 'arms' and 'seeds' must be non-empty")
        if self.protocol not in ("finetune", "linear"):
            raise ConfigError(
                f"unknown protocol {self.protocol!r} for robustness; valid: ['finetune', 'linear']"
            )
        if self.source_stage not in ("transfer", "label_efficiency"):
            raise ConfigError(
                f"unknown source_stage {self.source_stage!r}; valid: ['transfer', "
                "'label_efficiency']"
            )
        try:
            validate_fraction(self.fraction, "fraction")
        except (TypeError, ValueError) as err:
            raise ConfigError(str(err)) from None
        for name in self.distortions:
            if name not in DISTORTIONS:
                raise ConfigError(f"unknown distortion {name!r}; valid: {sorted(DISTORTIONS)}")
        for sev in self.severities:
            if sev not in SEVERITIES:
                raise ConfigError(f"severity {sev!r} outside 1-5; valid: {list(SEVERITIES)}")
        if not self.severities:
            raise ConfigError("parameter 'severities' must be non-empty")
        _positive("max_test", self.max_test, allow_zero=True)
        _positive("example_index", self.example_index, allow_zero=True)


@dataclass(frozen=True)
class RepresentationsConfig(StageConfig):
    """Notebook 04: per-layer statistics of the pretrained (01) and fine-tuned (02) encoders on a
    fixed seeded sample of the test split (claim C9)."""

    stage: ClassVar[str] = "representations"
    #: Encoders a unit can read: notebook 01's encoders, or notebook 02's fine-tuned backbones.
    SOURCES: ClassVar[tuple[str, ...]] = ("pretrained", "finetuned")

    dataset: str = "synth_lesions"
    arms: tuple[str, ...] = ("scratch", "natural_sup")
    seeds: tuple[int, ...] = (0,)
    sources: tuple[str, ...] = ("pretrained", "finetuned")
    finetune_arms: tuple[str, ...] = ()  # arms of the "finetuned" source; () = every arm
    n_samples: int = 500  # stratified seeded sample of the test split; 0 = the whole split
    n_spectrum: int = 100  # PCA components kept per layer (the DR study's 100)
    views_recipe: str = "simclr"  # medstudy.augment.RECIPES entry for alignment/uniformity
    backbone: str = "resnet20_cifar"
    image_size: int = 28
    # notebook 01's settings, as TransferConfig's pretrain_* fields (to find its checkpoints)
    pretrain_epochs: int = 1
    pretrain_batch_size: int = 256
    pretrain_lr: float = 0.06
    pretrain_natural_lr_mult: float = 1.0
    pretrain_max_train: int = 512
    pretrain_curriculum: tuple[str, ...] = ("simclr:1", "spark:1")
    pretrain_seed: int = 0
    pretrain_paired: bool = False
    device: str = "cpu"
    n_boot: int = field(default=500, metadata={"display": True})  # replicates of table CIs
    cka_debiased: bool = field(default=False, metadata={"display": True})
    tsne_perplexity: float = 30.0

    def __post_init__(self) -> None:
        from medstudy.augment import RECIPES  # only for the recipe names

        validate_dataset(self.dataset)
        validate_backbone_name(self.backbone)
        validate_device(self.device)
        if not self.arms or not self.seeds or not self.sources:
            raise ConfigError("parameters 'arms', 'seeds' and 'sources' must be non-empty")
        for arm in (*self.arms, *self.finetune_arms):
            validate_arm(arm)
        for source in self.sources:
            if source not in self.SOURCES:
                raise ConfigError(f"unknown source {source!r}; valid: {list(self.SOURCES)}")
        extra = sorted(set(self.finetune_arms) - set(self.arms))
        if extra:
            raise ConfigError(f"finetune_arms {extra} are not in 'arms' {list(self.arms)}")
        two_view = sorted(k for k, r in RECIPES.items() if r.n_views >= 2)
        if self.views_recipe not in two_view:
            raise ConfigError(
                f"unknown views_recipe {self.views_recipe!r} (alignment needs two views); "
                f"valid: {two_view}"
            )
        _positive("n_samples", self.n_samples, allow_zero=True)
        if 0 < self.n_samples < 8:
            raise ConfigError(f"parameter 'n_samples' must be 0 (all) or >= 8: {self.n_samples}")
        for name in ("n_spectrum", "n_boot", "tsne_perplexity", "image_size"):
            _positive(name, getattr(self, name))
        # The encoders' notebook-01 configs validate the arm x backbone rules (e.g. natural_ssl).
        for arm in self.arms:
            self.transfer_config().pretrain_config(arm)

    def transfer_config(self) -> TransferConfig:
        """The notebook-02 config whose encoders (``pretrain_config``, ``pretrain_paired``) and
        fine-tuned units this stage reads."""
        return TransferConfig(
            dataset=self.dataset,
            arms=self.arms,
            seeds=self.seeds,
            backbone=self.backbone,
            image_size=self.image_size,
            pretrain_epochs=self.pretrain_epochs,
            pretrain_batch_size=self.pretrain_batch_size,
            pretrain_lr=self.pretrain_lr,
            pretrain_natural_lr_mult=self.pretrain_natural_lr_mult,
            pretrain_max_train=self.pretrain_max_train,
            pretrain_curriculum=self.pretrain_curriculum,
            pretrain_seed=self.pretrain_seed,
            pretrain_paired=self.pretrain_paired,
            device=self.device,
        )


@dataclass(frozen=True)
class InterpretConfig(StageConfig):
    """Notebook 05: attributions of the transfer stage's fine-tuned models scored against
    ground-truth lesion masks by lesion size (``synth_lesions``) and against lung fields on chest
    X-rays, with the randomisation sanity check (claim C7)."""

    stage: ClassVar[str] = "interpretability"
    dataset: str = "synth_lesions"  # synth_lesions (lesion masks) or a chest X-ray (lung fields)
    arms: tuple[str, ...] = ("scratch", "natural_sup")
    seeds: tuple[int, ...] = (0,)
    # Keys of medstudy.attribution.ATTRIBUTIONS. Occlusion is left out of the default: one
    # forward pass per window position (13 x 13 at 28 px) costs ~0.6-1.2 s per image on one CPU
    # core, 3-5x integrated gradients and ~300x Grad-CAM; add it where the budget allows.
    methods: tuple[str, ...] = ("grad_cam", "saliency", "integrated_gradients")
    # A fixed seeded sample of the test split (the same images for every arm and seed); on
    # synth_lesions only images with lesions. 0 = every eligible image.
    n_images: int = 200
    ig_steps: int = 32  # integrated-gradients steps (Gauss-Legendre: accurate with few steps)
    protocol: str = "finetune"  # the transfer units to explain: finetune or linear
    fraction: float = 1.0  # their label fraction
    source_stage: str = "transfer"  # the stage whose units are read (notebook 02)
    image_size: int = 28  # the units' image size
    # Pointing-game tolerance (px): a hit is a top pixel within this distance of a mask pixel.
    # 1 px absorbs the coarseness of maps upsampled from a 7 x 7 Grad-CAM grid at 28 px; 0 is
    # the strict game.
    pointing_tolerance: float = 1.0
    lung_fields: bool = True  # lung-field mass on chest X-ray datasets (no-op elsewhere)
    erase_minute: bool = True  # synth_lesions: accuracy with the minute lesions inpainted
    sanity_check: bool = True  # cascading randomisation (Adebayo et al. 2018) per method
    sanity_images: int = 8  # the first images of the sample used by the sanity check
    # A method is flagged (and left out of C7) when the fully randomised model's maps still
    # have a mean Spearman correlation >= this with the trained model's.
    sanity_threshold: float = 0.5
    device: str = "cpu"
    n_overlay: int = field(default=4, metadata={"display": True})  # images in the overlay grid
    n_lung_figure: int = field(default=32, metadata={"display": True})  # CXRs in the mask check
    n_boot: int = field(default=1000, metadata={"display": True})  # bootstrap CI replicates

    def __post_init__(self) -> None:
        # Imported here: captum costs ~0.7 s at import and only this config needs it.
        from medstudy.attribution import ATTRIBUTIONS
        from medstudy.distortions import DATASET_MODALITY

        validate_dataset(self.dataset)
        validate_device(self.device)
        for arm in self.arms:
            validate_arm(arm)
        if not self.arms or not self.seeds or not self.methods:
            raise ConfigError("parameters 'arms', 'seeds' and 'methods' must be non-empty")
        for name in self.methods:
            if name not in ATTRIBUTIONS:
                raise ConfigError(
                    f"unknown attribution method {name!r}; valid: {sorted(ATTRIBUTIONS)}"
                )
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"parameter 'methods' repeats a method: {list(self.methods)}")
        if self.dataset in INFO and INFO[self.dataset].is_multilabel:
            raise ConfigError(
                f"dataset {self.dataset!r} is multi-label: the attribution target is the true "
                "class, so only single-label datasets are valid: e.g. pneumoniamnist"
            )
        cxr = [
            d
            for d, m in sorted(DATASET_MODALITY.items())
            if m == "cxr" and not (d in INFO and INFO[d].is_multilabel)
        ]
        scorable = ["synth_lesions", *(cxr if self.lung_fields else [])]
        if self.dataset not in scorable:
            raise ConfigError(
                f"dataset {self.dataset!r} has no ground-truth mask to score attributions "
                f"against; valid: {scorable} (synth_lesions: lesion masks; chest X-rays: lung "
                "fields, with lung_fields true)"
            )
        if self.protocol not in ("finetune", "linear"):
            raise ConfigError(
                f"unknown protocol {self.protocol!r} for interpretability; valid: "
                "['finetune', 'linear']"
            )
        if self.source_stage not in ("transfer", "label_efficiency"):
            raise ConfigError(
                f"unknown source_stage {self.source_stage!r}; valid: ['transfer', "
                "'label_efficiency']"
            )
        try:
            validate_fraction(self.fraction, "fraction")
        except (TypeError, ValueError) as err:
            raise ConfigError(str(err)) from None
        _positive("n_images", self.n_images, allow_zero=True)
        _positive("ig_steps", self.ig_steps)
        _positive("image_size", self.image_size)
        _positive("pointing_tolerance", self.pointing_tolerance, allow_zero=True)
        if self.sanity_images < 2:
            raise ConfigError(f"parameter 'sanity_images' must be >= 2: {self.sanity_images}")
        if not -1.0 < self.sanity_threshold <= 1.0:
            raise ConfigError(
                f"parameter 'sanity_threshold' must be in (-1, 1]: {self.sanity_threshold}"
            )
        _positive("n_overlay", self.n_overlay, allow_zero=True)
        _positive("n_lung_figure", self.n_lung_figure, allow_zero=True)
        _positive("n_boot", self.n_boot)


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
