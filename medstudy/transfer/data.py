"""The splits of one dataset as every transfer unit sees them (the capped train pool)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medstudy.config import TransferConfig
from medstudy.data import SPLITS, Split, load_split, sample_fraction
from medstudy.data.info import DatasetInfo

CAP_SEED = 0  # the train cap is part of the data definition, not of a unit's seed


@dataclass
class TransferData:
    """The splits of one dataset as used by every unit: ``splits["train"]`` is the capped pool."""

    splits: dict[str, Split]
    info: DatasetInfo
    inputs: dict[str, str]  # {data file or source: md5} for run ids
    provenance: dict[str, Any]
    #: True when ``max_val`` capped the val split: units then hash its sample ids.
    val_capped: bool = False
    #: md5 of the test ids when ``max_test`` capped the test split, else "" (units hash it).
    test_hash: str = ""


def load_transfer_data(cfg: TransferConfig) -> TransferData:
    """Load train/val/test. With ``fractions_of == "pool"`` train is first capped to
    ``cfg.max_train`` (stratified, :data:`CAP_SEED`) and fractions are of that pool; with
    ``"split"`` train stays whole and the cap applies to each unit's labelled subset
    (:func:`medstudy.transfer.units.train_fraction`). ``cfg.max_val > 0`` caps the val split
    the same way (stratified, :data:`CAP_SEED`), and ``cfg.max_test > 0`` the test split (a
    plumbing run only); a val subset of a label fraction
    (``val_labels == "fraction"``) is then drawn from the capped split."""
    splits = {s: load_split(cfg.dataset, s, cfg.image_size) for s in SPLITS}
    train = splits["train"]
    if cfg.fractions_of == "pool" and 0 < cfg.max_train < len(train):
        idx = sample_fraction(train.labels, cfg.max_train / len(train), CAP_SEED)
        splits["train"] = train.subset(idx)
    val = splits["val"]
    val_capped = 0 < cfg.max_val < len(val)
    if val_capped:
        splits["val"] = val.subset(sample_fraction(val.labels, cfg.max_val / len(val), CAP_SEED))
    test = splits["test"]
    test_hash = ""
    if 0 < cfg.max_test < len(test):
        splits["test"] = test.subset(
            sample_fraction(test.labels, cfg.max_test / len(test), CAP_SEED)
        )
        test_hash = ids_hash(splits["test"].ids)
    info = train.info
    prov = train.provenance
    # The file name, not its path: moving the data dir must not invalidate finished runs.
    key = Path(prov.file).name if prov.file else f"{cfg.dataset}@{cfg.image_size}"
    inputs = {key: prov.md5 or prov.source}
    provenance = {s: sp.provenance.as_dict() for s, sp in splits.items()}
    return TransferData(splits, info, inputs, provenance, val_capped, test_hash)


def ids_hash(ids: np.ndarray) -> str:
    """md5 of sample ids: identifies a subset whatever pool or cap produced it."""
    return hashlib.md5("\n".join(np.asarray(ids).tolist()).encode()).hexdigest()
