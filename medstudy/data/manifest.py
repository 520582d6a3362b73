"""A dataset named by a CSV manifest of image files: ``<name>.csv`` in ``MEDSTUDY_DATA_DIR``,
used by name like a MedMNIST-format ``<name>.npz`` (``dataset: <name>``, ``--datasets <name>``).

Manifest contract (``data/README.md`` has an example):

- a header row naming the columns ``path,label`` or ``path,label,split`` (any order; UTF-8, a
  BOM is fine; blank lines are skipped; no other column);
- ``path``: a PNG/JPEG (anything PIL reads) or DICOM file, absolute or relative to the folder
  of the CSV file itself (for a symlinked CSV, its target's folder); each file once;
- ``label``: an integer class index 0..K-1, every class present, K >= 2; K = 2 is a binary task,
  more a multi-class one (multi-label and ordinal tasks are not expressible: use a
  MedMNIST-format npz for those);
- ``split``: ``train``, ``val`` or ``test``, each non-empty. Without the column, a stratified
  70 / 10 / 20 % split is drawn per class with the fixed seed :data:`SPLIT_SEED` (part of the
  dataset, like ``synth_lesions``' seed, not of a run), at least one image per class in each
  split, so each class needs >= 3 images.

Every row is checked before any decoding: the header, labels, split values, duplicate paths,
that each file exists and that its header reads (:func:`medstudy.data.decode.probe`). Each
problem raises :class:`DataFileError` naming the CSV, the lines and paths, and what is valid.
A file whose header reads but whose pixels do not fails during the cache build, naming its
line; nothing is cached then.

The dataset is grey if every file is grey, else RGB (grey files replicated); images are decoded
and resized by :mod:`medstudy.data.decode` once per (manifest content, size) into the
memory-mapped cache of :mod:`medstudy.data.cache`, rows ordered train, val, test (manifest order
within each), so each split is a contiguous ``np.memmap`` slice. The cache key is also the
split's provenance md5 (status ``manifest``), so it enters every run id: changing an image, a
label, a split or the decoder gives new runs.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medstudy import paths
from medstudy.data.base import DataFileError, Provenance, Split, md5_of_file
from medstudy.data.cache import SourceFacts, cache_path, cached_images, content_key, source_facts
from medstudy.data.decode import ImageError, decode, decoder_version, probe
from medstudy.data.info import SPLITS, DatasetInfo
from medstudy.data.sampling import sample_fraction

MANIFEST_SUFFIX = ".csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = ("split",)
#: Fractions of the seeded stratified split of a manifest without a ``split`` column.
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
SPLIT_SEED = 20240  # fixed: the split is part of the dataset, not a per-run draw
BLOCK_ROWS = 256  # images decoded per block streamed into the cache
SHOWN = 5  # offending rows named in one error message
_INTEGER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class ManifestRow:
    line: int  # in the CSV file (the header is line 1)
    path: str  # as written
    file: Path  # resolved
    label: int
    split: str

    def where(self) -> str:
        return f"line {self.line} ({self.path})"


@dataclass(frozen=True)
class Manifest:
    """A checked manifest; ``rows`` are in cache order (train, val, test)."""

    name: str
    csv: Path
    rows: tuple[ManifestRow, ...]
    n_classes: int

    def bounds(self, split: str) -> tuple[int, int]:
        """``[start, stop)`` of ``split``'s rows."""
        start = sum(1 for r in self.rows if SPLITS.index(r.split) < SPLITS.index(split))
        return start, start + sum(1 for r in self.rows if r.split == split)


def manifest_file(name: str, data_dir: Path | None = None) -> Path:
    """Where dataset ``name``'s manifest would be: ``<data dir>/<name>.csv``."""
    return (data_dir or paths.data_dir()) / f"{name}{MANIFEST_SUFFIX}"


def _fail(csv_path: Path, what: str, bad: list[str], valid: str) -> DataFileError:
    more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    return DataFileError(f"{csv_path}: {what}: {'; '.join(bad[:SHOWN])}{more}. {valid}")


def read_manifest(name: str, data_dir: Path | None = None) -> Manifest:
    """Parse and check ``<name>.csv``: every check of the module docstring except reading the
    image headers (:func:`probe_manifest`), in that order, the stratified split last."""
    path = manifest_file(name, data_dir)
    if not path.exists():
        raise DataFileError(f"{path}: no such manifest")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        table = [(i, row) for i, row in enumerate(csv.reader(fh), 1) if any(c.strip() for c in row)]
    if not table:
        raise DataFileError(f"{path}: empty manifest; expected a header row path,label[,split]")
    header = [c.strip() for c in table[0][1]]
    valid_sets = (list(REQUIRED_COLUMNS), [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])
    if sorted(header) not in [sorted(v) for v in valid_sets]:
        raise DataFileError(
            f"{path}: header {header}; valid columns: path,label or path,label,split "
            "(any order, nothing else)"
        )
    col = {c: header.index(c) for c in header}
    base = path.resolve().parent
    raw: list[tuple[int, str, str, str]] = []
    bad_width = []
    for line, row in table[1:]:
        cells = [c.strip() for c in row]
        if len(cells) != len(header):
            bad_width.append(f"line {line} has {len(cells)} cells")
            continue
        split = cells[col["split"]] if "split" in col else ""
        raw.append((line, cells[col["path"]], cells[col["label"]], split))
    if bad_width:
        raise _fail(path, "rows of the wrong width", bad_width, f"Each row has {len(header)}.")
    if not raw:
        raise DataFileError(f"{path}: no rows after the header")
    bad = [f"line {n} ({p}): {lab!r}" for n, p, lab, _ in raw if not _INTEGER.fullmatch(lab)]
    if bad:
        raise _fail(path, "bad labels", bad, "Valid: integer class indices 0..K-1 (one per image).")
    labels = np.array([int(lab) for _, _, lab, _ in raw], dtype=np.int64)
    n_classes = int(labels.max()) + 1
    absent = sorted(set(range(n_classes)) - set(labels.tolist()))
    if n_classes < 2 or absent:
        raise DataFileError(
            f"{path}: labels span 0..{n_classes - 1} but classes {absent or [1]} have no image; "
            "valid: integer class indices 0..K-1, K >= 2, every class present"
        )
    splits = [s for *_, s in raw]
    if "split" in col:
        bad = [f"line {n} ({p}): {s!r}" for n, p, _, s in raw if s not in SPLITS]
        if bad:
            raise _fail(path, "unknown split values", bad, f"Valid: {list(SPLITS)}.")
        empty = [s for s in SPLITS if s not in splits]
        if empty:
            raise DataFileError(
                f"{path}: no rows in split(s) {empty}; every split in {list(SPLITS)} needs rows "
                "(or drop the split column for a seeded stratified 70/10/20 split)"
            )
    files = [Path(os.path.normpath(base / p)) for _, p, _, _ in raw]  # absolute p stays
    first: dict[Path, int] = {}
    bad = []
    for (line, p, _, _), f in zip(raw, files, strict=True):
        if f in first:
            bad.append(f"line {line} ({p}) repeats line {first[f]}")
        first.setdefault(f, line)
    if bad:
        raise _fail(path, "duplicate paths", bad, "Valid: each file once.")
    bad = [f"line {n} ({p} -> {f})" for (n, p, _, _), f in zip(raw, files, strict=True)]
    bad = [b for b, f in zip(bad, files, strict=True) if not f.is_file()]
    if bad:
        raise _fail(path, "missing files", bad, f"Relative paths are relative to {base}.")
    if "split" not in col:
        splits = stratified_splits(labels, path)
    rows = [
        ManifestRow(line, p, f, int(lab), s)
        for (line, p, lab, _), f, s in zip(raw, files, splits, strict=True)
    ]
    rows.sort(key=lambda r: SPLITS.index(r.split))  # stable: manifest order within a split
    return Manifest(name, path, tuple(rows), n_classes)


def stratified_splits(labels: np.ndarray, where: Path) -> list[str]:
    """Each row's split under :data:`SPLIT_FRACTIONS`, per class, seeded by :data:`SPLIT_SEED`."""
    counts = np.bincount(labels)
    small = [f"class {c}: {n}" for c, n in enumerate(counts) if n < len(SPLITS)]
    if small:
        raise _fail(
            where,
            "classes too small for the stratified split",
            small,
            f"Each class needs >= {len(SPLITS)} images, or add a split column.",
        )
    test = sample_fraction(labels, SPLIT_FRACTIONS["test"], SPLIT_SEED)
    rest = np.setdiff1d(np.arange(len(labels)), test)
    val_share = SPLIT_FRACTIONS["val"] / (1.0 - SPLIT_FRACTIONS["test"])
    val = rest[sample_fraction(labels[rest], val_share, SPLIT_SEED + 1)]
    out = np.full(len(labels), "train", dtype=object)
    out[test], out[val] = "test", "val"
    return [str(s) for s in out]


def probe_manifest(manifest: Manifest) -> tuple[list[SourceFacts], int]:
    """Every file's md5 and header (memoised by the cache), and the dataset's channel count:
    3 if any file is colour, else 1."""

    def checked(i: int, path: Path) -> tuple[str, int]:
        try:
            return probe(path)
        except ImageError as err:
            row = manifest.rows[i]
            raise DataFileError(f"{manifest.csv}: {row.where()}: {err}") from err

    facts = source_facts([r.file for r in manifest.rows], checked)
    return facts, 3 if any(f.channels == 3 for f in facts) else 1


def manifest_key(manifest: Manifest, facts: list[SourceFacts], channels: int, size: int) -> str:
    """The content key of the decoded data: rows (path, label, split, md5), size, channels and
    the decoder's version. The cache file name and the provenance md5."""
    rows = [[r.path, r.label, r.split, f.md5] for r, f in zip(manifest.rows, facts, strict=True)]
    payload = {"format": "medstudy-manifest-1", "rows": rows, "size": size, "channels": channels}
    return content_key({**payload, "decoder": decoder_version()})


def manifest_info(manifest: Manifest, channels: int) -> DatasetInfo:
    counts = {s: sum(r.split == s for r in manifest.rows) for s in SPLITS}
    return DatasetInfo(
        name=manifest.name,
        task="binary-class" if manifest.n_classes == 2 else "multi-class",
        n_channels=channels,
        labels={str(i): str(i) for i in range(manifest.n_classes)},
        n_samples=counts,
        source="manifest",
        description=f"images listed in the manifest {manifest.csv}",
    )


def dataset_info(name: str, data_dir: Path | None = None) -> DatasetInfo:
    """The INFO row of a manifest dataset without decoding anything."""
    manifest = read_manifest(name, data_dir)
    return manifest_info(manifest, probe_manifest(manifest)[1])


def fingerprint(name: str, size: int, data_dir: Path | None = None) -> dict[str, str]:
    """``{"<name>.csv@<size>": key}``: what identifies the dataset in a job hash."""
    manifest = read_manifest(name, data_dir)
    facts, channels = probe_manifest(manifest)
    return {f"{manifest.csv.name}@{size}": manifest_key(manifest, facts, channels, size)}


def load_manifest_split(name: str, split: str, size: int, data_dir: Path | None = None) -> Split:
    """One split of a manifest dataset; its images are a read-only ``np.memmap`` slice of the
    cache (decoded on the first load at this size)."""
    manifest = read_manifest(name, data_dir)
    facts, channels = probe_manifest(manifest)
    key = manifest_key(manifest, facts, channels, size)
    n = len(manifest.rows)
    about = {"dataset": name, "manifest": str(manifest.csv), "size": size, "channels": channels}
    stem = f"{name}_{size}px"
    images = cached_images(
        stem, key, (n, size, size, channels), lambda: _decoded(manifest, size, channels), about
    )
    start, stop = manifest.bounds(split)
    labels = np.array([r.label for r in manifest.rows[start:stop]], dtype=np.int64)
    ids = np.array([f"{name}:{split}:{i:06d}" for i in range(stop - start)])
    source = (
        f"manifest {manifest.csv} (md5 {md5_of_file(manifest.csv)}): {n} images at {size} px, "
        f"{channels} channel(s), cached in {cache_path(stem, key)}"
    )
    provenance = Provenance(None, key, "manifest", source)
    info = manifest_info(manifest, channels)
    return Split(name, split, images[start:stop], labels, ids, info, provenance)


def _decoded(manifest: Manifest, size: int, channels: int) -> Iterator[np.ndarray]:
    """Blocks of decoded rows in cache order; a file that fails names its line."""
    block: list[np.ndarray] = []
    for row in manifest.rows:
        try:
            block.append(decode(row.file, size, channels))
        except ImageError as err:
            raise DataFileError(f"{manifest.csv}: {row.where()}: {err}") from err
        if len(block) == BLOCK_ROWS:
            yield np.stack(block)
            block = []
    if block:
        yield np.stack(block)
