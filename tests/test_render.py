"""medstudy.report.render: the paper as HTML and PDF from main.tex, with pandoc and Typst from pip."""

from __future__ import annotations

import json
import re
import sys
import zlib
from pathlib import Path

import pytest
import typst

from medstudy.report import render

HEAD = ("Claim", "Dataset", "Effect")
LONGTABLE = r"""\begin{longtable}{lll}
\caption{A long table.}\label{tab:long}\\
\toprule
Claim & Dataset & Effect \\
\midrule
\endfirsthead
\toprule Claim & Dataset & Effect \\ \midrule
\endhead
C1 & pneumoniamnist & +0.010 \\
C2 & retinamnist & -0.020 \\
\bottomrule
\end{longtable}
"""
# pandoc 3.9's Typst for two labelled tables, with unlabelled blocks (one holding a figure)
# between them that must stay as they are
FIGURE = """#figure(
  align(center)[#table(
    columns: 2,
    align: (left,right,),
    table.header([Claim], [Effect],),
    table.hline(),
    [C{n}], [+0.0{n}0],
  )]
  , caption: [Table {n}.]
  , kind: table
  )
"""
PANDOC_TYPST = (
    "@tab:one and Table~@tab:two.\n\n"
    f"#block[\n{FIGURE.format(n=1)}\n] <tab:one>\n"
    "#block[\nNot a figure.\n]\n"
    f"#block[\n{FIGURE.format(n=0)}\n]\n"
    f"#block[\n{FIGURE.format(n=2)}\n] <tab:two>\n"
)


def rows(html: str) -> list[list[str]]:
    """The cells' text of every table row of an HTML page."""
    return [
        [
            re.sub(r"<[^>]+>", "", c).strip()
            for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", tr, re.S)
        ]
        for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S)
    ]


def test_flatten_inputs_resolves_nested_inputs_relative_to_the_paper(tmp_path: Path) -> None:
    (tmp_path / "generated").mkdir()
    (tmp_path / "main.tex").write_text(
        "top\n\\input{generated/a.tex}\n% \\input{generated/missing.tex}\n50\\% \\input{generated/b}\n"
    )
    (tmp_path / "generated" / "a.tex").write_text("A1\n\\input{generated/b.tex} A2\n")
    (tmp_path / "generated" / "b.tex").write_text("B\n")
    flat = render.flatten_inputs(tmp_path / "main.tex")
    # b.tex twice (nested in a.tex, and without its suffix); the commented input stays as is
    assert flat == "top\nA1\nB A2\n% \\input{generated/missing.tex}\n50\\% B\n"


def test_flatten_inputs_names_a_missing_input(tmp_path: Path) -> None:
    (tmp_path / "generated").mkdir()
    (tmp_path / "main.tex").write_text("\\input{generated/a.tex}\n")
    (tmp_path / "generated" / "a.tex").write_text("\\input{generated/gone.tex}\n")
    with pytest.raises(FileNotFoundError, match=r"generated/gone\.tex.*a\.tex"):
        render.flatten_inputs(tmp_path / "main.tex")


def test_flatten_inputs_refuses_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "main.tex").write_text("\\input{a}\n")
    (tmp_path / "a.tex").write_text("\\input{main}\n")
    with pytest.raises(ValueError, match="cycle"):
        render.flatten_inputs(tmp_path / "main.tex")


def test_longtable_has_one_header_row_in_html(tmp_path: Path) -> None:
    # pandoc reads the repeated head as a data row; after the fix the header is there once
    assert render.drop_repeated_heads(LONGTABLE).count("Claim & Dataset") == 1
    raw = rows(render.run_pandoc(LONGTABLE, "html5", tmp_path))
    assert raw.count(list(HEAD)) == 2, "pandoc no longer repeats the head: drop the workaround?"
    html = render.run_pandoc(render.drop_repeated_heads(LONGTABLE), "html5", tmp_path)
    assert html.count("<thead>") == 1 and html.count("<tr") == 3
    assert rows(html) == [
        list(HEAD),
        ["C1", "pneumoniamnist", "+0.010"],
        ["C2", "retinamnist", "-0.020"],
    ]
    assert html.index("<thead>") < html.index("Claim") < html.index("</thead>")


def test_a_missing_image_is_an_error_not_a_link(tmp_path: Path) -> None:
    tex = "\\begin{figure}\\includegraphics{generated/gone}\\caption{Gone.}\\end{figure}\n"
    with pytest.raises(RuntimeError, match=r"generated/gone\.png"):
        render.run_pandoc(
            tex, "html5", tmp_path, "--embed-resources", "--default-image-extension=png"
        )


def test_labels_move_from_blocks_to_figures_and_typst_references_them(tmp_path: Path) -> None:
    fixed, n = render.unwrap_labelled_blocks(PANDOC_TYPST)
    assert n == 2
    assert fixed.count(")\n<tab:one>") == 1 and fixed.count(")\n<tab:two>") == 1
    assert "#block[\nNot a figure.\n]" in fixed
    assert fixed.count("#block[\n#figure") == 1 and "[C0]" in fixed.split("#block[\n#figure")[1]
    bad = tmp_path / "bad.typ"
    bad.write_text(PANDOC_TYPST)
    with pytest.raises(typst.TypstError, match="cannot reference block"):
        typst.compile(str(bad), format="pdf")
    doc = tmp_path / "doc.typ"
    doc.write_text(render.fix_typst(PANDOC_TYPST))
    assert doc.read_text().startswith("@tab:one and @tab:two.")  # not "Table Table 2"
    pdf = tmp_path / "doc.pdf"
    render.compile_typst(doc, pdf)
    assert pdf.read_bytes().startswith(b"%PDF")
    refs = json.loads(typst.query(str(doc), "ref"))
    assert [r["target"] for r in refs] == ["<tab:one>", "<tab:two>"]
    figures = json.loads(typst.query(str(doc), "figure"))
    assert [f.get("label") for f in figures] == ["<tab:one>", None, "<tab:two>"]


def test_a_label_left_on_a_block_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="tab:note"):
        render.fix_typst("#block[\nA note.\n] <tab:note>\n")


def test_pdf_page_count_of_typst_output(tmp_path: Path) -> None:
    doc = tmp_path / "pages.typ"
    doc.write_text("one\n#pagebreak()\ntwo\n#pagebreak()\nthree\n#pagebreak()\nfour\n")
    render.compile_typst(doc, tmp_path / "pages.pdf")
    assert render.pdf_page_count(tmp_path / "pages.pdf") == 4


def test_pdf_page_count_reads_compressed_object_streams(tmp_path: Path) -> None:
    # pdflatex keeps page objects in compressed object streams, as here (2 pages, 1 tree)
    objects = b"<< /Type /Page /Parent 3 0 R >> << /Type/Page >> << /Type /Pages /Count 2 >>"
    body = zlib.compress(objects)
    pdf = tmp_path / "objstm.pdf"
    pdf.write_bytes(
        b"%PDF-1.5\n1 0 obj\n<< /Type /ObjStm /N 3 /First 12 /Filter /FlateDecode /Length "
        + str(len(body)).encode()
        + b" >>\nstream\n"
        + body
        + b"\nendstream\nendobj\n%%EOF\n"
    )
    assert render.pdf_page_count(pdf) == 2
    (tmp_path / "empty.pdf").write_bytes(b"not a pdf")
    with pytest.raises(ValueError, match="no pages"):
        render.pdf_page_count(tmp_path / "empty.pdf")


@pytest.mark.parametrize(
    ("module", "package"), [("pypandoc", "pypandoc-binary"), ("typst", "typst")]
)
def test_a_missing_package_is_named_with_its_install_command(
    module: str, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(ImportError, match=f"pip install {package}"):
        render.require_tools()


def test_an_empty_generated_table_keeps_its_label_so_references_resolve(tmp_path: Path) -> None:
    """A results tree without a DR dataset has no referable-DR numbers: the generated table is
    a labelled note, so main.tex's reference to it resolves (Typst fails on a missing label)."""
    import pandas as pd

    from medstudy.report.tex import referable_tex

    empty = pd.DataFrame(columns=["stage", "dataset", "arm", "protocol", "metric", "value"])
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / "referable.tex").write_text(referable_tex(empty))
    (tmp_path / "main.tex").write_text(
        "\\documentclass{article}\n\\begin{document}\nSee Table~\\ref{tab:referable}.\n"
        "\\input{generated/referable.tex}\n\\end{document}\n"
    )
    html, _, pdf = render.render_paper(tmp_path)
    assert "No referable-DR results" in html.read_text()
    assert render.pdf_page_count(pdf) == 1
