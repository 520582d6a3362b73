"""The claims table: every claim tested on the finished runs, its registry view, the inputs
found, one claim's detail, and ``results/claims.csv``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medstudy import paths, stats
from medstudy.claims.claim import EVALUATORS
from medstudy.claims.columns import (
    CLAIM_COLUMNS,
    EXTRA_COLUMNS,
    PER_SEED_COLUMNS,
    STAGE_NOTEBOOK,
    TEXT_COLUMNS,
    VERDICTS,
    Row,
    comparison_label,
)
from medstudy.claims.index import ResultsIndex
from medstudy.claims.registry import CLAIMS
from medstudy.claims.rows import make_row
from medstudy.config import ClaimsConfig
from medstudy.results import atomic_write

#: Claim-level verdicts: the same three as a row's, plus "not run" (:func:`claim_verdicts`).
CLAIM_VERDICTS: tuple[str, ...] = VERDICTS


def row_verdict(r: Any, cfg: ClaimsConfig) -> tuple[str, str]:
    """The claims rule for one tested row (DESIGN §6): a directional verdict needs at least
    ``cfg.min_seeds`` paired seeds, the family-adjusted p below alpha, AND the unadjusted CI on
    the same side of 0 as the effect (so verdict and CI never disagree); otherwise
    *inconclusive*, with the reason. Returns ``(verdict, reason)``."""
    if not np.isfinite(r.p_adj) or not np.isfinite(r.effect):
        return "inconclusive", "the effect or its p-value is undefined"
    n = int(r.n_seeds) if pd.notna(r.n_seeds) else 0
    if n < cfg.min_seeds:
        return "inconclusive", (
            f"{n} paired seed(s) < min_seeds {cfg.min_seeds}: training variance is not "
            "estimable, so no directional verdict"
        )
    if r.p_adj >= cfg.alpha:
        return "inconclusive", f"adjusted p {r.p_adj:.3g} >= alpha {cfg.alpha:g}"
    side = np.sign(r.effect)
    if not (np.sign(r.ci_low) == side and np.sign(r.ci_high) == side):
        return "inconclusive", "the CI includes 0 although the adjusted p is below alpha"
    if r.expected_sign == 0:  # a two-sided claim ("changes"): either sign supports it
        return "supported", ""
    return ("supported" if side == r.expected_sign else "contradicted"), ""


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
    root = Path(results_dir) if results_dir is not None else paths.results_dir()
    res = ResultsIndex(root, allow_mixed_code=cfg.allow_mixed_code)
    rows: list[Row] = []
    for claim in CLAIMS.values():
        # never drop a claim silently: a claim without rows gets a "not run" row
        rows += EVALUATORS[claim.kind](claim, res, cfg) or [
            make_row(claim, "all", reason=f"no {claim.stage} test predictions to test")
        ]
    per_seed = pd.DataFrame(
        [{**{c: r[c] for c in PER_SEED_COLUMNS[:4]}, **d} for r in rows for d in r["_per_seed"]],
        columns=list(PER_SEED_COLUMNS),
    )
    df = pd.DataFrame(rows).drop(columns="_per_seed")
    # one family per (claim, role): the verdict rests on the primary rows, which are not
    # penalised by the claim's descriptive secondary rows (corrected among themselves)
    for _, idx in df.groupby(["claim", "role"], sort=False).groups.items():
        p = df.loc[idx, "p"].to_numpy(dtype=float)
        df.loc[idx, "p_adj"] = stats.adjust_pvalues(p, cfg.correction)
    tested = (df["test"] != "").to_numpy()
    ruled = [row_verdict(r, cfg) for r in df[tested].itertuples(index=False)]
    df.loc[tested, "verdict"] = [v for v, _ in ruled]
    df.loc[tested, "reason"] = [why for _, why in ruled]
    df = df.assign(
        alpha=cfg.alpha,
        correction=cfg.correction,
        n_boot=cfg.n_boot,
        min_seeds=cfg.min_seeds,
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
                "comparisons": "; ".join(comparison_label(a, b) for a, b in c.comparisons),
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
    their seeds and label fractions (the inputs ``evaluate_claims`` can use). Listing pairs
    nothing: runs of several code versions are listed (``evaluate_claims`` refuses them)."""
    root = Path(results_dir) if results_dir is not None else paths.results_dir()
    res = ResultsIndex(root, allow_mixed_code=True)
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


def dataset_verdicts(claims: pd.DataFrame) -> pd.DataFrame:
    """One verdict per (claim, dataset) from the claim's *primary* rows, combined as the
    registry says (``Claim.combine``): "all" = supported only if every primary comparison is
    supported, contradicted if any is, else inconclusive (C5: curriculum beats scratch AND
    natural init); "each" = every comparison counts as its own instance. Rows not run are
    left out; a dataset with none tested is "not run"."""
    out = []
    for cid, claim in CLAIMS.items():
        rows = claims[(claims["claim"] == cid) & (claims["statistic"] == claim.primary)]
        groups = rows.groupby(["dataset"] if claim.combine == "all" else ["dataset", "comparison"])
        for key, g in groups:
            verdicts = list(g.loc[g["verdict"] != "not run", "verdict"])
            name = key if isinstance(key, str) else " / ".join(map(str, key))
            if not verdicts:
                v = "not run"
            elif "contradicted" in verdicts:
                v = "contradicted"
            elif all(x == "supported" for x in verdicts):
                v = "supported"
            else:
                v = "inconclusive"
            out.append({"claim": cid, "instance": name, "verdict": v})
    return pd.DataFrame(out, columns=["claim", "instance", "verdict"])


def claim_summary(claims: pd.DataFrame) -> pd.DataFrame:
    """Per claim: "supported on k of n datasets, contradicted on j" over the tested instances
    (:func:`dataset_verdicts`), and a claim-level verdict from the same three: supported if
    every tested instance is, contradicted if every one is, not run if none was tested, else
    inconclusive (there is no "mixed")."""
    per = dataset_verdicts(claims)
    rows = []
    for cid in CLAIMS:
        v = per.loc[(per["claim"] == cid) & (per["verdict"] != "not run"), "verdict"]
        n, k, j = len(v), int((v == "supported").sum()), int((v == "contradicted").sum())
        if n == 0:
            verdict = "not run"
        elif k == n:
            verdict = "supported"
        elif j == n:
            verdict = "contradicted"
        else:
            verdict = "inconclusive"
        unit = "datasets" if CLAIMS[cid].combine == "all" else "comparisons"
        text = f"supported on {k} of {n} {unit}, contradicted on {j}" if n else "not run"
        rows.append(
            {
                "claim": cid,
                "verdict": verdict,
                "n": n,
                "supported": k,
                "contradicted": j,
                "summary": text,
            }
        )
    return pd.DataFrame(rows)


def claim_verdicts(claims: pd.DataFrame) -> pd.Series:
    """The claim-level verdict of :func:`claim_summary`, indexed by claim id."""
    summary = claim_summary(claims)
    return pd.Series(summary["verdict"].to_numpy(), index=summary["claim"], name="verdict")
