"""Frozen-feature extraction: one pass of a backbone over a split, in eval mode.

The pixel pipeline is the package's one (``to_float`` → ``to_model_input``), so features of
grey and RGB data, of every init arm, are computed the same way. The backbone's train/eval mode
is restored afterwards, so the pretraining loop can call this between epochs.
"""

from __future__ import annotations

import numpy as np
import torch

from medstudy.data.tensors import TensorSplit, to_device, to_float, to_model_input
from medstudy.models import Backbone


@torch.no_grad()
def extract_features(
    backbone: Backbone, tensor_split: TensorSplit, batch_size: int = 512
) -> np.ndarray:
    """Pooled features (N, feature_dim) float32, in the split's order (BatchNorm in eval mode)."""
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        feats = [
            backbone(to_model_input(to_float(to_device(images, device)))).float().cpu()
            for images, _, _ in tensor_split.batches(batch_size)
        ]
    finally:
        backbone.train(was_training)
    if not feats:
        return np.zeros((0, backbone.feature_dim), dtype=np.float32)
    return torch.cat(feats).numpy()
