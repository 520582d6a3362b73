"""The finished runs a claim reads, indexed by :class:`Key` (through :mod:`medstudy.results`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from medstudy import results
from medstudy.data.info import get_info

#: Predictions whose ``distortion`` is missing or one of these are the clean test set.
CLEAN_DISTORTIONS: tuple[str, ...] = ("none", "clean", "")
CLEAN: tuple[str, int] = ("none", 0)
SPLIT_TEST = "test"
SPLIT_VAL = "val"


class MixedCodeError(ValueError):
    """The runs a claim would pair were made by different code versions."""


class Key(NamedTuple):
    """What identifies one set of test predictions (one model on one condition)."""

    dataset: str
    arm: str
    protocol: str
    fraction: float
    seed: int
    distortion: str
    severity: int


Groups = dict[Key, pd.DataFrame]


def is_clean(distortion: pd.Series) -> pd.Series:
    """Which rows are of the clean test set: ``distortion`` missing or in CLEAN_DISTORTIONS."""
    text = distortion.astype(object).where(distortion.notna(), "none").astype(str)
    return text.str.lower().isin(CLEAN_DISTORTIONS)


def normalise_keys(df: pd.DataFrame) -> pd.DataFrame:
    """Comparable key columns: fraction rounded (float noise), the clean condition as
    distortion "none" / severity 0."""
    out = df.copy()
    out["fraction"] = pd.to_numeric(out["fraction"], errors="coerce").round(10)
    dist = out["distortion"].astype(object).where(out["distortion"].notna(), "none").astype(str)
    out["distortion"] = dist.where(~is_clean(out["distortion"]), "none")
    out["severity"] = pd.to_numeric(out["severity"], errors="coerce").fillna(0).astype(int)
    return out


def same_fraction(a: float, b: float) -> bool:
    return bool(np.isfinite(a)) and abs(float(a) - float(b)) < 1e-9


def dataset_task(dataset: str, frame: pd.DataFrame) -> tuple[str, int]:
    """Task and number of outputs of ``dataset`` (a dataset outside INFO: from the columns of
    its predictions ``frame``, see :func:`medstudy.data.info.get_info`)."""
    info = get_info(dataset, frame.columns)
    return info.task, info.n_outputs


@dataclass
class ResultsIndex:
    """Lazily loaded test predictions (indexed by :class:`Key`) and metrics of each stage under
    ``root``; every read goes through :mod:`medstudy.results`."""

    root: Path
    #: pair runs of one stage made by different code versions (the default refuses, naming them)
    allow_mixed_code: bool = False
    _groups: dict[str, Groups] = field(default_factory=dict)
    _metrics: dict[str, pd.DataFrame] = field(default_factory=dict)
    _checked: set[str] = field(default_factory=set)

    def has_stage(self, stage: str) -> bool:
        return results.has_finished_runs(stage, self.root)

    def check_code(self, stage: str, run_ids: Iterable[str]) -> None:
        """Every run of ``stage`` that claims read must come from one code version (its
        manifest's, :mod:`medstudy.codeversion`); else :class:`MixedCodeError` naming the
        versions and their runs, unless ``allow_mixed_code``."""
        if self.allow_mixed_code or stage in self._checked:
            return
        by_version: dict[str, list[str]] = {}
        for rid in sorted(set(run_ids)):
            version = results.run_code_version(stage, rid, self.root) or "unrecorded"
            by_version.setdefault(version, []).append(rid)
        if len(by_version) > 1:
            found = "; ".join(
                f"{v}: {len(r)} run(s), e.g. {r[:2]}" for v, r in sorted(by_version.items())
            )
            raise MixedCodeError(
                f"the finished runs of stage {stage!r} under {self.root / stage} were made by "
                f"{len(by_version)} code versions ({found}); claims pair only runs of one "
                "version. Re-run the stage's notebooks with the current code (run_all.sh "
                "re-executes every job after a code change and recomputes the runs of older "
                "code), or set allow_mixed_code=True (ClaimsConfig) to pair them anyway."
            )
        self._checked.add(stage)

    def groups(self, stage: str) -> Groups:
        """Test predictions of the stage by key; a key held by two runs is an error, and so
        are runs of several code versions (:meth:`check_code`)."""
        if stage not in self._groups:
            preds = results.collect_predictions(stage, self.root)
            if len(preds):
                self.check_code(stage, preds["run_id"].astype(str))
            index: Groups = {}
            clashes = []
            if len(preds):
                preds = normalise_keys(preds[preds["split"] == SPLIT_TEST])
                for values, g in preds.groupby(list(Key._fields), dropna=False, sort=True):
                    key = Key(*values)
                    runs = sorted(g["run_id"].unique())
                    if len(runs) > 1:
                        clashes.append(f"{key._asdict()}: runs {runs}")
                    index[key] = g.dropna(axis=1, how="all")
            if clashes:
                raise ValueError(
                    f"{len(clashes)} prediction key(s) of stage {stage!r} are held by more than "
                    f"one finished run under {self.root / stage}, e.g. {'; '.join(clashes[:3])}. "
                    "Keep one run per key (a separate results dir per profile, or delete the "
                    "stale run folders)."
                )
            self._groups[stage] = index
        return self._groups[stage]

    def metrics(self, stage: str) -> pd.DataFrame:
        if stage not in self._metrics:
            m = results.collect_metrics(stage, self.root)
            if len(m):
                self.check_code(stage, m["run_id"].astype(str))
            self._metrics[stage] = normalise_keys(m) if len(m) else m
        return self._metrics[stage]

    def config(self, stage: str, run_id: str) -> dict[str, Any]:
        return results.read_config(stage, run_id, self.root)

    def datasets(self, stage: str) -> list[str]:
        return sorted({k.dataset for k in self.groups(stage)})

    def select(
        self,
        stage: str,
        dataset: str,
        protocol: str | None = None,
        fraction: float | None = None,
        clean_only: bool = True,
    ) -> Groups:
        """The test groups of one dataset, optionally one protocol / fraction; clean only
        unless ``clean_only=False``."""
        return {
            k: g
            for k, g in self.groups(stage).items()
            if k.dataset == dataset
            and (protocol is None or k.protocol == protocol)
            and (fraction is None or same_fraction(k.fraction, fraction))
            and (not clean_only or (k.distortion, k.severity) == CLEAN)
        }
