"""Build the paper's generated tables, macros and figures from results files only (DESIGN §7).

Inputs (nothing else is read):

- ``results/claims.csv``, written by notebook 07 (:func:`medstudy.claims.save_claims`); a
  missing file is an error that says to run notebook 07 first;
- the ``metrics.csv`` of finished runs of the ``transfer`` and ``label_efficiency`` stages
  (:func:`medstudy.results.collect_metrics`), test split, each dataset's primary metric.

Outputs in ``<results>/paper/generated/`` (git-ignored), each listed in ``OUTPUTS``:

- ``claims.tex``: the claims table (booktabs ``longtable``): tested rows with effect (A − B),
  CI, raw and adjusted p and verdict, then the rows that were not run with their reason;
- ``transfer.tex``: test primary metric per dataset × arm × protocol, mean ± SD over seeds;
- ``referable.tex``: referable-DR AUC (grade ≥ 2, and the DR study's grades 3–4), if present;
- ``label_efficiency.tex``: metric per label fraction (mean ± SD over seeds) and the normalised
  area under the label-efficiency curve of the seed means, per arm;
- ``macros.tex``: one ``\\newcommand`` per number quoted in ``paper/main.tex``, all computed
  from ``claims.csv`` by :func:`claim_macros`;
- ``fig_forest.{png,pdf}``, ``fig_label_efficiency.{png,pdf}`` and ``figures.tex`` (the figure
  environments of the figures that exist).

``paper/main.tex`` is then compiled if ``latexmk`` or ``pdflatex`` is on PATH; otherwise the
build says so and stops there (not an error).
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medstudy import paths, stats
from medstudy.claims import CLAIMS, MINUS, VERDICTS, load_claims, plot_forest
from medstudy.data.info import INFO
from medstudy.evaluate.plots import PROTOCOL_ORDER
from medstudy.metrics import PRIMARY_METRIC
from medstudy.results import atomic_write, atomic_write_text, collect_metrics

__all__ = [
    "OUTPUTS",
    "build_paper",
    "claim_macros",
    "claim_verdicts",
    "label_efficiency_table",
    "main",
    "plot_label_efficiency",
    "transfer_table",
]

#: Claim-level verdicts (over a claim's rows): see :func:`claim_verdicts`.
CLAIM_VERDICTS: tuple[str, ...] = ("supported", "contradicted", "mixed", "inconclusive", "not run")
#: Display order of arms (fnmatch patterns) and protocols; anything else follows alphabetically.
ARM_ORDER: tuple[str, ...] = (
    "scratch",
    "natural_sup",
    "natural_ssl",
    "ssl:*",
    "natural_sup+ssl:*",
    "curriculum",
    "fusion",
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


def _pm(values: Sequence[float]) -> str:
    """``mean ± SD`` over seeds (SD with ddof = 1; a single seed shows the mean only)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "--"
    if v.size == 1:
        return f"{v[0]:.3f}"
    return f"{v.mean():.3f} $\\pm$ {v.std(ddof=1):.3f}"


def _order(values: Iterable[str], first: Sequence[str]) -> list[str]:
    """Distinct ``values`` ordered by the first pattern of ``first`` they match, then by name."""

    def rank(v: str) -> int:
        return next((i for i, pat in enumerate(first) if fnmatch.fnmatchcase(v, pat)), len(first))

    return sorted(set(values), key=lambda v: (rank(v), v))


def macro_name(*parts: str) -> str:
    """A LaTeX command name from parts: letters only, CamelCase, digits spelled out."""
    out = []
    for part in parts:
        word = "".join(_DIGITS[int(ch)] if ch.isdigit() else ch for ch in str(part))
        out.extend(
            w[:1].upper() + w[1:] for w in "".join(c if c.isalpha() else " " for c in word).split()
        )
    return "".join(out)


def _empty(text: str) -> str:
    return f"\\emph{{{tex_escape(text)}}}\n"


# --------------------------------------------------------------------------------------------
# Claims: verdicts, macros, table
# --------------------------------------------------------------------------------------------
def claim_verdicts(claims: pd.DataFrame) -> pd.Series:
    """One verdict per claim (indexed C1 … C9) from its rows: ``supported`` if at least one row
    is supported and none contradicted, ``contradicted`` in the mirror case, ``mixed`` if both
    occur, ``inconclusive`` if rows were tested but none reached significance, ``not run`` if no
    row was tested."""
    out = {}
    for cid in CLAIMS:
        verdicts = set(claims.loc[claims["claim"] == cid, "verdict"])
        sup, con = "supported" in verdicts, "contradicted" in verdicts
        if sup and con:
            out[cid] = "mixed"
        elif sup or con:
            out[cid] = "supported" if sup else "contradicted"
        elif "inconclusive" in verdicts:
            out[cid] = "inconclusive"
        else:
            out[cid] = "not run"
    return pd.Series(out, name="verdict")


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
        r"\begin{longtable}{lllllrrl}",
        r"\caption{Claims under test. Effect = A $-$ B on the primary metric (or the named "
        rf"statistic), {level}\,\% CI; $p$ two-sided, $p_\mathrm{{adj}}$ corrected within each "
        r"claim.}\label{tab:claims}\\",
        r"\toprule",
        r"Claim & Dataset & Comparison & Metric & Effect [CI] & $p$ & $p_\mathrm{adj}$ & "
        r"Verdict \\",
        r"\midrule",
        r"\endfirsthead",
        r"\toprule Claim & Dataset & Comparison & Metric & Effect [CI] & $p$ & "
        r"$p_\mathrm{adj}$ & Verdict \\ \midrule",
        r"\endhead",
    ]
    for _, r in tested.iterrows():
        effect = f"{_num(r['effect'], sign=True)} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
        verdict = r["verdict"] if r["verdict"] != "supported" else r"\textbf{supported}"
        cells = [
            r["claim"], tex_escape(r["dataset"]), _comparison_cell(r), tex_escape(r["metric"]),
            effect, _p(r["p"]), _p(r["p_adj"]), verdict,
        ]  # fmt: skip
        lines.append(" & ".join(cells) + r" \\")
    if not len(tested):
        lines.append(r"\multicolumn{8}{l}{\emph{No claim could be tested.}} \\")
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
# Transfer and label-efficiency tables (from metrics.csv)
# --------------------------------------------------------------------------------------------
def _sort_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in display order: index levels alphabetically, except arms and protocols, which
    follow ``ARM_ORDER`` / ``PROTOCOL_ORDER``."""
    firsts = {"arm": ARM_ORDER, "protocol": PROTOCOL_ORDER}
    flat = table.reset_index()
    levels = list(table.index.names)
    ranks = {
        lvl: flat[lvl].map({v: i for i, v in enumerate(_order(flat[lvl], firsts.get(lvl, ())))})
        for lvl in levels
    }
    order = pd.DataFrame(ranks).sort_values(levels, kind="stable").index
    return table.iloc[order]


def _primary_test(metrics: pd.DataFrame) -> pd.DataFrame:
    """Test-split rows of each dataset's primary metric (datasets outside INFO: AUC)."""
    if not len(metrics):
        return metrics
    task_metric = {
        ds: PRIMARY_METRIC[INFO[ds].task] if ds in INFO else "auc"
        for ds in metrics["dataset"].unique()
    }
    m = metrics[(metrics["split"] == "test") & metrics["distortion"].isna()]
    return m[m["metric"] == m["dataset"].map(task_metric)]


def transfer_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Test primary metric, ``mean ± SD`` over seeds, rows (dataset, metric, arm) × protocols."""
    m = _primary_test(metrics)
    if not len(m):
        return pd.DataFrame()
    cells = (
        m.groupby(["dataset", "metric", "arm", "protocol"])["value"].agg(_pm).unstack("protocol")
    )
    cells = cells.reindex(columns=_order(cells.columns, PROTOCOL_ORDER))
    return _sort_rows(cells).fillna("--")


def label_efficiency_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Test primary metric per label fraction (``mean ± SD`` over seeds) and the normalised area
    under the curve of the seed means vs log10(fraction) (``AULC``; needs >= 2 fractions)."""
    m = _primary_test(metrics)
    if not len(m):
        return pd.DataFrame()
    keys = ["dataset", "metric", "protocol", "arm"]
    cells = m.groupby([*keys, "fraction"])["value"].agg(_pm).unstack("fraction")
    cells.columns = [f"{f:g}" for f in cells.columns]
    means = m.groupby([*keys, "fraction"])["value"].mean().reset_index()

    def aulc(g: pd.DataFrame) -> str:
        if g["fraction"].nunique() < 2:
            return "--"
        return f"{stats.area_under_label_curve(g['fraction'], g['value']):.3f}"

    cells["AULC"] = means.groupby(keys)[["fraction", "value"]].apply(aulc)
    return _sort_rows(cells).fillna("--")


def referable_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Referable-DR AUC on test (grade >= 2 and grades 3-4), ``mean ± SD`` over seeds."""
    if not len(metrics):
        return pd.DataFrame()
    m = metrics[(metrics["split"] == "test") & metrics["metric"].isin(list(REFERABLE_METRICS))]
    m = m[m["distortion"].isna()]
    if not len(m):
        return pd.DataFrame()
    cells = m.groupby(["dataset", "protocol", "arm", "metric"])["value"].agg(_pm).unstack("metric")
    cells = cells.reindex(columns=[c for c in REFERABLE_METRICS if c in cells.columns])
    return _sort_rows(cells).fillna("--")


def _table_tex(
    table: pd.DataFrame, caption: str, label: str, header: dict[str, str] | None = None
) -> str:
    """A booktabs tabular of a table with a (multi-)index; index levels become left columns."""
    header = header or {}
    idx = list(table.index.names)
    cols = list(table.columns)
    spec = "l" * len(idx) + "r" * len(cols)
    head = [tex_escape(n) for n in idx] + [header.get(str(c), tex_escape(c)) for c in cols]
    lines = [
        "% Generated by medstudy.report from results/*/metrics.csv. Do not edit.",
        r"\begin{table}[t]",
        r"\centering\small",
        rf"\caption{{{caption}}}\label{{{label}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
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
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def plot_label_efficiency(metrics: pd.DataFrame) -> object | None:
    """Label-efficiency curves: test primary metric (mean ± SD over seeds) vs label fraction
    (log scale), one panel per (protocol, dataset), one line per arm. ``None`` without data."""
    import matplotlib.pyplot as plt

    m = _primary_test(metrics)
    if not len(m):
        return None
    datasets = sorted(m["dataset"].unique())
    protocols = _order(m["protocol"].unique(), PROTOCOL_ORDER)
    arms = _order(m["arm"].unique(), ARM_ORDER)
    # one colour per arm across every panel
    colours = {arm: plt.get_cmap("tab10")(i % 10) for i, arm in enumerate(arms)}
    fig, axes = plt.subplots(
        len(protocols), len(datasets), figsize=(3.2 * len(datasets), 2.6 * len(protocols)),
        squeeze=False,
    )  # fmt: skip
    for i, protocol in enumerate(protocols):
        for j, ds in enumerate(datasets):
            ax = axes[i, j]
            sel = m[(m["protocol"] == protocol) & (m["dataset"] == ds)]
            for arm in _order(sel["arm"].unique(), ARM_ORDER):
                g = sel[sel["arm"] == arm].groupby("fraction")["value"]
                mean, sd = g.mean(), g.std(ddof=1).fillna(0.0)
                ax.errorbar(
                    mean.index, mean.values, yerr=sd.values, color=colours[arm], marker="o",
                    ms=3, capsize=2, label=arm,
                )  # fmt: skip
            ax.set_xscale("log")
            ax.set_title(f"{ds} · {protocol}", fontsize=9)
            ax.tick_params(labelsize=8)
            if j == 0:
                ax.set_ylabel(f"test {sel['metric'].iloc[0] if len(sel) else ''}", fontsize=8)
            if i == len(protocols) - 1:
                ax.set_xlabel("label fraction", fontsize=8)
    handles, labels = [], []
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(
        handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False
    )
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 4), 1, 1))
    return fig


def _save_figure(fig: object, out: Path, stem: str) -> list[Path]:
    import matplotlib.pyplot as plt

    written = []
    for ext in ("png", "pdf"):
        path = out / f"{stem}.{ext}"
        atomic_write(
            path, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=200, bbox_inches="tight")
        )
        written.append(path)
    plt.close(fig)
    return written


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Inputs:
    claims: pd.DataFrame
    transfer: pd.DataFrame
    label_efficiency: pd.DataFrame


@dataclass(frozen=True)
class Output:
    """One generated artefact: ``make(inputs) -> text`` for a .tex file, or a figure."""

    name: str
    make: Callable[[_Inputs], str]
    description: str


def _transfer_tex(x: _Inputs) -> str:
    table = transfer_table(x.transfer)
    if not len(table):
        return _empty("No transfer results (notebook 02 not run).")
    caption = (
        "Test performance with all labels: each dataset's primary metric (AUC; quadratic "
        r"$\kappa$ for ordinal grading), mean $\pm$ SD over seeds, per initialisation arm and "
        "evaluation protocol."
    )
    return _table_tex(table, caption, "tab:transfer")


def _referable_tex(x: _Inputs) -> str:
    table = referable_table(pd.concat([x.transfer, x.label_efficiency], ignore_index=True))
    if not len(table):
        return _empty("No referable-DR results (no 5-grade DR dataset was run).")
    caption = (
        r"Referable diabetic retinopathy, test AUC (mean $\pm$ SD over seeds): the clinical "
        r"definition (grade $\geq 2$, our default) and the DR study's grades 3--4."
    )
    return _table_tex(table, caption, "tab:referable", header=REFERABLE_METRICS)


def _label_efficiency_tex(x: _Inputs) -> str:
    table = label_efficiency_table(x.label_efficiency)
    if not len(table):
        return _empty("No label-efficiency results (notebook 03 not run).")
    caption = (
        r"Label efficiency: test primary metric (mean $\pm$ SD over seeds) at each label "
        "fraction, and the area under the metric vs log$_{10}$(fraction) curve of the seed "
        "means, normalised to a mean metric (AULC)."
    )
    return _table_tex(table, caption, "tab:label-efficiency")


OUTPUTS: dict[str, Output] = {
    o.name: o
    for o in (
        Output("claims.tex", lambda x: claims_tex(x.claims), "claims with verdicts"),
        Output("transfer.tex", _transfer_tex, "transfer: dataset × arm × protocol"),
        Output("referable.tex", _referable_tex, "referable-DR AUC, grade >= 2 and 3-4"),
        Output("label_efficiency.tex", _label_efficiency_tex, "metric per fraction + AULC"),
        Output("macros.tex", lambda x: macros_tex(claim_macros(x.claims)), "quoted numbers"),
    )
}
FIGURE_CAPTIONS: dict[str, str] = {
    "fig_forest": (
        "Effects (A $-$ B) with their CIs for every tested claim row, coloured by verdict "
        "(green supported, red contradicted, grey inconclusive)."
    ),
    "fig_label_efficiency": (
        r"Label-efficiency curves: test primary metric (mean $\pm$ SD over seeds) against the "
        "label fraction."
    ),
}


def _figures_tex(out: Path, stems: Sequence[str]) -> str:
    lines = ["% Generated by medstudy.report. Do not edit."]
    for stem in stems:
        lines += [
            r"\begin{figure}[t]",
            r"\centering",
            rf"\includegraphics[width=\linewidth]{{{out.name}/{stem}.pdf}}",
            rf"\caption{{{FIGURE_CAPTIONS[stem]}}}\label{{fig:{stem.removeprefix('fig_')}}}",
            r"\end{figure}",
        ]
    return "\n".join(lines) + "\n"


def latex_command() -> list[list[str]] | None:
    """The commands that compile ``main.tex`` (latexmk, else pdflatex twice), or None."""
    if shutil.which("latexmk"):
        return [["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "main.tex"]]
    if shutil.which("pdflatex"):
        once = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"]
        return [once, once]  # the second pass resolves references and longtable widths
    return None


def build_paper(
    results_dir: Path | None = None,
    out_dir: Path | None = None,
    compile_pdf: bool | None = None,
) -> list[Path]:
    """Write ``OUTPUTS`` and the figures into ``out_dir`` (default ``<results>/paper/generated``) from the
    results under ``results_dir`` (default ``results/``); returns the paths written.

    ``compile_pdf``: ``None`` compiles ``main.tex`` (in ``out_dir``'s parent) if ``latexmk`` or
    ``pdflatex`` is on PATH and otherwise prints that no LaTeX is installed; ``True`` requires
    LaTeX (``RuntimeError`` without it); ``False`` never compiles. Raises
    ``FileNotFoundError`` if ``results/claims.csv`` is missing (run notebook 07 first).
    """
    root = Path(results_dir) if results_dir is not None else paths.results_dir()
    out = Path(out_dir) if out_dir is not None else root / "paper" / "generated"
    if compile_pdf and latex_command() is None:  # fail before any work
        raise RuntimeError("compile_pdf=True but neither latexmk nor pdflatex is on PATH")
    inputs = _Inputs(
        claims=load_claims(root),
        transfer=collect_metrics("transfer", root),
        label_efficiency=collect_metrics("label_efficiency", root),
    )
    out.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(out / o.name, o.make(inputs)) for o in OUTPUTS.values()]
    stems = []
    figures = {
        "fig_forest": lambda: plot_forest(inputs.claims),
        "fig_label_efficiency": lambda: plot_label_efficiency(inputs.label_efficiency),
    }
    for stem, make in figures.items():
        fig = make()
        if fig is not None:
            written += _save_figure(fig, out, stem)
            stems.append(stem)
    written.append(atomic_write_text(out / "figures.tex", _figures_tex(out, stems)))
    n_tex, n_fig = sum(p.suffix == ".tex" for p in written), len(stems)
    prefix = (
        f"[medstudy.report] generated {n_tex} .tex files and {n_fig} figures (PNG + PDF) in {out}"
    )
    template = paths.paper_dir() / "main.tex"
    if template.exists() and out.parent.resolve() != paths.paper_dir().resolve():
        written.append(atomic_write_text(out.parent / "main.tex", template.read_text()))
    written += _compile(out.parent, compile_pdf, prefix)
    return written


def _compile(paper: Path, compile_pdf: bool | None, prefix: str) -> list[Path]:
    commands = latex_command()
    if compile_pdf is False:
        print(f"{prefix}; PDF compilation skipped (compile_pdf=False).")
        return []
    if commands is None:
        print(
            f"{prefix}; no LaTeX is installed (latexmk/pdflatex not on PATH), so the PDF "
            "was not compiled."
        )
        return []
    if not (paper / "main.tex").exists():
        if compile_pdf:
            raise FileNotFoundError(f"no main.tex in {paper} to compile")
        print(f"{prefix}; no main.tex in {paper}, so the PDF was not compiled.")
        return []
    for cmd in commands:
        done = subprocess.run(cmd, cwd=paper, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stdout.splitlines()[-30:])
            raise RuntimeError(f"{' '.join(cmd)} failed in {paper} (see main.log):\n{tail}")
    print(f"{prefix}; compiled {paper / 'main.pdf'}.")
    return [paper / "main.pdf"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medstudy.report",
        description="Build <results>/paper/generated (tables, macros, figures) from the results and compile "
        "paper/main.tex if LaTeX is installed. Needs results/claims.csv (notebook 07).",
    )
    parser.add_argument(
        "--results", type=Path, default=None, help="results dir (default: results/)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output dir (default: <results>/paper/generated)"
    )
    parser.add_argument("--no-pdf", action="store_true", help="do not compile the PDF")
    args = parser.parse_args(argv)
    try:
        build_paper(args.results, args.out, compile_pdf=False if args.no_pdf else None)
    except (FileNotFoundError, RuntimeError) as err:
        print(f"[medstudy.report] {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
