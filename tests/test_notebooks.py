"""Notebooks: the DESIGN §3 rules, .py/.ipynb pairing, and the smoke profile end to end."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import numpy as np
import pandas as pd
import pytest

from medstudy import paths

NB_DIR = paths.notebooks_dir()
SCRIPTS = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))


def _cells(path: Path) -> list[dict]:
    return jupytext.read(path)["cells"]


def test_there_are_notebooks():
    assert [p.stem[:2] for p in SCRIPTS][:3] == ["01", "02", "03"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_notebook_follows_the_rules(script):
    cells = _cells(script)
    assert cells[0]["cell_type"] == "markdown"
    bullets = [ln for ln in cells[0]["source"].splitlines() if ln.startswith("- ")]
    assert 3 <= len(bullets) <= 5, "first cell: 3-5 bullets on what it establishes and writes"
    params = cells[1]
    assert params["cell_type"] == "code" and "parameters" in params["metadata"].get("tags", [])
    for line in params["source"].splitlines():
        if not line.strip():
            continue
        code, hash_, comment = line.partition("  #")
        (stmt,) = ast.parse(code).body
        assert isinstance(stmt, (ast.Assign, ast.AnnAssign)), line
        ast.literal_eval(stmt.value)  # typed literals only, nothing computed
        assert hash_ and comment.strip(), f"parameter without a help comment: {line}"
        # papermill infers parameters with a regex that an "=" in the comment breaks
        assert "=" not in comment, f"no '=' in a parameter's comment (papermill): {line}"
    assert "from_namespace(globals())" in cells[2]["source"]
    code = "\n".join(c["source"] for c in cells if c["cell_type"] == "code")
    # IPython magics (e.g. %matplotlib inline) are not Python; everything else must parse
    tree = ast.parse("\n".join(ln for ln in code.splitlines() if not ln.startswith("%")))
    for node in ast.walk(tree):
        assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)), "def"
        assert not isinstance(node, (ast.For, ast.While)), "loops belong in medstudy/"
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
            raise AssertionError("open() in a notebook")
    assert not re.search(r"['\"](/|~/|\.\./)\w", code), "hard-coded path"
    assert "!pip" not in code and "sys.path" not in code


def _parameters(script: Path) -> dict[str, object]:
    """The notebook's parameters cell as ``{name: literal default}``."""
    out = {}
    for stmt in ast.parse(_cells(script)[1]["source"]).body:
        target = stmt.target if isinstance(stmt, ast.AnnAssign) else stmt.targets[0]
        out[target.id] = ast.literal_eval(stmt.value)
    return out


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_every_parameter_is_a_config_field_with_the_same_default(script):
    from dataclasses import MISSING, fields

    from medstudy.grid import NOTEBOOKS

    config = NOTEBOOKS[script.stem].config
    declared = {f.name: f for f in fields(config)}
    params = _parameters(script)
    unknown = sorted(set(params) - set(declared))
    assert not unknown, (
        f"{script.name}: parameters that are not {config.__name__} fields: {unknown}"
    )
    # and the reverse: a field that changes the computation is a parameter a reader sees
    # (papermill would inject a missing one from a profile with only a warning); display-only
    # fields a notebook does not use may stay out
    hidden = sorted(
        n for n in set(declared) - set(params) if not declared[n].metadata.get("display")
    )
    assert not hidden, f"{script.name}: {config.__name__} fields with no parameter: {hidden}"
    for name, value in params.items():
        f = declared[name]
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        got = tuple(value) if isinstance(value, list) else value
        assert got == default, (
            f"{script.name}: {name} = {value!r} but {config.__name__} says {default!r}"
        )
    # and the config built from exactly these parameters is valid
    config.from_namespace(params)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_ipynb_is_paired_stripped_and_has_a_kernel(script):
    ipynb = script.with_suffix(".ipynb")
    assert ipynb.exists(), f"run: jupytext --sync {script}"
    nb = json.loads(ipynb.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"  # papermill needs it
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None
    py_src = [c["source"] for c in _cells(script)]
    nb_src = [c["source"] for c in jupytext.read(ipynb)["cells"]]
    assert py_src == nb_src, f"{ipynb.name} and {script.name} differ: jupytext --sync"


@pytest.mark.slow
@pytest.mark.realdata
def test_smoke_profile_end_to_end_then_resumes(real_data_dir, tmp_path):
    """The whole smoke profile through run_all's entry point; a second run skips every job."""
    env_cmd = [
        sys.executable,
        "-m",
        "medstudy.grid",
        "--profile",
        "smoke",
        "--results",
        str(tmp_path / "results"),
    ]
    t0 = time.perf_counter()
    first = subprocess.run(env_cmd, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    wall_first = time.perf_counter() - t0
    results = tmp_path / "results"
    assert (results / "claims.csv").exists()
    claims = pd.read_csv(results / "claims.csv")
    assert sorted(claims["claim"].unique()) == [f"C{i}" for i in range(1, 10)]
    assert set(claims["verdict"]) <= {"supported", "contradicted", "inconclusive", "not run"}
    for run in (results / "pretrain").iterdir():
        assert {"config.json", "manifest.json", "metrics.csv", "DONE"} <= {
            p.name for p in run.iterdir()
        }
    paper = results / "paper"
    assert (paper / "paper.pdf").read_bytes()[:5] == b"%PDF-" and (paper / "paper.html").exists()
    claims_bytes = (results / "claims.csv").read_bytes()
    t1 = time.perf_counter()
    second = subprocess.run(env_cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert " 0 run, " in second.stdout, second.stdout[-2000:]
    assert time.perf_counter() - t1 < wall_first
    assert (results / "claims.csv").read_bytes() == claims_bytes
    print(f"smoke profile: first run {wall_first:.0f} s")


@pytest.mark.slow
@pytest.mark.realdata
def test_smoke_runs_on_a_new_medmnist_format_file(real_data_dir, tmp_path):
    """A MedMNIST-format file dropped into the data dir and named on the command line goes
    through every notebook that can take it, unchanged; its labels are shaped (N,), as some
    exports are. Notebook 05 needs ground-truth masks, says so and is skipped (C7 not run)."""
    data = tmp_path / "data"
    data.mkdir()
    for f in real_data_dir.iterdir():  # the natural-image weights and the other sets
        (data / f.name).symlink_to(f)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 320), ("val", 64), ("test", 96)):
        y = np.arange(n) % 2  # (N,), not MedMNIST's (N, 1)
        noise = rng.integers(0, 90, size=(n, 28, 28))
        arrays[f"{split}_images"] = (noise + 120 * y[:, None, None]).astype(np.uint8)
        arrays[f"{split}_labels"] = y
    np.savez(data / "standin.npz", **arrays)
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "medstudy.grid", "--profile", "smoke", "--datasets", "standin"]
    env = {**os.environ, "MEDSTUDY_DATA_DIR": str(data)}
    done = subprocess.run(
        [*cmd, "--results", str(results)], capture_output=True, text=True, timeout=1800, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "05_interpretability skipped on standin" in done.stderr
    claims = pd.read_csv(results / "claims.csv")
    tested = claims[claims["verdict"] != "not run"]
    assert len(tested) and set(tested["dataset"]) == {"standin"}
    # the rest are "not run" with a reason (e.g. C5 names chest X-ray, C7 needs masks)
    assert (claims.loc[claims["verdict"] == "not run", "reason"].str.len() > 0).all()
    c1 = claims[claims["claim"] == "C1"].iloc[0]
    assert c1["dataset"] == "standin" and c1["verdict"] != "not run" and 0 <= c1["p"] <= 1
    assert (claims.loc[claims["claim"] == "C7", "verdict"] == "not run").all()
    assert (results / "paper" / "paper.pdf").exists()
