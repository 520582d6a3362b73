"""A tiny, planted results tree for the claims and report tests (no training, no torch).

``add_runs`` writes finished runs (``config.json``, ``metrics.csv``, ``predictions.parquet``,
``DONE``) in the layout of ``medstudy.results``. Scores are planted: an arm's ``strength`` is
the separation of its scores between classes, so a larger strength means a better model, and
two arms with the same ``strength`` and ``noise_key`` get identical scores.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from medstudy.data.info import INFO
from medstudy.metrics import compute_metrics
from medstudy.results import (
    DETAILS_FILE,
    DONE_FILE,
    metric_rows,
    predictions_frame,
    write_json,
    write_metrics,
    write_predictions,
)

N_CASES = {"val": 60, "test": 120}


def labels(dataset: str, split: str) -> np.ndarray:
    """Fixed, balanced labels of a split (the same for every arm and seed)."""
    k = INFO[dataset].n_classes
    return np.arange(N_CASES[split]) % k


def planted_scores(dataset: str, y: np.ndarray, strength: float, key: str) -> np.ndarray:
    """(N, K) probabilities whose quality grows with ``strength``; noise seeded by ``key``."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    k = INFO[dataset].n_classes
    noise = rng.normal(size=(len(y), k))
    logits = strength * (np.arange(k)[None, :] == y[:, None]) + noise
    if INFO[dataset].task == "ordinal-regression":
        # grades: closer grades get more mass, so kappa rewards near misses
        logits = -strength * (np.arange(k)[None, :] - y[:, None]) ** 2 / 4.0 + noise
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def finish_run(
    run: Path, config: Mapping[str, object], predictions: pd.DataFrame | None, rows: list
) -> Path:
    """Write a finished run: config, predictions (if any), metrics, then the DONE marker."""
    write_json(run / "config.json", dict(config))
    if predictions is not None:
        write_predictions(run / "predictions.parquet", predictions)
    write_metrics(run / "metrics.csv", rows)
    (run / DONE_FILE).write_text("done\n")
    return run


def add_runs(
    root: Path,
    stage: str,
    dataset: str,
    arms: Mapping[str, float],
    protocol: str = "finetune",
    seeds: Iterable[int] = (0, 1, 2),
    fractions: Iterable[float] = (1.0,),
    noise_key: Mapping[str, str] | None = None,
    config: Mapping[str, object] | None = None,
    fraction_strength: float = 0.0,
    conditions: Iterable[tuple[str | None, int | None, float]] = ((None, None, 0.0),),
) -> list[Path]:
    """One finished run per (arm, seed): predictions on val and test at every fraction and
    condition ``(distortion, severity, strength penalty)``, plus their metrics.

    ``fraction_strength`` adds ``fraction_strength * log10(fraction)`` to the strength (a
    label-efficiency curve); ``noise_key[arm]`` overrides the arm's noise seed name.
    """
    out = []
    info = INFO[dataset]
    conditions = list(conditions)
    for arm, strength in arms.items():
        for seed in seeds:
            run_id = f"{stage}-{dataset}-{arm}-{protocol}-s{seed}".replace(":", "_").replace(
                "+", "p"
            )
            run = root / stage / run_id
            frames, rows = [], []
            for frac in fractions:
                for dist, sev, penalty in conditions:
                    for split in ("val", "test"):
                        base = {
                            "stage": stage, "dataset": dataset, "arm": arm, "protocol": protocol,
                            "fraction": float(frac), "seed": seed, "split": split,
                            "distortion": dist, "severity": sev,
                        }  # fmt: skip
                        y = labels(dataset, split)
                        s_eff = strength + fraction_strength * np.log10(frac) - penalty
                        name = (noise_key or {}).get(arm, arm)
                        key = f"{name}|{seed}|{split}|{frac}|{dist}|{sev}"
                        scores = planted_scores(dataset, y, s_eff, key)
                        ids = np.array([f"{split}-{i:04d}" for i in range(len(y))])
                        frames.append(predictions_frame(base, ids, y, scores))
                        m = compute_metrics(info.task, y, scores, info.n_classes, dataset)
                        rows.extend(metric_rows(base, m))
            config_ = dict(config or {"dataset": dataset, "arm": arm})
            out.append(finish_run(run, config_, pd.concat(frames, ignore_index=True), rows))
    return out


def add_interpret_runs(
    root: Path,
    dataset: str,
    arms: Mapping[str, float],
    methods: Iterable[str] = ("grad_cam",),
    regions: Iterable[str] = ("all", "minute"),
    seeds: Iterable[int] = (0, 1, 2),
    n_images: int = 40,
    flagged: Iterable[str] = (),
    nan_every: int = 0,
) -> list[Path]:
    """One finished interpretability run per (arm, seed) in the layout of
    ``medstudy.interpret``: per-sample rows (``method``, ``size_class``, ``metric``, ``value``)
    with ``mass_in_mask`` = 0.3 + the arm's shift + image effect + seed noise (clipped to [0,
    1]), ``pointing_game`` 0/1 with the same mean, and ``sanity_flag:<method>`` metrics (1 for
    ``flagged``). Every ``nan_every``-th image has no ``mass_in_mask`` for seed 1."""
    out = []
    image_effect = np.random.default_rng(7).normal(0, 0.1, n_images)
    ids = np.array([f"test-{i:04d}" for i in range(n_images)])
    for arm, shift in arms.items():
        for seed in seeds:
            rng = np.random.default_rng(zlib.crc32(f"{arm}|{seed}".encode()))
            base = {
                "stage": "interpretability", "dataset": dataset, "arm": arm,
                "protocol": "finetune", "fraction": 1.0, "seed": seed, "split": "test",
                "distortion": None, "severity": None,
            }  # fmt: skip
            frames, rows = [], []
            for method in methods:
                for region in regions:
                    mass = np.clip(0.3 + shift + image_effect + rng.normal(0, 0.05, n_images), 0, 1)
                    if nan_every and seed == 1:
                        mass[::nan_every] = np.nan
                    hit = (rng.random(n_images) < 0.5).astype(float)
                    for metric, values in (("mass_in_mask", mass), ("pointing_game", hit)):
                        frames.append(
                            pd.DataFrame(
                                {**base, "sample_id": ids, "y_true": 1, "method": method,
                                 "size_class": region, "metric": metric, "value": values}
                            )
                        )  # fmt: skip
                flag = float(method in set(flagged))
                rows += metric_rows(base, {f"sanity_flag:{method}": flag})
            run = root / "interpretability" / f"interp-{dataset}-{arm}-s{seed}".replace(":", "_")
            config_ = {"dataset": dataset, "arm": arm, "seed": seed}
            out.append(finish_run(run, config_, pd.concat(frames, ignore_index=True), rows))
    return out


def add_representation_runs(
    root: Path,
    dataset: str,
    arms: Mapping[str, int],
    seeds: Iterable[int] = (0, 1, 2),
    n: int = 120,
    dim: int = 16,
) -> list[Path]:
    """One finished ``pretrained`` representations run per (arm, seed) holding
    ``features_stage3.npz`` (its only layer, so the last): ``arms[arm]`` dimensions of unit variance and the rest at 0.01, so
    the effective rank grows with it (noise seeded by arm and seed)."""
    out = []
    y = np.arange(n) % 2
    ids = np.array([f"test-{i:04d}" for i in range(n)])
    for arm, strong in arms.items():
        for seed in seeds:
            rng = np.random.default_rng(zlib.crc32(f"{arm}|{seed}".encode()))
            scale = np.where(np.arange(dim) < strong, 1.0, 0.01)
            feats = (rng.normal(size=(n, dim)) * scale).astype(np.float32)
            base = {
                "stage": "representations", "dataset": dataset, "arm": arm,
                "protocol": "pretrained", "fraction": None, "seed": seed, "split": "test",
                "distortion": None, "severity": None,
            }  # fmt: skip
            run = root / "representations" / f"rep-{dataset}-{arm}-s{seed}".replace(":", "_")
            run.mkdir(parents=True, exist_ok=True)
            np.savez(run / "features_stage3.npz", features=feats, sample_id=ids, labels=y)
            write_json(run / DETAILS_FILE, {"layers": ["stage3"]})
            config_ = {"dataset": dataset, "arm": arm, "seed": seed}
            rows = metric_rows(base, {"effective_rank@last": 1.0})
            out.append(finish_run(run, config_, None, rows))
    return out
