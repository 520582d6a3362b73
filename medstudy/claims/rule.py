"""The test rule: one comparison ``statistic(A) − statistic(B)`` over paired seeds and cases.

The rule itself (the seed × case t test with S ≥ 2 seeds, DeLong or a paired BCa bootstrap
with one) is stated in the package docstring (:mod:`medstudy.claims`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from medstudy import stats
from medstudy.claims.claim import NotRunError, Statistic
from medstudy.claims.columns import PER_SEED_COLUMNS, Row
from medstudy.claims.index import Groups, Key
from medstudy.claims.pairing import pair_predictions
from medstudy.config import ClaimsConfig
from medstudy.metrics import BINARY, METRICS

Condition = Hashable
ConditionOf = Callable[[Key], Condition]


def fraction_of(k: Key) -> float:
    return float(k.fraction)


def distortion_of(k: Key) -> tuple[str, int]:
    return (str(k.distortion), int(k.severity))


@dataclass(frozen=True)
class Side:
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
    ) -> Side:
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
class Outcome:
    effect: float
    ci_low: float
    ci_high: float
    p: float
    estimate_a: float
    estimate_b: float
    test: str
    n_test: int
    df: float
    mde: float
    seeds: list[int]
    runs_a: tuple[str, ...]
    runs_b: tuple[str, ...]
    per_seed: list[Row]


PerSeed = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def _stack(a: Side, b: Side, seeds: Sequence[int]) -> tuple[PerSeed, set[str], set[str]]:
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


def compare(
    a: Side,
    b: Side,
    statistic: Statistic,
    conditions: np.ndarray,
    metric: str,
    task: str,
    n_classes: int,
    cfg: ClaimsConfig,
) -> Outcome:
    """Apply the test rule to ``statistic(A) − statistic(B)``; ``NotRunError`` if the two
    sides share no seed with every condition."""
    seeds = sorted(set(a.frames) & set(b.frames))
    if not seeds:
        raise NotRunError(
            f"{a.arm} ({a.protocol}) and {b.arm} ({b.protocol}) share no seed with every "
            f"condition ({a.arm}: {sorted(a.frames)}, {b.arm}: {sorted(b.frames)})"
        )
    per_seed, runs_a, runs_b = _stack(a, b, seeds)
    by_condition = METRICS[metric].per_condition(task, n_classes)
    cond = np.asarray(conditions, dtype=np.float64)

    chance = METRICS[metric].chance(task, n_classes)

    def packed(y: np.ndarray, s: np.ndarray) -> float:
        return statistic.reduce(by_condition(y, s), cond, chance)

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
    return _outcome(fn, per_seed, details, binary_auc, common, cfg, f"{a.arm} vs {b.arm}")


def compare_cases(
    fn: Callable[[np.ndarray, np.ndarray], float],
    per_seed: PerSeed,
    seeds: Sequence[int],
    runs: tuple[Sequence[str], Sequence[str]],
    cfg: ClaimsConfig,
    what: str,
) -> Outcome:
    """The test rule on case-level values that are not predictions (C7: a per-image
    attribution score, C9: a feature row): ``per_seed[i] = (strata, A_i, B_i)`` for seed
    ``seeds[i]``, the rows of A_i and B_i the same cases in the same order at every seed, and
    ``fn(strata, rows) -> float`` the statistic of a set of cases (the bootstrap resamples
    rows within each stratum). ``effect = mean_s fn(A_s) - fn(B_s)``."""
    if not per_seed:
        raise NotRunError(f"{what}: no shared seed")
    details = []
    for seed, (y, sa, sb) in zip(seeds, per_seed, strict=True):
        ea, eb = fn(y, sa), fn(y, sb)
        est = (ea, eb, ea - eb, math.nan, math.nan, math.nan, "point estimate")
        details.append({"seed": seed, **dict(zip(PER_SEED_COLUMNS[5:], est, strict=True))})
    common = {
        "n_test": int(per_seed[0][0].shape[0]),
        "seeds": list(seeds),
        "runs_a": tuple(sorted(set(runs[0]))),
        "runs_b": tuple(sorted(set(runs[1]))),
        "per_seed": details,
    }
    return _outcome(fn, per_seed, details, False, common, cfg, what)


def _outcome(
    fn: stats.Metric,
    per_seed: PerSeed,
    details: list[Row],
    binary_auc: bool,
    common: dict,
    cfg: ClaimsConfig,
    what: str,
) -> Outcome:
    with warnings.catch_warnings():
        # a class absent from a multi-label resample is skipped by auc_score with a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            r, test, df, se = _test(fn, per_seed, details, binary_auc, cfg)
        except ValueError as err:  # e.g. a statistic undefined on the full test set
            raise NotRunError(f"{what}: {err}") from None
    mde = stats.minimum_detectable_effect(se, df, cfg.alpha) if np.isfinite(se) else math.nan
    return Outcome(
        r.diff,
        r.ci_low,
        r.ci_high,
        r.p_value,
        r.estimate_a,
        r.estimate_b,
        test,
        df=df,
        mde=mde,
        **common,
    )


def _test(
    fn: stats.Metric, per_seed: PerSeed, details: list[Row], binary_auc: bool, cfg: ClaimsConfig
) -> tuple[stats.PairedBootstrapResult | stats.SeedCaseResult, str, float, float]:
    """The rule: S >= 2 seeds → the seed × case t test (both variance sources, Welch-
    Satterthwaite df); one seed → DeLong (binary AUC, df = inf) or a paired BCa bootstrap. Returns
    the result, the test's name, its df and the SE the minimum detectable effect uses (for one
    seed: the CI half-width over the normal quantile)."""
    if len(per_seed) >= 2:
        r = stats.seed_case_test(fn, per_seed, alpha=cfg.alpha, n_boot=cfg.n_boot, seed=cfg.seed)
        return r, "seed-case t", r.df, r.se
    z = float(sps.norm.ppf(1 - cfg.alpha / 2))
    if binary_auc:
        r0 = _delong_as_result(details[0])
        return r0, "delong", math.inf, (r0.ci_high - r0.ci_low) / (2 * z)
    y, sa, sb = per_seed[0]
    r1 = stats.paired_bootstrap(
        fn, y, sa, sb, n_boot=cfg.n_boot, alpha=cfg.alpha, method="bca", seed=cfg.seed
    )
    return r1, "paired bootstrap (BCa)", math.inf, (r1.ci_high - r1.ci_low) / (2 * z)


def _delong_as_result(d: Row) -> stats.PairedBootstrapResult:
    """The one-seed DeLong row in the shape of the bootstrap results (``n_boot`` = 0)."""
    return stats.PairedBootstrapResult(
        d["estimate_a"], d["estimate_b"], d["effect"], d["ci_low"], d["ci_high"], d["p"], 0
    )
