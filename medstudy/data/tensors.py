"""In-memory tensor data: the whole split lives on the training device as uint8.

No DataLoader workers and no per-image PIL work: on a 2-core CPU those dominate the cost of a
28 px ResNet-20 step, and on a GPU they starve it (DESIGN §5). Batches are index slices.

Pixel pipeline, used everywhere (pretraining, probing, fine-tuning, attribution):
uint8 (N,C,H,W) → :func:`to_float` in [0, 1] → (augmentation) → :func:`to_model_input`, which
makes grey images 3-channel *explicitly* (replication, so natural-image weights apply unchanged)
and normalises with the ImageNet statistics the natural weights were trained with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from medstudy.data.loaders import Split

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


@dataclass
class TensorSplit:
    """A split as device tensors: ``images`` uint8 (N,C,H,W), ``labels`` int64, ``ids`` numpy."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: np.ndarray
    name: str
    split: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def from_split(cls, split: Split, device: torch.device | str = "cpu") -> TensorSplit:
        images = torch.from_numpy(np.ascontiguousarray(split.images.transpose(0, 3, 1, 2)))
        return cls(
            images.to(device),
            torch.from_numpy(split.labels).to(device),
            split.ids,
            split.name,
            split.split,
        )

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
