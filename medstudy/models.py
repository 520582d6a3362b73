"""Backbones, weight loading and task heads.

``BACKBONES`` maps a name to a :class:`BackboneSpec`; ``timm:<name>`` reaches any timm model.
Every backbone is an :class:`Backbone`: it takes the normalised 3-channel input of
:func:`medstudy.data.to_model_input` (grey images are replicated to 3 channels there, explicitly,
so natural-image weights apply unchanged), returns pooled features of width ``feature_dim`` and
exposes its ``stages`` so that SparK can re-mask after each one and the representation analysis
can read per-stage outputs.

Inits (:data:`INITS`): ``scratch`` (seeded random), ``natural_sup`` (supervised natural-image
weights: the CIFAR-10 ResNet-20 file, or timm's ImageNet weights, downloaded or from a local
timm checkpoint) and ``natural_ssl`` (a self-supervised ImageNet ResNet-50 release,
:mod:`medstudy.weights`). Natural-image weights never fall back to random ones: a missing or
wrong file is an error that names the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medstudy import paths
from medstudy.data.info import DatasetInfo
from medstudy.weights import WeightsError, get_release, load_release, load_timm_file, offline

RESNET20_FILE = "resnet20_cifar10.th"
RESNET20_MD5 = "1f38c81cdebd6bcce9b03d082161a36c"


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the NHWC memory layout (the same values; a no-op if it already is, or not 4-D).

    Every backbone computes in this layout, weights (:func:`create_backbone`) and inputs alike:
    oneDNN's convolutions are several times faster in NHWC on CPU for the small images of the
    CPU profiles (benchmarks/README.md, "channels_last"), and the numbers are computed by
    another kernel, so runs from before this layout differ at float rounding level.
    """
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class Backbone(nn.Module):
    """A feature extractor made of sequential ``stages`` followed by global average pooling."""

    name: str
    feature_dim: int
    stages: nn.ModuleList

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every stage, in order (the last one is the un-pooled feature map)."""
        outs = []
        x = channels_last(x)
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(fmap, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_last(x)
        for stage in self.stages:
            x = stage(x)
        return self.pool(x)

    @property
    def stage_channels(self) -> list[int]:
        with torch.no_grad():
            was_training = self.training
            self.eval()
            outs = self.forward_stages(torch.zeros(1, 3, 32, 32))
            self.train(was_training)
        return [int(o.shape[1]) for o in outs]


# ---------------------------------------------------------------- ResNet-20 (He et al. 2016) --
class _ShortcutA(nn.Module):
    """Option-A shortcut: parameter-free, subsample by 2 and zero-pad the new channels."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        self.pad = (planes - in_planes) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            _ShortcutA(in_planes, planes) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))


class ResNet20Cifar(Backbone):
    """The CIFAR ResNet-20 of He et al. 2016 (§4.2): 3 stages × 3 basic blocks, 16/32/64 wide.

    Parameter names follow ``resnet20_cifar10.th`` (``conv1``, ``bn1``, ``layer{1,2,3}.{i}``),
    so the checkpoint loads strictly. At 28 px the stages output 28, 14 and 7 px maps.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name = "resnet20_cifar"
        self.feature_dim = 64
        stem = _Stem()
        layers = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(3):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList([stem, *layers])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def cifar_state_dict_keys(self) -> dict[str, str]:
        """Map from our parameter names to the checkpoint's (``stages.1.0.conv1`` → ``layer1.0…``)."""
        mapping = {}
        for key in self.state_dict():
            parts = key.split(".")
            stage = int(parts[1])
            rest = ".".join(parts[2:])
            mapping[key] = rest if stage == 0 else f"layer{stage}.{rest}"
        return mapping


def load_resnet20_cifar10(backbone: ResNet20Cifar, path: Path | None = None) -> dict[str, object]:
    """Load the supervised CIFAR-10 weights strictly: every key and every shape must match.

    The checkpoint's ``linear`` (CIFAR-10 head) is returned, not loaded: heads are per task.
    """
    from medstudy.data.loaders import DataFileError, check_file

    path = path or paths.data_dir() / RESNET20_FILE
    if not path.exists():
        raise WeightsError(
            f"natural_sup weights for resnet20_cifar not found: {path} (md5 {RESNET20_MD5}). "
            "Get resnet20-12fca82f.th from github.com/akamaster/pytorch_resnet_cifar10, save it "
            f"as {RESNET20_FILE} in MEDSTUDY_DATA_DIR; see data/README.md."
        )
    try:
        check_file(path, RESNET20_MD5)
    except DataFileError as err:
        raise WeightsError(str(err)) from err
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a dict with a 'state_dict', got {type(ckpt)}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ours = backbone.state_dict()
    # The 2018 checkpoint predates BatchNorm's ``num_batches_tracked`` counter, a bookkeeping
    # buffer with no effect on outputs; every weight and running statistic is still required.
    mapping = {
        k: ck
        for k, ck in backbone.cifar_state_dict_keys().items()
        if not k.endswith("num_batches_tracked")
    }
    missing = [v for v in mapping.values() if v not in state]
    unexpected = sorted(set(state) - set(mapping.values()) - {"linear.weight", "linear.bias"})
    shape_bad = [
        (ck, tuple(state[ck].shape), tuple(ours[k].shape))
        for k, ck in mapping.items()
        if ck in state and tuple(state[ck].shape) != tuple(ours[k].shape)
    ]
    if missing or unexpected or shape_bad:
        raise WeightsError(
            f"{path} is not a resnet20_cifar checkpoint: missing={missing[:5]} "
            f"unexpected={unexpected[:5]} shape mismatches={shape_bad[:5]}"
        )
    loaded = {k: state[ck] for k, ck in mapping.items()}
    loaded.update({k: v for k, v in ours.items() if k.endswith("num_batches_tracked")})
    backbone.load_state_dict(loaded, strict=True)
    return {"linear.weight": state["linear.weight"], "linear.bias": state["linear.bias"]}


# ------------------------------------------------------------------------------------- timm --
class TimmBackbone(Backbone):
    """A timm model used as a feature extractor (``num_classes=0``).

    The timm model is the one registered child, ``model``, so the ``state_dict`` keys are timm's
    own under one prefix (``model.conv1.weight``, ``model.layer1.0.conv1.weight``, …) and a timm
    or torchvision state dict loads into ``self.model`` unchanged. For ResNet-family models the
    ``stages`` (stem, layer1..layer4) are views of that model's own modules, kept out of the
    module tree; other families support ``forward`` but not ``forward_stages`` (SparK and
    per-stage statistics need them).
    """

    def __init__(self, model_name: str, pretrained: bool = False) -> None:
        super().__init__()
        import timm

        self.name = f"{TIMM_PREFIX}{model_name}"
        self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
        self.feature_dim = int(self.model.num_features)
        m = self.model
        stages = nn.ModuleList()
        if all(hasattr(m, a) for a in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer4")):
            stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
            stages = nn.ModuleList([stem, m.layer1, m.layer2, m.layer3, m.layer4])
        # Stored past nn.Module.__setattr__: registered, every parameter would appear a second
        # time in state_dict() (as ``stages.*``). Built once, so a hook on a stage (per-stage
        # statistics, Grad-CAM) sees the forward pass, which runs through these same modules.
        object.__setattr__(self, "_stages", stages)

    @property
    def stages(self) -> nn.ModuleList:  # type: ignore[override]
        return self._stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.stages) == 0:
            return self.model(channels_last(x))
        return super().forward(x)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        if len(self.stages) == 0:
            raise NotImplementedError(f"{self.name}: per-stage outputs are only wired for ResNets")
        return super().forward_stages(x)


def load_timm_weights(backbone: TimmBackbone, weights_path: Path | None) -> None:
    """ImageNet weights: from the local timm checkpoint ``weights_path`` if given (timm's own
    loader, strict), else timm's hub download (online only)."""
    if weights_path is not None:
        load_timm_file(backbone.model, Path(weights_path))
        return
    model_name = backbone.name.removeprefix(TIMM_PREFIX)
    if offline():
        raise WeightsError(
            f"natural_sup weights for {backbone.name} need a download and MEDSTUDY_OFFLINE is "
            "set; give a local timm checkpoint (a timm state_dict: conv1.weight, …, fc.*) as "
            "the parameter natural_weights (pretrain_natural_weights in notebooks 02-04)"
        )
    try:
        fresh = TimmBackbone(model_name, pretrained=True)
    except Exception as err:  # noqa: BLE001 - any hub failure gets the same clear message
        raise WeightsError(
            f"could not download ImageNet weights for {backbone.name} "
            f"({type(err).__name__}: {err}). Offline, give a local timm checkpoint as the "
            "parameter natural_weights."
        ) from err
    backbone.load_state_dict(fresh.state_dict(), strict=True)


# --------------------------------------------------------------------------------- registry --
@dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone and load its natural-image supervised (``natural_sup``) weights."""

    build: Callable[[], Backbone]
    load_natural: Callable[[Backbone, Path | None], object]
    natural_source: str
    stride: int  # total downsampling of the last stage (input side / last feature-map side)


BACKBONES: dict[str, BackboneSpec] = {
    "resnet20_cifar": BackboneSpec(
        build=ResNet20Cifar,
        load_natural=load_resnet20_cifar10,  # type: ignore[arg-type]
        natural_source="CIFAR-10 supervised ResNet-20 (Idelbayev), offline file",
        stride=4,  # 28 px -> 7 px
    ),
}
TIMM_PREFIX = "timm:"
TIMM_STRIDE = 32  # the ResNet family, the only timm models whose stages are wired here
INITS: tuple[str, ...] = ("scratch", "natural_sup", "natural_ssl")


def backbone_stride(name: str) -> int:
    """Total stride of a backbone's last stage, without building it: SparK needs the image side
    to be a multiple of it (its masks live on the last stage's grid)."""
    return TIMM_STRIDE if name.startswith(TIMM_PREFIX) else BACKBONES[name].stride


def timm_arch(name: str) -> str | None:
    """The timm architecture of backbone ``name`` (``timm:resnet50.a1_in1k`` → ``resnet50``:
    a pretrained tag names weights, not another network), None for our own backbones."""
    if not name.startswith(TIMM_PREFIX):
        return None
    return name.removeprefix(TIMM_PREFIX).partition(".")[0]


def validate_backbone(name: str) -> str:
    """Reject unknown backbone names before any work: ``timm:<model>`` or
    ``timm:<model>.<pretrained tag>`` must be known to timm."""
    if name in BACKBONES:
        return name
    if name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        import timm

        model = name.removeprefix(TIMM_PREFIX)
        arch, _, tag = model.partition(".")
        # timm.list_models() and timm.is_model() ignore tags; list_pretrained() has them
        if not timm.is_model(arch):
            raise ValueError(f"unknown timm model {arch!r} in backbone {name!r}")
        if tag:
            known = timm.list_pretrained(f"{arch}.*")
            if model not in known:
                raise ValueError(
                    f"unknown pretrained tag {tag!r} of timm model {arch!r} in backbone "
                    f"{name!r}; valid tags: {[k.partition('.')[2] for k in known]}"
                )
        return name
    raise ValueError(f"unknown backbone {name!r}; valid: {sorted(BACKBONES)} or 'timm:<model>'")


def create_backbone(
    name: str,
    init: str = "scratch",
    weights_path: Path | None = None,
    seed: int | None = None,
    ssl_weights: str = "dino",
) -> Backbone:
    """Build a backbone with ``init`` ∈ :data:`INITS`.

    ``seed`` fixes the random initialisation (same seed → same weights). ``natural_sup`` and
    ``natural_ssl`` load real weights or raise; they never return a randomly initialised
    network. ``weights_path``: a local file of those weights (``natural_sup``: the backbone's
    checkpoint, a timm state dict for timm models; ``natural_ssl``: a copy of the release file
    ``ssl_weights``, a key of :data:`medstudy.weights.SSL_RELEASES`); None = the default file
    (resnet20_cifar) or a download.
    """
    validate_backbone(name)
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {list(INITS)}")
    if init == "natural_ssl":
        release = get_release(ssl_weights)
        if timm_arch(name) != release.arch:
            raise WeightsError(
                f"natural_ssl weights {ssl_weights!r} are a {release.arch}; backbone {name!r} "
                f"is not (valid: 'timm:{release.arch}')"
            )
    if seed is not None:
        torch.manual_seed(seed)
    if name.startswith(TIMM_PREFIX):
        timm_backbone = TimmBackbone(name.removeprefix(TIMM_PREFIX), pretrained=False)
        if init == "natural_sup":
            load_timm_weights(timm_backbone, weights_path)
        elif init == "natural_ssl":
            load_release(timm_backbone.model, ssl_weights, weights_path)
        return timm_backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    spec = BACKBONES[name]
    backbone: Backbone = spec.build()
    if init == "natural_sup":
        spec.load_natural(backbone, weights_path)
    # NHWC weights, as the inputs (see channels_last); loading a state dict keeps the layout
    return backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


# ------------------------------------------------------------------- our own checkpoints ----
def save_checkpoint(backbone: Backbone, path: Path, **meta: object) -> None:
    """Save a backbone with its name, atomically (temp file + rename)."""
    from medstudy.results import atomic_write

    payload = {"backbone": backbone.name, "state_dict": backbone.state_dict(), "meta": meta}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(backbone: Backbone, path: Path) -> dict[str, object]:
    """Load a checkpoint saved by :func:`save_checkpoint` (or a bare state_dict) strictly.

    A checkpoint for another backbone is an error naming the file and both architectures.
    """
    if not path.exists():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise WeightsError(f"{path}: cannot be read as a torch checkpoint ({err})") from err
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        saved_name = ckpt.get("backbone")
        if saved_name is not None and saved_name != backbone.name:
            raise WeightsError(
                f"{path} holds weights for backbone {saved_name!r}, not {backbone.name!r}"
            )
        state = ckpt["state_dict"]
        meta = dict(ckpt.get("meta") or {})
    else:
        state, meta = ckpt, {}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{path} does not fit backbone {backbone.name!r}: {err}") from err
    return meta


# ------------------------------------------------------------------------------- task heads --
def build_head(info: DatasetInfo, feature_dim: int) -> nn.Linear:
    """A linear head with one output per class (or per label for multi-label tasks)."""
    return nn.Linear(feature_dim, info.n_outputs)


class Classifier(nn.Module):
    """Backbone + task head; ``forward`` takes normalised input and returns logits."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def task_loss(info: DatasetInfo) -> nn.Module:
    """Cross-entropy for single-label tasks (ordinal included, as in MedMNIST), BCE for multi-label."""
    return nn.BCEWithLogitsLoss() if info.is_multilabel else nn.CrossEntropyLoss()


def logits_to_scores(info: DatasetInfo, logits: torch.Tensor) -> torch.Tensor:
    """Probabilities: softmax over classes, or per-label sigmoid for multi-label."""
    return torch.sigmoid(logits) if info.is_multilabel else torch.softmax(logits, dim=1)
