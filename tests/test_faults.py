"""Faults and concurrency through run_all's entry point (issue #14 items 1 and 4), on a tiny
profile of notebooks 01 and 02 (pretraining and fine-tuning on chest X-ray).

- Baseline: two ``run_all`` processes start together on one results dir. Each job is executed
  once; the other process waits for its lock and reuses it.
- Faults, on another results dir: SIGKILL the kernel papermill started
  1. in the middle of the pretraining job (after an epoch's checkpoint);
  2. in the middle of the fine-tuning job (after an epoch's checkpoint);
  3. during a results write (the kernel kills itself between a temp file and its rename:
     ``MEDSTUDY_FAULT_KILL_BEFORE_RENAME``).
  After each, no interrupted run is finished. A last plain re-run completes, leaves no temp
  file, passes the audit, and gives metrics.csv and claims byte-identical to the baseline's.
  The history files prove that pretraining and fine-tuning resumed after their last
  checkpoint: the rows of the epochs before a kill, wall-clock columns included, are kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psutil
import pytest

from medstudy import audit, results
from medstudy.claims import evaluate_claims

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

PROFILE = """
profile: faults
description: fault injection (tests/test_faults.py)
backbone: resnet20_cifar
image_size: 28
datasets: [pneumoniamnist]
pretrain:
  epochs: 3
  batch_size: 64
  max_train: 512
  curriculum: ["simclr:1", "spark:1"]
  seed: 0
notebooks:
  01_pretrain:
    arms: [ssl:simclr]
  02_transfer:
    arms: [ssl:simclr]
    protocols: [finetune]
    fractions: [1.0]
    seeds: [0]
    finetune_arms: [ssl:simclr]
    finetune_epochs: 4
    patience: 4
    max_train: 512
    fusion_arms: []
"""
JOBS = ("01_pretrain__pneumoniamnist__ssl-simclr", "02_transfer__pneumoniamnist")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("faults")
    (base / "params").mkdir()
    (base / "params" / "faults.yaml").write_text(PROFILE)
    env = {**os.environ, "MEDSTUDY_PARAMS_DIR": str(base / "params")}
    env.pop("MEDSTUDY_RESULTS_DIR", None)
    return {"base": base, "env": env}


def _cmd(root: Path) -> list[str]:
    return [sys.executable, "-m", "medstudy.grid", "--profile", "faults", "--results", str(root)]


def _wait_for(ready: Callable[[], bool], proc: subprocess.Popen, log: Path, what: str) -> None:
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() - t0 > 600:
            proc.kill()
            raise AssertionError(f"{what} never came")
        time.sleep(0.02)


def _kill_kernel(proc: subprocess.Popen) -> int:
    """SIGKILL every Jupyter kernel under ``proc`` (papermill's child); returns how many."""
    n = 0
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "ipykernel" in " ".join(child.cmdline()):
                os.kill(child.pid, signal.SIGKILL)
                n += 1
        except psutil.Error:
            pass
    return n


def _run(root: Path, env: dict, log: Path, fault: tuple[Callable[[], bool], str] | None = None):  # noqa: ANN202
    with log.open("w") as fh:
        proc = subprocess.Popen(_cmd(root), env=env, stdout=fh, stderr=subprocess.STDOUT)
        if fault is not None:
            ready, what = fault
            _wait_for(ready, proc, log, what)
            assert _kill_kernel(proc) == 1, "no kernel to kill"
        proc.wait(timeout=900)
    return proc.returncode, log.read_text()


def _metrics_files(root: Path) -> dict[str, bytes]:
    return {
        f"{p.parent.parent.name}/{p.parent.name}": p.read_bytes()
        for p in sorted(root.glob("*/*/metrics.csv"))
        if p.parent.parent.name in ("pretrain", "transfer")
    }


@pytest.fixture(scope="module")
def baseline(setup: dict, real_data_dir: Path) -> dict[str, object]:
    """Two run_all processes started together on one results dir, uninterrupted."""
    root = setup["base"] / "baseline"
    logs = [setup["base"] / "a.log", setup["base"] / "b.log"]
    procs = []
    for i, log in enumerate(logs):
        if i:  # B starts while A executes its first job
            _wait_for(lambda: "running …" in logs[0].read_text(), procs[0], logs[0], "A's job")
        with log.open("w") as fh:
            procs.append(
                subprocess.Popen(_cmd(root), env=setup["env"], stdout=fh, stderr=subprocess.STDOUT)
            )
    for p in procs:
        p.wait(timeout=900)
    texts = [log.read_text() for log in logs]
    return {"root": root, "rcs": [p.returncode for p in procs], "texts": texts}


def test_two_run_alls_on_one_results_dir_execute_each_job_once(baseline: dict) -> None:
    texts = baseline["texts"]
    assert baseline["rcs"] == [0, 0], "\n".join(t[-2000:] for t in texts)
    root = baseline["root"]
    for job in JOBS:
        ran = [f"{job}  done in" in t for t in texts]
        reused = [f"{job}  finished by another process meanwhile (reused)" in t for t in texts]
        assert sorted(ran) == [False, True] and reused == [not r for r in ran], texts
        assert (root / "executed" / f"{job}.ipynb").exists()
    assert f"waiting for job {JOBS[0]}" in texts[1]
    assert not list((root / "executed").glob("*.partial.ipynb"))
    for stage in ("pretrain", "transfer"):
        runs = [p for p in (root / stage).iterdir() if p.is_dir()]
        assert len(runs) == 1 and (runs[0] / "DONE").exists()


def test_kills_then_a_rerun_resume_and_match_an_uninterrupted_run(
    setup: dict, baseline: dict
) -> None:
    assert baseline["rcs"] == [0, 0]
    base, env = setup["base"], setup["env"]
    root = base / "faulted"

    # 1. SIGKILL mid-pretraining, after epoch 1's checkpoint
    def pretrain_epoch_1() -> bool:
        return any(root.glob("pretrain/*/lightning/*/last.ckpt"))

    rc, out = _run(root, env, base / "f1.log", (pretrain_epoch_1, "a pretraining checkpoint"))
    assert rc != 0 and "FAILED" in out
    [pre] = [p for p in (root / "pretrain").iterdir() if p.is_dir()]
    assert not (pre / "DONE").exists() and not results.finished_run_ids("pretrain", root)
    assert not (root / "executed" / f"{JOBS[0]}.done.json").exists()
    history_1 = pd.read_csv(pre / "history.csv")
    assert 2 <= len(history_1) < 4  # init + 1 or 2 of 3 epochs
    checkpointed = 2  # init + epoch 1: in the checkpoint whatever the kill's exact moment

    # 2. the re-run resumes pretraining; SIGKILL mid-fine-tuning, after an epoch's checkpoint
    def finetune_epoch() -> bool:
        return any(root.glob("transfer/*/resume.ckpt"))

    rc, out = _run(root, env, base / "f2.log", (finetune_epoch, "a fine-tuning checkpoint"))
    assert rc != 0 and f"{JOBS[0]}  done in" in out
    history_2 = pd.read_csv(pre / "history.csv")
    assert (pre / "DONE").exists() and history_2["epoch"].tolist() == [0, 1, 2, 3]
    # resumed, not restarted: the epochs before the kill keep their rows, timings included
    pd.testing.assert_frame_equal(history_2.iloc[:checkpointed], history_1.iloc[:checkpointed])
    [unit] = [p for p in (root / "transfer").iterdir() if p.is_dir()]
    assert not (unit / "DONE").exists() and not results.finished_run_ids("transfer", root)
    tuned_1 = pd.read_csv(unit / "history.csv")
    assert 1 <= len(tuned_1) < 4

    # 3. the re-run resumes fine-tuning, then dies while writing the unit's metrics.csv
    killer = {**env, results.FAULT_KILL_BEFORE_RENAME: "metrics.csv"}
    rc, out = _run(root, killer, base / "f3.log")
    assert rc != 0 and f"{JOBS[0]}  skipped" in out
    assert not (unit / "DONE").exists() and not (unit / "metrics.csv").exists()
    assert [p.name for p in unit.iterdir() if results.is_temp_file(p)]  # the interrupted write
    tuned_2 = pd.read_csv(unit / "history.csv")
    assert tuned_2["epoch"].tolist() == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(tuned_2.iloc[:1], tuned_1.iloc[:1])  # epoch 0 not retrained

    # 4. a plain re-run completes without training again, and matches the baseline
    rc, out = _run(root, env, base / "f4.log")
    assert rc == 0, out[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(unit / "history.csv"), tuned_2)  # no retraining
    assert not any(results.is_temp_file(p) for p in root.rglob("*"))
    assert not (unit / "resume.ckpt").exists() and not (pre / "lightning").exists()
    assert audit.main(["--results", str(root)]) == 0
    assert _metrics_files(root) == _metrics_files(baseline["root"])
    claims = [evaluate_claims(r).to_csv(index=False) for r in (root, baseline["root"])]
    assert claims[0] == claims[1]
