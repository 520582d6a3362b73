"""Render the built paper to ``paper.html`` and ``paper.pdf`` without a system LaTeX.

Both come from the same ``main.tex`` that LaTeX would compile, so every number is still a macro
of ``generated/macros.tex``:

1. :func:`flatten_inputs` expands its ``\\input`` files (pandoc reads one text);
2. pandoc (the binary shipped by the pip package ``pypandoc-binary``) converts it to a
   self-contained HTML page (images as ``data:`` URIs, MathML) and to Typst source;
3. the Typst source is patched (:func:`fix_typst`) and compiled to PDF by the ``typst`` pip
   package (its own compiler and fonts; PDF figures are embedded as vectors).

Figures are ``\\includegraphics{generated/<stem>}`` without an extension, so pdflatex takes the
PDF, the HTML the PNG and Typst the PDF (``--default-image-extension``).
"""

from __future__ import annotations

import json
import re
import subprocess
import zlib
from pathlib import Path

from medstudy.results import atomic_write, atomic_write_text

HTML_NAME = "paper.html"
TYPST_NAME = "paper.typ"
PDF_NAME = "paper.pdf"

#: pip package providing each Python module this renderer needs.
PACKAGES: dict[str, str] = {"pypandoc": "pypandoc-binary", "typst": "typst"}

# After pandoc's default style, which already rules the table head and body and lets a wide
# table scroll sideways: a wider page for the tables, a small font and compact cells.
HTML_STYLE = """<style>
body { max-width: 60em; }
table { font-size: 0.8em; }
th, td { padding: 0.1em 0.5em; vertical-align: top; }
caption { text-align: left; }
img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; }
</style>"""

# Inserted at the start of the document body, after pandoc's ``conf`` set-up.
TYPST_STYLE = """// medstudy.report.render: layout of the paper
#show figure.where(kind: table): set block(breakable: true)
#set table(inset: (x: 3.5pt, y: 2.5pt))
#show table: set text(size: 7.5pt)
#show table: set par(justify: false)
#show table: it => block(stroke: (top: 0.7pt, bottom: 0.7pt), it)
// an image taller than this (the forest plot of many rows) is scaled down so that it and
// its caption fit on one A4 page with 2 cm margins (text height 25.7 cm)
#show figure.where(kind: image): it => {
  show image: img => layout(size => {
    if measure(img, width: size.width).height > 19cm { box(height: 19cm, img) } else { img }
  })
  it
}
#show heading.where(level: 4): set text(size: 1em)
"""
TYPST_PAGE = {"papersize": "a4", "margin": {"x": "2cm", "y": "2cm"}}

_INPUT = re.compile(r"\\input\{([^}]+)\}")
# a comment starts at a % after an even number of backslashes: \% is a literal %, \\% a line
# break and then a comment
_COMMENT = re.compile(r"(?<!\\)(?:\\\\)*%")
_REPEATED_HEAD = re.compile(r"\\endfirsthead.*?\\endhead", re.S)
# pandoc wraps a labelled table or figure in ``#block[ ... ] <label>``; Typst cannot reference a
# block, so the label moves onto the figure. The figure may not contain another block opener,
# which keeps one match from spanning an unlabelled block and the labelled one after it.
_LABELLED_BLOCK = re.compile(
    r"#block\[\n(#figure\((?:(?!#block\[).)*?\n  \)\n)\n\] (<(?:tab|fig):[^>]+>)", re.S
)
# "Table~\ref{tab:x}" becomes "Table~@tab:x", and Typst's reference already says "Table 1".
_NAMED_REF = re.compile(r"\b(?:Table|Figure)s?~@")
_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
_STREAM = re.compile(rb"stream\r?\n(.*?)\r?\nendstream", re.S)


# --------------------------------------------------------------------------------------------
# Tools (pip packages, no system install)
# --------------------------------------------------------------------------------------------
def _missing(module: str) -> ImportError:
    package = PACKAGES[module]
    return ImportError(
        f"building paper.html and paper.pdf needs the Python package {package!r}, which is not "
        f"installed: run `pip install {package}` (or `pip install -e .`), or build the tables "
        "and figures only with compile_pdf=False (--no-pdf)."
    )


def pandoc_path() -> str:
    """The pandoc binary of ``pypandoc-binary`` (preferred to a system pandoc, whose version
    may lack the Typst writer); ``ImportError`` naming the package if there is none."""
    try:
        import pypandoc
    except ImportError as err:
        raise _missing("pypandoc") from err
    files = Path(pypandoc.__file__).parent / "files"
    for name in ("pandoc", "pandoc.exe"):
        if (files / name).is_file():
            return str(files / name)
    try:
        return pypandoc.get_pandoc_path()
    except OSError as err:
        raise _missing("pypandoc") from err


def require_tools() -> None:
    """Fail before any work if pandoc or typst is missing (``ImportError`` with the fix)."""
    pandoc_path()
    try:
        import typst  # noqa: F401
    except ImportError as err:
        raise _missing("typst") from err


def run_pandoc(tex: str, to: str, resource_dir: Path, *options: str) -> str:
    """``tex`` (LaTeX) converted by pandoc to format ``to``; images are looked up in
    ``resource_dir``. ``RuntimeError`` with pandoc's message if it fails or warns (a missing
    image is only a warning to pandoc, which then links it instead of embedding it)."""
    cmd = [
        pandoc_path(), "-f", "latex", "-t", to, f"--resource-path={resource_dir}",
        "--fail-if-warnings", *options,
    ]  # fmt: skip
    done = subprocess.run(cmd, input=tex, capture_output=True, text=True, encoding="utf-8")
    if done.returncode != 0:
        raise RuntimeError(f"pandoc -t {to} failed:\n{done.stderr.strip()}")
    return done.stdout


# --------------------------------------------------------------------------------------------
# LaTeX input
# --------------------------------------------------------------------------------------------
def flatten_inputs(tex_path: Path, root: Path | None = None) -> str:
    """The text of ``tex_path`` with every ``\\input{name}`` replaced by that file's flattened
    text. Names are relative to ``root`` (default: ``tex_path``'s folder, where LaTeX runs);
    ``.tex`` is added to a name without a suffix, as LaTeX does. Inputs in comments are left
    alone. ``FileNotFoundError`` names a missing input; ``ValueError`` an input cycle."""
    tex_path = Path(tex_path)
    root = Path(root) if root is not None else tex_path.parent
    return _flatten(tex_path, root, ())


def _flatten(path: Path, root: Path, stack: tuple[Path, ...]) -> str:
    if path.resolve() in stack:
        chain = " -> ".join(p.name for p in (*stack, path.resolve()))
        raise ValueError(f"\\input cycle: {chain}")
    if not path.is_file():
        where = f" (\\input in {stack[-1]})" if stack else ""
        raise FileNotFoundError(f"LaTeX input not found: {path}{where}")
    inner = (*stack, path.resolve())

    def expand(match: re.Match[str]) -> str:
        name = Path(match.group(1).strip())
        target = root / (name if name.suffix else name.with_suffix(".tex"))
        return _flatten(target, root, inner).rstrip("\n")

    lines = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        code, percent, comment = _split_comment(line)
        lines.append(_INPUT.sub(expand, code) + percent + comment)
    return "".join(lines)


def _split_comment(line: str) -> tuple[str, str, str]:
    """``(code, "%", comment)`` of a LaTeX line (``("line", "", "")`` without a comment)."""
    match = _COMMENT.search(line)
    if match is None:
        return line, "", ""
    return line[: match.end() - 1], "%", line[match.end() :]


def drop_repeated_heads(tex: str) -> str:
    """Keep one head per ``longtable``: pandoc reads the first head (``\\endfirsthead``) as the
    header and the repeated one (``\\endhead``) as a data row, so drop the first."""
    return _REPEATED_HEAD.sub(lambda _: r"\endhead", tex)


# --------------------------------------------------------------------------------------------
# Typst
# --------------------------------------------------------------------------------------------
def unwrap_labelled_blocks(typ: str) -> tuple[str, int]:
    """Move the label of each ``#block[#figure(...)] <tab:x>`` (pandoc's output for a labelled
    table or figure) onto the figure, which Typst can reference; returns (text, count)."""
    return _LABELLED_BLOCK.subn(r"\1\2", typ)


def fix_typst(typ: str) -> str:
    """pandoc's Typst made compilable and laid out for the paper: labels on figures (an error
    if a ``tab:``/``fig:`` label stays on a block), "Table~@x" → "@x" (Typst writes "Table 1"),
    and :data:`TYPST_STYLE` at the start of the body."""
    typ, _ = unwrap_labelled_blocks(typ)
    stuck = re.findall(r"^\] (<(?:tab|fig):[^>]+>)", typ, flags=re.M)
    if stuck:
        raise RuntimeError(f"labels left on blocks Typst cannot reference: {stuck}")
    return _NAMED_REF.sub("@", typ)


def typst_options() -> list[str]:
    """pandoc options of the Typst output: A4, 2 cm margins, :data:`TYPST_STYLE`."""
    return [
        "--standalone",
        "--default-image-extension=pdf",
        f"--variable=papersize:{TYPST_PAGE['papersize']}",
        f"--variable-json=margin:{json.dumps(TYPST_PAGE['margin'])}",
        f"--variable=include-before:{TYPST_STYLE}",
    ]


def compile_typst(typ_path: Path, pdf_path: Path) -> Path:
    """Compile ``typ_path`` (paths relative to its folder, the Typst project root) to
    ``pdf_path`` atomically, with Typst's bundled fonts only (the same PDF on any machine)."""
    try:
        import typst
    except ImportError as err:
        raise _missing("typst") from err

    def write(tmp: Path) -> None:
        try:
            typst.compile(str(typ_path), output=str(tmp), format="pdf", ignore_system_fonts=True)
        except typst.TypstError as err:
            raise RuntimeError(f"typst could not compile {typ_path}:\n{err}") from err

    return atomic_write(pdf_path, write)


def pdf_page_count(path: Path) -> int:
    """Number of pages of a PDF: its ``/Type /Page`` objects, also inside compressed object
    streams (pdflatex writes those). ``ValueError`` if the file has none."""
    data = Path(path).read_bytes()
    n = len(_PAGE.findall(data))
    if b"/ObjStm" in data:
        for stream in _STREAM.findall(data):
            try:
                n += len(_PAGE.findall(zlib.decompress(stream)))
            except zlib.error:
                continue
    if n == 0:
        raise ValueError(f"no pages found in {path}: not a PDF?")
    return n


# --------------------------------------------------------------------------------------------
# Paper
# --------------------------------------------------------------------------------------------
def render_paper(paper_dir: Path, main: str = "main.tex") -> list[Path]:
    """Write ``paper.html`` (self-contained), ``paper.typ`` and ``paper.pdf`` into
    ``paper_dir`` from ``paper_dir/main`` and its inputs; returns the three paths."""
    paper_dir = Path(paper_dir)
    require_tools()
    tex = drop_repeated_heads(flatten_inputs(paper_dir / main))
    html = run_pandoc(
        tex, "html5", paper_dir, "--standalone", "--embed-resources", "--mathml",
        "--default-image-extension=png", f"--variable=header-includes:{HTML_STYLE}",
    )  # fmt: skip
    typ = fix_typst(run_pandoc(tex, "typst", paper_dir, *typst_options()))
    html_path = atomic_write_text(paper_dir / HTML_NAME, html)
    typ_path = atomic_write_text(paper_dir / TYPST_NAME, typ)
    return [html_path, typ_path, compile_typst(typ_path, paper_dir / PDF_NAME)]
