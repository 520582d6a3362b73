"""Configs of the analysis notebooks: 04 (representations), 05 (interpretability), 06
(robustness) and 07 (claims)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from medstudy.config.base import (
    ConfigError,
    StageConfig,
    _positive,
    validate_arm,
    validate_backbone_name,
    validate_dataset,
    validate_device,
    validate_image_size,
)
from medstudy.config.training import TransferConfig
from medstudy.data.info import INFO
from medstudy.data.sampling import validate_fraction
from medstudy.distortions import DISTORTIONS, SEVERITIES


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
        validate_image_size(self.dataset, self.image_size)
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
    pretrain_lr_scale: float = 1.0
    pretrain_natural_lr_mult: float = 1.0
    pretrain_max_train: int = 512
    pretrain_max_val: int = field(default=0, metadata={"identity": "unless_default"})
    pretrain_curriculum: tuple[str, ...] = ("simclr:1", "spark:1")
    pretrain_seed: int = 0
    pretrain_natural_weights: str = ""
    pretrain_natural_ssl_weights: str = "dino"
    pretrain_natural_ssl_file: str = ""
    pretrain_torch_compile: bool = field(default=False, metadata={"identity": "unless_default"})
    pretrain_devices: int = field(default=1, metadata={"identity": "unless_default"})
    pretrain_num_nodes: int = field(default=1, metadata={"identity": "unless_default"})
    pretrain_sync_batchnorm: bool = field(default=False, metadata={"identity": "unless_default"})
    pretrain_paired: bool = False
    device: str = "cpu"
    n_boot: int = field(default=200, metadata={"display": True})  # bootstrap SE of table CIs
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
        if extra := sorted(set(self.finetune_arms) - set(self.arms)):
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
        validate_image_size(self.dataset, self.image_size)
        # The encoders' notebook-01 configs validate the arm x backbone rules (e.g. natural_ssl).
        for arm in self.arms:
            self.transfer_config().pretrain_config(arm)

    def transfer_config(self) -> TransferConfig:
        """The notebook-02 config whose encoders (``pretrain_config``, ``pretrain_paired``) and
        fine-tuned units this stage reads: every field the two configs share."""
        shared = {f.name for f in fields(TransferConfig)} & {f.name for f in fields(self)}
        return TransferConfig(**{name: getattr(self, name) for name in shared})


@dataclass(frozen=True)
class InterpretConfig(StageConfig):
    """Notebook 05: attributions of the transfer stage's fine-tuned models scored against
    ground-truth lesion masks by lesion size (``synth_lesions``) and against lung fields on chest
    X-rays, with the randomisation sanity check (claim C7)."""

    stage: ClassVar[str] = "interpretability"
    dataset: str = "synth_lesions"  # synth_lesions (lesion masks) or a chest X-ray (lung fields)
    arms: tuple[str, ...] = ("scratch", "natural_sup")
    seeds: tuple[int, ...] = (0,)
    # Keys of medstudy.attribution.ATTRIBUTIONS. Occlusion is not a default: 13 x 13 forward
    # passes per image at 28 px cost ~1.2 s per image on one CPU core (5x IG, 300x Grad-CAM).
    methods: tuple[str, ...] = ("grad_cam", "saliency", "integrated_gradients")
    n_images: int = 200  # seeded test sample, same for all arms (synth: with lesions); 0 = all
    ig_steps: int = 32  # integrated-gradients steps (Gauss-Legendre: accurate with few steps)
    protocol: str = "finetune"  # the transfer units to explain: finetune or linear
    fraction: float = 1.0  # their label fraction
    source_stage: str = "transfer"  # the stage whose units are read (notebook 02)
    image_size: int = 28  # the units' image size
    # Pointing-game tolerance (px); 1 px absorbs the coarseness of maps upsampled from Grad-CAM's
    # 7 x 7 grid at 28 px; 0 is the strict game.
    pointing_tolerance: float = 1.0
    lung_fields: bool = True  # lung-field mass on chest X-ray datasets (no-op elsewhere)
    erase_minute: bool = True  # synth_lesions: accuracy with the minute lesions inpainted
    sanity_check: bool = True  # cascading randomisation (Adebayo et al. 2018) per method
    sanity_images: int = 8  # the first images of the sample used by the sanity check
    sanity_threshold: float = 0.5  # flag a method whose fully random maps still correlate >= this
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
        if self.dataset in INFO and INFO[self.dataset].is_multilabel:  # target: the true class
            raise ConfigError(f"dataset {self.dataset!r} is multi-label; valid: single-label sets")
        cxr = [
            d
            for d, m in sorted(DATASET_MODALITY.items())
            if m == "cxr" and self.lung_fields and not (d in INFO and INFO[d].is_multilabel)
        ]
        if self.dataset not in ("synth_lesions", *cxr):
            raise ConfigError(
                f"dataset {self.dataset!r} has no ground-truth mask to score attributions against;"
                f" valid: {['synth_lesions', *cxr]} (lesion masks; lung fields if lung_fields)"
            )
        for name, value, valid in (
            ("protocol", self.protocol, ["finetune", "linear"]),
            ("source_stage", self.source_stage, ["transfer", "label_efficiency"]),
        ):
            if value not in valid:
                raise ConfigError(f"unknown {name} {value!r} for interpretability; valid: {valid}")
        try:
            validate_fraction(self.fraction, "fraction")
        except (TypeError, ValueError) as err:
            raise ConfigError(str(err)) from None
        for name in ("ig_steps", "image_size", "n_boot"):
            _positive(name, getattr(self, name))
        validate_image_size(self.dataset, self.image_size)
        for name in ("n_images", "pointing_tolerance", "n_overlay", "n_lung_figure"):
            _positive(name, getattr(self, name), allow_zero=True)
        if self.sanity_images < 2 or not -1.0 < self.sanity_threshold <= 1.0:
            raise ConfigError(
                "need sanity_images >= 2 and sanity_threshold in (-1, 1], got "
                f"{self.sanity_images} and {self.sanity_threshold}"
            )


@dataclass(frozen=True)
class ClaimsConfig(StageConfig):
    """Notebook 07: statistics over every finished result."""

    stage: ClassVar[str] = "claims"
    alpha: float = 0.05
    correction: str = "holm"
    # a directional verdict needs at least this many paired training seeds (DESIGN §6)
    min_seeds: int = 3
    n_boot: int = 2000
    seed: int = 0
    profile: str = "quick"
    datasets: tuple[str, ...] = field(default_factory=tuple)  # () = every dataset with results
    # pair runs of one stage made by different code versions (manifest "code"); False refuses,
    # naming them (results of old and new code must not meet in one test silently)
    allow_mixed_code: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"parameter 'alpha' must be in (0, 1), got {self.alpha}")
        if self.correction not in ("holm", "fdr_bh"):
            raise ConfigError(f"unknown correction {self.correction!r}; valid: ['holm', 'fdr_bh']")
        _positive("n_boot", self.n_boot)
        _positive("min_seeds", self.min_seeds)
