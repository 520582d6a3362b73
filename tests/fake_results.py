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
            write_json(run / "config.json", dict(config or {"dataset": dataset, "arm": arm}))
            write_predictions(run / "predictions.parquet", pd.concat(frames, ignore_index=True))
            write_metrics(run / "metrics.csv", rows)
            (run / DONE_FILE).write_text("done\n")
            out.append(run)
    return out
