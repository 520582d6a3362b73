"""Label-fraction sampling: stratified, nested across fractions, seeded, >= 1 example per class.

Nesting (1 % ⊂ 10 % ⊂ 100 %) comes from taking prefixes of one seeded permutation per class:
a larger fraction takes a longer prefix of the same order. Only the train split is ever
subsampled; val and test are always complete.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def validate_fraction(fraction: float, name: str = "fraction") -> float:
    """Reject fractions outside (0, 1] before any work."""
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
        raise TypeError(f"{name} must be a number in (0, 1], got {fraction!r}")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {fraction!r}")
    return float(fraction)


def _class_count(n_class: int, fraction: float, min_per_class: int = 1) -> int:
    # round() keeps the class proportions; max(min_per_class, …) is the at-least-k guarantee.
    return min(n_class, max(min_per_class, int(round(fraction * n_class))))


def sample_fraction(
    labels: np.ndarray, fraction: float, seed: int, min_per_class: int = 1
) -> np.ndarray:
    """Sorted indices of a stratified ``fraction`` of ``labels`` (see :func:`sample_fractions`)."""
    return sample_fractions(labels, [fraction], seed, min_per_class)[float(fraction)]


def sample_fractions(
    labels: np.ndarray, fractions: Sequence[float], seed: int, min_per_class: int = 1
) -> dict[float, np.ndarray]:
    """Nested stratified subsets, one per fraction.

    Args:
        labels: (N,) integer class labels, or (N, L) multi-label 0/1 matrix.
        fractions: values in (0, 1].
        seed: the subset's seed; the same seed gives the same subsets, nested across fractions.
        min_per_class: the guaranteed examples per class (per label for multi-label data), or
            all of a class that has fewer (the selection val split of a low-label protocol
            keeps >= 5 per class).

    Returns:
        ``{fraction: sorted int64 indices}``. For single-label data each class contributes
        ``max(min_per_class, round(fraction * n_class))`` examples. For multi-label data (no
        stratum per label combination is feasible) the subset is a prefix of one permutation
        plus, for each label, its first ``min_per_class`` positive examples in that permutation,
        which keeps nesting.
    """
    fracs = [validate_fraction(f, "fractions") for f in fractions]
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out: dict[float, np.ndarray] = {}
    if labels.ndim == 2 and labels.shape[1] > 1:
        order = rng.permutation(labels.shape[0])
        positives = labels[order].astype(bool)
        forced = {
            int(order[i])
            for j in range(labels.shape[1])
            for i in np.flatnonzero(positives[:, j])[:min_per_class]
        }
        for f in fracs:
            k = max(1, int(round(f * labels.shape[0])))
            out[f] = np.array(sorted(set(order[:k].tolist()) | forced), dtype=np.int64)
        return out
    labels = labels.reshape(-1)
    perms = {int(c): rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    for f in fracs:
        parts = [perm[: _class_count(len(perm), f, min_per_class)] for perm in perms.values()]
        out[f] = np.sort(np.concatenate(parts)).astype(np.int64)
    return out
