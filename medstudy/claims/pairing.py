"""Pairing two arms' predictions on the same test cases (joined on ``sample_id``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class PairedPredictions:
    """A and B on the same cases, rows sorted by ``sample_id``.

    ``y`` (N,) int labels or (N, L) 0/1; ``scores_a``/``scores_b`` (N, K) probabilities
    (binary: column 1 = positive class). ``runs_a``/``runs_b`` name the source runs.
    """

    sample_id: np.ndarray
    y: np.ndarray
    scores_a: np.ndarray
    scores_b: np.ndarray
    runs_a: tuple[str, ...]
    runs_b: tuple[str, ...]


def runs_of(df: pd.DataFrame) -> tuple[str, ...]:
    """The run ids a predictions frame comes from (``("?",)`` without a ``run_id`` column)."""
    return tuple(sorted(df["run_id"].astype(str).unique())) if "run_id" in df else ("?",)


def _indexed_columns(df: pd.DataFrame, prefix: str) -> list[str]:
    """``prefix0 … prefix{K-1}`` columns without missing values, in index order."""
    cols = [c for c in df.columns if c.startswith(prefix) and c[len(prefix) :].isdigit()]
    return sorted((c for c in cols if df[c].notna().all()), key=lambda c: int(c[len(prefix) :]))


def _labels(df: pd.DataFrame) -> np.ndarray:
    if "y_true" in df.columns and df["y_true"].notna().all():
        return df["y_true"].to_numpy().astype(np.int64)
    cols = _indexed_columns(df, "y_true_")
    if not cols:
        raise ValueError(f"run(s) {runs_of(df)}: predictions have no y_true / y_true_<j> column")
    return df[cols].to_numpy().astype(np.int64)


def _scores(df: pd.DataFrame) -> np.ndarray:
    cols = _indexed_columns(df, "score_")
    if not cols or [int(c[6:]) for c in cols] != list(range(len(cols))):
        raise ValueError(f"run(s) {runs_of(df)}: score columns must be score_0 … score_(K-1)")
    return df[cols].to_numpy(dtype=np.float64)


def prediction_arrays(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``y`` ((N,) int, or (N, L) 0/1 from ``y_true_<j>``) and scores (N, K) of one run's
    predictions, in row order; ``ValueError`` naming the run for missing or gapped columns."""
    return _labels(df), _scores(df)


def pair_predictions(a: pd.DataFrame, b: pd.DataFrame) -> PairedPredictions:
    """Join the predictions of A and B (one arm, seed and condition each) on ``sample_id``.

    Raises ``ValueError`` naming the runs if a run repeats a sample id, if the two sets of
    sample ids differ, or if ``y_true`` differs for any sample. The result does not depend on
    the row order of either input.
    """
    runs_a, runs_b = runs_of(a), runs_of(b)
    for df, runs in ((a, runs_a), (b, runs_b)):
        dup = df["sample_id"][df["sample_id"].duplicated()]
        if len(dup):
            raise ValueError(f"run(s) {runs} repeat sample_id(s) {dup.tolist()[:5]}")
    ids_a, ids_b = set(a["sample_id"].tolist()), set(b["sample_id"].tolist())
    if ids_a != ids_b:
        only_a, only_b = sorted(ids_a - ids_b, key=str), sorted(ids_b - ids_a, key=str)
        raise ValueError(
            f"cannot pair runs {runs_a} (A) and {runs_b} (B): their sample ids differ "
            f"({len(only_a)} only in A, e.g. {only_a[:3]}; {len(only_b)} only in B, "
            f"e.g. {only_b[:3]})"
        )
    a = a.sort_values("sample_id", kind="stable")
    b = b.sort_values("sample_id", kind="stable")
    ya, yb = _labels(a), _labels(b)
    if ya.shape != yb.shape:
        raise ValueError(
            f"runs {runs_a} (A) and {runs_b} (B) have y_true of shapes {ya.shape} and {yb.shape}"
        )
    if not np.array_equal(ya, yb):
        bad = np.asarray(a["sample_id"])[np.any((ya != yb).reshape(len(ya), -1), axis=1)]
        raise ValueError(
            f"runs {runs_a} (A) and {runs_b} (B) disagree on y_true for {len(bad)} sample(s), "
            f"e.g. {bad[:3].tolist()}"
        )
    return PairedPredictions(np.asarray(a["sample_id"]), ya, _scores(a), _scores(b), runs_a, runs_b)
