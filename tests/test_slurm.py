"""``run_all.sh --launcher slurm``: submitit arrays per notebook, per-notebook resources from the
profile, the job cache, failures collected, bad slurm blocks refused before any submission.

The scheduling logic runs on submitit's debug executor (every job in this process, so a test
can replace what a job does); one slow test runs real notebook jobs through submitit's local
executor (each job a subprocess, pickled and logged as on a cluster); and the full profile's
resources are checked in the sbatch scripts submitit writes for a stand-in ``sbatch``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medstudy import grid, slurm
from medstudy import jobs as jobs_mod
from medstudy.grid import expand, load_profile
from medstudy.locks import lock_path
from medstudy.results import write_json

pytest.importorskip("submitit")  # the dev extra installs it; CI has it

SLURM_BLOCK = {"timeout_min": 30, "cpus_per_task": 2, "per_notebook": {"07_robustness_stats": {"timeout_min": 5}}}  # fmt: skip


def _write_profile(params: Path, name: str, spec: dict) -> None:
    params.mkdir(exist_ok=True)
    (params / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


@pytest.fixture
def smoke_with_slurm(tmp_path, monkeypatch) -> dict:
    """The smoke profile plus a slurm block, as the user's own profile ``smokeslurm``."""
    spec = yaml.safe_load((grid.paths.params_dir() / "smoke.yaml").read_text())
    spec["slurm"] = json.loads(json.dumps(SLURM_BLOCK))
    params = tmp_path / "params"
    _write_profile(params, "smokeslurm", spec)
    monkeypatch.setenv("MEDSTUDY_PARAMS_DIR", str(params))
    return load_profile("smokeslurm")


@pytest.fixture
def fake_jobs(monkeypatch) -> tuple[list[str], set[str]]:
    """Jobs that do what ``execute`` leaves behind (executed notebook + stamp) without running
    a notebook, or fail like a failing notebook (a ``.partial.ipynb`` and an exception);
    datasets hashed by name, so no data file is read."""
    calls: list[str] = []
    fail: set[str] = set()

    def execute(job: jobs_mod.Job, root: Path) -> float:
        calls.append(job.name)
        grid.paths.executed_dir(root).mkdir(parents=True, exist_ok=True)
        if job.name in fail:
            jobs_mod.failed_output(job, root).write_text("{}")
            raise RuntimeError(f"injected failure in {job.name}")
        job.output(root).write_text("{}")
        write_json(job.stamp(root), {"hash": jobs_mod.job_hash(job, root)})
        return 0.0

    monkeypatch.setattr(jobs_mod, "execute", execute)
    monkeypatch.setattr(jobs_mod, "dataset_inputs", lambda ds, size: {f"{ds}.npz": f"md5-of-{ds}"})
    return calls, fail


def test_full_profile_resources_per_notebook():
    res = slurm.slurm_resources(load_profile("full"))
    assert set(res) == set(jobs_mod.NOTEBOOKS)
    assert res["01_pretrain"]["timeout_min"] == max(r["timeout_min"] for r in res.values())
    assert res["04_representations"] == {  # no override: the defaults
        "timeout_min": 720, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 64,
        "slurm_partition": "gpu",
    }  # fmt: skip
    stats = res["07_robustness_stats"]
    assert "gpus_per_node" not in stats and stats["slurm_partition"] == "cpu"  # null drops it
    assert stats["timeout_min"] < res["04_representations"]["timeout_min"]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (None, "profile 'bad' has no 'slurm' block"),
        ({"timeout_min": 30, "gpu": 1}, r"slurm: unknown submitit parameters \['gpu'\]; valid: "),
        (
            {"timeout_min": 30, "slurm_partiton": "gpu"},
            r"unknown submitit parameters \['slurm_partiton'\].*slurm_<.*partition",
        ),
        (
            {"timeout_min": 30, "per_notebook": {"01_pretrain": {"gpus": 2}}},
            r"slurm.per_notebook.01_pretrain: unknown submitit parameters \['gpus'\]",
        ),
        (
            {"timeout_min": 30, "per_notebook": {"08_extra": {"mem_gb": 8}}},
            r"unknown notebooks \['08_extra'\]; valid: \['01_pretrain', ",
        ),
        ({"timeout_min": "12h"}, r"slurm block, 01_pretrain: submitit refuses .*timeout_min"),
        ({"cpus_per_task": 4}, "no timeout_min for 01_pretrain"),
        (
            {"timeout_min": 30, "per_notebook": {"02_transfer": {"timeout_min": None}}},
            "no timeout_min for 02_transfer",
        ),
        ({"timeout_min": 30, "per_notebook": {"02_transfer": [1]}}, "must map a notebook"),
    ],
)
def test_a_bad_slurm_block_fails_before_any_submission(
    tmp_path, monkeypatch, capsys, block, message
):
    spec = yaml.safe_load((grid.paths.params_dir() / "smoke.yaml").read_text())
    if block is not None:
        spec["slurm"] = block
    _write_profile(tmp_path / "params", "bad", spec)
    monkeypatch.setenv("MEDSTUDY_PARAMS_DIR", str(tmp_path / "params"))
    results = tmp_path / "results"
    argv = ["--profile", "bad", "--launcher", "slurm", "--slurm-cluster", "local", "--only", "07"]
    assert grid.main([*argv, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("[medstudy] error: ")
    assert re.search(message, err), err
    assert not results.exists()  # nothing submitted, not even the results dir made


def test_no_cluster_and_bad_flags_fail_before_any_submission(tmp_path, monkeypatch, capsys):
    _write_profile(tmp_path / "params", "p", {**load_profile("smoke"), "slurm": SLURM_BLOCK})
    monkeypatch.setenv("MEDSTUDY_PARAMS_DIR", str(tmp_path / "params"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun: not a Slurm machine
    base = ["--profile", "p", "--only", "07", "--results", str(tmp_path / "r")]
    assert grid.main([*base, "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err
    assert 'no Slurm cluster here (Could not detect "srun"' in err
    assert "use --slurm-cluster local" in err
    assert not (tmp_path / "r" / "slurm").exists()
    assert grid.main([*base, "--launcher", "slurm", "--slurm-cluster", "aws"]) == 2
    assert "unknown --slurm-cluster 'aws'; valid: ['slurm', 'local']" in capsys.readouterr().err
    assert grid.main([*base, "--slurm-cluster", "local"]) == 2
    assert "--slurm-cluster applies to --launcher slurm only" in capsys.readouterr().err
    assert grid.main([*base, "--launcher", "pbs"]) == 2
    assert "unknown launcher 'pbs'; valid: ['local', 'slurm']" in capsys.readouterr().err


def test_every_job_runs_once_then_nothing_is_submitted(
    smoke_with_slurm, fake_jobs, results_tmp, capsys
):
    calls, _ = fake_jobs
    jobs = expand(smoke_with_slurm)
    assert slurm.run_slurm(jobs, results_tmp, smoke_with_slurm, False, False, "debug") == 0
    assert calls == [j.name for j in jobs]  # each once, in notebook (dependency) order
    out = capsys.readouterr().out
    assert f"[medstudy] {len(jobs)} run, 0 reused, 0 skipped, 0 failed, 0 not submitted" in out
    assert "[medstudy] 01_pretrain: 4 jobs submitted (debug: " in out  # one array per notebook
    for job in jobs:  # what each job asked for and where it ran
        record = json.loads((results_tmp / "slurm" / f"{job.name}.json").read_text())
        assert record["status"] == "ran" and record["cpus_usable"] >= 1 and record["host"]
        assert record["requested"] == slurm.slurm_resources(smoke_with_slurm)[job.notebook]
    assert record["requested"]["timeout_min"] == 5  # 07's override
    # a second invocation finds every job finished and unchanged: nothing is submitted
    assert slurm.run_slurm(jobs, results_tmp, smoke_with_slurm, False, False, "debug") == 0
    assert len(calls) == len(jobs)
    out = capsys.readouterr().out
    assert f"0 run, 0 reused, {len(jobs)} skipped" in out and "jobs submitted" not in out


def test_a_failed_job_is_reported_its_dependents_held_the_rest_run(
    smoke_with_slurm, fake_jobs, results_tmp, capsys
):
    calls, fail = fake_jobs
    jobs = expand(smoke_with_slurm)
    bad = "01_pretrain__pneumoniamnist__ssl-spark"
    fail.add(bad)
    assert slurm.run_slurm(jobs, results_tmp, smoke_with_slurm, False, False, "debug") == 1
    # the rest of its array and everything of the other dataset ran
    retina = [j.name for j in jobs if j.dataset == "retinamnist"]
    assert set(calls) == {bad, "01_pretrain__pneumoniamnist__ssl-simclr", *retina}
    held = [j.name for j in jobs if j.name not in calls]
    assert held == [
        "02_transfer__pneumoniamnist", "03_label_efficiency__pneumoniamnist",
        "04_representations__pneumoniamnist", "05_interpretability__pneumoniamnist",
        "06_robustness__pneumoniamnist", "07_robustness_stats__all",
    ]  # fmt: skip
    captured = capsys.readouterr()
    assert f"1 failed, {len(held)} not submitted" in captured.out
    err = captured.err
    assert f"1 job(s) FAILED:\n  {bad}: RuntimeError: injected failure in {bad}" in err
    (bad_job,) = [j for j in jobs if j.name == bad]
    assert f"open: {jobs_mod.failed_output(bad_job, results_tmp)}" in err  # the executed notebook
    record = json.loads((results_tmp / "slurm" / f"{bad}.json").read_text())
    assert record["status"] == "failed" and "injected failure" in record["error"]
    assert f"open: {record['log_stderr']}" in err  # submitit's log of the job
    for name in held:
        assert f"  {name} (after {bad})" in err
        assert not (results_tmp / "slurm" / f"{name}.json").exists()
    # fixed, the same command submits exactly the failed job and the ones it held back
    fail.clear()
    calls.clear()
    assert slurm.run_slurm(jobs, results_tmp, smoke_with_slurm, False, False, "debug") == 0
    assert calls == [bad, *held]


def test_a_job_finished_by_another_process_meanwhile_is_reused(
    results_tmp, fake_jobs, tmp_path, monkeypatch
):
    """The submitted function takes the job lock and checks again, as the local launcher does:
    a job resubmitted while another process runs it waits, then reuses that process's result."""
    calls, _ = fake_jobs
    job = expand(load_profile("smoke"), only=["06"], datasets=["retinamnist"])[0]
    stamp = json.dumps({"hash": jobs_mod.job_hash(job, results_tmp)})
    job.output(results_tmp).parent.mkdir(parents=True)
    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time, pathlib; from filelock import FileLock\n"
            "lock = FileLock(sys.argv[1]); lock.acquire(); pathlib.Path(sys.argv[2]).touch()\n"
            "time.sleep(1.5); pathlib.Path(sys.argv[3]).write_text('{}')\n"
            "pathlib.Path(sys.argv[4]).write_text(sys.argv[5]); lock.release()",
            str(lock_path(f"job__{job.name}", results_tmp)), str(ready),
            str(job.output(results_tmp)), str(job.stamp(results_tmp)), stamp,
        ]
    )  # fmt: skip
    t0 = time.monotonic()
    while not ready.exists():
        assert holder.poll() is None and time.monotonic() - t0 < 60, "lock holder died"
        time.sleep(0.05)
    used = slurm.run_job(job, results_tmp)
    assert holder.wait(timeout=60) == 0
    assert used["status"] == "reused" and calls == [] and used["wall_s"] >= 0.5
    # unfinished, it runs under the lock: nobody else can take it meanwhile
    job.stamp(results_tmp).unlink()
    from filelock import FileLock, Timeout

    def execute(j: jobs_mod.Job, root: Path) -> float:
        with pytest.raises(Timeout):
            FileLock(str(lock_path(f"job__{j.name}", root))).acquire(timeout=0)
        calls.append(j.name)
        return 0.0

    monkeypatch.setattr(jobs_mod, "execute", execute)
    assert slurm.run_job(job, results_tmp)["status"] == "ran" and calls == [job.name]


def test_a_notebook_error_becomes_one_line(results_tmp, monkeypatch):
    from papermill.exceptions import PapermillExecutionError

    def execute(job: jobs_mod.Job, root: Path) -> float:
        raise PapermillExecutionError(
            2, 3, "cfg = ...", "ConfigError", "epochs must be >= 0,\n got -1", ["tb"]
        )

    monkeypatch.setattr(jobs_mod, "execute", execute)
    job = jobs_mod.Job("01_pretrain", "x", {}, None)
    with pytest.raises(slurm.JobFailed, match=r"^ConfigError: epochs must be >= 0, got -1$"):
        slurm.run_job(job, results_tmp)
    # as submitit hands it back from another process: the traceback text
    from submitit.core.utils import FailedJobError, UncompletedJobError

    trace = "Traceback ...\nmedstudy.slurm.JobFailed: ConfigError: epochs must be >= 0, got -1\n"
    assert slurm._failure(FailedJobError(f"failed with trace:\n---\n{trace}---")) == (
        "ConfigError: epochs must be >= 0, got -1"
    )
    killed = UncompletedJobError("Job 42 has not produced any output (state: TIMEOUT)\nlog")
    assert slurm._failure(killed) == (
        "UncompletedJobError: Job 42 has not produced any output (state: TIMEOUT)"
    )


FAKE_SBATCH = """#!/bin/sh
# stands in for Slurm's sbatch: keeps the script submitit wrote, answers as sbatch does
cp "$1" "$SBATCH_CAPTURE/$$.sh"
echo "Submitted batch job $$"
"""


def test_full_profile_resources_reach_the_sbatch_scripts(tmp_path, monkeypatch):
    """submitit's own Slurm executor, with ``sbatch`` replaced by a script that keeps what it
    is given: each notebook's array carries that notebook's resources."""
    bin_dir, capture = tmp_path / "bin", tmp_path / "capture"
    bin_dir.mkdir()
    capture.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 1\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_CAPTURE", str(capture))
    res = slurm.slurm_resources(load_profile("full"))
    scripts = {}
    for nb, n in (("01_pretrain", 3), ("07_robustness_stats", 1)):
        executor = slurm.slurm_executor(tmp_path / "slurm", "slurm", res[nb], nb)
        with executor.batch():
            for i in range(n):
                executor.submit(int, i)
        (new,) = set(capture.iterdir()) - set(scripts.values())
        scripts[nb] = new
    pre = scripts["01_pretrain"].read_text().splitlines()
    for flag in ("--time=2880", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=64GB",
                 "--partition=gpu", "--array=0-2%3", "--job-name=medstudy-01_pretrain"):  # fmt: skip
        assert f"#SBATCH {flag}" in pre, flag
    stats = scripts["07_robustness_stats"].read_text()
    assert "#SBATCH --time=240" in stats and "#SBATCH --partition=cpu" in stats
    assert "#SBATCH --gpus" not in stats and "#SBATCH --array" not in stats


@pytest.mark.slow
def test_notebook_jobs_through_submitits_local_executor(tmp_path, monkeypatch, capsys):
    """Real notebook jobs, each a submitit subprocess: 01 pretrains (one good job, one that
    fails in its config cell) and 03 reads the good one's encoder; a job that reads the failed
    one is not submitted; the failure is reported with its notebook and log; run again,
    nothing is submitted. synth_lesions is generated, so no data file is needed."""
    spec = {
        "datasets": ["synth_lesions"],
        "pretrain": {"epochs": 1, "batch_size": 32, "max_train": 64, "seed": 0},
        "notebooks": {
            "01_pretrain": {"arms": ["ssl:simclr"]},
            "03_label_efficiency": {
                "arms": ["scratch", "ssl:simclr"], "protocols": ["linear"],
                "fractions": [1.0], "seeds": [0], "max_train": 64,
            },
        },
        "slurm": {"timeout_min": 10},
    }  # fmt: skip
    _write_profile(tmp_path / "params", "tiny", spec)
    monkeypatch.setenv("MEDSTUDY_PARAMS_DIR", str(tmp_path / "params"))
    root = tmp_path / "results"
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(root))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two jobs share the machine's cores
    profile = load_profile("tiny")
    good = expand(profile)
    jobs_mod.validate_jobs(good)
    pre, after = good
    # a job that passes nothing to validate_jobs but fails in its notebook, and one reading it
    bad = dataclasses.replace(pre, key="synth_lesions__bad", params={**pre.params, "epochs": -1})
    held = dataclasses.replace(after, key="synth_lesions__held", upstream=[bad.name])
    t0 = time.perf_counter()
    assert slurm.run_slurm([pre, bad, after, held], root, profile, False, False, "local") == 1
    wall = time.perf_counter() - t0
    captured = capsys.readouterr()
    for job in good:
        assert jobs_mod.is_finished(job, root), captured.out + captured.err
        record = json.loads((root / "slurm" / f"{job.name}.json").read_text())
        assert record["status"] == "ran" and record["env"]["SUBMITIT_EXECUTOR"] == "local"
        assert record["requested"] == {"timeout_min": 10} and record["max_rss_children_mb"] > 0
    assert len(list((root / "pretrain").iterdir())) == 1  # the good job's one run
    failed = json.loads((root / "slurm" / f"{bad.name}.json").read_text())
    assert failed["status"] == "failed" and failed["error"].startswith("ConfigError: ")
    assert "epochs" in failed["error"]
    assert f"  {bad.name}: {failed['error']}" in captured.err
    assert f"open: {jobs_mod.failed_output(bad, root)}" in captured.err
    assert jobs_mod.failed_output(bad, root).exists() and Path(failed["log_stderr"]).exists()
    assert f"  {held.name} (after {bad.name})" in captured.err
    assert not (root / "slurm" / f"{held.name}.json").exists()
    # each job submitted once: submitit keeps one "<job id>_submitted.pkl" per submission
    # (its local executor also leaves an empty literal "%j" folder: submitit's, not a job)
    submitted = sorted((root / "slurm").glob("*/*_submitted.pkl"))
    assert len(submitted) == 3  # pre, bad, after
    # the same command again (as run_all.sh runs it): every job finished, nothing submitted
    argv = ["--profile", "tiny", "--launcher", "slurm", "--slurm-cluster", "local"]
    assert grid.main([*argv, "--results", str(root)]) == 0
    out = capsys.readouterr().out
    assert "0 run, 0 reused, 2 skipped, 0 failed" in out and "jobs submitted" not in out
    assert sorted((root / "slurm").glob("*/*_submitted.pkl")) == submitted
    print(f"local executor: 3 jobs in {wall:.0f} s")
