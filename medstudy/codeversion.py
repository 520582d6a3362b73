"""Which code made a result: a hash of the package sources a stage runs.

A finished run is reused only when it was made by the same code as the code now installed
(:func:`medstudy.results.is_current`); the run's manifest records the version
(``manifest["code"]``). A stage's *code version* hashes the source files of every
``medstudy`` module its entry module imports, transitively, read statically from the import
statements (those inside functions included), plus the ``__init__`` of every package on the
way. So an edit to the report or a figure leaves the fine-tuning runs valid, and an edit to the
training loop makes every stage that imports it recompute. The hash is of the sources, not of
the git SHA: an uncommitted edit counts, and a commit that changes no source does not.

The job cache of :mod:`medstudy.grid` uses :func:`package_version` (every module), so a code
change re-executes every notebook, whose units then recompute only where their stage's code
changed.

Pure standard library: importing this module imports no stage.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "medstudy"
ROOT = Path(__file__).resolve().parent

#: Results stage → the module whose imports define its code.
STAGE_ENTRY: dict[str, str] = {
    "pretrain": "medstudy.pretrain",
    "transfer": "medstudy.transfer",
    "label_efficiency": "medstudy.transfer",
    "representations": "medstudy.representations",
    "interpretability": "medstudy.interpret",
    "robustness": "medstudy.robustness",
}


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source of module ``name`` (``medstudy.a.b`` → ``a/b.py`` or ``a/b/__init__.py``)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, root: Path) -> set[str]:
    """``medstudy`` modules named by the import statements of ``path`` (any depth)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            out.add(base)
            # ``from medstudy.claims import rule`` may name a submodule
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] == PACKAGE}


def module_closure(entry: str, root: Path = ROOT) -> list[Path]:
    """Sorted source files of ``entry`` and every ``medstudy`` module it imports, transitively,
    with the ``__init__.py`` of each package on the way."""
    if module_file(entry, root) is None:
        raise ValueError(f"no source for module {entry!r} under {root}")
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]), root)
            if path is None or path in seen:
                continue
            seen.add(path)
            todo.extend(_imported(path, root))
    return sorted(seen)


def _digest(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


@cache
def stage_version(stage: str, root: Path = ROOT) -> str:
    """The code version of a results stage (module docstring); a stage without an entry in
    :data:`STAGE_ENTRY` (e.g. a test's) gets :func:`package_version`. Cached per process."""
    entry = STAGE_ENTRY.get(stage)
    if entry is None:
        return package_version(root)
    return _digest(module_closure(entry, root), root)


@cache
def package_version(root: Path = ROOT) -> str:
    """Hash of every ``.py`` file of the package. Cached per process."""
    return _digest(sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts), root)
