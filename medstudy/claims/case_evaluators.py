"""Evaluators of the claims whose cases are not predictions: C7 (a per-image attribution score)
and C9 (feature rows of a test sample). Both hand the paired cases to the same test rule as the
other claims (:func:`medstudy.claims.rule.compare_cases`: the seed × case t test with S ≥ 2
seeds, a paired BCa bootstrap with one).

C7 (``kind="attribution"``), per dataset of notebook 05's results:

- cases: the sampled test images, paired on ``sample_id`` across arms and seeds; an image enters
  a comparison only if it has a finite value for every seed of both arms (``mass_in_mask`` is
  undefined for a map with no positive mass);
- one comparison per (arm pair, attribution method, region): region ``all`` / ``minute`` /
  ``small`` / ``large`` on synth_lesions, ``lung`` on chest X-rays; statistic = the mean over
  images, A − B. Primary rows (the verdict): ``mass_in_mask`` in the regions the claim names
  (:data:`PRIMARY_REGIONS`: all lesions, minute lesions, lungs); secondary: ``pointing_game``
  and the small / large size classes;
- a method flagged by the cascading-randomisation sanity check in any unit of the dataset is
  left out (one "not run" row says so), and so is the minute-lesion erasure check (it is not an
  attribution).

C9 (``kind="representation"``), per dataset of notebook 04's results, source = the claim's
``protocol`` (``"pretrained"``: notebook 01's encoders): cases = the rows of the last layer's
features on the fixed test sample (:func:`medstudy.representations.paired_units`), statistic =
:data:`medstudy.representations.CASE_STATISTICS` (effective rank primary, condition number
secondary) recomputed on each bootstrap resample of the rows, stratified by label. The claim is
two-sided ("changes"): ``direction = 0``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from medstudy import interpret, representations
from medstudy.claims.claim import Claim, NotRunError, evaluator
from medstudy.claims.columns import Row, comparison_label
from medstudy.claims.evaluators import claim_datasets
from medstudy.claims.index import ResultsIndex
from medstudy.claims.rows import expand, expand_arms, make_row
from medstudy.claims.rule import Outcome, PerSeed, compare_cases
from medstudy.config import ClaimsConfig

#: The sanity flag of a method in an interpretability unit's metrics: ``sanity_flag:<method>``.
SANITY_FLAG = "sanity_flag:"
REGION_ORDER: tuple[str, ...] = (*interpret.LESION_REGIONS, interpret.LUNG)
#: The regions C7 names: every lesion, the minute ones ("including minute ones") and the lungs;
#: small and large lesions are reported as secondary rows.
PRIMARY_REGIONS: tuple[str, ...] = ("all", "minute", interpret.LUNG)


def _mean_over_cases(_strata: np.ndarray, values: np.ndarray) -> float:
    return float(np.mean(values))


def _flagged(metrics: pd.DataFrame, ds: str) -> dict[str, list[str]]:
    """``{method: ["arm seed s", ...]}`` of the units of ``ds`` that flagged the method."""
    if not len(metrics):
        return {}
    m = metrics[(metrics["dataset"] == ds) & metrics["metric"].str.startswith(SANITY_FLAG)]
    m = m[m["value"] > 0.5]
    out: dict[str, list[str]] = {}
    for r in m.itertuples(index=False):
        out.setdefault(r.metric[len(SANITY_FLAG) :], []).append(f"{r.arm} seed {int(r.seed)}")
    return out


def attribution_cases(
    frame: pd.DataFrame, a: str, b: str, method: str, region: str, statistic: str
) -> tuple[PerSeed, list[int], tuple[list[str], list[str]]]:
    """Per shared seed ``(zeros, values of A, values of B)`` on the images that have a finite
    value for every shared seed of both arms (rows in ``sample_id`` order), the seeds, and the
    run ids of each side."""
    sel = frame[
        (frame["method"] == method)
        & (frame["size_class"] == region)
        & (frame["metric"] == statistic)
        & frame["arm"].isin([a, b])
    ]
    seeds = sorted(
        set(sel.loc[sel["arm"] == a, "seed"].astype(int))
        & set(sel.loc[sel["arm"] == b, "seed"].astype(int))
    )
    if not seeds:
        return [], [], ([], [])
    sel = sel[sel["seed"].astype(int).isin(seeds)]
    wide = sel.pivot_table(
        index="sample_id", columns=["arm", "seed"], values="value", aggfunc="first"
    )
    cols = [(arm, s) for arm in (a, b) for s in seeds]
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(cols)).dropna().sort_index()
    strata = np.zeros(len(wide), dtype=np.int64)
    per_seed = [(strata, wide[(a, s)].to_numpy(), wide[(b, s)].to_numpy()) for s in seeds]
    runs = tuple(sorted(set(sel.loc[sel["arm"] == arm, "run_id"])) for arm in (a, b))
    return per_seed, seeds, (list(runs[0]), list(runs[1]))


def _tested(
    claim: Claim,
    ds: str,
    comparison: str,
    outcome: Outcome | Exception,
    **kw: object,
) -> Row:
    if isinstance(outcome, Exception):
        return make_row(claim, ds, comparison, reason=str(outcome), **kw)  # type: ignore[arg-type]
    return make_row(claim, ds, comparison, outcome=outcome, **kw)  # type: ignore[arg-type]


@evaluator("attribution")
def evaluate_attribution(claim: Claim, res: ResultsIndex, cfg: ClaimsConfig) -> list[Row]:
    """C7: attribution mass (and pointing game) in the lesion / lung regions, A − B."""
    datasets, rows = claim_datasets(claim, res, cfg)
    metrics = res.metrics(claim.stage)
    for ds in datasets:
        groups = res.select(claim.stage, ds, claim.protocol, fraction=1.0)
        if not groups:
            reason = f"no {claim.protocol} units at label fraction 1 for {ds} in {claim.stage}"
            rows.append(make_row(claim, ds, reason=reason))
            continue
        frame = pd.concat(groups.values(), ignore_index=True)
        frame = frame[frame["method"] != interpret.ERASURE]
        pairs, missing = expand(claim, ds, groups, f" in {claim.stage}")
        present = set(frame["size_class"])
        regions = [r for r in REGION_ORDER if r in present]
        flagged = _flagged(metrics, ds)
        for method in sorted(set(frame["method"])):
            if method in flagged:
                units = ", ".join(flagged[method])
                reason = (
                    f"{method} is insensitive to the weights (cascading randomisation flags it "
                    f"in {units}): left out of C7"
                )
                rows.append(make_row(claim, ds, f"[{method}]", reason=reason))
                continue
            for a, b in pairs:
                for region in regions:
                    for stat in claim.statistics:
                        label = f"{comparison_label(a, b)} [{method}, {region}]"
                        per_seed, seeds, runs = attribution_cases(frame, a, b, method, region, stat)
                        try:
                            if len(per_seed) and len(per_seed[0][0]) < 2:
                                raise NotRunError(
                                    f"{len(per_seed[0][0])} image(s) with a {stat} value in "
                                    f"region {region} for every seed of {a} and {b}"
                                )
                            out: Outcome | Exception = compare_cases(
                                _mean_over_cases, per_seed, seeds, runs, cfg, label
                            )
                        except NotRunError as err:
                            out = err
                        row = _tested(
                            claim, ds, label, out, statistic=stat, metric=stat,
                            fraction=1.0, arm_a=a, arm_b=b,
                            note=f"method {method}, region {region}",
                        )  # fmt: skip
                        if region not in PRIMARY_REGIONS:
                            row["role"] = "secondary"
                        rows.append(row)
        rows += missing
    return rows


@evaluator("representation")
def evaluate_representation(claim: Claim, res: ResultsIndex, cfg: ClaimsConfig) -> list[Row]:
    """C9: a statistic of the last layer's features, arm − scratch (two-sided)."""
    metrics = res.metrics(claim.stage) if res.has_stage(claim.stage) else pd.DataFrame()
    source = claim.protocol
    if len(metrics):
        metrics = metrics[metrics["protocol"] == source]
    available = sorted(metrics["dataset"].unique()) if len(metrics) else []
    datasets, rows = claim_datasets(claim, res, cfg, available)
    layer = representations.LAST
    for ds in datasets:
        m = metrics[metrics["dataset"] == ds]
        pairs, missing = expand_arms(claim, ds, m["arm"], f" ({source} encoders)")
        for a, b in pairs:
            units = representations.paired_units(m, a, b, source)
            per_seed = representations.paired_features(m, a, b, source, layer, res.root)
            seeds = [s for s, _, _ in units]
            runs = ([ra for _, ra, _ in units], [rb for _, _, rb in units])
            for stat in claim.statistics:
                label = comparison_label(a, b)
                try:
                    out: Outcome | Exception = compare_cases(
                        representations.CASE_STATISTICS[stat], per_seed, seeds, runs, cfg,
                        f"{label} ({stat})",
                    )  # fmt: skip
                except NotRunError as err:
                    out = err
                rows.append(
                    _tested(
                        claim, ds, label, out, statistic=stat, metric=stat,
                        fraction=math.nan, arm_a=a, arm_b=b,
                        note=f"{source} encoders, layer {layer}",
                    )
                )  # fmt: skip
        rows += missing
    return rows
