"""Weighted k-nearest-neighbour classification on frozen features (DESIGN §6: k=20, cosine).

The classifier of Wu et al. 2018 (InstDisc, CVPR, §3.4), used as the online monitor of
solo-learn (``WeightedKNNClassifier``) and lightly's benchmarks: cosine similarity to the train
features, the ``k`` nearest vote with weight ``exp(sim / T)``.

Data contract
-------------
- ``train_features`` (N, D) and ``query_features`` (M, D): float arrays (any scale: rows are
  L2-normalised here);
- ``train_labels``: int (N,) class indices in ``[0, n_classes)``, or a 0/1 (N, L) matrix for
  multi-label tasks (each label is voted on independently);
- returns float64 (M, K) scores: the vote of each class divided by the total vote weight, so each
  row sums to 1 for single-label tasks (usable as probabilities for AUC); for multi-label tasks
  column ``j`` is the weighted fraction of neighbours carrying label ``j``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medstudy.data.tensors import TensorSplit
from medstudy.evaluate.features import extract_features
from medstudy.models import Backbone

QUERY_CHUNK = 1024  # queries per similarity block: bounds memory at 1024 × N floats


def knn_predict(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    query_features: np.ndarray,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> np.ndarray:
    """Class scores of the queries from their ``k`` most cosine-similar train samples."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got k={k}, T={temperature}")
    train = F.normalize(torch.as_tensor(np.asarray(train_features), dtype=torch.float64), dim=1)
    query = F.normalize(torch.as_tensor(np.asarray(query_features), dtype=torch.float64), dim=1)
    labels = torch.as_tensor(np.asarray(train_labels))
    if train.shape[0] != labels.shape[0]:
        raise ValueError(f"{train.shape[0]} train features but {labels.shape[0]} train labels")
    if train.shape[1] != query.shape[1]:
        raise ValueError(f"feature widths differ: train {train.shape[1]}, query {query.shape[1]}")
    if labels.ndim == 1:
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
            raise ValueError(f"train labels must lie in [0, {n_classes}), got {labels.unique()}")
        targets = F.one_hot(labels.long(), n_classes).to(torch.float64)
    else:
        targets = labels.to(torch.float64)
    k = min(k, train.shape[0])
    out = []
    for start in range(0, query.shape[0], QUERY_CHUNK):
        sim = query[start : start + QUERY_CHUNK] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        # Subtracting the row max before exp changes no ratio but avoids overflow at small T.
        weights = torch.exp((top_sim - top_sim[:, :1]) / temperature)
        votes = (weights.unsqueeze(-1) * targets[top_idx]).sum(dim=1)
        out.append(votes / weights.sum(dim=1, keepdim=True))
    return torch.cat(out).numpy() if out else np.zeros((0, targets.shape[1]))


# ------------------------------------------------------------------------- the kNN monitor --
#: k and T of the weighted kNN (Wu et al. 2018; solo-learn's and DINO's monitor). The transfer
#: protocol ``knn`` and the pretraining monitor use the same pair.
KNN_K = 20
KNN_TEMPERATURE = 0.07


def knn_scores(
    backbone: Backbone, train: TensorSplit, val: TensorSplit, n_classes: int, k: int = KNN_K
) -> np.ndarray:
    """The weighted kNN votes (cosine, T = ``KNN_TEMPERATURE``) of every val image, from the
    backbone's frozen features of ``train``."""
    train_feats = extract_features(backbone, train)
    val_feats = extract_features(backbone, val)
    train_y = train.labels.cpu().numpy()
    return knn_predict(train_feats, train_y, val_feats, n_classes, k, KNN_TEMPERATURE)


def knn_accuracy(
    backbone: Backbone, train: TensorSplit, val: TensorSplit, n_classes: int, k: int = KNN_K
) -> float:
    """Val accuracy of the weighted kNN classifier on the backbone's frozen features.

    Multi-label tasks: the mean over labels of the per-label accuracy at a 0.5 vote.
    """
    scores = knn_scores(backbone, train, val, n_classes, k)
    val_y = val.labels.cpu().numpy()
    if val_y.ndim == 2:
        return float(((scores >= 0.5) == (val_y > 0)).mean())
    return float((scores.argmax(axis=1) == val_y).mean())
