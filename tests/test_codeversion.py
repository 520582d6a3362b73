"""medstudy.codeversion: a stage's code version follows the sources it imports, and a finished
run of other code is recomputed, never reused (medstudy.results.is_current)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from medstudy import codeversion, paths
from medstudy import results as results_mod
from medstudy.codeversion import module_closure, package_version, stage_version
from medstudy.config import TransferConfig

PACKAGE = Path(codeversion.__file__).parent


def _names(files: list[Path], root: Path) -> set[str]:
    return {f.relative_to(root).as_posix() for f in files}


def test_closure_follows_imports_at_any_depth_relative_ones_and_parent_packages(
    tmp_path: Path,
) -> None:
    root = tmp_path / "medstudy"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (root / "sub" / "b.py").write_text("import os\nfrom medstudy import c\n")
    (root / "c.py").write_text("")
    (root / "unused.py").write_text("")
    files = _names(module_closure("medstudy.sub.a", root), root)
    assert files == {"__init__.py", "sub/__init__.py", "sub/a.py", "sub/b.py", "c.py"}
    with pytest.raises(ValueError, match="no source for module 'medstudy.nope'"):
        module_closure("medstudy.nope", root)


def test_the_real_stages_closures() -> None:
    transfer = _names(module_closure("medstudy.transfer"), PACKAGE)
    assert {"evaluate/finetune.py", "transfer/units.py", "results.py", "__init__.py"} <= transfer
    assert "report/tex.py" not in transfer and "claims/table.py" not in transfer
    assert stage_version("label_efficiency") == stage_version("transfer")  # one code
    assert stage_version("robustness") != stage_version("transfer")
    assert stage_version("some_test_stage") == package_version()  # unknown stage: everything


def test_an_edit_changes_the_versions_of_the_stages_that_import_it(tmp_path: Path) -> None:
    root = tmp_path / "medstudy"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    before = {s: stage_version(s, root) for s in ("transfer", "robustness", "pretrain")}
    whole = package_version(root)
    assert before["transfer"] == stage_version("transfer")  # content, not location
    # a report edit: no stage recomputes, but every job re-executes (package version)
    with (root / "report" / "tex.py").open("a") as f:
        f.write("# an edit\n")
    stage_version.cache_clear()
    package_version.cache_clear()
    assert {s: stage_version(s, root) for s in before} == before
    assert package_version(root) != whole
    # a training-loop edit: every stage that imports it
    with (root / "evaluate" / "finetune.py").open("a") as f:
        f.write("# an edit\n")
    stage_version.cache_clear()
    after = {s: stage_version(s, root) for s in before}
    assert after["transfer"] != before["transfer"]
    assert after["robustness"] != before["robustness"]  # loads fine-tuned models
    stage_version.cache_clear()
    package_version.cache_clear()


def test_a_run_of_other_code_is_recomputed_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medstudy import transfer as transfer_stage

    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(tmp_path))
    cfg = TransferConfig.from_params(
        dataset="synth_lesions", arms=["scratch"], protocols=["knn"], fractions=[1.0],
        seeds=[0], max_train=100,
    )  # fmt: skip
    calls = []
    real = transfer_stage.evaluate_unit

    def counted(ctx):  # noqa: ANN001, ANN202
        calls.append(ctx.unit)
        return real(ctx)

    monkeypatch.setattr(transfer_stage, "evaluate_unit", counted)
    first = transfer_stage.run_transfer(cfg)
    [rid] = first["run_id"].unique()
    manifest = json.loads((paths.run_dir("transfer", rid) / "manifest.json").read_text())
    assert manifest["code"] == {"version": stage_version("transfer")}
    assert results_mod.is_current("transfer", rid)
    transfer_stage.run_transfer(cfg)
    assert len(calls) == 1  # same code: reused
    monkeypatch.setattr(results_mod, "stage_version", lambda stage: "edited-code")
    assert results_mod.is_done("transfer", rid) and not results_mod.is_current("transfer", rid)
    again = transfer_stage.run_transfer(cfg)
    assert len(calls) == 2  # other code: recomputed in place, same run id, same numbers
    pd.testing.assert_frame_equal(first, again)
    manifest = json.loads((paths.run_dir("transfer", rid) / "manifest.json").read_text())
    assert manifest["code"] == {"version": "edited-code"}


def test_entering_a_run_keeps_resume_points_only_of_the_same_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(tmp_path))
    config = {"what": "resume"}

    def interrupted() -> Path:
        with pytest.raises(RuntimeError):
            with results_mod.Run("demo", config) as run:
                run.path("resume.ckpt").write_text("epoch 3")
                raise RuntimeError("killed")
        return run.dir

    run_dir = interrupted()
    assert (run_dir / "CODE").read_text().strip() == stage_version("demo")
    with results_mod.Run("demo", config) as run:  # same code: the resume point is kept
        assert run.path("resume.ckpt").read_text() == "epoch 3"
    assert results_mod.is_current("demo", run.id)
    # another code: a finished run, and an unfinished one's resume points, are cleared
    monkeypatch.setattr(results_mod, "stage_version", lambda stage: "edited-code")
    assert not results_mod.is_current("demo", run.id)
    with results_mod.Run("demo", config) as run:
        assert not run.path("resume.ckpt").exists() and not run.path("DONE").exists()
        run.path("resume.ckpt").write_text("epoch 1, new code")
    assert results_mod.is_current("demo", run.id)
    monkeypatch.setattr(results_mod, "stage_version", lambda stage: "newer-code")
    (run_dir / "DONE").unlink()  # an unfinished run of other code
    with results_mod.Run("demo", config) as run:
        assert not run.path("resume.ckpt").exists()
