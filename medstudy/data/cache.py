"""The decoded-image cache: images decoded and resized once into a uint8 ``.npy`` that every
later load opens memory-mapped (``np.load(..., mmap_mode="r")``), so that a split larger than
RAM is read batch by batch (:class:`~medstudy.data.tensors.MemmapImages`).

Layout, in :func:`medstudy.paths.cache_dir` (``MEDSTUDY_CACHE_DIR``, default
``<results>/cache``):

- ``<stem>_<key16>.npy``: the images, (N, size, size, C) uint8, rows in the loader's order;
- ``<stem>_<key16>.json``: what was cached (the full key, dataset, size, channels, counts,
  build time), for the reader;
- ``sources.json``: a memo of every source file's md5 and header facts, keyed by absolute path
  and valid while the file's size and mtime are unchanged, so that a reload re-hashes only the
  files that changed.

The key is the md5 of the loader's canonical description of the data (for a manifest: every
row's path, label, split and file md5, plus size, channels and
:func:`~medstudy.data.decode.decoder_version`). A file whose name holds the key is therefore
exactly that data: it is reused as is, and any change (a file, a label, the size, the decoder)
gives a new key and a rebuild; the older ``<stem>_*`` files are then deleted. The build streams
rows into a temp file that is renamed at the end (``medstudy.results.atomic_write``), under an
inter-process lock, so an interrupted build leaves no file that looks finished and two jobs
never decode the same data at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medstudy import paths
from medstudy.data.base import md5_of_file
from medstudy.locks import hold_lock
from medstudy.results import atomic_write, now_iso, write_json

MEMO_FILE = "sources.json"
KEY_CHARS = 16  # of the key in file names (the full key is in the .json)


@dataclass(frozen=True)
class SourceFacts:
    """What the cache knows of one source file: its md5 and, if probed, kind and channels."""

    md5: str
    kind: str = ""
    channels: int = 0


def content_key(payload: Any) -> str:
    """md5 of the canonical JSON of ``payload`` (sorted keys, no spaces)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.md5(text.encode()).hexdigest()


def source_facts(
    files: Sequence[Path],
    probe: Callable[[int, Path], tuple[str, int]] | None = None,
    root: Path | None = None,
) -> list[SourceFacts]:
    """md5 (and ``probe(index, path)`` → kind, channels) of every file, from the memo where the
    file's size and mtime are unchanged; new facts are added to the memo."""
    root = root or paths.cache_dir()
    memo_path = root / MEMO_FILE
    memo = _read_memo(memo_path)
    out: list[SourceFacts] = []
    changed = False
    for i, path in enumerate(files):
        st = path.stat()
        key = str(path.absolute())
        entry = memo.get(key)
        stamp = [st.st_size, st.st_mtime_ns]
        if entry is None or entry[:2] != stamp or (probe is not None and not entry[3]):
            kind, channels = probe(i, path) if probe is not None else ("", 0)
            entry = [*stamp, md5_of_file(path), kind, channels]
            memo[key] = entry
            changed = True
        out.append(SourceFacts(str(entry[2]), str(entry[3]), int(entry[4])))
    if changed:
        try:
            atomic_write(memo_path, lambda tmp: tmp.write_text(json.dumps(memo)))
        except OSError:
            pass  # a read-only cache dir (e.g. a dry run): the memo only saves time
    return out


def _read_memo(path: Path) -> dict[str, list[Any]]:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or damaged: a memo only saves time, so start afresh
    return memo if isinstance(memo, dict) else {}


def cache_path(stem: str, key: str, root: Path | None = None) -> Path:
    return (root or paths.cache_dir()) / f"{stem}_{key[:KEY_CHARS]}.npy"


def cached_images(
    stem: str,
    key: str,
    shape: tuple[int, int, int, int],
    rows: Callable[[], Iterable[np.ndarray]],
    about: dict[str, Any],
    root: Path | None = None,
) -> np.memmap:
    """The (N, H, W, C) uint8 cache ``<stem>_<key16>.npy``, opened read-only memory-mapped.

    Built first when absent (or unreadable) from ``rows()``, which yields uint8 blocks of rows
    in order (their total must be N); ``about`` goes into the ``.json`` beside it.
    """
    path = cache_path(stem, key, root)
    array = _open(path, shape)
    if array is not None:
        return array
    with hold_lock(path.stem, f"the image cache {path.name}", path.parent):
        array = _open(path, shape)  # another process may have built it while we waited
        if array is None:
            t0 = time.perf_counter()
            atomic_write(path, lambda tmp: _write_rows(tmp, shape, rows()))
            meta = {**about, "key": key, "shape": list(shape), "built": now_iso()}
            write_json(path.with_suffix(".json"), {**meta, "seconds": time.perf_counter() - t0})
            _remove_stale(path, stem)
            array = _open(path, shape)
    if array is None:
        raise OSError(f"{path}: written but unreadable as a {shape} uint8 array")
    return array


def _open(path: Path, shape: tuple[int, ...]) -> np.memmap | None:
    """The cache memory-mapped, or None when absent or not the expected array (rebuilt)."""
    if not path.exists():
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if not isinstance(array, np.memmap) or array.shape != shape or array.dtype != np.uint8:
        return None
    return array


def _write_rows(tmp: Path, shape: tuple[int, int, int, int], blocks: Iterable[np.ndarray]) -> None:
    """Stream ``blocks`` into an ``.npy`` (header first): memory stays one block, not N rows."""
    header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": shape}
    n = 0
    with open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for block in blocks:
            if block.dtype != np.uint8 or block.shape[1:] != shape[1:]:
                raise ValueError(f"cache rows {block.dtype} {block.shape[1:]}, expected {shape}")
            fh.write(np.ascontiguousarray(block).tobytes())
            n += block.shape[0]
    if n != shape[0]:
        raise ValueError(f"cache build wrote {n} rows, expected {shape[0]}")


def _remove_stale(keep: Path, stem: str) -> None:
    """Delete the older caches of the same stem (other keys). A process still reading one
    keeps its mapping: on POSIX an unlinked file lives until it is unmapped."""
    for old in keep.parent.glob(f"{stem}_*"):
        rest = old.name[len(stem) + 1 :]
        is_key = len(rest.split(".")[0]) == KEY_CHARS and old.suffix in (".npy", ".json")
        if is_key and old.stem != keep.stem:
            old.unlink(missing_ok=True)
