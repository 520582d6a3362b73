"""Configs of the training notebooks: 01 (pretraining), 02 and 03 (transfer, label fractions)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from medstudy import arms
from medstudy.config.base import (
    FUSION_MODES,
    PROTOCOLS,
    ConfigError,
    StageConfig,
    _positive,
    validate_arm,
    validate_backbone_name,
    validate_dataset,
    validate_device,
    validate_image_size,
    validate_parallel,
    validate_ssl_weights,
    validate_weights_file,
)
from medstudy.data.info import INFO
from medstudy.data.sampling import validate_fraction
from medstudy.metrics import SELECT_METRICS
from medstudy.models import backbone_stride, timm_arch
from medstudy.ssl import get_method
from medstudy.weights import SSL_RELEASES


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
    # Each method trains with its own optimiser recipe (medstudy.ssl METHODS[m].optim: SGD,
    # Adam or LAMB, weight decay, LR = base LR x batch_size / base batch); lr_scale multiplies
    # that LR (1 = the recipe; e.g. for an LR sweep).
    lr_scale: float = 1.0
    # Backbone LR = lr * this for arms that start from natural-image weights
    # (natural_sup+ssl:*); the fresh heads always train at lr. Below 1 keeps the natural
    # features from being erased by the first large SSL steps.
    natural_lr_mult: float = 1.0
    max_train: int = 512  # 0 = the whole train split
    # val images the kNN monitor scores at most (stratified, seed 0); 0 = the whole val split.
    # Only a tiny plumbing run sets it (params/overrides/cpu_tiny.yaml).
    max_val: int = field(default=0, metadata={"identity": "unless_default"})
    curriculum: tuple[str, ...] = ("simclr:1", "spark:1")  # "method:epochs" stages
    knn_k: int = 20
    seed: int = 0
    device: str = "cpu"
    # Local weight files (absolute, or relative to MEDSTUDY_DATA_DIR; md5 checked against a
    # checksums.json declaration, and recorded in the run's inputs). natural_weights: the
    # natural_sup init's checkpoint (timm models: a timm state_dict; resnet20_cifar: a
    # resnet20_cifar10.th-format file); "" = timm's download / the data dir's resnet20 file.
    natural_weights: str = ""
    # natural_ssl: the release (medstudy.weights.SSL_RELEASES: dino, swav, mocov2) and a local
    # copy of its file for offline machines ("" = download from its official URL).
    natural_ssl_weights: str = "dino"
    natural_ssl_file: str = ""
    # Execution option: compile every backbone stage with torch.compile (inductor) in the SSL
    # stages (medstudy.pretrain.module.compile_stages). Fused kernels round differently, so a
    # compiled run has its own run id; at False (default) every existing run id is unchanged.
    torch_compile: bool = field(default=False, metadata={"identity": "unless_default"})
    # the SSL recipe whose augmented views notebook 01 shows
    views_method: str = field(default="simclr", metadata={"display": True})
    # the kNN monitor runs after every knn_every-th epoch and after each stage's last one; it
    # only observes (deterministic, BatchNorm mode restored), so the encoder does not depend on it
    knn_every: int = field(default=1, metadata={"display": True})
    # Pretraining replicates run by one notebook job (a paired profile, DESIGN §6): one run per
    # seed, each with its own run folder and the config of that seed; () = the one run of
    # ``seed``. A job-level setting, not part of any run's identity: the run of seed s is the
    # same whether its job ran one seed or several.
    replicates: tuple[int, ...] = field(default=(), metadata={"job": True})
    # Data-parallel training (DDP, medstudy.pretrain.distributed): processes per node, nodes,
    # and torch's SyncBatchNorm (GPU only). batch_size stays the global batch: each of the
    # devices x num_nodes ranks trains on its 1/world share of every step's batch. Execution
    # options: at their defaults they are not in the run id (existing runs keep theirs).
    devices: int = field(default=1, metadata={"identity": "unless_default"})
    num_nodes: int = field(default=1, metadata={"identity": "unless_default"})
    sync_batchnorm: bool = field(default=False, metadata={"identity": "unless_default"})

    def __post_init__(self) -> None:
        validate_dataset(self.dataset)
        validate_arm(self.arm)
        validate_parallel(self.devices, self.num_nodes, self.sync_batchnorm, self.device)
        if self.batch_size % (self.devices * self.num_nodes):
            raise ConfigError(
                f"parameter 'batch_size'={self.batch_size} is the global batch and must be a "
                f"multiple of devices x num_nodes = {self.devices * self.num_nodes}"
            )
        if any(s < 0 for s in self.replicates) or len(set(self.replicates)) < len(self.replicates):
            raise ConfigError(
                f"parameter 'replicates' must be distinct seeds >= 0, got {list(self.replicates)}"
            )
        validate_backbone_name(self.backbone)
        validate_image_size(self.dataset, self.image_size)
        _positive("epochs", self.epochs, allow_zero=True)
        _positive("batch_size", self.batch_size)
        _positive("lr_scale", self.lr_scale)
        _positive("natural_lr_mult", self.natural_lr_mult)
        _positive("max_train", self.max_train, allow_zero=True)
        _positive("max_val", self.max_val, allow_zero=True)
        _positive("knn_k", self.knn_k)
        _positive("knn_every", self.knn_every)
        try:
            get_method(self.views_method)
        except ValueError as err:
            raise ConfigError(f"parameter 'views_method': {err}") from None
        validate_device(self.device)
        try:
            arms.parse_curriculum(self.curriculum)
        except ValueError as err:
            raise ConfigError(f"parameter 'curriculum': {err}") from None
        validate_weights_file("natural_weights", self.natural_weights)
        validate_ssl_weights("natural_ssl_weights", self.natural_ssl_weights)
        validate_weights_file("natural_ssl_file", self.natural_ssl_file)
        arch = SSL_RELEASES[self.natural_ssl_weights].arch
        if self.arm == "natural_ssl" and timm_arch(self.backbone) != arch:
            raise ConfigError(
                f"arm 'natural_ssl' ({self.natural_ssl_weights} self-supervised ImageNet "
                f"weights, a {arch}) needs backbone 'timm:{arch}' (a pretrained tag such as "
                f"'timm:{arch}.a1_in1k' is the same network), got {self.backbone!r}"
            )
        stages = arms.parse_curriculum(self.curriculum) if self.arm == "curriculum" else ()
        uses_spark = arms.arm_method(self.arm) == "spark" or any(
            st.method == "spark" for st in stages
        )
        stride = backbone_stride(self.backbone)
        if uses_spark and (self.image_size % stride or self.image_size < 2 * stride):
            # a 1x1 grid at mask ratio 0.6 keeps round(0.4) = 0 patches: nothing to encode
            raise ConfigError(
                f"parameter 'image_size'={self.image_size}: SparK (arm {self.arm!r}) masks the "
                f"last stage's grid, so the side must be a multiple of {self.backbone}'s stride "
                f"{stride} and at least 2x it; valid: e.g. "
                f"{[s for s in (28, 32, 64, 128, 224) if s % stride == 0 and s >= 2 * stride]}"
            )

    def runs(self) -> list[PretrainConfig]:
        """The runs of this job, in order: one per seed of ``replicates``, else ``seed``'s."""
        return [replace(self, seed=s, replicates=()) for s in self.replicates] or [self]


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
    # Model-selection val images at most (stratified, seed CAP_SEED, the same for every unit);
    # 0 = the whole val split. Val only picks the probe's L2 and the best epoch; the test split
    # is never capped here.
    max_val: int = 0
    # Test images at most (stratified, seed CAP_SEED, the same for every unit); 0 = the whole
    # test split, as every real study uses. Only a tiny plumbing run sets it
    # (params/overrides/cpu_tiny.yaml); a capped unit hashes its test ids into its run id.
    max_test: int = field(default=0, metadata={"identity": "unless_default"})
    # "pool": fractions are of the train split capped to max_train (seed-fixed pool);
    # "split": of the whole train split, max_train capping each unit's labelled count.
    fractions_of: str = "pool"
    # "full": model selection (probe L2, early stopping) on the whole val split; "fraction":
    # on a val subset of the same label fraction, >= 5 per class (a realistic low-label study).
    val_labels: str = "full"
    fusion_arms: tuple[str, ...] = ()  # DVME inputs; () = no fusion
    # Write each fine-tuned unit's weights (finetuned.pt, ~94 MB for a ResNet-50). Notebooks
    # 04-06 read notebook 02's; nothing reads notebook 03's, which full has 390 of per dataset.
    # What a run keeps, not what it computes: not part of any run id.
    keep_finetuned: bool = field(default=True, metadata={"job": True})
    fusion_modes: tuple[str, ...] = ("encoders", "dims", "concat")
    backbone: str = "resnet20_cifar"
    image_size: int = 28
    pretrain_epochs: int = 1
    pretrain_batch_size: int = 256
    pretrain_lr_scale: float = 1.0
    pretrain_natural_lr_mult: float = 1.0
    pretrain_max_train: int = 512
    pretrain_max_val: int = field(default=0, metadata={"identity": "unless_default"})
    pretrain_curriculum: tuple[str, ...] = ("simclr:1", "spark:1")
    pretrain_seed: int = 0
    # notebook 01's natural weights (PretrainConfig.natural_weights, natural_ssl_*)
    pretrain_natural_weights: str = ""
    pretrain_natural_ssl_weights: str = "dino"
    pretrain_natural_ssl_file: str = ""
    # notebook 01's torch_compile (a compiled pretraining run has its own run id)
    pretrain_torch_compile: bool = field(default=False, metadata={"identity": "unless_default"})
    # Pretraining replicates (DESIGN §6): downstream seed s uses the encoder pretrained with
    # seed s, so CIs over seeds cover the pretraining's randomness; False: every seed uses the
    # encoder of pretrain_seed (one pretraining run per arm).
    pretrain_paired: bool = False
    # notebook 01's data-parallel settings (PretrainConfig.devices, ...): they are in its run id
    pretrain_devices: int = field(default=1, metadata={"identity": "unless_default"})
    pretrain_num_nodes: int = field(default=1, metadata={"identity": "unless_default"})
    pretrain_sync_batchnorm: bool = field(default=False, metadata={"identity": "unless_default"})
    device: str = "cpu"
    n_boot: int = field(default=500, metadata={"display": True})  # replicates of plotted CIs

    def __post_init__(self) -> None:
        validate_dataset(self.dataset)
        validate_backbone_name(self.backbone)
        validate_device(self.device)
        _positive("n_boot", self.n_boot)
        validate_image_size(self.dataset, self.image_size)
        # 0 = the whole train split; a negative cap would silently mean the same
        _positive("max_train", self.max_train, allow_zero=True)
        _positive("max_val", self.max_val, allow_zero=True)
        _positive("max_test", self.max_test, allow_zero=True)
        for arm in (*self.arms, *self.fusion_arms, *self.finetune_arms):
            validate_arm(arm)
        for p in self.protocols:
            if p not in PROTOCOLS:
                raise ConfigError(f"unknown protocol {p!r}; valid: {list(PROTOCOLS)}")
        for m in self.fusion_modes:
            if m not in FUSION_MODES:
                raise ConfigError(f"unknown fusion mode {m!r}; valid: {list(FUSION_MODES)}")
        for name in ("fractions", "finetune_fractions"):
            for f in getattr(self, name):
                try:
                    validate_fraction(f, name)
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
        validate_weights_file("pretrain_natural_weights", self.pretrain_natural_weights)
        validate_ssl_weights("pretrain_natural_ssl_weights", self.pretrain_natural_ssl_weights)
        validate_weights_file("pretrain_natural_ssl_file", self.pretrain_natural_ssl_file)
        validate_parallel(
            self.pretrain_devices,
            self.pretrain_num_nodes,
            self.pretrain_sync_batchnorm,
            self.device,
            prefix="pretrain_",
        )
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
            lr_scale=self.pretrain_lr_scale,
            natural_lr_mult=self.pretrain_natural_lr_mult,
            max_train=self.pretrain_max_train,
            max_val=self.pretrain_max_val,
            curriculum=self.pretrain_curriculum,
            seed=self.pretrain_seed if seed is None else seed,
            device=self.device,
            natural_weights=self.pretrain_natural_weights,
            natural_ssl_weights=self.pretrain_natural_ssl_weights,
            natural_ssl_file=self.pretrain_natural_ssl_file,
            torch_compile=self.pretrain_torch_compile,
            devices=self.pretrain_devices,
            num_nodes=self.pretrain_num_nodes,
            sync_batchnorm=self.pretrain_sync_batchnorm,
        )


@dataclass(frozen=True)
class LabelEfficiencyConfig(TransferConfig):
    """Notebook 03: the transfer protocols at label fractions (stratified, nested, seeded)."""

    stage: ClassVar[str] = "label_efficiency"
    protocols: tuple[str, ...] = ("linear", "knn")
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
