"""medstudy.report: the paper's tables, macros and figures come from results files only."""

from __future__ import annotations

import os
import re
import runpy
import stat
import sys
from pathlib import Path

import pandas as pd
import pytest
from fake_results import add_runs

from medstudy import claims as cl
from medstudy import paths, report
from medstudy.config import ClaimsConfig

PNEU = "pneumoniamnist"
TABLES = ("claims.tex", "transfer.tex", "referable.tex", "label_efficiency.tex", "macros.tex")
FIGURES = ("fig_forest", "fig_label_efficiency")
MACRO = re.compile(r"\\newcommand\{\\([A-Za-z]+)\}\{([^}]*)\}")


@pytest.fixture
def study(results_tmp: Path) -> Path:
    """A small finished study: transfer (2 datasets), label efficiency, claims.csv."""
    arms = {"scratch": 0.3, "natural_sup": 2.5, "curriculum": 2.0, "natural_sup+ssl:simclr": 2.6}
    add_runs(results_tmp, "transfer", PNEU, arms)
    add_runs(results_tmp, "transfer", "retinamnist", {"scratch": 0.3, "natural_sup": 2.5})
    add_runs(
        results_tmp, "label_efficiency", PNEU, {"natural_sup": 1.0, "ssl:simclr": 2.0},
        protocol="linear", fractions=(0.1, 1.0), fraction_strength=0.5,
    )  # fmt: skip
    cl.save_claims(cl.evaluate_claims(results_tmp, ClaimsConfig(n_boot=99)), results_tmp)
    return results_tmp


def build(root: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    out = tmp_path / "paper" / "generated"
    return out, report.build_paper(root, out, compile_pdf=False)


def read_macros(path: Path) -> dict[str, str]:
    return dict(MACRO.findall(path.read_text()))


def test_build_writes_tables_and_png_pdf_figures(study: Path, tmp_path: Path) -> None:
    out, written = build(study, tmp_path)
    names = {p.name for p in written}
    assert set(TABLES) | {"figures.tex"} <= names
    assert {f"{s}.{ext}" for s in FIGURES for ext in ("png", "pdf")} <= names
    for p in written:
        assert p.exists() and p.stat().st_size > 0
        # generated files in out/, and the template copied beside it to compile there
        assert p.parent == out or p == out.parent / "main.tex"
    claims_tex = (out / "claims.tex").read_text()
    assert r"\toprule" in claims_tex and r"\bottomrule" in claims_tex
    assert r"natural\_sup $-$ scratch" in claims_tex and "no robustness results" in claims_tex
    transfer = (out / "transfer.tex").read_text()
    assert r"natural\_sup+ssl:simclr" in transfer and r"$\pm$" in transfer
    assert "AULC" in (out / "label_efficiency.tex").read_text()
    assert r"grade $\geq 2$" in (out / "referable.tex").read_text()
    # no extension: pdflatex takes the PDF, the HTML the PNG (medstudy.report.render)
    figures_tex = (out / "figures.tex").read_text()
    assert r"\includegraphics[width=\linewidth]{generated/fig_forest}" in figures_tex
    assert (
        figures_tex.count(r"\begin{figure}")
        == figures_tex.count(r"\end{figure}")
        == len(report.FOREST_FIGURES) + 1
    )  # the forest plots and the label-efficiency figure


def test_every_macro_number_comes_from_the_claims_table(study: Path, tmp_path: Path) -> None:
    out, _ = build(study, tmp_path)
    macros = read_macros(out / "macros.tex")
    claims = pd.read_csv(study / "claims.csv")
    assert macros == report.claim_macros(cl.load_claims(study))
    # recompute the quoted numbers from claims.csv independently of medstudy.report
    tested = claims[claims["verdict"] != "not run"]
    expected = {
        "NClaims": str(claims["claim"].nunique()),
        "NComparisons": str(len(tested)),
        "NComparisonsSupported": str((claims["verdict"] == "supported").sum()),
        "NComparisonsContradicted": str((claims["verdict"] == "contradicted").sum()),
        "NComparisonsInconclusive": str((claims["verdict"] == "inconclusive").sum()),
        "NComparisonsNotRun": str((claims["verdict"] == "not run").sum()),
        "NDatasetsTested": str(tested["dataset"].nunique()),
        "MaxSeeds": str(int(tested["n_seeds"].max())),
        "Alpha": f"{claims['alpha'].iloc[0]:g}",
        "NBoot": str(claims["n_boot"].iloc[0]),
        "ClaimCOneTested": str((tested["claim"] == "C1").sum()),
        "ClaimCOneSupported": str(
            (tested[tested["claim"] == "C1"]["verdict"] == "supported").sum()
        ),
        "PublishedCThreeRetinamnist": "+14.79",
        "PublishedCThreePcamTwoEightSubset": "+5.40",
        "PublishedCThreePneumoniamnist": "+7.03",
    }
    for name, value in expected.items():
        assert macros[name] == value, name
    not_run = set(claims["claim"]) - set(tested["claim"])
    assert macros["NClaimsNotRun"] == str(len(not_run))
    by_claim = report.claim_verdicts(claims)
    assert sum(int(macros[report.macro_name("N", "claims", v)]) for v in report.CLAIM_VERDICTS) == 9
    assert macros["ClaimCOneVerdict"] == by_claim["C1"] == "supported"
    # a number quoted in the text changes when (and only when) claims.csv changes
    claims.loc[claims["claim"] == "C2", "verdict"] = "contradicted"
    claims.to_csv(study / "claims.csv", index=False)
    out2 = tmp_path / "again"
    report.build_paper(study, out2, compile_pdf=False)
    assert read_macros(out2 / "macros.tex")["NClaimsContradicted"] == "1"


def test_main_tex_uses_only_generated_macros(study: Path, tmp_path: Path) -> None:
    out, _ = build(study, tmp_path)
    macros = read_macros(out / "macros.tex")
    main_tex = (paths.paper_dir() / "main.tex").read_text()
    used = set(re.findall(r"\\([A-Z][A-Za-z]+)", main_tex))
    assert used <= set(macros), used - set(macros)
    abstract = main_tex.split(r"\begin{abstract}")[1].split(r"\end{abstract}")[0]
    assert not re.search(r"\d", abstract), "numbers in the abstract must be macros"
    for name in ("claims", "transfer", "referable", "label_efficiency", "figures", "macros"):
        assert f"generated/{name}.tex" in main_tex
    limitations = main_tex.split(r"\section{Limitations}")[1]
    for phrase in ("not public", "SimCLR, then SparK", "ResNet-20", "CIFAR-10", "pcam28",
                   r"grade $\geq 2$", "3--4"):  # fmt: skip
        assert phrase in limitations, phrase


def test_missing_claims_csv_says_run_notebook_07(results_tmp: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run notebook 07"):
        report.build_paper(results_tmp, tmp_path / "generated", compile_pdf=False)
    assert report.main(["--results", str(results_tmp), "--no-pdf"]) == 1


def test_without_latex_the_build_says_so(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    written = report.build_paper(study, tmp_path / "generated")
    assert not any(p.suffix == ".pdf" and p.stem == "main" for p in written)
    assert "no LaTeX is installed" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="neither latexmk nor pdflatex"):
        report.build_paper(study, tmp_path / "generated", compile_pdf=True)


def visible_text(html: str) -> str:
    """What a browser shows: no style, no MathML TeX annotations, no tags."""
    html = re.sub(r"<(style|annotation)\b.*?</\1>", "", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def table_rows(html: str) -> list[list[str]]:
    html = re.sub(r"<annotation\b.*?</annotation>", "", html, flags=re.S)
    return [
        [
            " ".join(re.sub(r"<[^>]+>", " ", c).split())
            for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", tr, re.S)
        ]
        for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S)
    ]


def test_build_renders_html_and_pdf_without_latex(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    paper = tmp_path / "paper"
    written = report.build_paper(study, paper / "generated")
    assert {paper / n for n in ("paper.html", "paper.typ", "paper.pdf")} <= set(written)
    assert (paper / "paper.pdf").read_bytes().startswith(b"%PDF")
    n_pages = report.pdf_page_count(paper / "paper.pdf")
    assert n_pages >= 1
    out = capsys.readouterr().out
    assert f"{paper / 'paper.html'} (" in out and f"({n_pages} pages)" in out
    # Typst got the vector figures and its own "Table 1" references
    typ = (paper / "paper.typ").read_text()
    assert 'image("generated/fig_forest.pdf"' in typ
    assert "@tab:claims" in typ and "Table~@" not in typ

    html = (paper / "paper.html").read_text()
    sources = re.findall(r"""\b(?:src|href)=["']([^"']*)""", html)
    assert any(s.startswith("data:image/png;base64,") for s in sources)
    assert all(s.startswith(("data:", "#")) for s in sources), "the HTML must be self-contained"
    text = visible_text(html)
    assert not re.search(r"\\[A-Za-z]+", text), "unexpanded LaTeX command in the HTML"
    claims = pd.read_csv(study / "claims.csv")
    assert f"We re-test {claims['claim'].nunique()} such claims" in text
    assert "Table 1 lists every claim row" in text
    # every tested claims row is in the HTML table with its p, adjusted p and verdict
    rows = table_rows(html)
    assert sum(r[:3] == ["Claim", "Dataset", "Comparison"] for r in rows) == 1  # one header
    tested = claims[(claims["verdict"] != "not run") & (claims["p"] >= 0.001)]
    assert len(tested)
    for _, r in tested.iterrows():
        cells = [
            r["claim"], r["dataset"], f"{r['p']:.3f}", f"{r['p_adj']:.3f}",
            str(int(r["n_seeds"])), f"{r['mde']:.3f}" if pd.notna(r["mde"]) else "--",
            r["verdict"],
        ]  # fmt: skip
        assert any([row[0], row[1], *row[5:10]] == cells for row in rows if len(row) == 10), cells


def test_a_missing_renderer_fails_before_any_work(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "typst", None)  # import typst now raises ImportError
    out = tmp_path / "paper" / "generated"
    with pytest.raises(ImportError, match="pip install typst"):
        report.build_paper(study, out)
    assert not out.exists()
    assert report.main(["--results", str(study), "--out", str(out)]) == 1
    report.build_paper(study, out, compile_pdf=False)  # tables and figures need neither


def test_compiles_with_latexmk_when_present(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "latexmk"
    fake.write_text("#!/bin/sh\necho fake > main.pdf\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "main.tex").write_text((paths.paper_dir() / "main.tex").read_text())
    written = report.build_paper(study, paper / "generated")
    assert paper / "main.pdf" in written and (paper / "main.pdf").exists()


def test_cli(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    assert report.main(["--results", str(study), "--out", str(out), "--no-pdf"]) == 0
    assert (out / "claims.tex").exists()


def test_notebook_07_runs_end_to_end(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    (study / "claims.csv").unlink()
    ns = runpy.run_path(str(paths.notebooks_dir() / "07_robustness_stats.py"))
    assert (study / "claims.csv").exists()
    assert set(ns["claims"]["claim"]) == set(cl.CLAIMS)
    # the paper is built beside the results it was made from
    assert (study / "paper" / "generated" / "macros.tex") in ns["paper_files"]
    assert (study / "paper" / "main.tex") in ns["paper_files"]
