"""Where and how computation runs: the device, seeds and generators, precision, Lightning quieting.

Every stage and protocol takes these from here, so there is one rule for each:

- **device** (:func:`resolve_device`): ``"cpu"``, ``"cuda"`` or ``"auto"``. ``"cuda"`` without a
  visible GPU is an error, never a silent CPU fallback (that would change what a timing or a
  bf16 number means); ``"auto"`` is an explicit request and the resolved device is recorded in
  every manifest.
- **seeds** (:func:`derive_seed`, :func:`make_generator`, :func:`seeded`): every random stream is
  derived from the run's seed and a name, and module initialisation draws from the global torch
  RNG only inside :func:`seeded`, which restores the caller's RNG state afterwards.
- **precision** (:func:`precision`): bf16 autocast on GPU, fp32 on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

DEVICES: tuple[str, ...] = ("cpu", "cuda", "auto")
M = TypeVar("M")


def resolve_device(name: str) -> torch.device:
    """``"cpu"``, ``"cuda"`` (an error if no GPU is visible) or ``"auto"`` (GPU if visible)."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; valid: {list(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but no CUDA device is visible")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def derive_seed(*keys: object) -> int:
    """A 63-bit seed from ``keys`` (e.g. ``(seed, "augment", stage, epoch)``), stable across
    runs and platforms (unlike ``hash``)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the global torch RNG inside the block only (module constructors draw from it);
    the caller's RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def seeded_build(build: Callable[[], M], seed: int) -> M:
    """``build()`` with its random initialisation fixed by ``seed`` (see :func:`seeded`)."""
    with seeded(seed):
        return build()


def precision(device: torch.device) -> str:
    """Lightning precision: bf16 autocast on GPU only. CPU autocast is slower for these small
    convolutions and would change the numbers of the CPU profiles."""
    return "bf16-mixed" if device.type == "cuda" else "32-true"


#: Lightning warnings about choices made on purpose here: no DataLoader workers (batches are
#: index slices of on-device tensors), no logger, short epochs, no validation loop in SSL.
_EXPECTED_WARNINGS: tuple[str, ...] = (
    ".*does not have many workers.*",
    ".*number of training batches.*smaller than the logging interval.*",
    ".*You called `self.log.*` but have no logger configured.*",
    ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
    ".*GPU available but not used.*",
)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's start-up banner and its warnings about the choices listed in
    ``_EXPECTED_WARNINGS``; any other warning still shows."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
