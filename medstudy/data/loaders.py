"""Loading MedMNIST-format splits from ``MEDSTUDY_DATA_DIR`` with md5 and shape checks.

File contract (the MedMNIST layout): ``<name>.npz`` (28 px) or ``<name>_<size>.npz`` holding
``{train,val,test}_images`` (uint8, N×H×W or N×H×W×C) and ``{train,val,test}_labels`` (N, N×1,
or N×L for multi-label).

Provenance rules (DESIGN §4):

- md5 equal to the official one → official file.
- otherwise the data dir's ``checksums.json`` must declare this file's md5 and source → accepted
  as *non-official*, and the provenance (recorded in every run manifest) says so.
- otherwise → :class:`DataFileError`. Never a silent substitute.
- A name in no table (a student's own MedMNIST-format file) has no official md5; it is accepted,
  recorded as ``undeclared`` with its md5, and a warning says how to declare it.

:func:`load_split` is the one entry point for every dataset: it also dispatches ``pcam`` to
:mod:`medstudy.data.pcam`, a name in no table with a ``<name>.csv`` in the data dir to the
manifest loader (:mod:`medstudy.data.manifest`; a name with both a csv and an npz is an error),
and ``synth_lesions`` to its generator.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from medstudy import paths
from medstudy.data.base import (
    OFFLINE_ENV,
    DataFileError,
    Provenance,
    Split,
    download_timeout,
    md5_of_file,
    offline,
)
from medstudy.data.info import INFO, MEDMNIST_SIZES, SPLITS, DatasetInfo
from medstudy.data.manifest import dataset_info as manifest_dataset_info
from medstudy.data.manifest import fingerprint as manifest_fingerprint
from medstudy.data.manifest import load_manifest_split, manifest_file
from medstudy.data.pcam import NAME as PCAM_NAME
from medstudy.data.pcam import fingerprint as pcam_fingerprint
from medstudy.data.pcam import load_pcam_split, resolve_pcam

CHECKSUMS_FILE = "checksums.json"


def file_md5(path: Path) -> str:
    """md5 of a file, cached per (path, size, mtime) so repeated loads cost nothing."""
    st = path.stat()
    return _md5_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _md5_cached(path: str, size: int, mtime_ns: int) -> str:
    return md5_of_file(Path(path))


def read_checksums(data_dir: Path) -> dict[str, dict[str, object]]:
    """The data dir's ``checksums.json`` declarations (``{}`` if there is none)."""
    path = data_dir / CHECKSUMS_FILE
    if not path.exists():
        return {}
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataFileError(f"{path}: not valid JSON ({err})") from err
    return {k: v for k, v in table.items() if not k.startswith("_") and isinstance(v, dict)}


def check_file(path: Path, official_md5: str | None) -> Provenance:
    """Apply the provenance rules to one file; raise :class:`DataFileError` on a mismatch."""
    md5 = file_md5(path)
    if official_md5 is not None and md5 == official_md5:
        return Provenance(str(path), md5, "official", "official release")
    declared = read_checksums(path.parent).get(path.name)
    if declared is not None:
        if declared.get("md5") != md5:
            raise DataFileError(
                f"{path}: md5 {md5} matches neither the official md5 "
                f"({official_md5 or 'none known'}) nor the md5 declared in "
                f"{path.parent / CHECKSUMS_FILE} ({declared.get('md5')}). The file is corrupt or "
                "was replaced; restore it or update its declaration."
            )
        status = "official" if declared.get("official") and official_md5 is None else None
        return Provenance(
            str(path),
            md5,
            status or "declared-non-official",
            str(declared.get("source", "declared in checksums.json")),
        )
    if official_md5 is not None:
        raise DataFileError(
            f"{path}: md5 {md5} differs from the official md5 {official_md5}. Re-download it, "
            f"or, if it is a deliberate rebuild, declare its md5 and source in "
            f"{path.parent / CHECKSUMS_FILE}."
        )
    return Provenance(str(path), md5, "undeclared", "local file with no official or declared md5")


def download_medmnist(info: DatasetInfo, size: int, root: Path) -> Path:
    """Download ``info``'s file with the ``medmnist`` package into ``root``.

    Tests monkeypatch this function; setting ``MEDSTUDY_OFFLINE=1`` skips the attempt.
    """
    import medmnist

    root.mkdir(parents=True, exist_ok=True)
    from medmnist import INFO as MEDMNIST_INFO

    cls = getattr(medmnist, MEDMNIST_INFO[info.name]["python_class"])
    with download_timeout():
        cls(split="test", download=True, root=str(root), size=size)
    return root / info.filename(size)


def _missing_file_error(info: DatasetInfo, path: Path, size: int, cause: str) -> DataFileError:
    md5 = info.md5.get(size, "unknown (not an official release)")
    how = (
        f"download it from {info.url[size]}"
        if size in info.url
        else "see data/README.md for how to obtain or build it"
    )
    return DataFileError(
        f"{path.name} not found in the data dir {path.parent} ({cause}). Expected md5: {md5}. "
        f"To fix: {how}, and put it at {path} (or point MEDSTUDY_DATA_DIR at the folder that "
        "holds it)."
    )


def resolve_file(info: DatasetInfo, size: int = 28, data_dir: Path | None = None) -> Path:
    """Path of ``info``'s npz in the data dir, downloading it (online) if missing."""
    root = data_dir or paths.data_dir()
    path = root / info.filename(size)
    if path.exists():
        return path
    if info.source != "medmnist" or size not in info.url:
        raise _missing_file_error(info, path, size, "it cannot be downloaded automatically")
    if offline():
        raise _missing_file_error(info, path, size, f"{OFFLINE_ENV} is set, no download tried")
    try:
        download_medmnist(info, size, root)
    except Exception as err:  # noqa: BLE001 - any download failure gets the same clear message
        raise _missing_file_error(
            info, path, size, f"the download failed: {type(err).__name__}: {err}"
        ) from err
    if not path.exists():
        raise _missing_file_error(info, path, size, "the download produced no file")
    return path


def infer_info(name: str, arrays: dict[str, np.ndarray]) -> DatasetInfo:
    """An INFO row for a MedMNIST-format file that is in no table (a student's own data)."""
    labels = arrays["train_labels"]
    images = arrays["train_images"]
    if labels.ndim == 2 and labels.shape[1] > 1:
        task, n = "multi-label, binary-class", labels.shape[1]
    else:
        n = int(max(arrays[f"{s}_labels"].max() for s in SPLITS)) + 1
        task = "binary-class" if n == 2 else "multi-class"
    return DatasetInfo(
        name=name,
        task=task,
        n_channels=1 if images.ndim == 3 else int(images.shape[-1]),
        labels={str(i): str(i) for i in range(n)},
        n_samples={s: int(arrays[f"{s}_labels"].shape[0]) for s in SPLITS},
        source="local",
        description="inferred from a MedMNIST-format file dropped into the data dir",
    )


@lru_cache(maxsize=16)
def _read_npz(path: str, md5: str) -> dict[str, np.ndarray]:
    """All arrays of an npz; ``md5`` is part of the cache key so a replaced file is re-read."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise DataFileError(
            f"{path}: cannot be read as an npz ({type(err).__name__}: {err}); "
            "the file is corrupt or truncated. Delete it and fetch it again."
        ) from err


def _standardise(
    path: Path, info: DatasetInfo, split: str, arrays: dict[str, np.ndarray], size: int
) -> tuple[np.ndarray, np.ndarray]:
    keys = (f"{split}_images", f"{split}_labels")
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataFileError(
            f"{path}: missing arrays {missing}; a MedMNIST-format file holds "
            f"{[f'{s}_{k}' for s in SPLITS for k in ('images', 'labels')]}, found {sorted(arrays)}"
        )
    images, labels = arrays[keys[0]], arrays[keys[1]]
    if images.dtype != np.uint8:
        raise DataFileError(f"{path}: {keys[0]} has dtype {images.dtype}, expected uint8")
    if images.ndim == 3:
        images = images[..., None]  # grey: make the channel axis explicit (C=1)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise DataFileError(f"{path}: {keys[0]} has shape {images.shape}, expected N×H×W[×C]")
    if images.shape[1] != size:
        raise DataFileError(f"{path}: images are {images.shape[1]} px, but size={size} was asked")
    if images.shape[-1] != info.n_channels:
        raise DataFileError(
            f"{path}: {keys[0]} has {images.shape[-1]} channels, INFO says {info.n_channels}"
        )
    if labels.ndim == 2 and labels.shape[1] == 1 and not info.is_multilabel:
        labels = labels[:, 0]
    if labels.shape[0] != images.shape[0]:
        raise DataFileError(
            f"{path}: {labels.shape[0]} {split} labels for {images.shape[0]} {split} images"
        )
    expected = info.n_samples.get(split)
    if expected is not None and images.shape[0] != expected:
        raise DataFileError(
            f"{path}: the {split} split has {images.shape[0]} samples, but the INFO table says "
            f"{expected} for {info.name}; the file is not the {info.name} release it claims to be"
        )
    labels = labels.astype(np.int64)
    if (
        not info.is_multilabel
        and labels.size
        and (labels.min() < 0 or labels.max() >= info.n_classes)
    ):
        raise DataFileError(
            f"{path}: {split} labels span [{labels.min()}, {labels.max()}], but {info.name} has "
            f"{info.n_classes} classes; valid labels: 0 to {info.n_classes - 1}"
        )
    return images, labels


def load_split(name: str, split: str, size: int = 28, data_dir: Path | None = None) -> Split:
    """Load one split of one dataset (see the module docstring for the file and md5 rules).

    ``synth_lesions`` is generated (seeded) rather than read; its ``extras`` hold the lesion
    masks, instance maps and lesion table.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    if name == "synth_lesions":
        return _synth_split(split, size)
    if name == PCAM_NAME:
        return load_pcam_split(split, size, data_dir)
    root = data_dir or paths.data_dir()
    info = INFO.get(name)
    if info is None:
        path = root / (f"{name}.npz" if size == 28 else f"{name}_{size}.npz")
        if _is_manifest(name, root):
            return load_manifest_split(name, split, size, root)
        if not path.exists():
            raise ValueError(
                f"unknown dataset {name!r}: not in the INFO table and no {path.name} or "
                f"{manifest_file(name, root).name} in the data dir {root}. Valid: {sorted(INFO)}, "
                "or any MedMNIST-format <name>.npz or manifest <name>.csv placed there."
            )
        provenance = check_file(path, None)
        arrays = _read_npz(str(path), provenance.md5 or "")
        missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
        missing = [k for k in missing if k not in arrays]
        if missing:
            raise DataFileError(f"{path}: missing arrays {missing}; found {sorted(arrays)}")
        info = infer_info(name, arrays)
        if provenance.status == "undeclared":
            warnings.warn(
                f"{path} is not in the INFO table and not declared in {CHECKSUMS_FILE}; "
                f"using it with md5 {provenance.md5} (recorded in the manifest).",
                stacklevel=2,
            )
    else:
        if size not in info.md5 and info.source == "medmnist":
            raise ValueError(
                f"size={size} is not released for {name}; valid sizes: {sorted(info.md5)}"
            )
        path = resolve_file(info, size, root)
        provenance = check_file(path, info.md5.get(size))
        if info.source == "study" and provenance.status == "undeclared":
            raise DataFileError(
                f"{path}: {name} has no official md5, so its md5 ({provenance.md5}) must be "
                f"declared in {root / CHECKSUMS_FILE}; see data/README.md"
            )
        arrays = _read_npz(str(path), provenance.md5 or "")
    images, labels = _standardise(path, info, split, arrays, size)
    ids = np.array([f"{name}:{split}:{i:06d}" for i in range(len(labels))])
    return Split(name, split, images, labels, ids, info, provenance)


def _is_manifest(name: str, root: Path) -> bool:
    """Whether ``name`` (not in INFO) is a manifest dataset; a name with both a ``.npz`` and a
    ``.csv`` is ambiguous and an error."""
    csv = manifest_file(name, root)
    if not csv.exists():
        return False
    sizes = MEDMNIST_SIZES[1:]
    npz = [f for f in (f"{name}.npz", *(f"{name}_{s}.npz" for s in sizes)) if (root / f).exists()]
    if npz:
        raise DataFileError(
            f"{csv}: dataset {name!r} is both a manifest and {npz} in {root}; rename one"
        )
    return True


def dataset_info(name: str, data_dir: Path | None = None) -> DatasetInfo:
    """The INFO row of ``name``, inferred from its file for a name in no table (a manifest is
    read without decoding its images)."""
    root = data_dir or paths.data_dir()
    if name in INFO:
        return INFO[name]
    if _is_manifest(name, root):
        return manifest_dataset_info(name, root)
    return load_split(name, "test", data_dir=root).info


def dataset_inputs(name: str | None, size: int, data_dir: Path | None = None) -> dict[str, str]:
    """What identifies ``name``'s data at ``size`` in a job hash: ``{file name: md5}`` of its
    npz, the content key of a manifest (rows, every image's md5, size, decoder), the md5s of the
    PCam h5 files; ``{}`` for generated data or a file not there yet (the job then fetches it).
    A bad manifest, or offline (``MEDSTUDY_OFFLINE``) a file that is not there, raises
    :class:`DataFileError` here, before any job runs, naming the file to fetch."""
    if name is None or name == "synth_lesions":
        return {}
    root = data_dir or paths.data_dir()
    if name == PCAM_NAME:
        for split in SPLITS if offline() else ():
            resolve_pcam(split, root)  # offline: a missing file fails now, naming it
        return pcam_fingerprint(size, root)
    info = INFO.get(name)
    if info is None and _is_manifest(name, root):
        return manifest_fingerprint(name, size, root)
    file = info.filename(size) if info else f"{name}.npz"
    path = root / file
    if info is not None and not path.exists() and offline():
        resolve_file(info, size, root)  # raises: the file, its URL and why it was not fetched
    return {file: file_md5(path)} if path.exists() else {}


SYNTH_SEED = 20231  # fixed: synth_lesions is one data set, not a per-run draw


@lru_cache(maxsize=8)
def _synth_splits(size: int) -> dict[str, object]:
    from medstudy.data.synth import synth_splits

    info = INFO["synth_lesions"]
    return synth_splits(
        size=size,
        seed=SYNTH_SEED,
        n_train=info.n_samples["train"],
        n_val=info.n_samples["val"],
        n_test=info.n_samples["test"],
    )


def _synth_split(split: str, size: int) -> Split:
    data = _synth_splits(size)[split]
    info = INFO["synth_lesions"]
    n = len(data.labels)
    ids = np.array([f"synth_lesions:{split}:{i:06d}" for i in range(n)])
    provenance = Provenance(
        None, None, "generated", f"medstudy.data.synth seed={SYNTH_SEED} size={size}"
    )
    extras = {
        "masks": data.masks,
        "instance": data.instance,
        "lesions": data.lesions,
        "synth": data,  # the generator's full output (for plots); not subset with the split
    }
    return Split("synth_lesions", split, data.images, data.labels, ids, info, provenance, extras)
