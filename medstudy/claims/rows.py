"""Rows of the claims table: a tested comparison or a "not run" row with its reason, and the
expansion of a claim's arm patterns over the arms that have results."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medstudy.claims.claim import ARM_GROUPS, STATISTICS, Claim, NotRunError
from medstudy.claims.columns import Row, comparison_label
from medstudy.claims.index import Groups, dataset_task
from medstudy.claims.rule import Condition, ConditionOf, Outcome, Side, compare
from medstudy.config import ClaimsConfig
from medstudy.metrics import PRIMARY_METRIC


def make_row(
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
    outcome: Outcome | None = None,
) -> Row:
    """One output row; without ``outcome`` it is a "not run" row and needs a ``reason``."""
    statistic = statistic or claim.statistics[0]
    row: Row = {
        "claim": claim.id,
        "dataset": dataset,
        "comparison": comparison or "; ".join(comparison_label(a, b) for a, b in claim.comparisons),
        "effect": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "p": math.nan,
        "p_adj": math.nan,
        "verdict": "not run",
        "n_seeds": pd.NA,
        "n_test": pd.NA,
        "df": math.nan,
        "mde": math.nan,
        "role": "primary" if statistic == claim.primary else "secondary",
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
            df=outcome.df,
            mde=outcome.mde,
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


def compare_row(
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
    task, n_classes = dataset_task(ds, next(iter(groups.values())))
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
    comparison = comparison or comparison_label(a[0], b[0])
    side_a = Side.build(groups, a[0], a[1], conditions, condition_of)
    side_b = Side.build(groups, b[0], b[1], conditions, condition_of)
    # conditions enter the statistic as numbers: fractions as such, distortions by position
    values = [c if isinstance(c, float) else float(i) for i, c in enumerate(conditions)]
    try:
        out = compare(
            side_a, side_b, STATISTICS[statistic], np.array(values), metric, task, n_classes, cfg
        )
    except NotRunError as err:
        return make_row(claim, ds, comparison, reason=str(err), **kw)
    return make_row(claim, ds, comparison, outcome=out, **kw)


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


def expand(
    claim: Claim, ds: str, groups: Groups, where: str
) -> tuple[list[tuple[str, str]], list[Row]]:
    """The claim's comparison patterns expanded over the arms in ``groups``: the (A, B) arm
    pairs to test, and "not run" rows (one per statistic) for patterns that match no arm."""
    return expand_arms(claim, ds, {k.arm for k in groups}, where)


def expand_arms(
    claim: Claim, ds: str, present: Iterable[str], where: str
) -> tuple[list[tuple[str, str]], list[Row]]:
    """:func:`expand` over the arms ``present`` (for stages whose results are not predictions)."""
    arms = sorted(set(present))
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
                make_row(
                    claim, ds, comparison_label(pa, pb), statistic=s, arm_a=pa, arm_b=pb,
                    reason=reason,
                )
                for s in claim.statistics
            ]  # fmt: skip
            continue
        pairs += [(x, y) for x in a_arms for y in b_arms if x != y]
    return pairs, rows


def shared_conditions(
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
