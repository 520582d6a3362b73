"""Tables and figures that describe a dataset (used by notebook 01)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medstudy.data.info import SPLITS
from medstudy.data.loaders import load_split


def summarize_dataset(name: str, size: int = 28) -> pd.DataFrame:
    """One row per split: size, class counts, image shape and provenance (md5, status)."""
    rows = []
    for split in SPLITS:
        s = load_split(name, split, size)
        if s.info.is_multilabel:
            counts = {f"label_{j}": int(c) for j, c in enumerate(s.labels.sum(0))}
        else:
            binc = np.bincount(s.labels, minlength=s.info.n_classes)
            counts = {f"class_{k}": int(c) for k, c in enumerate(binc)}
        rows.append(
            {
                "split": split,
                "n": len(s),
                "shape": "x".join(map(str, s.images.shape[1:])),
                **counts,
                "md5": s.provenance.md5,
                "status": s.provenance.status,
            }
        )
    return pd.DataFrame(rows).set_index("split")


def plot_dataset_examples(name: str, size: int = 28, n: int = 8, seed: int = 0):  # noqa: ANN201
    """A grid of train examples (one row per class, up to 5 classes); for ``synth_lesions``
    the images above their ground-truth lesion masks."""
    import matplotlib.pyplot as plt

    split = load_split(name, "train", size)
    if name == "synth_lesions":
        from medstudy.data.synth import plot_examples

        return plot_examples(split.extras["synth"], n=n)
    rng = np.random.default_rng(seed)
    classes = list(range(min(split.info.n_classes, 5))) if not split.info.is_multilabel else [0]
    fig, axes = plt.subplots(len(classes), n, figsize=(1.2 * n, 1.3 * len(classes)), squeeze=False)
    for r, c in enumerate(classes):
        pool = (
            np.arange(len(split)) if split.info.is_multilabel else np.flatnonzero(split.labels == c)
        )
        picks = rng.choice(pool, size=min(n, len(pool)), replace=False) if len(pool) else []
        for k, ax in enumerate(axes[r]):
            ax.axis("off")
            if k < len(picks):
                img = split.images[picks[k]]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
        label = split.info.labels.get(str(c), str(c))
        axes[r][0].set_title(f"{c}: {label[:28]}", fontsize=7, loc="left")
    fig.suptitle(f"{name} (train, {size} px)")
    fig.tight_layout()
    return fig
