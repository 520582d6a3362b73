"""The robustness stage (notebook 06): fine-tuned models under a distortion suite (claim C6).

``run_robustness(cfg)`` finds every finished transfer unit of ``cfg`` (dataset × arm × seed at
``cfg.fraction`` with ``cfg.protocol``) through :func:`medstudy.results.find_runs`, rebuilds its
network (:func:`medstudy.transfer.load_unit_classifier`) and scores the test split clean
(distortion ``"none"``, severity 0) and under every distortion × severity of the suite
(:data:`medstudy.distortions.DISTORTIONS`; by default the dataset's modality subset). One
result per unit in ``results/robustness/<run_id>/``: per-sample predictions with
``distortion`` and ``severity`` columns, and tidy metrics per condition.

Randomness: a stochastic distortion of condition (distortion, severity) draws from a generator
seeded by ``derive_seed("robustness", dataset, distortion, severity)``, so every arm and seed
sees exactly the same distorted images: the comparison between arms is paired image by image.

The run_id hashes the source unit's run_id, the suite, the severities and the test cap, so a
re-trained model or another suite gives a new result and an unchanged one is loaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from medstudy import distortions as dist
from medstudy.config import RobustnessConfig
from medstudy.data import Split, TensorSplit, load_split, sample_fraction
from medstudy.data.tensors import to_float, to_model_input
from medstudy.evaluate.finetune import predict_scores
from medstudy.locks import pending
from medstudy.metrics import compute_metrics
from medstudy.results import (
    Run,
    metric_rows,
    predictions_frame,
    read_metrics,
    run_id,
)
from medstudy.runtime import derive_seed, make_generator, resolve_device
from medstudy.transfer import find_source_unit, load_unit_classifier
from medstudy.transfer import unit_paths as transfer_unit_paths

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STAGE = "robustness"
TEST_CAP_SEED = 0  # the test cap is part of the data definition, the same for every arm


@dataclass(frozen=True)
class Condition:
    distortion: str
    severity: int


def suite(cfg: RobustnessConfig, n_channels: int) -> list[Condition]:
    """Clean first, then every (distortion, severity) of the suite in registry order."""
    names = cfg.distortions or dist.distortions_for(cfg.dataset, n_channels)
    bad = [n for n in names if n in dist.RGB_ONLY and n_channels != 3]
    if bad:
        raise ValueError(f"{bad} need RGB images; {cfg.dataset} has {n_channels} channel(s)")
    return [Condition(dist.CLEAN, 0)] + [Condition(n, s) for n in names for s in cfg.severities]


def test_split(cfg: RobustnessConfig) -> Split:
    """The test split, capped to ``cfg.max_test`` images (stratified, fixed seed)."""
    test = load_split(cfg.dataset, "test", cfg.image_size)
    if 0 < cfg.max_test < len(test):
        test = test.subset(sample_fraction(test.labels, cfg.max_test / len(test), TEST_CAP_SEED))
    return test


def distorted(images_u8: torch.Tensor, condition: Condition, dataset: str) -> torch.Tensor:
    """Float [0, 1] images under ``condition``; the generator depends on the condition only."""
    x = to_float(images_u8)
    if condition.distortion == dist.CLEAN:
        return x
    seed = derive_seed("robustness", dataset, condition.distortion, condition.severity)
    gen = make_generator(x.device, seed)
    return dist.apply_distortion(x, condition.distortion, condition.severity, gen)


def source_unit(cfg: RobustnessConfig, arm: str, seed: int) -> str:
    """The run_id of the transfer unit (arm, seed) this stage reads."""
    return find_source_unit(cfg, arm, seed)


def run_robustness(cfg: RobustnessConfig) -> pd.DataFrame:
    """Run (or load) every (arm, seed) unit of ``cfg``; returns tidy metrics with ``run_id``.

    Every source unit is located before any work, so a missing fine-tuned model fails at once.
    """
    device = resolve_device(cfg.device)
    test = test_split(cfg)
    conditions = suite(cfg, test.info.n_channels)
    sources = {(arm, seed): source_unit(cfg, arm, seed) for arm in cfg.arms for seed in cfg.seeds}
    images = TensorSplit.from_split(test, device, lazy=False).images  # distorted whole
    inputs = {f"{cfg.dataset}.test": test.provenance.md5 or test.provenance.source}
    frames = []
    # The distorted test sets are the same for every unit (the generator depends on the
    # condition only): made once, on the first unit that needs them.
    cache: dict[Condition, torch.Tensor] = {}
    for (arm, seed), src in sources.items():
        config = {
            "dataset": cfg.dataset,
            "arm": arm,
            "seed": seed,
            "protocol": cfg.protocol,
            "fraction": cfg.fraction,
            "source": f"{cfg.source_stage}/{src}",
            "conditions": [[c.distortion, c.severity] for c in conditions],
            "max_test": cfg.max_test,
        }
        rid = run_id(config, inputs)
        with pending(STAGE, rid) as todo:
            if todo:
                _evaluate(cfg, config, inputs, src, conditions, test, images, device, cache)
        frames.append(read_metrics(STAGE, rid))
    return pd.concat(frames, ignore_index=True)


def _evaluate(
    cfg: RobustnessConfig,
    config: dict[str, object],
    inputs: dict[str, str],
    src: str,
    conditions: list[Condition],
    test: Split,
    images: torch.Tensor,
    device: torch.device,
    cache: dict[Condition, torch.Tensor],
) -> None:
    info = test.info
    model = load_unit_classifier(cfg.source_stage, src, str(device))
    arm, seed = str(config["arm"]), int(config["seed"])  # type: ignore[call-overload]
    t0 = time.perf_counter()
    data = {"n_test": len(test), "test": test.provenance.as_dict()}
    with Run(STAGE, config, inputs, data, seed, str(device)) as run:
        rows, preds = [], []
        for c in conditions:
            if c not in cache:
                cache[c] = distorted(images, c, cfg.dataset)
            x = cache[c]
            scores = predict_scores(
                model, (x,), info, transform=lambda b, train, g: (to_model_input(b[0]),)
            )
            base = {
                "stage": STAGE,
                "dataset": cfg.dataset,
                "arm": arm,
                "protocol": cfg.protocol,
                "fraction": cfg.fraction,
                "seed": seed,
                "split": "test",
                "distortion": c.distortion,
                "severity": c.severity,
            }
            values = compute_metrics(info.task, test.labels, scores, info.n_classes, info.name)
            rows.extend(metric_rows(base, values))
            preds.append(predictions_frame(base, test.ids, test.labels, scores))
        run.log_metrics(rows)
        run.save_predictions(pd.concat(preds, ignore_index=True))
        run.save_details({"seconds": round(time.perf_counter() - t0, 3), "source": src})


def plot_distortion_grid(cfg: RobustnessConfig) -> Figure:
    """Test image ``cfg.example_index`` under every distortion of the suite (rows) at every
    severity of ``cfg`` (columns), clean in the first column."""
    import matplotlib.pyplot as plt

    test = test_split(cfg)
    image = TensorSplit.from_split(test.subset(np.array([cfg.example_index]))).images
    names = [c for c in dict.fromkeys(c.distortion for c in suite(cfg, test.info.n_channels))]
    names = [n for n in names if n != dist.CLEAN]
    cols = [0, *cfg.severities]
    fig, axes = plt.subplots(
        len(names), len(cols), figsize=(1.1 * len(cols), 1.1 * len(names)), squeeze=False
    )
    for r, name in enumerate(names):
        for c, sev in enumerate(cols):
            cond = Condition(dist.CLEAN, 0) if sev == 0 else Condition(name, sev)
            img = distorted(image, cond, cfg.dataset)[0].permute(1, 2, 0).numpy()
            ax = axes[r, c]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if sev == 0 else f"severity {sev}", fontsize=7)
        axes[r, 0].set_ylabel(name.replace("_", " "), fontsize=7)
    fig.suptitle(f"{cfg.dataset}: test image {test.ids[cfg.example_index]}", fontsize=8)
    fig.tight_layout()
    return fig


def unit_paths(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per robustness unit in ``metrics`` with its results folder."""
    return transfer_unit_paths(metrics, stage=STAGE)
