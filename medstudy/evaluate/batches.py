"""Inputs of the supervised loop (:mod:`medstudy.evaluate.finetune`): in-memory batches, the
fine-tuning transform, and Lightning checkpoints written atomically (also used by the SSL loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from medstudy.augment import AugmentRecipe, ViewTransform, augment_batch, recipe_for_dataset
from medstudy.data.tensors import to_float, to_model_input
from medstudy.results import atomic_write

#: A batch transform: ``(inputs, train, generator) -> inputs`` applied on the training device.
InputTransform = Callable[
    [tuple[torch.Tensor, ...], bool, torch.Generator], tuple[torch.Tensor, ...]
]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written via temp file + rename: a kill mid-write leaves the previous
    checkpoint intact instead of a truncated one (the SSL and the supervised loops use it)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


# ------------------------------------------------------------------------------------- data --
class TensorBatches:
    """Re-iterable batches ``(*inputs, labels)`` of in-memory tensors (one epoch per ``iter``).

    ``inputs`` share the first (sample) axis with ``labels``. With ``shuffle`` the order of every
    epoch is drawn from ``generator`` (CPU), so a seeded generator fixes all epochs.
    """

    def __init__(
        self,
        inputs: Sequence[torch.Tensor],
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        min_batches: int = 1,
    ) -> None:
        if shuffle and generator is None:
            raise ValueError("shuffle=True needs an explicit torch.Generator (seeded runs)")
        if min_batches > 1 and not shuffle:
            raise ValueError("min_batches > 1 repeats the data, which only makes sense shuffled")
        n = int(labels.shape[0])
        if any(int(x.shape[0]) != n for x in inputs):
            raise ValueError("every input must have as many rows as labels")
        self.inputs, self.labels = tuple(inputs), labels
        self.batch_size, self.shuffle, self.generator = batch_size, shuffle, generator
        per_pass = math.ceil(n / batch_size)
        #: Passes over the data per epoch: enough for ``min_batches`` batches (a tiny label
        #: fraction would otherwise get one optimiser step per epoch).
        self.passes = max(1, math.ceil(min_batches / max(per_pass, 1)))

    def __len__(self) -> int:
        return self.passes * math.ceil(int(self.labels.shape[0]) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = int(self.labels.shape[0])
        for _ in range(self.passes):
            if self.shuffle:
                order = torch.randperm(n, generator=self.generator)
            else:
                order = torch.arange(n)
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size].to(self.labels.device)
                if self.shuffle and len(idx) == 1 and n > 1:
                    # A lone training sample breaks BatchNorm on 1x1 maps (timm ResNets at
                    # 28 px); with shuffling it is a different sample each time: nothing lost.
                    continue
                yield (*(x[idx] for x in self.inputs), self.labels[idx])


# ----------------------------------------------------------------------------- augmentation --
#: Light fine-tuning augmentation: a mild random resized crop and a horizontal flip, no colour
#: jitter (label-relevant intensity, e.g. exudates, must survive). Rotation-invariant datasets
#: (histology, dermoscopy) also get vertical flips and 90° rotations via ``recipe_for_dataset``.
FINETUNE_RECIPE = AugmentRecipe(
    "finetune",
    (ViewTransform(crop_scale=(0.7, 1.0), jitter_prob=0.0, grayscale_prob=0.0),),
    "light crop + flip, as in the MedMNIST-style supervised baselines",
)


def image_transform(augment: bool, dataset: str = "", n_channels: int = 3) -> InputTransform:
    """uint8 images → model input; with ``augment``, :data:`FINETUNE_RECIPE` (batched on the
    device, :func:`medstudy.augment.augment_batch`) when training. Eval is never augmented."""
    view = recipe_for_dataset(FINETUNE_RECIPE, dataset, n_channels).views[0] if augment else None

    def transform(
        inputs: tuple[torch.Tensor, ...], train: bool, generator: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        x = to_float(inputs[0])
        if train and view is not None:
            x = augment_batch(x, view, generator)
        return (to_model_input(x),)

    return transform


def _identity(
    inputs: tuple[torch.Tensor, ...], train: bool, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    return inputs
