"""medstudy.report: the paper's tables, macros and figures come from results files only."""

from __future__ import annotations

import os
import re
import runpy
import stat
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
    assert "generated/fig_forest.pdf" in (out / "figures.tex").read_text()


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
