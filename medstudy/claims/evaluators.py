"""Evaluators: ``EVALUATORS[claim.kind](claim, index, cfg) -> rows``, one per kind of claim.

Each picks the datasets, arms, protocol and conditions a claim reads (the claim-specific
choices of the package docstring) and hands every comparison to the test rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from medstudy.claims.claim import FRACTION_RULES, Claim, evaluator
from medstudy.claims.columns import MINUS, Row, comparison_label, stage_missing
from medstudy.claims.index import (
    CLEAN,
    SPLIT_VAL,
    ResultsIndex,
    dataset_task,
    same_fraction,
)
from medstudy.claims.pairing import runs_of
from medstudy.claims.rows import compare_row, expand, make_row, shared_conditions
from medstudy.claims.rule import distortion_of, fraction_of
from medstudy.config import ClaimsConfig
from medstudy.data.info import INFO
from medstudy.metrics import PRIMARY_METRIC


def claim_datasets(
    claim: Claim, res: ResultsIndex, cfg: ClaimsConfig, available: Sequence[str] | None = None
) -> tuple[list[str], list[Row]]:
    """Datasets to test, and "not run" rows for requested datasets that cannot be.
    ``available``: the datasets the stage has results for (default: those with test
    predictions). A generated dataset (synth_lesions) is tested only by a claim that says
    ``synthetic=True`` (C7: it is the ground truth of the lesion masks) or names it; the
    published claims are about medical images."""
    if not res.has_stage(claim.stage):
        return [], [make_row(claim, "all", reason=stage_missing(claim.stage))]
    if available is None:
        available = res.datasets(claim.stage)
    wanted = list(claim.datasets) or [
        d for d in (cfg.datasets or available) if claim.synthetic or not is_generated(d)
    ]
    todo, rows = [], []
    for ds in wanted:
        if cfg.datasets and ds not in cfg.datasets:
            reason = f"{ds} is not among the selected datasets {list(cfg.datasets)}"
            rows.append(make_row(claim, ds, reason=reason))
        elif ds not in available:
            rows.append(make_row(claim, ds, reason=f"no {claim.stage} test results for {ds}"))
        else:
            todo.append(ds)
    return todo, rows


def is_generated(dataset: str) -> bool:
    """A procedurally generated dataset (``DatasetInfo.source == "generated"``)."""
    return dataset in INFO and INFO[dataset].source == "generated"


@evaluator("paired")
def evaluate_paired(claim: Claim, res: ResultsIndex, cfg: ClaimsConfig) -> list[Row]:
    """C1, C2, C3, C5: the primary metric of arm A vs arm B at one label fraction."""
    datasets, rows = claim_datasets(claim, res, cfg)
    for ds in datasets:
        everything = res.select(claim.stage, ds, claim.protocol)
        if not everything:
            reason = f"no {claim.protocol} test predictions for {ds} in {claim.stage}"
            rows.append(make_row(claim, ds, reason=reason))
            continue
        present = sorted({float(k.fraction) for k in everything if np.isfinite(k.fraction)})
        frac = FRACTION_RULES[claim.fraction](present)[0]
        groups = res.select(claim.stage, ds, claim.protocol, fraction=frac)
        pairs, missing = expand(claim, ds, groups, f" at label fraction {frac:g}")
        rows += [
            compare_row(
                claim, cfg, ds, groups, (a, claim.protocol), (b, claim.protocol), [frac],
                fraction_of,
            )
            for a, b in pairs
        ]  # fmt: skip
        rows += missing
    return rows


@evaluator("label_curve")
def evaluate_label_curve(claim: Claim, res: ResultsIndex, cfg: ClaimsConfig) -> list[Row]:
    """C4: slope and area of the label-efficiency curve, A − B, per dataset."""
    datasets, rows = claim_datasets(claim, res, cfg)
    for ds in datasets:
        groups = res.select(claim.stage, ds, claim.protocol)
        pairs, missing = expand(claim, ds, groups, f" in {claim.stage}")
        for a, b in pairs:
            seeds, fracs = shared_conditions(groups, a, b, fraction_of)
            if len(fracs) < 2:
                reason = (
                    f"{a} and {b} share the label fractions {fracs} over seeds {seeds}; a "
                    "label-efficiency curve needs >= 2"
                )
                rows += [
                    make_row(
                        claim, ds, comparison_label(a, b), statistic=s, arm_a=a, arm_b=b,
                        reason=reason,
                    )
                    for s in claim.statistics
                ]  # fmt: skip
                continue
            note = f"fractions {', '.join(f'{f:g}' for f in fracs)}"
            rows += [
                compare_row(
                    claim, cfg, ds, groups, (a, claim.protocol), (b, claim.protocol), fracs,
                    fraction_of, statistic=stat, note=note,
                )
                for stat in claim.statistics
            ]  # fmt: skip
        rows += missing
    return rows


@evaluator("fusion_vs_best")
def evaluate_fusion(claim: Claim, res: ResultsIndex, cfg: ClaimsConfig) -> list[Row]:
    """C8: every DVME variant vs the best single-encoder linear probe, chosen on val."""
    datasets, rows = claim_datasets(claim, res, cfg)
    label = f"fusion {MINUS} best single"
    for ds in datasets:
        groups = res.select(claim.stage, ds, fraction=1.0)
        fusion = {k: g for k, g in groups.items() if k.arm == "fusion"}
        variants = sorted({k.protocol for k in fusion if k.protocol.startswith("dvme_")})
        singles = sorted({k.arm for k in groups if k.arm != "fusion" and k.protocol == "linear"})
        if not variants or not singles:
            what = "DVME fusion (arm fusion, protocol dvme_*)" if not variants else "linear-probe"
            rows.append(make_row(claim, ds, label, reason=f"no {what} test predictions for {ds}"))
            continue
        inputs = sorted(
            {a for g in fusion.values() for r in runs_of(g) for a in _fusion_inputs(res, claim, r)}
        )
        if inputs:
            candidates, rule = [a for a in singles if a in inputs], f"among the inputs {inputs}"
        else:
            candidates, rule = singles, "among every linear probe (no fusion_arms recorded)"
        task, _ = dataset_task(ds, next(iter(groups.values())))
        metric = PRIMARY_METRIC[task]
        best = _best_on_val(res.metrics(claim.stage), ds, candidates, metric)
        if best is None:
            reason = f"no val {metric} of a linear probe {rule} for {ds} to choose the best one"
            rows.append(make_row(claim, ds, label, metric=metric, reason=reason))
            continue
        arm, value = best
        note = f"best single probe by mean val {metric} {rule}: {arm} ({value:.4f})"
        rows += [
            compare_row(
                claim, cfg, ds, groups, ("fusion", v), (arm, "linear"), [1.0], fraction_of,
                comparison=f"fusion:{v} {MINUS} {arm}", note=note,
            )
            for v in variants
        ]  # fmt: skip
    return rows


def _fusion_inputs(res: ResultsIndex, claim: Claim, run_id: str) -> list[str]:
    """The arms a fusion run fused: its ``encoders`` (arm → weights fingerprint, as written by
    the transfer stage) or an explicit ``fusion_arms`` list."""
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
        & metrics["fraction"].map(lambda f: same_fraction(f, 1.0))
    ]
    if not len(sel):
        return None
    means = sel.groupby("arm")["value"].mean().sort_index()
    arm = str(means.idxmax())  # idxmax returns the first of tied maxima
    return arm, float(means[arm])


@evaluator("robustness")
def evaluate_robustness(claim: Claim, res: ResultsIndex, cfg: ClaimsConfig) -> list[Row]:
    """C6: relative metric drop over the distortion suite, A − B (lower is better)."""
    datasets, rows = claim_datasets(claim, res, cfg)
    for ds in datasets:
        groups = res.select(claim.stage, ds, claim.protocol, fraction=1.0, clean_only=False)
        pairs, missing = expand(claim, ds, groups, f" in {claim.stage}")
        for a, b in pairs:
            seeds, shared = shared_conditions(groups, a, b, distortion_of)
            distorted = [c for c in shared if c != CLEAN]
            if CLEAN not in shared or not distorted:
                reason = (
                    f"{a} and {b} need clean (distortion 'none', severity 0) and distorted "
                    f"{claim.protocol} predictions for {ds} with shared seeds; shared: {shared}"
                )
                rows.append(
                    make_row(claim, ds, comparison_label(a, b), arm_a=a, arm_b=b, reason=reason)
                )
                continue
            n_kinds = len({d for d, _ in distorted})
            rows.append(
                compare_row(
                    claim, cfg, ds, groups, (a, claim.protocol), (b, claim.protocol),
                    [CLEAN, *distorted], distortion_of, statistic="chance_drop",
                    note=f"{len(distorted)} distorted conditions ({n_kinds} distortions)",
                )
            )  # fmt: skip
        rows += missing
    return rows
