"""Frozen encoders of the transfer stage: one per (arm, encoder seed), identified by the md5 of
their weights, with their features cached on disk by content."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medstudy import paths
from medstudy.config import TransferConfig
from medstudy.data import Split, TensorSplit
from medstudy.evaluate.features import extract_features
from medstudy.models import Backbone
from medstudy.pretrain import load_encoder
from medstudy.results import atomic_write, config_hash
from medstudy.transfer.data import TransferData, ids_hash

FEATURES_STAGE = "features"


@dataclass
class Encoder:
    """A frozen encoder and its identity (weights md5 + the notebook-01 config it came from)."""

    arm: str
    backbone: Backbone
    fingerprint: str
    pretrain: dict[str, Any]


def weights_fingerprint(module: torch.nn.Module) -> str:
    """md5 over the names, dtypes, shapes and bytes of a state_dict: the weights' identity."""
    h = hashlib.md5()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def encoder_seed(cfg: TransferConfig, arm: str, seed: int) -> int:
    """Seed of the encoder a unit uses: the unit's seed for ``scratch``, else the pretrain seed."""
    return seed if arm == "scratch" or cfg.pretrain_paired else cfg.pretrain_seed


def load_arm_encoder(cfg: TransferConfig, arm: str, seed: int, device: torch.device) -> Encoder:
    """The encoder of ``arm`` for a unit of seed ``seed`` (see :func:`encoder_seed`)."""
    pcfg = cfg.pretrain_config(arm, seed=encoder_seed(cfg, arm, seed))
    backbone = load_encoder(pcfg)
    backbone.eval()
    return Encoder(arm, backbone.to(device), weights_fingerprint(backbone), pcfg.to_dict())


def cached_features(
    encoder: Encoder, split: Split, image_size: int, device: torch.device
) -> np.ndarray:
    """Frozen features (N, D) of ``split`` by ``encoder``, cached on disk by content.

    The cache key hashes the encoder fingerprint, the dataset, split, size, the split's md5 and
    its sample ids, so a capped train pool has its own entry. The file stores the ids too and a
    mismatch on load is an error naming the file.
    """
    key = config_hash(
        {
            "encoder": encoder.fingerprint,
            "backbone": encoder.backbone.name,
            "dataset": split.name,
            "split": split.split,
            "image_size": image_size,
            "data": split.provenance.md5 or split.provenance.source,
            "ids": ids_hash(split.ids),
        }
    )
    path = paths.results_dir() / FEATURES_STAGE / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                feats, ids = z["features"], z["ids"]
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"{path}: unreadable feature cache ({type(err).__name__}: {err}); delete it to "
                "recompute"
            ) from err
        if not np.array_equal(ids, split.ids):
            raise ValueError(f"{path}: cached feature ids do not match {split.name}/{split.split}")
        return feats
    feats = extract_features(encoder.backbone, TensorSplit.from_split(split, device))
    feats = np.asarray(feats, dtype=np.float32)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, features=feats, ids=split.ids)

    atomic_write(path, write)
    return feats


class EncoderBank:
    """Loads each (arm, encoder seed) once and caches its features per split."""

    def __init__(self, cfg: TransferConfig, data: TransferData, device: torch.device) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        self._encoders: dict[tuple[str, int], Encoder] = {}
        self._features: dict[tuple[str, int, str], np.ndarray] = {}

    def encoder(self, arm: str, seed: int) -> Encoder:
        key = (arm, encoder_seed(self.cfg, arm, seed))
        if key not in self._encoders:
            self._encoders[key] = load_arm_encoder(self.cfg, arm, seed, self.device)
        return self._encoders[key]

    def features(self, arm: str, seed: int, split: str) -> np.ndarray:
        key = (arm, encoder_seed(self.cfg, arm, seed), split)
        if key not in self._features:
            self._features[key] = cached_features(
                self.encoder(arm, seed), self.data.splits[split], self.cfg.image_size, self.device
            )
        return self._features[key]


def feature_cache_dir() -> Path:
    """Where frozen features are cached (``results/features``)."""
    return paths.results_dir() / FEATURES_STAGE
