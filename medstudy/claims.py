"""The claims under test (DESIGN §1), one registry row each, and their verdicts.

``CLAIMS`` maps ``"C1"`` … ``"C9"`` to a frozen :class:`Claim`; :func:`evaluate_claims` reads the
finished runs under ``results/`` and returns one row per (claim, dataset, comparison[,
statistic]) with the effect, its CI, the raw and the multiplicity-adjusted p-value and a verdict.
Notebook 07 shows the table; :func:`save_claims` writes ``results/claims.csv``, which
``medstudy.report`` turns into the paper's tables and macros.

Data contract (inputs)
----------------------
- Predictions of finished runs (``results/<stage>/<run_id>/*.parquet`` with a ``DONE`` marker):
  the identifying columns ``stage, dataset, arm, protocol, fraction, seed, split, distortion,
  severity``, a ``sample_id``, ``y_true`` (or ``y_true_0 … y_true_{L-1}`` for multi-label) and
  probabilities ``score_0 … score_{K-1}`` (binary: the positive class is 1, i.e. ``score_1``).
  Only ``split == "test"`` rows are tested; ``val`` is used only to *select* (claim C8).
- One (stage, dataset, arm, protocol, fraction, seed, distortion, severity) key must come from
  one run: two finished runs holding the same key (e.g. a smoke and a quick run in the same
  results dir) are an error that names them, never a silent pick.
- Pairing: A and B are joined on ``sample_id`` (row order is irrelevant); the two sets of sample
  ids must be identical (else an error naming both runs) and so must ``y_true``.

Direction and effect
--------------------
Every comparison is written ``A − B`` and ``effect = statistic(A) − statistic(B)`` on the
metric's own scale (AUC or kappa in [0, 1] units, not points). The metric is the dataset task's
``PRIMARY_METRIC`` (binary / multi-class / multi-label → AUC, ordinal → quadratic kappa). A
claim says which arm should be *better* (``direction = +1``: A better than B); a statistic
says which sign is better (``STATISTICS``: higher metric/area is better, a smaller
label-efficiency slope or a smaller relative drop under distortion is better). The *expected
sign* of the effect is their product.

The test rule (one rule, applied to every row)
----------------------------------------------
Let S be the number of training seeds that both arms have (seeds are paired: seed s of A and
seed s of B saw the same label subset and the same test cases).

- S ≥ 2: two-level *hierarchical bootstrap* over seeds and test cases
  (:func:`medstudy.stats.hierarchical_bootstrap_diff`; seeds drawn with replacement, one
  class-stratified case resample shared by every drawn seed because all seeds are scored on the
  same test set). ``effect`` = mean over seeds of the per-seed ``A − B``; CI = percentile
  interval of the replicates; p = two-sided bootstrap p of H0: effect = 0.
- S = 1, binary AUC: paired *DeLong* test (Sun & Xu fast DeLong; normal CI of the difference).
- S = 1, any other metric or statistic: paired class-stratified bootstrap with BCa CI.
- For binary AUC rows the per-seed DeLong results (AUCs, difference, CI, p) are kept in the
  per-seed breakdown (``claims_df.attrs["per_seed"]``, ``results/claims_per_seed.csv``, shown
  by :func:`claim_detail`); other rows list the per-seed point estimates there.

All p-values are two-sided, so a significant effect of the wrong sign is reported as
*contradicted*. Multiplicity: ``cfg.correction`` (Holm by default) within each claim's family
(= the claim id) across all its tested rows (datasets × comparisons × statistics); rows without
a p-value are excluded from the family. Verdict: ``supported`` if ``p_adj < alpha`` and the
effect has the expected sign; ``contradicted`` if ``p_adj < alpha`` and the opposite sign;
``inconclusive`` otherwise; ``not run`` (with a ``reason``) when an input is missing. Every
claim appears in the table at least once.

Claim-specific choices
----------------------
- C3 uses the *smallest* label fraction present in the label-efficiency stage for that dataset
  and protocol (over all arms); an arm without that fraction is "not run", never moved to
  another fraction.
- C4 (SparK vs contrastive SSL under fine-tuning): per seed, the metric at every label fraction
  both arms share (≥ 2 needed), then the OLS slope against log10(fraction) and the normalised
  area under that curve (:func:`medstudy.stats.label_efficiency_slope`,
  :func:`medstudy.stats.area_under_label_curve`); the bootstrap resamples seeds and test cases
  (the same cases at every fraction), so the CI covers both sources of noise.
- C5's protocol is fine-tuning. Missing fine-tune rows make it "not run"; there is no fallback
  to the linear probe.
- C8: each DVME variant (protocols ``dvme_*`` of arm ``fusion``) is its own comparison against
  the best single-encoder linear probe. "Best" is chosen on **val** (highest mean over seeds of
  the primary metric in ``metrics.csv``; ties → alphabetical first) among the fusion's input
  encoders (``fusion_arms`` in the fusion run's ``config.json``; if that key is absent, every
  linear-probe arm, and the ``note`` says so), then compared on **test**. Selecting on test
  would bias the comparison in favour of the single encoder.
- C6 (robustness) reads the ``robustness`` stage: per arm and seed, fine-tune predictions at
  label fraction 1.0 on the clean test set (``distortion`` missing/"none", ``severity`` 0; the
  stage must write them) and under every (distortion, severity) both arms share. The statistic is the relative metric drop
  ``mean_c (m_clean − m_c) / m_clean`` over those conditions; lower is better.
- C7 and C9 are "not run" until their stages exist (notebooks 05, 04); their tests need the
  attribution and representation statistics, which have no evaluator here yet.
"""

from __future__ import annotations

import fnmatch
import json
import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps

from medstudy import paths, stats
from medstudy.config import ClaimsConfig
from medstudy.data.info import INFO
from medstudy.metrics import BINARY, MULTI_CLASS, MULTI_LABEL, PRIMARY_METRIC, auc_score
from medstudy.results import DONE_FILE, atomic_write, collect_metrics, collect_predictions

__all__ = [
    "ARM_GROUPS",
    "CLAIMS",
    "CLAIM_COLUMNS",
    "EVALUATORS",
    "EXTRA_COLUMNS",
    "STATISTICS",
    "VERDICTS",
    "Claim",
    "Key",
    "PairedPredictions",
    "Statistic",
    "claim_detail",
    "claims_table",
    "evaluate_claims",
    "inventory",
    "load_claims",
    "pair_predictions",
    "plot_forest",
    "save_claims",
]

MINUS = "\u2212"  # the comparison label "A − B"
CLAIM_COLUMNS: tuple[str, ...] = (
    "claim",
    "dataset",
    "comparison",
    "effect",
    "ci_low",
    "ci_high",
    "p",
    "p_adj",
    "verdict",
    "n_seeds",
    "n_test",
)
EXTRA_COLUMNS: tuple[str, ...] = (
    "metric",
    "statistic",
    "protocol",
    "stage",
    "fraction",
    "test",
    "expected_sign",
    "estimate_a",
    "estimate_b",
    "arm_a",
    "arm_b",
    "seeds",
    "published",
    "reason",
    "note",
    "runs_a",
    "runs_b",
    "alpha",
    "correction",
    "n_boot",
    "profile",
)
#: Columns of the claims table that hold text (empty string, never NaN, when absent).
TEXT_COLUMNS: tuple[str, ...] = (
    "claim", "dataset", "comparison", "verdict", "metric", "statistic", "protocol", "stage",
    "test", "arm_a", "arm_b", "seeds", "reason", "note", "runs_a", "runs_b", "correction",
    "profile",
)  # fmt: skip
PER_SEED_COLUMNS: tuple[str, ...] = (
    "claim",
    "dataset",
    "comparison",
    "statistic",
    "seed",
    "estimate_a",
    "estimate_b",
    "effect",
    "ci_low",
    "ci_high",
    "p",
    "test",
)
VERDICTS: tuple[str, ...] = ("supported", "contradicted", "inconclusive", "not run")
VERDICT_COLOURS: dict[str, str] = {
    "supported": "#1b7837",
    "contradicted": "#b2182b",
    "inconclusive": "#7f7f7f",
    "not run": "#bdbdbd",
}
#: Which notebook writes each stage (for "not run" reasons).
STAGE_NOTEBOOK: dict[str, str] = {
    "pretrain": "01",
    "transfer": "02",
    "label_efficiency": "03",
    "representations": "04",
    "interpretability": "05",
    "robustness": "06",
}
#: Named groups of arms usable in a comparison pattern as ``@name``. Contrastive = trained
#: against negative pairs (InfoNCE); BYOL, Barlow Twins, SwAV and DINO are joint-embedding but
#: not contrastive. Adding an arm here adds it to every comparison that names the group (C4).
ARM_GROUPS: dict[str, tuple[str, ...]] = {
    "contrastive": ("ssl:simclr", "ssl:mocov2"),
}
#: Predictions whose ``distortion`` is missing or one of these are the clean test set.
CLEAN_DISTORTIONS: tuple[str, ...] = ("none", "clean", "")
CLEAN: tuple[str, int] = ("none", 0)
SPLIT_TEST = "test"
SPLIT_VAL = "val"

#: ``metric(y (N,) or (N, L), scores (N, C, K)) -> (C,)``: the metric at each of C conditions.
ConditionMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]
Row = dict[str, Any]


class NotRunError(Exception):
    """An input a comparison needs is missing; the message is the row's ``reason``."""


# --------------------------------------------------------------------------------------------
# Statistics of a comparison
# --------------------------------------------------------------------------------------------
def _relative_drop(values: np.ndarray, conditions: np.ndarray) -> float:
    # values[0] is the clean metric; the others are the distorted conditions.
    return float(np.mean((values[0] - values[1:]) / values[0]))


@dataclass(frozen=True)
class Statistic:
    """A scalar summary of one arm's per-condition metric values.

    ``reduce(values, conditions)`` gets the metric at each condition (one label fraction, or the
    clean set followed by each distortion) and the condition values (fractions, or indices).
    ``better`` is +1 if higher is better, −1 if lower is better.
    """

    name: str
    better: int
    reduce: Callable[[np.ndarray, np.ndarray], float]
    description: str


STATISTICS: dict[str, Statistic] = {
    "metric": Statistic("metric", +1, lambda v, c: float(v[0]), "the primary metric"),
    "slope": Statistic(
        "slope",
        -1,
        lambda v, c: stats.label_efficiency_slope(c, v),
        "OLS slope of the metric vs log10(label fraction): smaller = degrades less",
    ),
    "aulc": Statistic(
        "aulc",
        +1,
        lambda v, c: stats.area_under_label_curve(c, v),
        "area under the metric vs log10(label fraction) curve, normalised to a mean metric",
    ),
    "relative_drop": Statistic(
        "relative_drop",
        -1,
        _relative_drop,
        "mean relative metric drop over the distortion suite, (clean - distorted) / clean",
    ),
}

#: Which label fractions a claim reads, from the fractions present (sorted ascending).
FRACTION_RULES: dict[str, Callable[[list[float]], list[float]]] = {
    "full": lambda present: [1.0],
    "smallest": lambda present: present[:1],
    "curve": lambda present: present,
}


# --------------------------------------------------------------------------------------------
# The claim record
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """One published claim and how it is tested.

    ``comparisons`` are ``(arm_a, arm_b)`` patterns: an exact arm, an ``fnmatch`` pattern
    (``"ssl:*"``) or ``"@group"`` (``ARM_GROUPS``), expanded over the arms that have results; a
    pattern that matches nothing gives a "not run" row. ``direction = +1`` claims A is better
    than B. ``kind`` is the key of ``EVALUATORS``; ``fraction`` a key of ``FRACTION_RULES``
    (``"full"`` = 1.0, ``"smallest"`` = the stage's smallest label fraction, ``"curve"`` =
    every fraction). ``published`` maps a dataset to the published effect in metric units (C3).
    ``family`` is the multiplicity family (the claim id).
    """

    id: str
    text: str
    source: str
    kind: str
    stages: tuple[str, ...]
    protocol: str
    comparisons: tuple[tuple[str, str], ...] = ()
    statistics: tuple[str, ...] = ("metric",)
    fraction: str = "full"
    datasets: tuple[str, ...] = ()
    direction: int = +1
    published: tuple[tuple[str, float], ...] = ()
    family: str = ""

    def __post_init__(self) -> None:
        if not self.family:
            object.__setattr__(self, "family", self.id)
        for value, registry, what in (
            (self.kind, EVALUATORS, "kind"),
            (self.fraction, FRACTION_RULES, "fraction rule"),
            *((s, STATISTICS, "statistic") for s in self.statistics),
        ):
            if value not in registry:
                raise ValueError(
                    f"claim {self.id}: unknown {what} {value!r}; valid: {list(registry)}"
                )

    @property
    def stage(self) -> str:
        return self.stages[0]

    def published_for(self, dataset: str) -> float:
        return dict(self.published).get(dataset, math.nan)


# --------------------------------------------------------------------------------------------
# Loading and indexing the results
# --------------------------------------------------------------------------------------------
class Key(NamedTuple):
    """What identifies one set of test predictions (one model on one condition)."""

    dataset: str
    arm: str
    protocol: str
    fraction: float
    seed: int
    distortion: str
    severity: int


def _normalise_keys(df: pd.DataFrame) -> pd.DataFrame:
    """Comparable key columns: fraction rounded (float noise), the clean condition as
    distortion "none" / severity 0."""
    out = df.copy()
    out["fraction"] = pd.to_numeric(out["fraction"], errors="coerce").round(10)
    dist = out["distortion"].astype(object).where(out["distortion"].notna(), "none").astype(str)
    out["distortion"] = dist.where(~dist.str.lower().isin(CLEAN_DISTORTIONS), "none")
    out["severity"] = pd.to_numeric(out["severity"], errors="coerce").fillna(0).astype(int)
    return out


Groups = dict[Key, pd.DataFrame]


@dataclass
class _Results:
    """Lazily loaded test predictions (indexed by :class:`Key`) and metrics of each stage."""

    root: Path
    _groups: dict[str, Groups] = field(default_factory=dict)
    _metrics: dict[str, pd.DataFrame] = field(default_factory=dict)

    def has_stage(self, stage: str) -> bool:
        return any((self.root / stage).glob(f"*/{DONE_FILE}"))

    def groups(self, stage: str) -> Groups:
        """Test predictions of the stage by key; a key held by two runs is an error."""
        if stage not in self._groups:
            preds = collect_predictions(stage, self.root)
            index: Groups = {}
            clashes = []
            if len(preds):
                preds = _normalise_keys(preds[preds["split"] == SPLIT_TEST])
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
            m = collect_metrics(stage, self.root)
            self._metrics[stage] = _normalise_keys(m) if len(m) else m
        return self._metrics[stage]

    def config(self, stage: str, run_id: str) -> dict[str, Any]:
        path = self.root / stage / run_id / "config.json"
        return json.loads(path.read_text()) if path.exists() else {}

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
            and (fraction is None or _same_fraction(k.fraction, fraction))
            and (not clean_only or (k.distortion, k.severity) == CLEAN)
        }


def _same_fraction(a: float, b: float) -> bool:
    return bool(np.isfinite(a)) and abs(float(a) - float(b)) < 1e-9


def _task(dataset: str, frame: pd.DataFrame) -> tuple[str, int]:
    """Task and number of outputs from INFO; for a dataset outside INFO, from the columns."""
    if dataset in INFO:
        return INFO[dataset].task, INFO[dataset].n_outputs
    n_scores = sum(c.startswith("score_") for c in frame.columns)
    if any(c.startswith("y_true_") for c in frame.columns):
        return MULTI_LABEL, n_scores
    return (BINARY if n_scores == 2 else MULTI_CLASS), n_scores


# --------------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------------
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


def _runs(df: pd.DataFrame) -> tuple[str, ...]:
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
        raise ValueError(f"run(s) {_runs(df)}: predictions have no y_true / y_true_<j> column")
    return df[cols].to_numpy().astype(np.int64)


def _scores(df: pd.DataFrame) -> np.ndarray:
    cols = _indexed_columns(df, "score_")
    if not cols or [int(c[6:]) for c in cols] != list(range(len(cols))):
        raise ValueError(f"run(s) {_runs(df)}: score columns must be score_0 … score_(K-1)")
    return df[cols].to_numpy(dtype=np.float64)


def pair_predictions(a: pd.DataFrame, b: pd.DataFrame) -> PairedPredictions:
    """Join the predictions of A and B (one arm, seed and condition each) on ``sample_id``.

    Raises ``ValueError`` naming the runs if a run repeats a sample id, if the two sets of
    sample ids differ, or if ``y_true`` differs for any sample. The result does not depend on
    the row order of either input.
    """
    runs_a, runs_b = _runs(a), _runs(b)
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


# --------------------------------------------------------------------------------------------
# Metrics at every condition (fast versions of medstudy.metrics, equal to them)
# --------------------------------------------------------------------------------------------
def _auc_columns(task: str, n_classes: int) -> ConditionMetric:
    """AUC at every condition. Binary: one midrank pass over all conditions at once
    (Mann-Whitney, ties count 1/2; equals :func:`medstudy.stats.auc`); other tasks:
    :func:`medstudy.metrics.auc_score` per condition."""
    if task == BINARY:

        def binary(y: np.ndarray, s: np.ndarray) -> np.ndarray:
            pos = np.asarray(y).ravel().astype(bool)
            m = int(pos.sum())
            n = pos.size - m
            ranks = sps.rankdata(s[:, :, 1], axis=0)
            return (ranks[pos].sum(axis=0) - m * (m + 1) / 2.0) / (m * n)

        return binary
    return lambda y, s: np.array([auc_score(task, y, s[:, c]) for c in range(s.shape[1])])


def _qwk_columns(task: str, n_classes: int) -> ConditionMetric:
    """Quadratic kappa of the argmax grade with labels ``range(K)`` at every condition; equals
    :func:`medstudy.metrics.quadratic_kappa` but costs one bincount (bootstraps call it
    thousands of times)."""
    k = n_classes
    grid = np.arange(k)
    weights = (grid[:, None] - grid[None, :]) ** 2 / float((k - 1) ** 2)

    def qwk(y: np.ndarray, s: np.ndarray) -> np.ndarray:
        yt = np.asarray(y).ravel()
        out = np.empty(s.shape[1])
        for c in range(s.shape[1]):
            cm = np.bincount(yt * k + np.argmax(s[:, c], axis=1), minlength=k * k).reshape(k, k)
            expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / cm.sum()
            den = float(np.sum(weights * expected))
            out[c] = 1.0 - float(np.sum(weights * cm)) / den if den > 0 else math.nan
        return out

    return qwk


#: Primary metric name → factory ``(task, n_classes) -> ConditionMetric``.
METRIC_FNS: dict[str, Callable[[str, int], ConditionMetric]] = {
    "auc": _auc_columns,
    "qwk": _qwk_columns,
}


# --------------------------------------------------------------------------------------------
# One comparison: the test rule
# --------------------------------------------------------------------------------------------
Condition = Hashable
ConditionOf = Callable[[Key], Condition]


def _fraction_of(k: Key) -> float:
    return float(k.fraction)


def _distortion_of(k: Key) -> tuple[str, int]:
    return (str(k.distortion), int(k.severity))


@dataclass(frozen=True)
class _Side:
    """One model family (arm + protocol): ``frames[seed][c]`` = test predictions at condition
    ``c``; only seeds that have every condition are kept."""

    arm: str
    protocol: str
    frames: dict[int, list[pd.DataFrame]]

    @classmethod
    def build(
        cls,
        groups: Groups,
        arm: str,
        protocol: str,
        conditions: Sequence[Condition],
        condition_of: ConditionOf,
    ) -> _Side:
        lookup = {
            (int(k.seed), condition_of(k)): g
            for k, g in groups.items()
            if k.arm == arm and k.protocol == protocol
        }
        seeds = sorted({s for s, _ in lookup})
        frames = {
            s: [lookup[(s, c)] for c in conditions]
            for s in seeds
            if all((s, c) in lookup for c in conditions)
        }
        return cls(arm, protocol, frames)


@dataclass(frozen=True)
class _Outcome:
    effect: float
    ci_low: float
    ci_high: float
    p: float
    estimate_a: float
    estimate_b: float
    test: str
    n_test: int
    seeds: list[int]
    runs_a: tuple[str, ...]
    runs_b: tuple[str, ...]
    per_seed: list[Row]


PerSeed = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def _stack(a: _Side, b: _Side, seeds: Sequence[int]) -> tuple[PerSeed, set[str], set[str]]:
    """Per seed ``(y, A (N, C, K), B (N, C, K))``, cases in the same order at every condition
    (all conditions must score the same test cases)."""
    per_seed: PerSeed = []
    runs_a: set[str] = set()
    runs_b: set[str] = set()
    for seed in seeds:
        pairs = [
            pair_predictions(fa, fb) for fa, fb in zip(a.frames[seed], b.frames[seed], strict=True)
        ]
        first = pairs[0]
        for pr in pairs:
            same = np.array_equal(pr.sample_id, first.sample_id) and np.array_equal(pr.y, first.y)
            if not same:
                raise ValueError(
                    f"runs {pr.runs_a + pr.runs_b} and {first.runs_a + first.runs_b} score "
                    f"different test cases for seed {seed}; conditions must share the test set"
                )
            runs_a.update(pr.runs_a)
            runs_b.update(pr.runs_b)
        sa = np.stack([pr.scores_a for pr in pairs], axis=1)
        sb = np.stack([pr.scores_b for pr in pairs], axis=1)
        per_seed.append((first.y, sa, sb))
    return per_seed, runs_a, runs_b


def _compare(
    a: _Side,
    b: _Side,
    statistic: Statistic,
    conditions: np.ndarray,
    metric: str,
    task: str,
    n_classes: int,
    cfg: ClaimsConfig,
) -> _Outcome:
    """Apply the module's test rule to ``statistic(A) − statistic(B)``."""
    seeds = sorted(set(a.frames) & set(b.frames))
    if not seeds:
        raise NotRunError(
            f"{a.arm} ({a.protocol}) and {b.arm} ({b.protocol}) share no seed with every "
            f"condition ({a.arm}: {sorted(a.frames)}, {b.arm}: {sorted(b.frames)})"
        )
    per_seed, runs_a, runs_b = _stack(a, b, seeds)
    by_condition = METRIC_FNS[metric](task, n_classes)
    cond = np.asarray(conditions, dtype=np.float64)

    def packed(y: np.ndarray, s: np.ndarray) -> float:
        return statistic.reduce(by_condition(y, s), cond)

    binary_auc = metric == "auc" and task == BINARY and statistic.name == "metric"
    fn: stats.Metric = packed
    if binary_auc:
        # DeLong and the vectorised AUC bootstrap take the positive-class scores
        per_seed = [(y, sa[:, 0, 1], sb[:, 0, 1]) for y, sa, sb in per_seed]
        fn = "auc"
    details = []
    for seed, (y, sa, sb) in zip(seeds, per_seed, strict=True):
        if binary_auc:
            d = stats.delong_test(y, sa, sb, alpha=cfg.alpha)
            est = (d.auc_a, d.auc_b, d.diff, d.ci_low, d.ci_high, d.p_value, "delong")
        else:
            ea, eb = packed(y, sa), packed(y, sb)
            est = (ea, eb, ea - eb, math.nan, math.nan, math.nan, "point estimate")
        details.append({"seed": seed, **dict(zip(PER_SEED_COLUMNS[5:], est, strict=True))})
    common = {
        "n_test": int(per_seed[0][0].shape[0]),
        "seeds": seeds,
        "runs_a": tuple(sorted(runs_a)),
        "runs_b": tuple(sorted(runs_b)),
        "per_seed": details,
    }
    with warnings.catch_warnings():
        # a class absent from a multi-label resample is skipped by auc_score with a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        if len(seeds) >= 2:
            r = stats.hierarchical_bootstrap_diff(
                fn, per_seed, n_boot=cfg.n_boot, seed=cfg.seed, alpha=cfg.alpha
            )
            test = "hierarchical bootstrap"
        elif binary_auc:
            r = _delong_as_result(details[0])
            test = "delong"
        else:
            y, sa, sb = per_seed[0]
            r = stats.paired_bootstrap(
                fn, y, sa, sb, n_boot=cfg.n_boot, alpha=cfg.alpha, method="bca", seed=cfg.seed
            )
            test = "paired bootstrap (BCa)"
    return _Outcome(
        r.diff, r.ci_low, r.ci_high, r.p_value, r.estimate_a, r.estimate_b, test, **common
    )


def _delong_as_result(d: Row) -> stats.PairedBootstrapResult:
    """The one-seed DeLong row in the shape of the bootstrap results (``n_boot`` = 0)."""
    return stats.PairedBootstrapResult(
        d["estimate_a"], d["estimate_b"], d["effect"], d["ci_low"], d["ci_high"], d["p"], 0
    )


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------
def _label(arm_a: str, arm_b: str) -> str:
    return f"{arm_a} {MINUS} {arm_b}"


def _row(
    claim: Claim,
    dataset: str,
    comparison: str = "",
    *,
    statistic: str = "",
    metric: str = "",
    protocol: str = "",
    fraction: float = math.nan,
    arm_a: str = "",
    arm_b: str = "",
    reason: str = "",
    note: str = "",
    outcome: _Outcome | None = None,
) -> Row:
    """One output row; without ``outcome`` it is a "not run" row and needs a ``reason``."""
    statistic = statistic or claim.statistics[0]
    row: Row = {
        "claim": claim.id,
        "dataset": dataset,
        "comparison": comparison or "; ".join(_label(a, b) for a, b in claim.comparisons),
        "effect": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "p": math.nan,
        "p_adj": math.nan,
        "verdict": "not run",
        "n_seeds": pd.NA,
        "n_test": pd.NA,
        "metric": metric,
        "statistic": statistic,
        "protocol": protocol or claim.protocol,
        "stage": claim.stage,
        "fraction": fraction,
        "test": "",
        "expected_sign": claim.direction * STATISTICS[statistic].better,
        "estimate_a": math.nan,
        "estimate_b": math.nan,
        "arm_a": arm_a,
        "arm_b": arm_b,
        "seeds": "",
        "published": claim.published_for(dataset),
        "reason": reason,
        "note": note,
        "runs_a": "",
        "runs_b": "",
        "_per_seed": [],
    }
    if outcome is not None:
        row.update(
            effect=outcome.effect,
            ci_low=outcome.ci_low,
            ci_high=outcome.ci_high,
            p=outcome.p,
            n_seeds=len(outcome.seeds),
            n_test=outcome.n_test,
            test=outcome.test,
            estimate_a=outcome.estimate_a,
            estimate_b=outcome.estimate_b,
            seeds=",".join(str(s) for s in outcome.seeds),
            runs_a=",".join(outcome.runs_a),
            runs_b=",".join(outcome.runs_b),
            _per_seed=outcome.per_seed,
        )
    elif not reason:
        raise ValueError(f"{claim.id} {dataset}: a row that was not run needs a reason")
    return row


def _test_row(
    claim: Claim,
    cfg: ClaimsConfig,
    ds: str,
    groups: Groups,
    a: tuple[str, str],
    b: tuple[str, str],
    conditions: Sequence[Condition],
    condition_of: ConditionOf,
    statistic: str = "metric",
    comparison: str = "",
    note: str = "",
) -> Row:
    """Test ``A = (arm, protocol)`` against ``B = (arm, protocol)`` on ``groups`` at the
    ordered ``conditions`` (label fractions, or the clean set then each distortion)."""
    task, n_classes = _task(ds, next(iter(groups.values())))
    metric = PRIMARY_METRIC[task]
    fractions = {float(k.fraction) for k in groups if k.arm in (a[0], b[0])}
    kw: dict[str, Any] = {
        "statistic": statistic,
        "metric": metric,
        "protocol": a[1] if a[1] == b[1] else f"{a[1]} vs {b[1]}",
        "fraction": fractions.pop() if len(fractions) == 1 else math.nan,
        "arm_a": a[0],
        "arm_b": b[0],
        "note": note,
    }
    comparison = comparison or _label(a[0], b[0])
    side_a = _Side.build(groups, a[0], a[1], conditions, condition_of)
    side_b = _Side.build(groups, b[0], b[1], conditions, condition_of)
    # conditions enter the statistic as numbers: fractions as such, distortions by position
    values = [c if isinstance(c, float) else float(i) for i, c in enumerate(conditions)]
    try:
        out = _compare(
            side_a, side_b, STATISTICS[statistic], np.array(values), metric, task, n_classes, cfg
        )
    except NotRunError as err:
        return _row(claim, ds, comparison, reason=str(err), **kw)
    return _row(claim, ds, comparison, outcome=out, **kw)


def _stage_missing(stage: str) -> str:
    return f"no {stage} results (notebook {STAGE_NOTEBOOK.get(stage, '?')} not run)"


def _matches(pattern: str, arms: Sequence[str]) -> list[str]:
    if pattern.startswith("@"):
        if pattern[1:] not in ARM_GROUPS:
            valid = ["@" + g for g in ARM_GROUPS]
            raise ValueError(f"unknown arm group {pattern!r}; valid: {valid}")
        return [a for a in ARM_GROUPS[pattern[1:]] if a in arms]
    return sorted(a for a in arms if fnmatch.fnmatchcase(a, pattern))


def _describe(pattern: str) -> str:
    if pattern.startswith("@"):
        return f"{pattern[1:]} ({', '.join(ARM_GROUPS.get(pattern[1:], ()))})"
    return pattern


def _expand(
    claim: Claim, ds: str, groups: Groups, where: str
) -> tuple[list[tuple[str, str]], list[Row]]:
    """The claim's comparison patterns expanded over the arms in ``groups``: the (A, B) arm
    pairs to test, and "not run" rows (one per statistic) for patterns that match no arm."""
    arms = sorted({k.arm for k in groups})
    pairs: list[tuple[str, str]] = []
    rows: list[Row] = []
    for pa, pb in claim.comparisons:
        a_arms, b_arms = _matches(pa, arms), _matches(pb, arms)
        missing = [p for p, found in ((pa, a_arms), (pb, b_arms)) if not found]
        if missing:
            reason = "; ".join(
                f"arm {_describe(p)} has no {claim.protocol} predictions{where} for {ds}"
                for p in missing
            )
            rows += [
                _row(claim, ds, _label(pa, pb), statistic=s, arm_a=pa, arm_b=pb, reason=reason)
                for s in claim.statistics
            ]
            continue
        pairs += [(x, y) for x in a_arms for y in b_arms if x != y]
    return pairs, rows


def _shared_conditions(
    groups: Groups, arm_a: str, arm_b: str, condition_of: ConditionOf
) -> tuple[list[int], list[Condition]]:
    """Seeds both arms have, and the conditions every one of those seeds has for both."""
    seen: dict[str, dict[int, set[Condition]]] = {arm_a: {}, arm_b: {}}
    for k in groups:
        if k.arm in seen:
            seen[k.arm].setdefault(int(k.seed), set()).add(condition_of(k))
    seeds = sorted(set(seen[arm_a]) & set(seen[arm_b]))
    if not seeds:
        return [], []
    shared = set.intersection(*(seen[arm][s] for arm in (arm_a, arm_b) for s in seeds))
    return seeds, sorted(shared)


# --------------------------------------------------------------------------------------------
# Evaluators: EVALUATORS[claim.kind](claim, results, cfg) -> rows
# --------------------------------------------------------------------------------------------
def _claim_datasets(claim: Claim, res: _Results, cfg: ClaimsConfig) -> tuple[list[str], list[Row]]:
    """Datasets to test, and "not run" rows for requested datasets that cannot be."""
    if not res.has_stage(claim.stage):
        return [], [_row(claim, "all", reason=_stage_missing(claim.stage))]
    available = res.datasets(claim.stage)
    wanted = list(claim.datasets) or list(cfg.datasets) or available
    todo, rows = [], []
    for ds in wanted:
        if cfg.datasets and ds not in cfg.datasets:
            reason = f"{ds} is not among the selected datasets {list(cfg.datasets)}"
            rows.append(_row(claim, ds, reason=reason))
        elif ds not in available:
            rows.append(_row(claim, ds, reason=f"no {claim.stage} test predictions for {ds}"))
        else:
            todo.append(ds)
    return todo, rows


def _evaluate_paired(claim: Claim, res: _Results, cfg: ClaimsConfig) -> list[Row]:
    """C1, C2, C3, C5: the primary metric of arm A vs arm B at one label fraction."""
    datasets, rows = _claim_datasets(claim, res, cfg)
    for ds in datasets:
        everything = res.select(claim.stage, ds, claim.protocol)
        if not everything:
            reason = f"no {claim.protocol} test predictions for {ds} in {claim.stage}"
            rows.append(_row(claim, ds, reason=reason))
            continue
        present = sorted({float(k.fraction) for k in everything if np.isfinite(k.fraction)})
        frac = FRACTION_RULES[claim.fraction](present)[0]
        groups = res.select(claim.stage, ds, claim.protocol, fraction=frac)
        where = f" at label fraction {frac:g}"
        pairs, missing = _expand(claim, ds, groups, where)
        rows += [
            _test_row(
                claim,
                cfg,
                ds,
                groups,
                (a, claim.protocol),
                (b, claim.protocol),
                [frac],
                _fraction_of,
            )
            for a, b in pairs
        ]
        rows += missing
    return rows


def _evaluate_label_curve(claim: Claim, res: _Results, cfg: ClaimsConfig) -> list[Row]:
    """C4: slope and area of the label-efficiency curve, A − B, per dataset."""
    datasets, rows = _claim_datasets(claim, res, cfg)
    for ds in datasets:
        groups = res.select(claim.stage, ds, claim.protocol)
        pairs, missing = _expand(claim, ds, groups, f" in {claim.stage}")
        for a, b in pairs:
            seeds, fracs = _shared_conditions(groups, a, b, _fraction_of)
            if len(fracs) < 2:
                reason = (
                    f"{a} and {b} share the label fractions {fracs} over seeds {seeds}; a "
                    "label-efficiency curve needs >= 2"
                )
                rows += [
                    _row(claim, ds, _label(a, b), statistic=s, arm_a=a, arm_b=b, reason=reason)
                    for s in claim.statistics
                ]
                continue
            note = f"fractions {', '.join(f'{f:g}' for f in fracs)}"
            rows += [
                _test_row(
                    claim,
                    cfg,
                    ds,
                    groups,
                    (a, claim.protocol),
                    (b, claim.protocol),
                    fracs,
                    _fraction_of,
                    statistic=stat,
                    note=note,
                )
                for stat in claim.statistics
            ]
        rows += missing
    return rows


def _evaluate_fusion(claim: Claim, res: _Results, cfg: ClaimsConfig) -> list[Row]:
    """C8: every DVME variant vs the best single-encoder linear probe, chosen on val."""
    datasets, rows = _claim_datasets(claim, res, cfg)
    label = f"fusion {MINUS} best single"
    for ds in datasets:
        groups = res.select(claim.stage, ds, fraction=1.0)
        fusion = {k: g for k, g in groups.items() if k.arm == "fusion"}
        variants = sorted({k.protocol for k in fusion if k.protocol.startswith("dvme_")})
        singles = sorted({k.arm for k in groups if k.arm != "fusion" and k.protocol == "linear"})
        if not variants or not singles:
            what = "DVME fusion (arm fusion, protocol dvme_*)" if not variants else "linear-probe"
            rows.append(_row(claim, ds, label, reason=f"no {what} test predictions for {ds}"))
            continue
        inputs = sorted(
            {a for g in fusion.values() for r in _runs(g) for a in _fusion_inputs(res, claim, r)}
        )
        if inputs:
            candidates, rule = [a for a in singles if a in inputs], f"among the inputs {inputs}"
        else:
            candidates, rule = singles, "among every linear probe (no fusion_arms recorded)"
        task, _ = _task(ds, next(iter(groups.values())))
        metric = PRIMARY_METRIC[task]
        best = _best_on_val(res.metrics(claim.stage), ds, candidates, metric)
        if best is None:
            reason = f"no val {metric} of a linear probe {rule} for {ds} to choose the best one"
            rows.append(_row(claim, ds, label, metric=metric, reason=reason))
            continue
        arm, value = best
        note = f"best single probe by mean val {metric} {rule}: {arm} ({value:.4f})"
        rows += [
            _test_row(
                claim,
                cfg,
                ds,
                groups,
                ("fusion", v),
                (arm, "linear"),
                [1.0],
                _fraction_of,
                comparison=f"fusion:{v} {MINUS} {arm}",
                note=note,
            )
            for v in variants
        ]
    return rows


def _fusion_inputs(res: _Results, claim: Claim, run_id: str) -> list[str]:
    """The arms a fusion run fused: its ``encoders`` (arm → weights fingerprint, as written by
    ``medstudy.evaluate.transfer``) or an explicit ``fusion_arms`` list."""
    config = res.config(claim.stage, run_id)
    return list(config.get("fusion_arms") or config.get("encoders") or [])


def _best_on_val(
    metrics: pd.DataFrame, ds: str, candidates: Sequence[str], metric: str
) -> tuple[str, float] | None:
    """The arm with the highest mean over seeds of the val metric of its linear probe at
    fraction 1.0; ties go to the alphabetically first arm."""
    if not len(metrics) or not candidates:
        return None
    sel = metrics[
        (metrics["split"] == SPLIT_VAL)
        & (metrics["dataset"] == ds)
        & (metrics["protocol"] == "linear")
        & (metrics["metric"] == metric)
        & metrics["arm"].isin(candidates)
        & metrics["fraction"].map(lambda f: _same_fraction(f, 1.0))
    ]
    if not len(sel):
        return None
    means = sel.groupby("arm")["value"].mean().sort_index()
    arm = str(means.idxmax())  # idxmax returns the first of tied maxima
    return arm, float(means[arm])


def _evaluate_robustness(claim: Claim, res: _Results, cfg: ClaimsConfig) -> list[Row]:
    """C6: relative metric drop over the distortion suite, A − B (lower is better)."""
    datasets, rows = _claim_datasets(claim, res, cfg)
    for ds in datasets:
        groups = res.select(claim.stage, ds, claim.protocol, fraction=1.0, clean_only=False)
        pairs, missing = _expand(claim, ds, groups, f" in {claim.stage}")
        for a, b in pairs:
            seeds, shared = _shared_conditions(groups, a, b, _distortion_of)
            distorted = [c for c in shared if c != CLEAN]
            if CLEAN not in shared or not distorted:
                reason = (
                    f"{a} and {b} need clean (distortion 'none', severity 0) and distorted "
                    f"{claim.protocol} predictions for {ds} with shared seeds; shared: {shared}"
                )
                rows.append(_row(claim, ds, _label(a, b), arm_a=a, arm_b=b, reason=reason))
                continue
            n_kinds = len({d for d, _ in distorted})
            rows.append(
                _test_row(
                    claim,
                    cfg,
                    ds,
                    groups,
                    (a, claim.protocol),
                    (b, claim.protocol),
                    [CLEAN, *distorted],
                    _distortion_of,
                    statistic="relative_drop",
                    note=f"{len(distorted)} distorted conditions ({n_kinds} distortions)",
                )
            )
        rows += missing
    return rows


def _evaluate_pending(claim: Claim, res: _Results, cfg: ClaimsConfig) -> list[Row]:
    """C7, C9: no evaluator yet; the reason names the missing stage (or the missing code)."""
    missing = [s for s in claim.stages if not res.has_stage(s)]
    reason = "; ".join(_stage_missing(s) for s in missing) or (
        f"{', '.join(claim.stages)} results exist, but medstudy.claims has no evaluator for "
        f"{claim.id} yet"
    )
    return [_row(claim, "all", reason=reason)]


EVALUATORS: dict[str, Callable[[Claim, _Results, ClaimsConfig], list[Row]]] = {
    "paired": _evaluate_paired,
    "label_curve": _evaluate_label_curve,
    "fusion_vs_best": _evaluate_fusion,
    "robustness": _evaluate_robustness,
    "pending": _evaluate_pending,
}


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------
_SRINIVASAN = "Srinivasan et al. 2022, PLOS ONE (DR)"
_TRUONG = "Truong et al. 2021, ML4H"
_SSL_ARMS = (("ssl:*", "natural_sup"), ("natural_sup+ssl:*", "natural_sup"))

CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in (
        Claim(
            "C1",
            "Supervised natural-image init beats training from scratch (fine-tuning)",
            f"{_SRINIVASAN}; {_TRUONG}",
            "paired",
            ("transfer",),
            "finetune",
            (("natural_sup", "scratch"),),
        ),
        Claim(
            "C2",
            "In-domain SSL started from natural-image weights beats supervised natural-image init",
            _SRINIVASAN,
            "paired",
            ("transfer",),
            "finetune",
            (("natural_sup+ssl:*", "natural_sup"),),
        ),
        Claim(
            "C3",
            "Under linear evaluation with few labels, SSL features beat supervised features "
            "(published gains: DR kappa +14.79, PCam AUC +5.4, pneumonia AUC +7.03 points)",
            _TRUONG,
            "paired",
            ("label_efficiency",),
            "linear",
            _SSL_ARMS,
            fraction="smallest",
            published=(
                ("retinamnist", 0.1479),
                ("pcam28_subset", 0.054),
                ("pneumoniamnist", 0.0703),
            ),
        ),
        Claim(
            "C4",
            "Masked image modelling (SparK) degrades less than contrastive SSL as the "
            "fine-tuning set shrinks",
            "Wolf et al. 2023, Sci Rep",
            "label_curve",
            ("label_efficiency",),
            "finetune",
            (("ssl:spark", "@contrastive"),),
            statistics=("slope", "aulc"),
            fraction="curve",
        ),
        Claim(
            "C5",
            "Curricular SSL beats scratch and natural-image init on chest X-ray pneumonia",
            "de Andrés Tamé et al. 2023",
            "paired",
            ("transfer",),
            "finetune",
            (("curriculum", "scratch"), ("curriculum", "natural_sup")),
            datasets=("pneumoniamnist",),
        ),
        Claim(
            "C6",
            "Pretrained models are more robust to image distortions",
            _SRINIVASAN,
            "robustness",
            ("robustness",),
            "finetune",
            (("natural_sup", "scratch"), ("ssl:*", "scratch"), ("natural_sup+ssl:*", "scratch")),
            statistics=("relative_drop",),
        ),
        Claim(
            "C7",
            "SSL (+ natural init) attributions focus more on lesions, including minute ones; "
            "SSL CXR models focus more on the lungs",
            f"{_SRINIVASAN}; de Andrés Tamé et al. 2023",
            "pending",
            ("interpretability",),
            "finetune",
        ),
        Claim(
            "C8",
            "DVME fusion of several pretrained embeddings beats the best single embedding",
            _TRUONG,
            "fusion_vs_best",
            ("transfer",),
            "linear",
            (("fusion", "best single"),),
        ),
        Claim(
            "C9",
            "Pretraining changes the statistics of the learned representations",
            _SRINIVASAN,
            "pending",
            ("representations",),
            "linear",
        ),
    )
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def _verdict(p_adj: float, effect: float, expected: int, alpha: float) -> str:
    if not np.isfinite(p_adj) or not np.isfinite(effect):
        return "inconclusive"
    if p_adj < alpha and np.sign(effect) == expected:
        return "supported"
    if p_adj < alpha and np.sign(effect) == -expected:
        return "contradicted"
    return "inconclusive"


def evaluate_claims(
    results_dir: Path | None = None, cfg: ClaimsConfig | None = None
) -> pd.DataFrame:
    """Test every claim of ``CLAIMS`` on the finished runs under ``results_dir``.

    Returns one row per (claim, dataset, comparison, statistic) with the columns
    ``CLAIM_COLUMNS`` (``effect`` = A − B of the statistic; ``ci_low``/``ci_high`` its two-sided
    ``1 - alpha`` CI; ``p`` two-sided; ``p_adj`` corrected within the claim's family;
    ``n_seeds`` paired seeds; ``n_test`` paired test cases) followed by ``EXTRA_COLUMNS``.
    Rows that could not be tested have ``verdict == "not run"`` and a ``reason``. The per-seed
    breakdown is in ``df.attrs["per_seed"]`` (columns ``PER_SEED_COLUMNS``).
    """
    cfg = cfg or ClaimsConfig()
    res = _Results(Path(results_dir) if results_dir is not None else paths.results_dir())
    rows: list[Row] = []
    for claim in CLAIMS.values():
        # never drop a claim silently: a claim without rows gets a "not run" row
        rows += EVALUATORS[claim.kind](claim, res, cfg) or [
            _row(claim, "all", reason=f"no {claim.stage} test predictions to test")
        ]
    per_seed = pd.DataFrame(
        [{**{c: r[c] for c in PER_SEED_COLUMNS[:4]}, **d} for r in rows for d in r["_per_seed"]],
        columns=list(PER_SEED_COLUMNS),
    )
    df = pd.DataFrame(rows).drop(columns="_per_seed")
    for family in df["claim"].unique():
        sel = (df["claim"] == family).to_numpy()
        p = df.loc[sel, "p"].to_numpy(dtype=float)
        df.loc[sel, "p_adj"] = stats.adjust_pvalues(p, cfg.correction)
    tested = df["test"] != ""
    df.loc[tested, "verdict"] = [
        _verdict(r.p_adj, r.effect, r.expected_sign, cfg.alpha)
        for r in df[tested].itertuples(index=False)
    ]
    df = df.assign(
        alpha=cfg.alpha,
        correction=cfg.correction,
        n_boot=cfg.n_boot,
        profile=cfg.profile,
        n_seeds=df["n_seeds"].astype("Int64"),
        n_test=df["n_test"].astype("Int64"),
    )
    df = df[[*CLAIM_COLUMNS, *EXTRA_COLUMNS]].reset_index(drop=True)
    df.attrs["per_seed"] = per_seed
    return df


def claims_table() -> pd.DataFrame:
    """The registry as a table: what each claim says, where it comes from, how it is tested."""
    return pd.DataFrame(
        [
            {
                "claim": c.id,
                "text": c.text,
                "source": c.source,
                "stage": ", ".join(c.stages),
                "protocol": c.protocol,
                "comparisons": "; ".join(_label(a, b) for a, b in c.comparisons),
                "statistics": ", ".join(c.statistics),
                "fraction": c.fraction,
                "datasets": ", ".join(c.datasets) or "all",
                "kind": c.kind,
            }
            for c in CLAIMS.values()
        ]
    )


def inventory(results_dir: Path | None = None) -> pd.DataFrame:
    """What the finished runs hold: test predictions per stage, dataset, protocol and arm, with
    their seeds and label fractions (the inputs ``evaluate_claims`` can use)."""
    res = _Results(Path(results_dir) if results_dir is not None else paths.results_dir())
    rows = []
    for stage in STAGE_NOTEBOOK:
        if stage == "pretrain" or not res.has_stage(stage):
            continue
        for key, g in res.groups(stage).items():
            rows.append({"stage": stage, **key._asdict(), "n_test": len(g)})
    cols = ["stage", "dataset", "protocol", "arm"]
    if not rows:
        return pd.DataFrame(columns=[*cols, "seeds", "fractions", "conditions", "n_test"])
    df = pd.DataFrame(rows)
    return (
        df.groupby(cols, sort=True)
        .agg(
            seeds=("seed", lambda s: ",".join(str(v) for v in sorted(set(s)))),
            fractions=("fraction", lambda s: ",".join(f"{v:g}" for v in sorted(set(s)))),
            conditions=("distortion", lambda s: len(set(s))),
            n_test=("n_test", "max"),
        )
        .reset_index()
    )


def claim_detail(claims_df: pd.DataFrame, claim_id: str) -> pd.DataFrame:
    """The rows of one claim (``level == "all seeds"``) followed, for each comparison, by its
    per-seed breakdown (``level == "seed <s>"``) when ``claims_df.attrs["per_seed"]`` holds it
    (binary AUC: per-seed DeLong AUCs, difference, CI and p; otherwise point estimates)."""
    if claim_id not in CLAIMS:
        raise ValueError(f"unknown claim {claim_id!r}; valid: {list(CLAIMS)}")
    cols = [
        *("dataset", "comparison", "statistic", "level", "estimate_a", "estimate_b", "effect"),
        *("ci_low", "ci_high", "p", "p_adj", "verdict", "test", "n_seeds", "n_test", "reason"),
    ]
    rows = claims_df[claims_df["claim"] == claim_id].assign(level="all seeds")
    per_seed = claims_df.attrs.get("per_seed")
    parts = [rows]
    if isinstance(per_seed, pd.DataFrame) and len(per_seed):
        ps = per_seed[per_seed["claim"] == claim_id]
        parts.append(ps.assign(level=ps["seed"].map(lambda s: f"seed {s}")))
    out = pd.concat(parts, ignore_index=True)
    out["_order"] = (out["level"] != "all seeds").astype(int)
    out = out.sort_values(["dataset", "comparison", "statistic", "_order", "level"], kind="stable")
    return out.reindex(columns=cols).reset_index(drop=True)


def save_claims(claims_df: pd.DataFrame, results_dir: Path | None = None) -> list[Path]:
    """Write ``results/claims.csv`` (the table) and ``results/claims_per_seed.csv`` (the per-seed
    breakdown); returns both paths. ``medstudy.report`` reads the first."""
    root = Path(results_dir) if results_dir is not None else paths.results_dir()
    per_seed = claims_df.attrs.get("per_seed", pd.DataFrame(columns=list(PER_SEED_COLUMNS)))
    return [
        atomic_write(root / "claims.csv", lambda tmp: claims_df.to_csv(tmp, index=False)),
        atomic_write(root / "claims_per_seed.csv", lambda tmp: per_seed.to_csv(tmp, index=False)),
    ]


def load_claims(results_dir: Path | None = None) -> pd.DataFrame:
    """Read ``results/claims.csv``; a missing file says to run notebook 07 first."""
    root = Path(results_dir) if results_dir is not None else paths.results_dir()
    path = root / "claims.csv"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: run notebook 07 (07_robustness_stats) first, it writes "
            "results/claims.csv"
        )
    # text columns stay text ("" when empty), so that "not run" rows keep an empty test etc.
    df = pd.read_csv(path, dtype=dict.fromkeys(TEXT_COLUMNS, str))
    for col in TEXT_COLUMNS:
        if col in df:
            df[col] = df[col].fillna("")
    per_seed = root / "claims_per_seed.csv"
    if per_seed.exists():
        df.attrs["per_seed"] = pd.read_csv(per_seed)
    return df


def _row_label(r: pd.Series) -> str:
    stat = "" if r["statistic"] == "metric" else f" {r['statistic']}"
    return f"{r['dataset']}: {r['comparison']} [{r['metric']}{stat}]"


def plot_forest(claims_df: pd.DataFrame) -> Any:
    """Forest plot: effect (A − B) with its CI per tested row, one panel per claim, coloured
    by verdict; claims without a tested row are listed underneath with their reason."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tested = claims_df[
        (claims_df["verdict"] != "not run") & np.isfinite(claims_df["effect"].astype(float))
    ]
    order = [c for c in CLAIMS if c in set(tested["claim"])]
    untested = [c for c in CLAIMS if c not in order]
    heights = [max(1, int((tested["claim"] == c).sum())) for c in order] or [1]
    fig, axes = plt.subplots(
        len(heights),
        1,
        figsize=(8.5, 1.2 + 0.38 * sum(heights) + 0.9 * len(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, cid in zip(axes[:, 0], order, strict=False):
        rows = tested[tested["claim"] == cid].iloc[::-1]
        y = np.arange(len(rows))
        for yi, (_, r) in zip(y, rows.iterrows(), strict=True):
            colour = VERDICT_COLOURS[r["verdict"]]
            ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=colour, lw=2)
            ax.plot(r["effect"], yi, "o", color=colour, ms=6)
        ax.axvline(0.0, color="black", lw=0.8, ls="--")
        ax.set_yticks(y, [_row_label(r) for _, r in rows.iterrows()], fontsize=8)
        ax.set_title(f"{cid}: {CLAIMS[cid].text}", fontsize=9, loc="left", wrap=True)
        ax.tick_params(axis="x", labelsize=8)
    if not order:
        axes[0, 0].axis("off")
        axes[0, 0].text(0.5, 0.5, "no claim could be tested yet", ha="center", va="center")
    axes[-1, 0].set_xlabel(f"effect (A {MINUS} B, metric units)")
    handles = [
        Line2D([], [], color=VERDICT_COLOURS[v], marker="o", lw=2, label=v) for v in VERDICTS[:3]
    ]
    fig.legend(handles=handles, loc="upper right", fontsize=8, ncol=3, frameon=False)
    notes = []
    for cid in untested:
        reasons = claims_df.loc[claims_df["claim"] == cid, "reason"].astype(str)
        first = next((x for x in reasons if x), "")
        notes.append(f"{cid} not run: {first[:100]}")
    # reserve ~0.14 inch per note line under the panels
    fig.set_figheight(fig.get_figheight() + 0.14 * len(notes))
    bottom = (0.14 * len(notes) + 0.1) / fig.get_figheight() if notes else 0.0
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom", ha="left", color="#555555")
    fig.tight_layout(rect=(0.0, bottom, 1.0, 0.97))
    return fig
