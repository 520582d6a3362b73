"""The claims table's vocabulary: its columns, the verdicts and how a comparison is written."""

from __future__ import annotations

from typing import Any

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
    "df",
    "mde",
)
EXTRA_COLUMNS: tuple[str, ...] = (
    "role",
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
    "min_seeds",
    "profile",
)
#: Columns of the claims table that hold text (empty string, never NaN, when absent).
TEXT_COLUMNS: tuple[str, ...] = (
    "claim", "dataset", "comparison", "verdict", "role", "metric", "statistic", "protocol", "stage",
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

#: One output row of the claims table (plus ``_per_seed``, the per-seed breakdown).
Row = dict[str, Any]


def comparison_label(arm_a: str, arm_b: str) -> str:
    return f"{arm_a} {MINUS} {arm_b}"


def stage_missing(stage: str) -> str:
    """The "not run" reason of a stage without results."""
    return f"no {stage} results (notebook {STAGE_NOTEBOOK.get(stage, '?')} not run)"
