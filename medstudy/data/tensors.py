"""Tensor data: the whole split lives on the training device as uint8, or, for a split read
from the memory-mapped image cache (manifest and PCam datasets), stays in the file and is read
batch by batch (:class:`MemmapImages`).

No DataLoader workers and no per-image PIL work: on a 2-core CPU those dominate the cost of a
28 px ResNet-20 step, and on a GPU they starve it (DESIGN §5). Batches are index slices.

Pixel pipeline, used everywhere (pretraining, probing, fine-tuning, attribution):
uint8 (N,C,H,W) → :func:`to_float` in [0, 1] → (augmentation) → :func:`to_model_input`, which
makes grey images 3-channel *explicitly* (replication, so natural-image weights apply unchanged)
and normalises with the ImageNet statistics the natural weights were trained with.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from medstudy.data.base import Split

# resnet20_cifar10.th was trained on CIFAR-10 normalised with these (shared/data/README.md),
# and timm ImageNet weights use them too, so one normalisation serves every arm.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N,C,H,W) → float32 in [0, 1]."""
    return images_u8.to(torch.float32).div_(255.0)


def to_model_input(x: torch.Tensor) -> torch.Tensor:
    """float [0,1] (N,C,H,W), C ∈ {1,3} → normalised 3-channel input for every backbone."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def to_device(
    batch: torch.Tensor, device: torch.device | str, pin: bool | None = None
) -> torch.Tensor:
    """A host batch on ``device``. To a CUDA device (``pin=None``: whenever ``device`` is CUDA)
    the batch goes through page-locked (pinned) memory and an asynchronous copy
    (``non_blocking=True``), so the transfer overlaps the GPU's work, as a DataLoader with
    ``pin_memory=True`` does (SparK's own loader: ``pretrain/main.py``). On the CPU it is
    ``batch.to(device)``: no pinning (it needs a CUDA driver) and no effect on CPU runs.
    A batch already on ``device`` is returned as is."""
    device = torch.device(device)
    if batch.device == device:
        return batch
    if device.type == "cuda" if pin is None else pin:
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


class MemmapImages:
    """uint8 images (N, C, H, W) read on demand from an (N, H, W, C) array, normally a
    read-only ``np.memmap`` of the image cache: the tensor stand-in of :class:`TensorSplit`
    for data larger than RAM.

    Indexing with a 1-D index (tensor or array) or a slice reads those rows (in ascending file
    order, for locality) and returns a contiguous uint8 tensor on ``device`` (to a GPU through
    pinned memory, :func:`to_device`); ``rows`` restricts
    it to those rows of ``array`` without reading them.

    Pages of the file that a read maps in count in the process's RSS although the OS can
    reclaim them, and the kernel maps ~64 KiB around each faulting page ("fault-around"), so a
    few shuffled batches map most of a file this size. So that an epoch does not end with the
    whole file resident in this process, the mapping's pages are dropped
    (``madvise(MADV_DONTNEED)``, where the OS has it) after every read: they stay in the OS page
    cache, so a re-read costs a page fault, not a disk read (measured: ~4 µs per 64 px image,
    ``benchmarks/bench_memmap.py``).
    """

    dtype = torch.uint8

    def __init__(
        self,
        array: np.ndarray,
        rows: np.ndarray | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if array.ndim != 4 or array.dtype != np.uint8:
            raise ValueError(f"expected uint8 (N, H, W, C) images, got {array.dtype} {array.shape}")
        self.array = array
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return int(self.array.shape[0] if self.rows is None else len(self.rows))

    @property
    def shape(self) -> torch.Size:
        n, h, w, c = self.array.shape
        return torch.Size((len(self), c, h, w))

    def _file_rows(self, index: torch.Tensor | np.ndarray | slice) -> np.ndarray:
        if isinstance(index, slice):
            positions = np.arange(len(self))[index]
        elif isinstance(index, torch.Tensor):
            positions = index.detach().cpu().numpy().astype(np.int64, copy=False)
        else:
            positions = np.asarray(index, dtype=np.int64)
        if positions.ndim != 1:
            raise IndexError("MemmapImages takes a 1-D index or a slice")
        positions = np.where(positions < 0, positions + len(self), positions)
        return positions if self.rows is None else self.rows[positions]

    def __getitem__(self, index: torch.Tensor | np.ndarray | slice) -> torch.Tensor:
        rows = self._file_rows(index)
        order = np.argsort(rows, kind="stable")
        block = np.empty((len(rows), *self.array.shape[1:]), dtype=np.uint8)
        block[order] = self.array[rows[order]]
        release_pages(self.array)
        images = torch.from_numpy(np.ascontiguousarray(block.transpose(0, 3, 1, 2)))
        return to_device(images, self.device)

    def to(self, device: torch.device | str) -> MemmapImages:
        return MemmapImages(self.array, self.rows, device)


def release_pages(array: np.ndarray) -> bool:
    """Drop this process's mapped pages of a memmap (``madvise(MADV_DONTNEED)``; the data stays
    in the page cache); False where there is nothing to release or the OS lacks it."""
    handle = getattr(array, "_mmap", None)  # numpy's mmap.mmap behind an np.memmap
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if handle is None or advice is None:
        return False
    handle.madvise(advice)
    return True


@dataclass
class TensorSplit:
    """A split as device tensors: ``images`` uint8 (N,C,H,W), ``labels`` int64, ``ids`` numpy.

    ``images`` is a tensor, or a :class:`MemmapImages` when the split comes from the
    memory-mapped image cache (the pretraining and fine-tuning loops, kNN and feature
    extraction only index it, so they never hold the whole split in memory).
    """

    images: torch.Tensor | MemmapImages
    labels: torch.Tensor
    ids: np.ndarray
    name: str
    split: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def from_split(
        cls,
        split: Split,
        device: torch.device | str = "cpu",
        lazy: bool | None = None,
        indices: np.ndarray | None = None,
    ) -> TensorSplit:
        """The split (or its rows ``indices``) as tensors. ``lazy=None``: a
        :class:`MemmapImages` for an ``np.memmap`` split (``indices`` then only select rows,
        reading none), a tensor else; ``lazy=False`` reads the images into one tensor (for
        code that needs them all at once)."""
        if lazy is None:
            lazy = isinstance(split.images, np.memmap)
        idx = None if indices is None else np.asarray(indices, dtype=np.int64)
        take = (lambda a: a) if idx is None else (lambda a: a[idx])
        if lazy:
            images: torch.Tensor | MemmapImages = MemmapImages(split.images, idx, device)
        else:
            array = np.ascontiguousarray(take(split.images).transpose(0, 3, 1, 2))
            images = torch.from_numpy(array).to(device)
        labels = torch.from_numpy(np.ascontiguousarray(take(split.labels))).to(device)
        return cls(images, labels, take(split.ids), split.name, split.split)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(images_u8, labels, index)`` batches; shuffling needs an explicit generator."""
        n = len(self)
        if shuffle:
            if generator is None:
                raise ValueError("shuffle=True needs an explicit torch.Generator (seeded runs)")
            order = torch.randperm(n, generator=generator).to(self.images.device)
        else:
            order = torch.arange(n, device=self.images.device)
        stop = n - (n % batch_size) if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield self.images[idx], self.labels[idx], idx
