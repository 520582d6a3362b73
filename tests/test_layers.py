"""The package's structure (DESIGN §2): layers, no import cycle, one owner of the run folders.

The import graph is read from the source (``ast``), including imports inside functions, so a
lazy import cannot hide a dependency. A module may import modules of its own or a lower layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "medstudy"

#: The layers, lowest first. A module belongs to the layer of the longest prefix listed here.
#: ``config`` and ``arms`` sit above the parts because they validate values against the parts'
#: registries (INFO's loaders, ``ssl.METHODS``, ``models.BACKBONES``); nothing below them
#: needs a config object, so the parts stay reusable without the notebooks' dataclasses.
LAYERS: dict[str, int] = {
    # 1 ground: pure functions, paths, devices/seeds, the run-folder layout, the INFO table
    "medstudy": 1,
    "medstudy.paths": 1,
    "medstudy.runtime": 1,
    "medstudy.metrics": 1,
    "medstudy.stats": 1,
    "medstudy.results": 1,
    "medstudy.codeversion": 1,
    "medstudy.locks": 1,
    "medstudy.data.info": 1,
    # 2 parts: data, models, augmentation, SSL methods, evaluation protocols, distortions,
    #   attributions and representation statistics
    "medstudy.data": 2,
    "medstudy.models": 2,
    "medstudy.weights": 2,
    "medstudy.augment": 2,
    "medstudy.ssl": 2,
    "medstudy.evaluate": 2,
    "medstudy.distortions": 2,
    "medstudy.distortion_ops": 2,
    "medstudy.corruption": 2,
    "medstudy.repstats": 2,
    "medstudy.attribution": 2,
    "medstudy.masks": 2,
    # 3 the arm grammar and the stage configs
    "medstudy.arms": 3,
    "medstudy.config": 3,
    # 4 stages: one per notebook, reading earlier stages only through medstudy.results
    "medstudy.pretrain": 4,
    "medstudy.transfer": 4,
    "medstudy.representations": 4,
    "medstudy.interpret": 4,
    "medstudy.robustness": 4,
    # 5 study: claims, shared figures, the paper, the grid of papermill jobs, the audit
    "medstudy.claims": 5,
    "medstudy.figures": 5,
    "medstudy.report": 5,
    "medstudy.grid": 5,
    "medstudy.jobs": 5,
    "medstudy.slurm": 5,
    "medstudy.profiles": 5,
    "medstudy.audit": 5,
}
#: File names of a run folder; only medstudy/results.py may spell them out in code.
RUN_FILES: tuple[str, ...] = (
    "DONE",
    "metrics.csv",
    "config.json",
    "predictions.parquet",
    "details.json",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(f"{module} is in no layer of tests/test_layers.py::LAYERS: add it")


def imports_of(source: str, me: str, is_package: bool, modules: set[str]) -> set[str]:
    """medstudy modules imported anywhere in ``source`` (module ``me``), at any depth
    (``from medstudy import x`` → the module ``medstudy.x`` when it is one, else the package)."""
    tree = ast.parse(source)
    package = me if is_package else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "medstudy"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "medstudy":
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & modules
            found |= subs or {target}
    return {m for m in found if m != me}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = all_modules()
    names = set(modules)
    return {
        m: imports_of(p.read_text(), m, p.name == "__init__.py", names) for m, p in modules.items()
    }


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    for module in graph:
        layer_of(module)


def test_modules_import_only_their_own_or_lower_layers(graph: dict[str, set[str]]) -> None:
    bad = [
        f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_import_graph_has_no_cycle(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_graph_reader_sees_lazy_and_relative_imports() -> None:
    # The layering test is only as good as its reader: a lazy or relative import must count.
    source = (
        "import numpy\n"
        "from . import stats\n"
        "def f():\n"
        "    from medstudy.claims import CLAIMS\n"
        "    import medstudy.report\n"
        "    from medstudy import paths, not_a_module_name\n"
    )
    modules = {"medstudy.stats", "medstudy.claims", "medstudy.report", "medstudy.paths"}
    found = imports_of(source, "medstudy.fake", False, modules)
    assert found == {"medstudy.stats", "medstudy.claims", "medstudy.report", "medstudy.paths"}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def test_only_results_names_the_run_folder_files() -> None:
    offenders = []
    for module, path in all_modules().items():
        if module == "medstudy.results":
            continue
        tree = ast.parse(path.read_text())
        docs = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
                and any(node.value == f or node.value.endswith("/" + f) for f in RUN_FILES)
            ):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value!r}")
    assert not offenders, "run-folder file names outside medstudy/results.py:\n" + "\n".join(
        offenders
    )


def test_no_module_is_much_longer_than_500_lines() -> None:
    # stats.py stays whole: its functions share the DeLong / bootstrap internals and are read
    # (and tested) as one reference of the study's statistics.
    long = {
        m: n
        for m, p in all_modules().items()
        if (n := len(p.read_text().splitlines())) > 520 and m != "medstudy.stats"
    }
    assert not long, f"modules over ~500 lines: {long}"
