"""``python -m medstudy.audit``: a clean tree passes, each planted fault is named."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medstudy import audit as audit_mod
from medstudy.audit import Problem, audit, errors, main, warnings
from medstudy.results import (
    CONFIG_FILE,
    DETAILS_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    Run,
    copy_run,
    is_temp_file,
    metric_rows,
    predictions_frame,
)

DATA_BYTES = b"tiny data file\n"


def _run(stage: str, arm: str, data_file: Path, fail: bool = False) -> Run:
    """One finished (or, with ``fail``, interrupted) run with metrics and predictions."""
    base = {"stage": stage, "dataset": "x", "arm": arm, "protocol": "finetune", "seed": 0}
    base.update(fraction=1.0, split="test")
    prov = {"file": str(data_file), "md5": hashlib.md5(DATA_BYTES).hexdigest()}
    data = {"test": {**prov, "status": "undeclared", "source": "local"}, "n_test": 4}
    cfg = {"dataset": "x", "arm": arm}
    with Run(stage, cfg, inputs={"x.npz": "abc"}, data=data, seed=0) as run:
        run.log_metrics(metric_rows(base, {"auc": 0.8}))
        y = np.array([0, 1, 0, 1])
        scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
        run.save_predictions(predictions_frame(base, np.array(list("abcd")), y, scores))
        run.save_details({"seconds": 0.1})
        if fail:
            raise RuntimeError("interrupted")
    return run


@pytest.fixture
def tree(results_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Two finished transfer runs, a copy of one in label_efficiency, a claims.csv naming
    both, and a partial notebook (a warning, not an error)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("MEDSTUDY_DATA_DIR", str(data_dir))
    data_file = data_dir / "x.npz"
    data_file.write_bytes(DATA_BYTES)
    a, b = _run("transfer", "a", data_file), _run("transfer", "b", data_file)
    copy_run(a.id, "transfer", "label_efficiency")
    claims = pd.DataFrame(
        [
            {"claim": "C1", "dataset": "x", "comparison": "a - b", "stage": "transfer",
             "runs_a": a.id, "runs_b": b.id},
            {"claim": "C2", "dataset": "x", "comparison": "a - a", "stage": "label_efficiency",
             "runs_a": a.id, "runs_b": ""},
        ]
    )  # fmt: skip
    claims.to_csv(results_tmp / "claims.csv", index=False)
    (results_tmp / "executed").mkdir()
    (results_tmp / "executed" / "02_transfer.partial.ipynb").write_text("{}")
    return {"root": results_tmp, "a": a, "b": b, "data_file": data_file}


def _errors(root: Path) -> list[Problem]:
    return errors(audit(root))


def _lines(problems: list[Problem]) -> str:
    return "\n".join(p.line() for p in problems)


def test_clean_tree_passes(tree: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--results", str(tree["root"])]) == 0
    out = capsys.readouterr().out
    assert "ERROR" not in out
    assert "WARN partial-notebook executed/02_transfer.partial.ipynb" in out
    assert out.strip().splitlines()[-1].endswith("0 error(s), 1 warning(s)")


def test_deleted_predictions_of_a_claimed_run(tree: dict) -> None:
    rid = tree["a"].id
    (tree["a"].dir / PREDICTIONS_FILE).unlink()
    problems = _errors(tree["root"])
    text = _lines(problems)
    assert f"ERROR predictions transfer/{rid}: no {PREDICTIONS_FILE}" in text
    assert any(p.kind == "claims" and "line 2 (C1" in p.message and rid in p.message
               for p in problems)  # fmt: skip
    assert main(["--results", str(tree["root"])]) == 1


def test_edited_config_breaks_the_run_id(tree: dict) -> None:
    rid = tree["a"].id
    (tree["a"].dir / CONFIG_FILE).write_text(json.dumps({"dataset": "x", "arm": "z"}))
    [p] = [p for p in _errors(tree["root"]) if p.kind == "run-id"]
    assert p.path == f"transfer/{rid}"
    assert f"!= run id {rid}" in p.message


def test_edited_config_of_a_copied_run(tree: dict) -> None:
    rid = tree["a"].id
    (tree["root"] / "label_efficiency" / rid / CONFIG_FILE).write_text('{"arm": "z"}')
    [p] = [p for p in _errors(tree["root"]) if p.kind == "run-id"]
    assert p.path == f"label_efficiency/{rid}" and "copied from transfer/" in p.message


def test_copy_without_its_origin_is_flagged(tree: dict) -> None:
    # the copy's manifest says stage "transfer": only its details' origin makes that right
    rid = tree["a"].id
    (tree["root"] / "label_efficiency" / rid / DETAILS_FILE).write_text("{}")
    text = _lines(_errors(tree["root"]))
    assert f"ERROR manifest label_efficiency/{rid}: manifest stage 'transfer'" in text


def test_run_without_done_marker(tree: dict) -> None:
    with pytest.raises(RuntimeError):
        _run("transfer", "c", tree["data_file"], fail=True)
    rid = [p for p in (tree["root"] / "transfer").iterdir() if p.name not in
           {tree["a"].id, tree["b"].id}][0].name  # fmt: skip
    text = _lines(_errors(tree["root"]))
    assert f"ERROR unfinished transfer/{rid}: no DONE marker" in text


def test_leftover_temp_file(tree: dict) -> None:
    # named as medstudy.results.atomic_write names its temp files
    fd, name = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp.csv", dir=tree["a"].dir)
    os.close(fd)
    Path(name).write_text("half")
    assert is_temp_file(name) and not is_temp_file(tree["a"].dir / METRICS_FILE)
    [p] = _errors(tree["root"])
    assert p.kind == "temp-file" and p.path == f"transfer/{tree['a'].id}/{Path(name).name}"


@pytest.mark.parametrize("key", ["seed", "wall_time_s", "inputs", "code"])
def test_manifest_missing_a_key(tree: dict, key: str) -> None:
    path = tree["b"].dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    del manifest[key]
    path.write_text(json.dumps(manifest))
    text = _lines(_errors(tree["root"]))
    assert f"ERROR manifest transfer/{tree['b'].id}: {MANIFEST_FILE} lacks key(s) {key}" in text


def test_manifest_git_block_and_unparseable_files(tree: dict) -> None:
    path = tree["b"].dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["git"] = {"sha": "abc"}
    path.write_text(json.dumps(manifest))
    (tree["a"].dir / DETAILS_FILE).write_text("{not json")
    (tree["a"].dir / METRICS_FILE).write_text("a,b\n1,2\n")
    text = _lines(_errors(tree["root"]))
    assert f"{MANIFEST_FILE} git block lacks dirty" in text
    assert f"ERROR details transfer/{tree['a'].id}/{DETAILS_FILE}: does not parse" in text
    assert f"ERROR metrics transfer/{tree['a'].id}/{METRICS_FILE}: lacks column(s) stage" in text


def test_unreadable_predictions_and_missing_metrics(tree: dict) -> None:
    (tree["a"].dir / PREDICTIONS_FILE).write_bytes(b"not parquet")
    (tree["b"].dir / METRICS_FILE).unlink()
    text = _lines(_errors(tree["root"]))
    assert f"ERROR predictions transfer/{tree['a'].id}/{PREDICTIONS_FILE}: unreadable" in text
    assert f"ERROR metrics transfer/{tree['b'].id}: has {PREDICTIONS_FILE} but no" in text


def test_claims_row_naming_a_missing_run(tree: dict) -> None:
    path = tree["root"] / "claims.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[1, "runs_b"] = "deadbeef0000"
    df.to_csv(path, index=False)
    [p] = _errors(tree["root"])
    assert p.kind == "claims" and p.path == "claims.csv"
    assert p.message == (
        "line 3 (C2 x a - a): runs_b names run deadbeef0000, not a finished label_efficiency run"
    )


def test_data_md5_mismatch_is_an_error(tree: dict) -> None:
    tree["data_file"].write_bytes(b"another file\n")
    problems = _errors(tree["root"])
    assert {p.kind for p in problems} == {"data-md5", "claims"}
    md5 = [p for p in problems if p.kind == "data-md5"]
    # both transfer runs and the copy record the file
    assert {p.path for p in md5} == {
        f"transfer/{tree['a'].id}",
        f"transfer/{tree['b'].id}",
        f"label_efficiency/{tree['a'].id}",
    }
    assert all(hashlib.md5(b"another file\n").hexdigest() in p.message for p in md5)


def test_missing_data_file_is_one_warning(tree: dict) -> None:
    tree["data_file"].unlink()
    problems = audit(tree["root"])
    assert not errors(problems)
    missing = [p for p in warnings(problems) if p.kind == "data-missing"]
    assert [p.path for p in missing] == [str(tree["data_file"])]
    assert main(["--results", str(tree["root"])]) == 0


def test_md5_is_computed_once_per_file(tree: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hashlib.md5
    monkeypatch.setattr(audit_mod.hashlib, "md5", lambda *a: calls.append(1) or real(*a))
    audit(tree["root"])
    assert len(calls) == 1


def test_missing_results_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert main(["--results", str(missing)]) == 2
    assert f"results dir {missing} does not exist" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        audit(missing)
