"""The weighted kNN classifier and frozen-feature extraction (medstudy.evaluate.knn/features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from medstudy.data import TensorSplit, to_float, to_model_input
from medstudy.evaluate.features import extract_features
from medstudy.evaluate.knn import knn_predict
from medstudy.models import create_backbone


def test_hand_computed_votes() -> None:
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = np.array([0, 1, 1])
    query = np.array([[2.0, 0.0]])  # cosine sims: 1, 0, 1/sqrt(2)
    scores = knn_predict(train, labels, query, n_classes=3, k=2, temperature=0.5)
    w0, w2 = np.exp(1 / 0.5), np.exp((1 / np.sqrt(2)) / 0.5)
    expected = np.array([[w0, w2, 0.0]]) / (w0 + w2)
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_large_temperature_matches_sklearn_uniform_cosine_knn() -> None:
    rng = np.random.default_rng(0)
    train, query = rng.normal(size=(200, 16)), rng.normal(size=(50, 16))
    labels = rng.integers(0, 4, size=200)
    ours = knn_predict(train, labels, query, n_classes=4, k=7, temperature=1e9)
    ref = KNeighborsClassifier(n_neighbors=7, metric="cosine", algorithm="brute")
    ref.fit(train, labels)
    np.testing.assert_allclose(ours, ref.predict_proba(query), atol=1e-9)


def test_multilabel_votes_and_errors() -> None:
    train = np.eye(3)
    labels = np.array([[1, 0], [1, 1], [0, 1]])
    scores = knn_predict(train, labels, np.eye(3), n_classes=2, k=1)
    np.testing.assert_array_equal(scores, labels.astype(float))
    with pytest.raises(ValueError, match="train labels"):
        knn_predict(train, np.array([0, 1, 5]), train, n_classes=3)
    with pytest.raises(ValueError, match="widths"):
        knn_predict(train, np.array([0, 1, 2]), np.eye(4), n_classes=3)


def test_extract_features_is_eval_mode_and_restores_training() -> None:
    backbone = create_backbone("resnet20_cifar", seed=0)
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    split = TensorSplit(images, torch.zeros(10, dtype=torch.long), np.arange(10), "x", "val")
    backbone.train()
    feats = extract_features(backbone, split, batch_size=4)
    assert backbone.training and feats.shape == (10, 64) and feats.dtype == np.float32
    backbone.eval()
    with torch.no_grad():
        direct = backbone(to_model_input(to_float(images))).numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-5, atol=1e-6)
