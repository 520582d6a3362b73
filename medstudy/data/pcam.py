"""The full PatchCamelyon (Veeling et al. 2018) from the h5 files of
``torchvision.datasets.PCAM``: dataset ``pcam``, 262144 / 32768 / 32768 H&E patches at 96 px,
label 1 = tumour tissue in the centre 32×32 region.

Files: ``<MEDSTUDY_DATA_DIR>/pcam/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``
(torchvision's names and folder, read from ``PCAM._FILES``). A missing split is downloaded
online by ``PCAM(root, split, download=True)`` (torchvision fetches the ``.h5.gz`` from Google
Drive with ``gdown``, md5-checks and unpacks it); with ``MEDSTUDY_OFFLINE=1`` or when that
fails, the error names the files to place and the folder.

Each split is resized (:func:`medstudy.data.decode.resize_square`; none at 96 px) once into the
memory-mapped image cache (:mod:`medstudy.data.cache`): 7.2 GB for train at 96 px, 0.6 GB at
28 px. The h5 files have no published md5, so the loader hashes them (once per file version:
the cache's memo); the key of (split, both files' md5, size, decoder) is the split's provenance
md5 and enters the run ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from medstudy import paths
from medstudy.data.base import (
    OFFLINE_ENV,
    DataFileError,
    Provenance,
    Split,
    download_timeout,
    offline,
)
from medstudy.data.cache import cache_path, cached_images, content_key, source_facts
from medstudy.data.decode import decoder_version, resize_square
from medstudy.data.info import INFO, SPLITS

NAME = "pcam"
FOLDER = "pcam"  # torchvision's: <root>/pcam/<file>.h5
NATIVE_SIZE = 96
CHUNK = 1024  # images read from the h5 at a time


def pcam_files(split: str) -> tuple[str, str]:
    """torchvision's (images, targets) h5 file names of ``split``."""
    from torchvision.datasets import PCAM

    files = PCAM._FILES[split]  # the one table of the names; torchvision's own
    return files["images"][0], files["targets"][0]


def download_pcam(split: str, root: Path) -> None:
    """torchvision's download of one split into ``root/pcam`` (tests monkeypatch this)."""
    from torchvision.datasets import PCAM

    with download_timeout():
        PCAM(root=str(root), split=split, download=True)


def _missing(split: str, folder: Path, missing: list[Path], cause: str) -> DataFileError:
    return DataFileError(
        f"PCam {split} split: {[p.name for p in missing]} not found in {folder} ({cause}). "
        f"To fix: put the h5 files of https://github.com/basveeling/pcam (unpacked from their "
        f".h5.gz) in {folder}, or run online, where torchvision.datasets.PCAM(root="
        f"'{folder.parent}', split='{split}', download=True) fetches them (needs gdown)."
    )


def resolve_pcam(split: str, data_dir: Path | None = None) -> tuple[Path, Path]:
    """The (images, targets) h5 paths of ``split``, downloaded first when missing (online)."""
    root = data_dir or paths.data_dir()
    folder = root / FOLDER
    files = tuple(folder / name for name in pcam_files(split))
    missing = [f for f in files if not f.exists()]
    if missing:
        if offline():
            raise _missing(split, folder, missing, f"{OFFLINE_ENV} is set, no download tried")
        try:
            download_pcam(split, root)
        except Exception as err:  # noqa: BLE001 - any download failure gets the same message
            raise _missing(split, folder, missing, f"the download failed: {err}") from err
        missing = [f for f in files if not f.exists()]
        if missing:
            raise _missing(split, folder, missing, "the download produced no file")
    return files[0], files[1]


def _read_layout(x_path: Path, y_path: Path, split: str) -> tuple[int, np.ndarray]:
    """(N, labels) after checking the h5 layout against PCAM's and the INFO split size."""
    import h5py

    try:
        with h5py.File(x_path, "r") as fx:
            shape = tuple(fx["x"].shape)
        with h5py.File(y_path, "r") as fy:
            labels = np.asarray(fy["y"][:]).reshape(-1).astype(np.int64)
    except (OSError, KeyError) as err:
        raise DataFileError(
            f"{x_path} / {y_path}: not PCam h5 files (dataset 'x' N×96×96×3 and 'y' N×1×1×1) "
            f"({type(err).__name__}: {err}); delete them and fetch them again"
        ) from err
    if len(shape) != 4 or shape[1:] != (NATIVE_SIZE, NATIVE_SIZE, 3):
        raise DataFileError(f"{x_path}: images of shape {shape}, expected N×96×96×3")
    expected = INFO[NAME].n_samples[split]
    if shape[0] != expected or len(labels) != shape[0]:
        raise DataFileError(
            f"{x_path}: {shape[0]} images and {len(labels)} labels in {y_path.name}, but PCam's "
            f"{split} split has {expected}; the files are truncated or not PCam's"
        )
    if labels.size and not set(np.unique(labels).tolist()) <= {0, 1}:
        raise DataFileError(f"{y_path}: labels {sorted(set(labels.tolist()))}, expected 0/1")
    return shape[0], labels


def _resized(x_path: Path, n: int, size: int) -> Iterator[np.ndarray]:
    import h5py

    with h5py.File(x_path, "r") as fx:
        x = fx["x"]
        for start in range(0, n, CHUNK):
            block = np.asarray(x[start : start + CHUNK], dtype=np.uint8)
            if size != NATIVE_SIZE:
                block = np.stack(
                    [np.asarray(resize_square(Image.fromarray(im), size)) for im in block]
                )
            yield block


def fingerprint(size: int, data_dir: Path | None = None) -> dict[str, str]:
    """md5 of every PCam h5 file present (memoised): what identifies ``pcam`` in a job hash."""
    folder = (data_dir or paths.data_dir()) / FOLDER
    files = [folder / name for s in SPLITS for name in pcam_files(s)]
    present = [f for f in files if f.exists()]
    facts = source_facts(present)
    return {f"{FOLDER}/{f.name}": x.md5 for f, x in zip(present, facts, strict=True)}


def load_pcam_split(split: str, size: int, data_dir: Path | None = None) -> Split:
    """One PCam split at ``size`` px; images are a read-only ``np.memmap`` of the cache."""
    x_path, y_path = resolve_pcam(split, data_dir)
    n, labels = _read_layout(x_path, y_path, split)
    x_md5, y_md5 = (f.md5 for f in source_facts([x_path, y_path]))
    payload = {"format": "medstudy-pcam-1", "split": split, "x": x_md5, "y": y_md5}
    key = content_key({**payload, "size": size, "decoder": decoder_version()})
    stem = f"{NAME}_{split}_{size}px"
    about = {"dataset": NAME, "split": split, "files": [str(x_path), str(y_path)], "size": size}
    images = cached_images(stem, key, (n, size, size, 3), lambda: _resized(x_path, n, size), about)
    ids = np.array([f"{NAME}:{split}:{i:06d}" for i in range(n)])
    source = (
        f"torchvision.datasets.PCAM h5 {x_path} (md5 {x_md5}) and {y_path.name} (md5 {y_md5}), "
        f"at {size} px, cached in {cache_path(stem, key)}"
    )
    provenance = Provenance(None, key, "pcam", source)
    return Split(NAME, split, images, labels, ids, INFO[NAME], provenance)
