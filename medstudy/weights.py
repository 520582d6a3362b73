"""Natural-image weights from files: local checkpoints and the published self-supervised
ImageNet ResNet-50 releases of the ``natural_ssl`` arm, loaded strictly into timm's keys.

- :data:`SSL_RELEASES`: one row per release (DINO, SwAV, MoCo v2) with its official URL and key
  layout. :func:`convert_release` maps a release to timm's ``resnet50`` (which uses torchvision's
  key names): every backbone key must be there, every other key must belong to a documented
  training head (dropped), or the load fails with a list of the offending keys.
- :func:`read_release` reads a local copy of a release or downloads it with
  ``torch.hub.load_state_dict_from_url``; offline (``MEDSTUDY_OFFLINE``, or no network) it fails
  with the URL and the local-file option, never falling back to random weights.
- :func:`load_timm_file`: a timm-format state dict (``conv1.weight``, ``layer1.0.conv1.weight``,
  …, ``fc.*``) read with timm's own loader, classifier dropped, loaded strictly.
- :func:`check_weights_file`: a local file's md5 under the data provenance rules (DESIGN §4,
  :func:`medstudy.data.loaders.check_file`): when the ``checksums.json`` next to it declares
  the file, a different md5 is an error.

A local weights parameter (``natural_weights``, ``natural_ssl_file``) is a path: absolute, or
relative to ``MEDSTUDY_DATA_DIR`` (:func:`weights_file`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medstudy import paths
from medstudy.data.loaders import OFFLINE_ENV, DataFileError, Provenance, check_file

#: Where the local-file option and the release URLs are documented for users.
WEIGHTS_DOC = "data/README.md, 'Natural-image weights'"


class WeightsError(RuntimeError):
    """Weights are missing, unreachable offline, or belong to another architecture."""


def offline() -> bool:
    """True when ``MEDSTUDY_OFFLINE`` forbids downloads (tests set it)."""
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


# ------------------------------------------------------------------------ local files ----
def weights_file(value: str) -> Path | None:
    """The path of a local-weights parameter: ``""`` → None (no local file); an absolute path as
    given; a relative one under ``MEDSTUDY_DATA_DIR`` (where datasets and weights live)."""
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else paths.data_dir() / path


def check_weights_file(path: Path) -> Provenance:
    """The file's provenance (md5, declared or not); a missing file, or an md5 that differs from
    the ``checksums.json`` declaration next to it, is a :class:`WeightsError` naming the file."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        return check_file(path, None)  # no official md5: the declaration, if any, decides
    except DataFileError as err:
        raise WeightsError(str(err)) from err


def match_state(
    state: Mapping[str, Any], model: nn.Module, origin: str, stray: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """``state`` checked key by key and shape by shape against ``model.state_dict()``.

    ``stray``: keys already known to be unexpected (outside the release's layout). BatchNorm's
    ``num_batches_tracked`` may be absent (a bookkeeping counter with no effect on outputs;
    ``load_state_dict`` fills it the same way for dicts without version metadata); every weight
    and running statistic is required. A mismatch raises a :class:`WeightsError` naming
    ``origin`` and a few missing / unexpected / mis-shaped keys.
    """
    ours = model.state_dict()
    missing = [k for k in ours if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [*stray, *sorted(set(state) - set(ours))]
    shape_bad = [
        (k, tuple(getattr(state[k], "shape", ())), tuple(ours[k].shape))
        for k in ours
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(ours[k].shape)
    ]
    if missing or unexpected or shape_bad:
        raise WeightsError(
            f"{origin} does not fit {type(model).__name__} ({len(ours)} tensors): "
            f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected "
            f"{unexpected[:5]}, {len(shape_bad)} shape mismatches {shape_bad[:3]}"
        )
    return {k: state[k] if k in state else ours[k] for k in ours}


def load_timm_file(model: nn.Module, path: Path) -> None:
    """Load a timm-format checkpoint into the timm ``model`` (built with ``num_classes=0``).

    Read with timm's own ``load_state_dict`` (a plain state dict or a training checkpoint with
    ``state_dict``/``model`` — its EMA weights when present, as timm's ``load_checkpoint`` —
    ``module.`` prefixes removed); the classifier of the pretrained config (``fc`` for ResNets)
    is dropped, since the model has none; everything else must match exactly.
    """
    from timm.models import load_state_dict

    check_weights_file(path)
    try:
        state = load_state_dict(str(path))
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise WeightsError(
            f"{path}: cannot be read as a timm checkpoint ({type(err).__name__}: {err})"
        ) from err
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {k: v for k, v in state.items() if not k.startswith(tuple(f"{h}." for h in heads))}
    model.load_state_dict(match_state(state, model, str(path)), strict=True)


# ------------------------------------------------------------ self-supervised releases ----
@dataclass(frozen=True)
class Release:
    """A published self-supervised ImageNet checkpoint and how its keys map to timm's model.

    All three are torchvision ResNet-50s (v1.5: stride in the 3×3 convolution), whose key
    names timm's ``resnet50`` shares.
    """

    url: str
    reference: str
    container: str | None  # the key holding the state dict; None: the file is the state dict
    prefix: str  # prefix of every backbone key, removed ("" = none)
    dropped: tuple[str, ...]  # key prefixes of the training heads, never loaded
    arch: str = "resnet50"  # the timm architecture the weights fit


SSL_RELEASES: dict[str, Release] = {
    # facebookresearch/dino hubconf.py `dino_resnet50`: the file is the teacher backbone,
    # saved after MultiCropWrapper replaced `fc` by Identity, so it holds no head at all.
    "dino": Release(
        url="https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
        reference="Caron et al. 2021, Emerging Properties in Self-Supervised Vision "
        "Transformers, ICCV (DINO ResNet-50, 75.3 % linear)",
        container=None,
        prefix="",
        dropped=(),
    ),
    # facebookresearch/swav hubconf.py `resnet50`: a DataParallel state dict ("module."); its
    # src/resnet50.py adds the projection MLP and the prototypes. (Its stem pads 1 px with a
    # layer and 2 px in conv1, torchvision's 3 px in total: the same network.)
    "swav": Release(
        url="https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
        reference="Caron et al. 2020, Unsupervised Learning of Visual Features by Contrasting "
        "Cluster Assignments, NeurIPS (SwAV 800 epochs, 75.3 % linear)",
        container=None,
        prefix="module.",
        dropped=("module.projection_head.", "module.prototypes."),
    ),
    # facebookresearch/moco main_lincls.py: `checkpoint["state_dict"]`, keep
    # "module.encoder_q." minus its `fc` (the MLP projection head in v2); moco/builder.py adds
    # the momentum encoder `encoder_k` and the `queue` / `queue_ptr` buffers.
    "mocov2": Release(
        url="https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/"
        "moco_v2_800ep_pretrain.pth.tar",
        reference="Chen et al. 2020, Improved Baselines with Momentum Contrastive Learning, "
        "arXiv:2003.04297 (MoCo v2 800 epochs, 71.1 % linear)",
        container="state_dict",
        prefix="module.encoder_q.",
        dropped=("module.encoder_q.fc.", "module.encoder_k.", "module.queue"),
    ),
}


def get_release(name: str) -> Release:
    """The release ``name``, or ``ValueError`` listing the valid names."""
    if name not in SSL_RELEASES:
        raise ValueError(f"unknown natural_ssl weights {name!r}; valid: {sorted(SSL_RELEASES)}")
    return SSL_RELEASES[name]


def _download_error(name: str, cause: str) -> WeightsError:
    return WeightsError(
        f"natural_ssl weights {name!r} come from {get_release(name).url}, and {cause}. Download "
        f"that file where there is network and give its path as the parameter natural_ssl_file "
        f"(pretrain_natural_ssl_file in notebooks 02-04); see {WEIGHTS_DOC}."
    )


def release_id(name: str, path: Path | None) -> str:
    """What identifies the weights in a run id: the local file's md5 (checked), else the
    release URL. Offline without a local file this fails already, before any work."""
    if path is not None:
        return str(check_weights_file(path).md5)
    if offline():
        raise _download_error(name, f"{OFFLINE_ENV} is set, so no download is tried")
    return get_release(name).url


def read_release(name: str, path: Path | None) -> tuple[Any, str]:
    """The raw checkpoint of release ``name`` and where it came from: the local file ``path``
    (md5 checked) or the official URL (``torch.hub`` download, cached by torch)."""
    if path is not None:
        check_weights_file(path)
        try:
            return torch.load(path, map_location="cpu", weights_only=True), str(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
            raise WeightsError(
                f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}: {err})"
            ) from err
    url = release_id(name, None)  # raises offline
    try:
        ckpt = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any hub failure gets the same clear message
        raise _download_error(name, f"the download failed ({type(err).__name__}: {err})") from err
    return ckpt, url


def convert_release(name: str, ckpt: Any, model: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """Release ``name``'s checkpoint as a state dict of ``model`` (timm ``resnet50``): unwrap
    the container, drop the documented heads, remove the prefix, then :func:`match_state`.
    A key outside prefix and heads is unexpected: the file is not that release."""
    release = get_release(name)
    state = ckpt
    if release.container is not None:
        if not isinstance(ckpt, Mapping) or release.container not in ckpt:
            keys = list(ckpt)[:5] if isinstance(ckpt, Mapping) else type(ckpt).__name__
            raise WeightsError(
                f"{origin} is not the {name} release: expected a dict with the key "
                f"{release.container!r}, found {keys}"
            )
        state = ckpt[release.container]
    if not isinstance(state, Mapping):
        raise WeightsError(
            f"{origin} is not the {name} release: expected a state dict, got {type(state)}"
        )
    kept: dict[str, Any] = {}
    stray: list[str] = []
    for key, value in state.items():
        if key.startswith(release.dropped):
            continue
        if not key.startswith(release.prefix):
            stray.append(key)
            continue
        kept[key.removeprefix(release.prefix)] = value
    return match_state(kept, model, f"{origin} ({name} release)", stray)


def load_release(model: nn.Module, name: str, path: Path | None) -> None:
    """Load release ``name`` (from ``path`` if given, else downloaded) into ``model`` strictly."""
    ckpt, origin = read_release(name, path)
    model.load_state_dict(convert_release(name, ckpt, model, origin), strict=True)
