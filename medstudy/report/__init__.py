"""Build the paper's generated tables, macros and figures from results files only (DESIGN §7).

Inputs (nothing else is read):

- ``results/claims.csv``, written by notebook 07 (:func:`medstudy.claims.save_claims`); a
  missing file is an error that says to run notebook 07 first;
- the ``metrics.csv`` of finished runs of the ``transfer`` and ``label_efficiency`` stages
  (:func:`medstudy.results.collect_metrics`), test split, each dataset's primary metric;
- the label-efficiency runs' details (:func:`medstudy.results.read_details`): the number of
  labelled training images shown on the label-efficiency figure's x axis.

The numbers of every table and the figures come from :mod:`medstudy.figures`, the functions the
notebooks show; this module formats them for LaTeX and builds the paper.

Outputs in ``<results>/paper/generated/`` (git-ignored), each listed in ``OUTPUTS``:

- ``claims.tex``: the claims table (booktabs ``longtable``): tested rows with effect (A − B),
  CI, raw and adjusted p and verdict, then the rows that were not run with their reason;
- ``transfer.tex``: test primary metric per dataset × arm × protocol at the dataset's largest
  label fraction, mean ± SD over seeds;
- ``referable.tex``: referable-DR AUC (grade ≥ 2, and the DR study's grades 3–4) of the
  transfer stage, if present;
- ``label_efficiency.tex``: metric per label fraction (mean ± SD over seeds) and the normalised
  area under the label-efficiency curve of the seed means, per arm;
- ``macros.tex``: one ``\\newcommand`` per number quoted in ``paper/main.tex``, all computed
  from ``claims.csv`` by :func:`claim_macros`;
- ``fig_forest.{png,pdf}``, ``fig_label_efficiency.{png,pdf}`` and ``figures.tex`` (the figure
  environments of the figures that exist).

``paper/main.tex`` is copied beside ``generated/`` and rendered, with no system LaTeX, to
``paper.html`` (self-contained) and ``paper.pdf`` by :mod:`medstudy.report.render` (pandoc and
Typst from pip); a missing package is an error that names it. ``main.tex`` is also compiled to
``main.pdf`` if ``latexmk`` or ``pdflatex`` is on PATH; otherwise the build says so (not an
error).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from medstudy import paths
from medstudy.claims import CLAIM_VERDICTS, claim_verdicts, load_claims
from medstudy.figures import plot_forest, plot_label_efficiency
from medstudy.report.render import pdf_page_count, render_paper, require_tools
from medstudy.report.tex import (
    claim_macros,
    claims_tex,
    label_efficiency_cells,
    label_efficiency_tex,
    macro_name,
    macros_tex,
    referable_cells,
    referable_tex,
    tex_escape,
    transfer_cells,
    transfer_tex,
)
from medstudy.results import atomic_write, atomic_write_text, collect_metrics

__all__ = [
    "CLAIM_VERDICTS",
    "OUTPUTS",
    "build_paper",
    "claim_macros",
    "claim_verdicts",
    "label_efficiency_cells",
    "macro_name",
    "main",
    "pdf_page_count",
    "referable_cells",
    "tex_escape",
    "transfer_cells",
]


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _save_figure(fig: Figure, out: Path, stem: str) -> list[Path]:
    written = []
    for ext in ("png", "pdf"):
        path = out / f"{stem}.{ext}"
        atomic_write(
            path, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=200, bbox_inches="tight")
        )
        written.append(path)
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


OUTPUTS: dict[str, Output] = {
    o.name: o
    for o in (
        Output("claims.tex", lambda x: claims_tex(x.claims), "claims with verdicts"),
        Output("transfer.tex", lambda x: transfer_tex(x.transfer), "dataset × arm × protocol"),
        Output("referable.tex", lambda x: referable_tex(x.transfer), "referable-DR AUC"),
        Output(
            "label_efficiency.tex",
            lambda x: label_efficiency_tex(x.label_efficiency),
            "metric per fraction + AULC",
        ),
        Output("macros.tex", lambda x: macros_tex(claim_macros(x.claims)), "quoted numbers"),
    )
}
#: The forest plots of the paper, one per group of claims, so that each fits a page with legible
#: labels (a single plot of every claim's primary rows is ~60 rows tall in quick).
FOREST_FIGURES: dict[str, tuple[str, ...]] = {
    "fig_forest": ("C1", "C2", "C3", "C4", "C5"),
    "fig_forest_other": ("C6", "C8", "C9"),
    "fig_forest_attribution": ("C7",),
}


def _forest_caption(ids: tuple[str, ...]) -> str:
    named = f"claims {', '.join(ids[:-1])} and {ids[-1]}" if len(ids) > 1 else f"claim {ids[0]}"
    return (
        f"Effects (A $-$ B) with their CIs for every tested primary row of {named}, coloured "
        "by verdict (green supported, red contradicted, grey inconclusive)."
    )


FIGURE_CAPTIONS: dict[str, str] = {
    **{stem: _forest_caption(ids) for stem, ids in FOREST_FIGURES.items()},
    "fig_label_efficiency": (
        r"Label-efficiency curves: test primary metric (mean $\pm$ SD over seeds; each panel's "
        "axis names it) against the label fraction and, where recorded, the number of labelled "
        "training images."
    ),
}


def _figures_tex(out: Path, stems: Sequence[str]) -> str:
    # No extension: pdflatex takes the PDF, pandoc the PNG for HTML and the PDF for Typst
    # (medstudy.report.render sets --default-image-extension).
    lines = ["% Generated by medstudy.report. Do not edit."]
    for stem in stems:
        lines += [
            r"\begin{figure}[t]",
            r"\centering",
            rf"\includegraphics[width=\linewidth]{{{out.name}/{stem}}}",
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
    results under ``results_dir`` (default ``results/``), then the paper beside them; returns
    the paths written.

    ``compile_pdf``: ``None`` (default) renders ``main.tex`` (in ``out_dir``'s parent) to
    ``paper.html``, ``paper.typ`` and ``paper.pdf`` (:func:`medstudy.report.render.render_paper`,
    no system LaTeX) and also compiles it to ``main.pdf`` if ``latexmk`` or ``pdflatex`` is on
    PATH, otherwise printing that no LaTeX is installed; ``True`` requires LaTeX as well
    (``RuntimeError`` without it); ``False`` writes the tables and figures only. Raises
    ``FileNotFoundError`` if ``results/claims.csv`` is missing (run notebook 07 first) and
    ``ImportError`` naming the pip package if pandoc or typst is missing.
    """
    root = Path(results_dir) if results_dir is not None else paths.results_dir()
    out = Path(out_dir) if out_dir is not None else root / "paper" / "generated"
    # fail before any work
    if compile_pdf is not False:
        require_tools()
    if compile_pdf and latex_command() is None:
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
        **{
            stem: lambda ids=ids: plot_forest(inputs.claims, claim_ids=ids)
            for stem, ids in FOREST_FIGURES.items()
        },
        "fig_label_efficiency": lambda: plot_label_efficiency(inputs.label_efficiency, root=root),
    }
    for stem, make in figures.items():
        fig = make()
        if fig is not None:
            written += _save_figure(fig, out, stem)
            stems.append(stem)
    written.append(atomic_write_text(out / "figures.tex", _figures_tex(out, stems)))
    n_tex, n_fig = sum(p.suffix == ".tex" for p in written), len(stems)
    notes = [f"generated {n_tex} .tex files and {n_fig} figures (PNG + PDF) in {out}"]
    template = paths.paper_dir() / "main.tex"
    if template.exists() and out.parent.resolve() != paths.paper_dir().resolve():
        written.append(atomic_write_text(out.parent / "main.tex", template.read_text()))
    if compile_pdf is False:
        notes.append("paper not rendered (compile_pdf=False)")
    else:
        html, _, pdf = rendered = render_paper(out.parent)
        written += rendered
        notes.append(
            f"built {html} ({html.stat().st_size / 1e6:.1f} MB) and {pdf} "
            f"({pdf_page_count(pdf)} pages)"
        )
        latex, note = _compile_latex(out.parent)
        written += latex
        notes.append(note)
    print("[medstudy.report] " + "; ".join(notes) + ".")
    return written


NO_LATEX = "no LaTeX is installed (latexmk/pdflatex not on PATH), so main.pdf was not compiled"


def _compile_latex(paper: Path) -> tuple[list[Path], str]:
    """``paper/main.pdf`` by LaTeX if installed: (paths written, what happened). ``main.tex``
    exists: :func:`render_paper` read it first."""
    commands = latex_command()
    if commands is None:
        return [], NO_LATEX
    for cmd in commands:
        done = subprocess.run(cmd, cwd=paper, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stdout.splitlines()[-30:])
            raise RuntimeError(f"{' '.join(cmd)} failed in {paper} (see main.log):\n{tail}")
    return [paper / "main.pdf"], f"compiled {paper / 'main.pdf'} with LaTeX"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medstudy.report",
        description="Build <results>/paper/generated (tables, macros, figures) from the results, "
        "then <results>/paper/paper.html and paper.pdf (pandoc + typst from pip), and main.pdf "
        "if LaTeX is installed. Needs results/claims.csv (notebook 07).",
    )
    parser.add_argument(
        "--results", type=Path, default=None, help="results dir (default: results/)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output dir (default: <results>/paper/generated)"
    )
    parser.add_argument(
        "--no-pdf", action="store_true", help="tables and figures only: no HTML or PDF"
    )
    args = parser.parse_args(argv)
    try:
        build_paper(args.results, args.out, compile_pdf=False if args.no_pdf else None)
    except (FileNotFoundError, ImportError, RuntimeError) as err:
        print(f"[medstudy.report] {err}", file=sys.stderr)
        return 1
    return 0
