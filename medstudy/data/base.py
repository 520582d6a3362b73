"""What every loader returns: :class:`Split` (one split, with its :class:`Provenance`), the
:class:`DataFileError` a bad file raises, and the md5 of a file.

The npz loader (:mod:`medstudy.data.loaders`), the manifest loader
(:mod:`medstudy.data.manifest`) and the PCam loader (:mod:`medstudy.data.pcam`) share these,
so that they sit side by side without importing one another.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medstudy.data.info import DatasetInfo

#: Set to 1 to make a missing file fail at once instead of trying a download.
OFFLINE_ENV = "MEDSTUDY_OFFLINE"


def offline() -> bool:
    """Whether ``MEDSTUDY_OFFLINE`` forbids download attempts."""
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


@contextmanager
def download_timeout(seconds: float = 30) -> Iterator[None]:
    """A socket timeout for a download: fail fast offline instead of hanging on a dead socket."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


class DataFileError(RuntimeError):
    """A data file is missing, corrupt, of the wrong md5 or of the wrong shape.

    The message always names the file.
    """


@dataclass(frozen=True)
class Provenance:
    """Where a split came from; written into run manifests."""

    file: str | None
    md5: str | None
    # "official" | "declared-non-official" | "undeclared" | "generated" | "manifest" | "pcam"
    status: str
    source: str

    def as_dict(self) -> dict[str, str | None]:
        return {"file": self.file, "md5": self.md5, "status": self.status, "source": self.source}


@dataclass(frozen=True)
class Split:
    """One split of one dataset.

    ``images``: uint8 (N, H, W, C), grey has C=1; in memory, or a read-only ``np.memmap`` for
    the cached loaders (manifest, PCam), which :class:`~medstudy.data.tensors.TensorSplit`
    then reads batch by batch. ``labels``: int64 (N,) or (N, L) for multi-label. ``ids``:
    stable string ids ``"<name>:<split>:<index>"`` used to pair predictions.
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    info: DatasetInfo
    provenance: Provenance
    extras: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: np.ndarray) -> Split:
        """The same split restricted to ``indices`` (ids are kept, so pairing still works).

        The subset's images are read into memory (from a memmap: only those rows)."""
        idx = np.asarray(indices, dtype=np.int64)
        extras = {
            k: (v[idx] if isinstance(v, np.ndarray) and len(v) == len(self) else v)
            for k, v in self.extras.items()
        }
        return Split(
            self.name,
            self.split,
            self.images[idx],
            self.labels[idx],
            self.ids[idx],
            self.info,
            self.provenance,
            extras,
        )


def md5_of_file(path: Path) -> str:
    """md5 of a file's bytes, read in 1 MiB chunks (uncached)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
