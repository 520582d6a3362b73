"""Notebook 01's plots: a method's augmented views, and the loss / kNN history of a run."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medstudy.augment import make_views, recipe_for_dataset
from medstudy.data import TensorSplit, load_split
from medstudy.runtime import make_generator
from medstudy.ssl import get_method


def plot_views(dataset: str, method: str, n: int = 6, seed: int = 0, size: int = 28) -> Figure:
    """The first ``n`` train images of ``dataset`` at ``size`` px (top row) and each of
    ``method``'s views of them (one row per view), as the method's recipe makes them for this
    dataset (at the run's size: a manifest or PCam dataset is decoded once per size)."""

    spec = get_method(method)
    split = load_split(dataset, "train", size)
    recipe = recipe_for_dataset(spec.recipe, dataset, split.info.n_channels)
    images = TensorSplit.from_split(split.subset(np.arange(min(n, len(split))))).images
    views = make_views(images, recipe, make_generator("cpu", seed), model_input=False)
    rows = [images.float() / 255, *views]
    fig, axes = plt.subplots(
        len(rows), images.shape[0], figsize=(1.3 * images.shape[0], 1.3 * len(rows)), squeeze=False
    )
    for r, batch in enumerate(rows):
        for c in range(batch.shape[0]):
            ax = axes[r, c]
            img = batch[c].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel("original" if r == 0 else f"view {r}", fontsize=8)
    fig.suptitle(f"{method} views of {dataset} ({recipe.reference})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_history(history: pd.DataFrame) -> Figure:
    """Training loss and val kNN accuracy per epoch; curriculum stages are shaded."""

    fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(9, 3.2))
    trained = history[history["method"] != "init"]
    for method, part in trained.groupby("stage", sort=True):
        label = str(part["method"].iloc[0])
        ax_loss.plot(part["epoch"], part["loss"], marker="o", label=f"{method}: {label}")
    monitored = history.dropna(subset=["knn_acc"])  # epochs skipped by knn_every have none
    ax_knn.plot(monitored["epoch"], monitored["knn_acc"], marker="o", color="k")
    for stage, part in trained.groupby("stage", sort=True):
        if int(stage) % 2 == 1:
            for ax in (ax_loss, ax_knn):
                ax.axvspan(part["epoch"].min() - 0.5, part["epoch"].max() + 0.5, alpha=0.1)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="SSL loss (per stage)")
    if not trained.empty:
        ax_loss.legend(fontsize=8)
    ax_knn.set(xlabel="epoch (0 = initial weights)", ylabel="val kNN accuracy", title="kNN monitor")
    fig.tight_layout()
    return fig
