"""The paper's LaTeX: escaping and number formats, the claims table and macros (from
``claims.csv``), and the transfer / referable / label-efficiency tables, whose numbers come from
:mod:`medstudy.figures`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from medstudy.claims import CLAIM_VERDICTS, CLAIMS, MINUS, VERDICTS, claim_verdicts
from medstudy.figures import (
    PROTOCOL_ORDER,
    label_efficiency_table,
    ordered,
    primary_metric,
    sort_rows,
    transfer_table,
)

REFERABLE_METRICS: dict[str, str] = {
    "referable_auc": r"grade $\geq 2$",
    "referable_auc_ge3": r"grades 3--4",
}
_DIGITS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------
def tex_escape(text: object) -> str:
    """Escape LaTeX specials; the comparison minus (U+2212) becomes a math minus."""
    out = str(text)
    for char, repl in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("~", r"\textasciitilde{}"),
        ("^", r"\textasciicircum{}"),
    ):
        out = out.replace(char, repl)
    return out.replace(MINUS, "$-$").replace("≥", r"$\geq$")


def _num(x: float, digits: int = 3, sign: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "--"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _p(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "--"
    return "$<$0.001" if x < 0.001 else f"{x:.3f}"


def _pm(mean: float, sd: float) -> str:
    """``mean ± SD`` over seeds (SD with ddof = 1; a single seed, SD NaN, shows the mean only)."""
    if not np.isfinite(mean):
        return "--"
    if not np.isfinite(sd):
        return f"{mean:.3f}"
    return f"{mean:.3f} $\\pm$ {sd:.3f}"


def macro_name(*parts: str) -> str:
    """A LaTeX command name from parts: letters only, CamelCase, digits spelled out."""
    out = []
    for part in parts:
        word = "".join(_DIGITS[int(ch)] if ch.isdigit() else ch for ch in str(part))
        out.extend(
            w[:1].upper() + w[1:] for w in "".join(c if c.isalpha() else " " for c in word).split()
        )
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Claims: verdicts, macros, table
# --------------------------------------------------------------------------------------------
def claim_macros(claims: pd.DataFrame) -> dict[str, str]:
    """Every number (and setting) the manuscript quotes, as ``{macro name: value}``, computed
    from the claims table (``results/claims.csv``) only.

    Counts of claims by claim-level verdict (``NClaims…``) and of rows by row verdict
    (``NComparisons…``), the number of datasets and the largest number of seeds in tested rows,
    the test settings (alpha, CI level, bootstrap replicates, correction, profile) and per
    claim its verdict and its tested / supported / contradicted row counts. The published
    gains the text quotes (C3, in points) come from the registry ``CLAIMS``, not from results.
    """
    tested = claims[claims["verdict"] != "not run"]
    by_claim = claim_verdicts(claims)
    first = claims.iloc[0] if len(claims) else pd.Series(dtype=object)
    alpha = float(first.get("alpha", math.nan))
    m: dict[str, str] = {"NClaims": str(len(by_claim))}
    for v in CLAIM_VERDICTS:
        m[macro_name("N", "claims", v)] = str(int((by_claim == v).sum()))
    m["NComparisons"] = str(len(tested))
    for v in VERDICTS:
        m[macro_name("N", "comparisons", v)] = str(int((claims["verdict"] == v).sum()))
    m["NDatasetsTested"] = str(tested["dataset"].nunique())
    seeds = pd.to_numeric(tested["n_seeds"], errors="coerce")
    m["MaxSeeds"] = str(int(seeds.max())) if seeds.notna().any() else "0"
    m["Alpha"] = f"{alpha:g}"
    m["CILevel"] = f"{100 * (1 - alpha):g}"
    m["NBoot"] = str(int(first.get("n_boot", 0) or 0))
    m["MinSeeds"] = str(int(first.get("min_seeds", 0) or 0))
    m["Correction"] = {"holm": "Holm", "fdr_bh": "Benjamini--Hochberg"}.get(
        str(first.get("correction", "")), tex_escape(first.get("correction", ""))
    )
    m["Profile"] = tex_escape(first.get("profile", ""))
    for cid in CLAIMS:
        rows = claims[claims["claim"] == cid]
        m[macro_name("claim", cid, "verdict")] = by_claim[cid]
        m[macro_name("claim", cid, "tested")] = str(int((rows["verdict"] != "not run").sum()))
        for v in ("supported", "contradicted"):
            m[macro_name("claim", cid, v)] = str(int((rows["verdict"] == v).sum()))
    # published gains are quoted whether or not their dataset was run: from the registry
    for cid, claim in CLAIMS.items():
        for dataset, value in claim.published:
            m[macro_name("published", cid, dataset)] = f"{100 * value:+.2f}"
    return m


def macros_tex(macros: dict[str, str]) -> str:
    lines = ["% Generated by medstudy.report from results/claims.csv. Do not edit."]
    lines += [f"\\newcommand{{\\{k}}}{{{v}}}" for k, v in macros.items()]
    return "\n".join(lines) + "\n"


def _comparison_cell(r: pd.Series) -> str:
    stat = "" if r["statistic"] == "metric" else f" ({r['statistic']})"
    return tex_escape(f"{r['comparison']}{stat}")


def claims_tex(claims: pd.DataFrame) -> str:
    """The claims table: tested rows, then the rows that could not be run with their reason."""
    alpha = float(claims["alpha"].iloc[0]) if len(claims) else 0.05
    level = f"{100 * (1 - alpha):g}"
    tested = claims[claims["verdict"] != "not run"]
    lines = [
        "% Generated by medstudy.report from results/claims.csv. Do not edit.",
        r"\begingroup\small",
        r"\begin{longtable}{lllllrrrrl}",
        r"\caption{Claims under test. Effect = A $-$ B on the primary metric (or the named "
        rf"statistic), {level}\,\% CI; $p$ two-sided, $p_\mathrm{{adj}}$ corrected within each "
        r"claim; $S$ paired training seeds; MDE the smallest $|$effect$|$ this row's design "
        rf"detects with 80\,\% power at $\alpha = {alpha:g}$ (from its standard error and "
        r"degrees of freedom): an inconclusive row with a small MDE rules out large effects, "
        r"one with a large MDE is too small a study.}\label{tab:claims}\\",
        r"\toprule",
        r"Claim & Dataset & Comparison & Metric & Effect [CI] & $p$ & $p_\mathrm{adj}$ & $S$ & "
        r"MDE & Verdict \\",
        r"\midrule",
        r"\endfirsthead",
        r"\toprule Claim & Dataset & Comparison & Metric & Effect [CI] & $p$ & "
        r"$p_\mathrm{adj}$ & $S$ & MDE & Verdict \\ \midrule",
        r"\endhead",
    ]
    for _, r in tested.iterrows():
        effect = f"{_num(r['effect'], sign=True)} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
        verdict = r["verdict"] if r["verdict"] != "supported" else r"\textbf{supported}"
        seeds = str(int(r["n_seeds"])) if pd.notna(r.get("n_seeds")) else "--"
        cells = [
            r["claim"], tex_escape(r["dataset"]), _comparison_cell(r), tex_escape(r["metric"]),
            effect, _p(r["p"]), _p(r["p_adj"]), seeds, _num(r.get("mde", math.nan)), verdict,
        ]  # fmt: skip
        lines.append(" & ".join(cells) + r" \\")
    if not len(tested):
        lines.append(r"\multicolumn{10}{l}{\emph{No claim could be tested.}} \\")
    lines += [r"\bottomrule", r"\end{longtable}"]
    not_run = claims[claims["verdict"] == "not run"]
    if len(not_run):
        lines += [
            r"\begin{longtable}{llp{0.62\linewidth}}",
            r"\caption{Claim rows that were not run, and why.}\label{tab:claims-not-run}\\",
            r"\toprule Claim & Dataset & Reason \\ \midrule",
            r"\endfirsthead",
            r"\toprule Claim & Dataset & Reason \\ \midrule",
            r"\endhead",
        ]
        for _, r in not_run.iterrows():
            reason = f"{r['comparison']}: {r['reason']}" if r["comparison"] else r["reason"]
            lines.append(f"{r['claim']} & {tex_escape(r['dataset'])} & {tex_escape(reason)} \\\\")
        lines += [r"\bottomrule", r"\end{longtable}"]
    lines.append(r"\endgroup")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Transfer and label-efficiency tables (numbers from medstudy.figures, formatted for LaTeX)
# --------------------------------------------------------------------------------------------
def transfer_cells(metrics: pd.DataFrame) -> pd.DataFrame:
    """Test primary metric at each dataset's largest label fraction, ``mean ± SD`` over seeds
    (:func:`medstudy.figures.transfer_table`), rows (dataset, metric, arm) × protocols."""
    table = transfer_table(metrics, primary_only=True)
    if not len(table):
        return pd.DataFrame()
    cells = [
        {"dataset": ds, "metric": (m := primary_metric(ds)), "arm": arm, "protocol": protocol,
         "cell": _pm(r[m], r[f"{m}_sd"])}
        for (ds, protocol, arm), r in table.iterrows()
    ]  # fmt: skip
    wide = pd.DataFrame(cells).set_index(["dataset", "metric", "arm", "protocol"])["cell"]
    wide = wide.unstack("protocol")
    wide = wide.reindex(columns=ordered(wide.columns, PROTOCOL_ORDER))
    return sort_rows(wide).fillna("--")


def label_efficiency_cells(metrics: pd.DataFrame) -> pd.DataFrame:
    """Test primary metric per label fraction (``mean ± SD`` over seeds) and the normalised area
    under the curve of the seed means vs log10(fraction) (``AULC``; needs >= 2 fractions), from
    :func:`medstudy.figures.label_efficiency_table`."""
    table = label_efficiency_table(metrics)
    if not len(table):
        return pd.DataFrame()
    fractions = [c for c in table.columns[: list(table.columns).index("aulc")] if "_sd" not in c]
    cells = _pm_columns(table, fractions)
    cells["AULC"] = [_num(a) for a in table["aulc"]]
    return cells


def referable_cells(metrics: pd.DataFrame) -> pd.DataFrame:
    """Referable-DR AUC on test (grade >= 2 and grades 3-4) at the largest label fraction,
    ``mean ± SD`` over seeds, rows (dataset, protocol, arm)."""
    table = transfer_table(metrics, metrics_shown=list(REFERABLE_METRICS))
    if not len(table):
        return pd.DataFrame()
    return _pm_columns(table, [m for m in REFERABLE_METRICS if m in table.columns])


def _pm_columns(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``mean ± SD`` cells from the mean column ``c`` and SD column ``c_sd`` of each column."""
    return pd.DataFrame(
        {
            c: [_pm(m, sd) for m, sd in zip(table[c], table[f"{c}_sd"], strict=True)]
            for c in columns
        },
        index=table.index,
    )


def _table_tex(
    table: pd.DataFrame, caption: str, label: str, header: dict[str, str] | None = None
) -> str:
    """A booktabs tabular of a table with a (multi-)index; index levels become left columns."""
    header = header or {}
    idx = list(table.index.names)
    cols = list(table.columns)
    spec = "l" * len(idx) + "r" * len(cols)
    head = [tex_escape(n) for n in idx] + [header.get(str(c), tex_escape(c)) for c in cols]
    lines = [" & ".join(head) + r" \\", r"\midrule"]
    previous: tuple[str, ...] = ()
    for key, row in table.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        # print a repeated leading index value once (dataset, then protocol)
        shown = [
            "" if previous[: i + 1] == key[: i + 1] and i < len(key) - 1 else tex_escape(k)
            for i, k in enumerate(key)
        ]
        if previous and previous[0] != key[0]:
            lines.append(r"\midrule")
        lines.append(" & ".join([*shown, *(str(v) for v in row)]) + r" \\")
        previous = tuple(key)
    return _table_env(caption, label, spec, lines)


def _table_env(caption: str, label: str, spec: str, body: list[str]) -> str:
    """A labelled booktabs ``table`` around the tabular rows ``body``."""
    lines = [
        "% Generated by medstudy.report from results/*/metrics.csv. Do not edit.",
        r"\begin{table}[t]",
        r"\centering\small",
        rf"\caption{{{caption}}}\label{{{label}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _table_or_note(
    cells: pd.DataFrame,
    missing: str,
    caption: str,
    label: str,
    header: dict[str, str] | None = None,
) -> str:
    if len(cells):
        return _table_tex(cells, caption, label, header)
    # still a labelled table, holding the note: the text's references to it must resolve
    # (LaTeX would print "??", and Typst refuses a reference to a missing label)
    return _table_env(caption, label, "l", [rf"\emph{{{tex_escape(missing)}}} \\"])


def transfer_tex(transfer: pd.DataFrame) -> str:
    """``transfer.tex`` from the transfer stage's metrics."""
    caption = (
        "Test performance with all labels: each dataset's primary metric (AUC; quadratic "
        r"$\kappa$ for ordinal grading), mean $\pm$ SD over seeds, per initialisation arm and "
        "evaluation protocol."
    )
    missing = "No transfer results (notebook 02 not run)."
    return _table_or_note(transfer_cells(transfer), missing, caption, "tab:transfer")


def referable_tex(transfer: pd.DataFrame) -> str:
    """``referable.tex`` from the transfer stage's metrics."""
    caption = (
        r"Referable diabetic retinopathy, test AUC (mean $\pm$ SD over seeds): the clinical "
        r"definition (grade $\geq 2$, our default) and the DR study's grades 3--4."
    )
    missing = "No referable-DR results (no 5-grade DR dataset was run)."
    cells = referable_cells(transfer)
    return _table_or_note(cells, missing, caption, "tab:referable", header=REFERABLE_METRICS)


def label_efficiency_tex(label_efficiency: pd.DataFrame) -> str:
    """``label_efficiency.tex`` from the label-efficiency stage's metrics."""
    caption = (
        r"Label efficiency: test primary metric (mean $\pm$ SD over seeds) at each label "
        "fraction, and the area under the metric vs log$_{10}$(fraction) curve of the seed "
        "means, normalised to a mean metric (AULC)."
    )
    missing = "No label-efficiency results (notebook 03 not run)."
    cells = label_efficiency_cells(label_efficiency)
    return _table_or_note(cells, missing, caption, "tab:label-efficiency")
