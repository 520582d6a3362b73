"""``--launcher slurm``: the study's jobs submitted through submitit (:func:`run_slurm`).

One job array per notebook, each notebook's array once the notebooks before it have ended,
resources from the profile's ``slurm`` block, the same stamps and per-job locks as the local
launcher (:mod:`medstudy.jobs`), every failure collected and summarised at the end.
``--slurm-cluster local`` sends the same submission to submitit's local executor (each job a
subprocess of this machine): laptops, CI and ``tests/test_slurm.py``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medstudy import jobs as jobs_mod
from medstudy.jobs import NOTEBOOKS, GridError, Job, failed_output
from medstudy.locks import hold_lock
from medstudy.results import now_iso, write_json

#: Where ``--launcher slurm`` sends its jobs (``--slurm-cluster``): a Slurm cluster, or
#: submitit's local executor, which runs every submitted job as a subprocess of this machine
#: through the same pickling, logging and result files (laptops, CI, tests/test_slurm.py).
SLURM_CLUSTERS: tuple[str, ...] = ("slurm", "local")
#: The key of a profile's ``slurm`` block that holds per-notebook overrides of its defaults.
PER_NOTEBOOK = "per_notebook"
#: Environment variables a job records about where it ran (``results/slurm/<job>.json``).
JOB_ENV = (
    "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_PARTITION",
    "SLURM_JOB_NODELIST", "SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE", "SLURM_GPUS_ON_NODE",
    "CUDA_VISIBLE_DEVICES", "SUBMITIT_EXECUTOR",
)  # fmt: skip


class JobFailed(RuntimeError):
    """A submitted job failed; its message is the one-line cause the summary prints."""


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError as err:
        raise GridError(
            "--launcher slurm needs submitit: pip install 'submitit>=1.5' (the 'slurm' extra)"
        ) from err
    return submitit


def submitit_parameters(submitit: Any) -> dict[str, set[str]]:
    """The parameter names submitit's ``AutoExecutor`` accepts: its generic ones (translated
    for each cluster) and, prefixed with the cluster name, each executor's own."""
    generic = set(submitit.AutoExecutor._valid_parameters())
    own = {
        "slurm": set(submitit.SlurmExecutor._valid_parameters()),
        "local": set(submitit.LocalExecutor._valid_parameters()),
    }
    return {"generic": generic, **own}


def slurm_resources(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each notebook's submitit parameters from the profile's ``slurm`` block, validated.

    The block holds defaults for every job plus ``per_notebook: {<notebook>: {...}}``
    overrides; an override of ``null`` drops a default (e.g. no GPU for notebook 07). Every
    name must be one submitit's ``AutoExecutor`` takes (generic, or ``slurm_<x>`` / ``local_<x>``),
    and every job needs a ``timeout_min``: submitit's own default (5 min on Slurm, 2 min on the
    local executor) would kill a notebook job. Values are then checked by submitit itself (its
    debug executor validates names and types without a cluster), so a bad block fails here,
    before any submission, naming the key and the valid choices.
    """
    submitit = _import_submitit()
    block = spec.get("slurm")
    if not block:
        raise GridError(
            f"profile {spec['profile']!r} has no 'slurm' block: --launcher slurm takes each "
            "job's resources (timeout_min, gpus_per_node, slurm_partition, …) from it; see "
            "params/full.yaml"
        )
    if not isinstance(block, dict):
        raise GridError(f"slurm block must map submitit parameters to values, not {block!r}")
    overrides = block.get(PER_NOTEBOOK) or {}
    if not isinstance(overrides, dict) or not all(
        isinstance(v, dict | None) for v in overrides.values()
    ):
        raise GridError(f"slurm.{PER_NOTEBOOK} must map a notebook to {{parameter: value}}")
    unknown_nb = sorted(set(overrides) - set(NOTEBOOKS))
    if unknown_nb:
        raise GridError(
            f"slurm.{PER_NOTEBOOK}: unknown notebooks {unknown_nb}; valid: {list(NOTEBOOKS)}"
        )
    defaults = {k: v for k, v in block.items() if k != PER_NOTEBOOK}
    names = submitit_parameters(submitit)
    valid = names["generic"] | {
        f"{cluster}_{p}" for cluster in SLURM_CLUSTERS for p in names[cluster] | names["generic"]
    }
    places = [("slurm", defaults)]
    places += [(f"slurm.{PER_NOTEBOOK}.{nb}", over or {}) for nb, over in overrides.items()]
    for where, params in places:
        bad = sorted(set(params) - valid)
        if bad:
            per_cluster = "; ".join(
                f"{c}_<{'|'.join(sorted(names[c]))}>" for c in SLURM_CLUSTERS if names[c]
            )
            raise GridError(
                f"{where}: unknown submitit parameters {bad}; valid: {sorted(names['generic'])}, "
                f"or per cluster {per_cluster} (submitit's AutoExecutor)"
            )
    resources: dict[str, dict[str, Any]] = {}
    for nb in NOTEBOOKS:
        merged = {**defaults, **(overrides.get(nb) or {})}
        params = {k: v for k, v in merged.items() if v is not None}
        if "timeout_min" not in params:
            raise GridError(
                f"slurm block: no timeout_min for {nb}; submitit's default (5 min on Slurm, "
                "2 min on the local executor) would kill the job: set it in the block's "
                f"defaults or in {PER_NOTEBOOK}.{nb}"
            )
        try:
            submitit.AutoExecutor(folder="unused", cluster="debug").update_parameters(**params)
        except (NameError, AssertionError, TypeError, ValueError) as err:
            raise GridError(f"slurm block, {nb}: submitit refuses {params}: {err}") from None
        resources[nb] = params
    return resources


def slurm_executor(folder: Path, cluster: str, params: dict[str, Any], notebook: str) -> Any:
    """A submitit executor for one notebook's jobs (a Slurm array per notebook), built before
    any submission so that a missing cluster or a value the cluster refuses fails first."""
    submitit = _import_submitit()
    # "debug" (tests only, not a CLI choice): submitit runs each job in this process when its
    # outcome is asked for, so a test can monkeypatch what a job does
    if cluster not in (*SLURM_CLUSTERS, "debug"):
        raise GridError(f"unknown --slurm-cluster {cluster!r}; valid: {list(SLURM_CLUSTERS)}")
    try:
        # "%j": submitit's per-job log folder (job id; <array>_<index> for an array task)
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    except RuntimeError as err:  # SlurmExecutor: 'Could not detect "srun"'
        raise GridError(
            f"--launcher slurm: no Slurm cluster here ({err}); to run the same jobs through "
            "submitit on this machine use --slurm-cluster local"
        ) from None
    try:
        executor.update_parameters(**{"name": f"medstudy-{notebook}", **params})
    except (NameError, AssertionError, TypeError, ValueError) as err:
        raise GridError(
            f"slurm block, {notebook}: the {cluster} executor refuses it: {err}"
        ) from None
    return executor


def run_job(job: Job, root: Path, force: bool = False) -> dict[str, Any]:
    """What a submitted job runs on its node: the job under its lock, as the local launcher
    runs it. A job another process finished meanwhile (a second ``run_all.sh``, or the same
    job resubmitted while the first still ran) is found finished under the lock and reused.
    Returns where it ran and what it used; a failure raises :class:`JobFailed` with a
    one-line cause (the full traceback stays in the submitit log)."""
    import resource  # POSIX only, as Slurm is

    t0 = time.perf_counter()
    start = now_iso()
    with hold_lock(f"job__{job.name}", f"job {job.name}", root):
        if not force and jobs_mod.is_finished(job, root):
            status = "reused"
        else:
            try:
                jobs_mod.execute(job, root)
            except Exception as err:  # noqa: BLE001 - one line for the summary, cause chained
                # papermill's error carries the failing cell's exception as ename / evalue
                ename = getattr(err, "ename", None) or type(err).__name__
                evalue = getattr(err, "evalue", None) or str(err)
                cause = " ".join(str(evalue).split())[:500]
                raise JobFailed(f"{ename}: {cause}") from err
            status = "ran"
    # ru_maxrss is in KiB on Linux (bytes on macOS); "children": the notebook's kernel, the
    # largest process a job starts, once papermill has shut it down and waited for it
    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "status": status,
        "start": start,
        "end": now_iso(),
        "wall_s": round(time.perf_counter() - t0, 3),
        "host": socket.gethostname(),
        "cpus_usable": len(affinity(0)) if affinity else os.cpu_count(),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1),
        "max_rss_children_mb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale, 1
        ),
        "env": {k: os.environ[k] for k in JOB_ENV if k in os.environ},
    }


def _failure(err: BaseException) -> str:
    """The one-line cause of a failed submitted job: :class:`JobFailed`'s message when the job
    raised it, else the first line submitit gives (a job killed by a timeout or the scheduler
    leaves no result, and submitit says so)."""
    text = str(err)
    for line in reversed(text.splitlines()):
        if line.startswith(f"{JobFailed.__module__}.{JobFailed.__name__}: "):
            return line.split(": ", 1)[1]
    if isinstance(err, JobFailed):
        return text
    first = next((ln for ln in text.splitlines() if ln.strip()), type(err).__name__)
    return f"{type(err).__name__}: {first.strip()[:500]}"


def run_slurm(
    jobs: Sequence[Job],
    root: Path,
    spec: dict[str, Any],
    dry_run: bool,
    force: bool,
    cluster: str = "slurm",
) -> int:
    """Submit the jobs through submitit: one array per notebook, a barrier between notebooks.

    Dependencies: notebook order is the dependency order, so each notebook's jobs are
    submitted as one submitit batch (a Slurm job array) once every job of the notebooks
    before it has ended. This is a barrier, not Slurm ``afterok`` dependencies: what runs on
    the cluster is then exactly what submitit's local executor runs in the tests, it needs no
    home-made scheduler, and it costs only the idle tail of each notebook's array. A job whose
    upstream job (``Job.upstream``: the earlier jobs of its dataset; all of them for notebook
    07) failed, or was itself held back, is not submitted and is reported as skipped because
    of it; independent jobs (other datasets, the rest of the array) still run.

    Resources: :func:`slurm_resources` (the profile's ``slurm`` block, defaults plus
    ``per_notebook`` overrides), validated, and every executor built, before any submission.
    What each job asked for and used is written to ``results/slurm/<job>.json``; submitit's
    logs are in ``results/slurm/<job id>/``.

    Cache: finished, unchanged jobs (:func:`is_finished`) are not submitted, as with the local
    launcher; a submitted job takes the job lock and checks again (:func:`run_job`).

    Failures: every failed job is collected; the summary at the end names each with its error,
    its executed notebook and its submitit log, and the return code is 1.
    """
    resources = slurm_resources(spec)
    folder = root / "slurm"
    notebooks = [nb for nb in NOTEBOOKS if any(j.notebook == nb for j in jobs)]
    executors = (
        {}
        if dry_run
        else {nb: slurm_executor(folder, cluster, resources[nb], nb) for nb in notebooks}
    )
    t_all = time.perf_counter()
    failed: dict[str, tuple[str, list[Path]]] = {}  # job -> (cause, files to open)
    held: dict[str, str] = {}  # job -> the failed job it waited for
    n_run = n_reused = n_skipped = 0
    for nb in notebooks:
        todo: list[Job] = []
        for job in (j for j in jobs if j.notebook == nb):
            cause = next((u for u in job.upstream if u in failed or u in held), None)
            if cause is not None:
                held[job.name] = held.get(cause, cause)
                print(f"  {job.name}  not submitted: {held[job.name]} failed", flush=True)
            elif not force and jobs_mod.is_finished(job, root):
                n_skipped += 1
                print(f"  {job.name}  skipped (finished, unchanged)", flush=True)
            else:
                todo.append(job)
        if dry_run:
            for job in todo:
                print(f"  {job.name}  would submit ({cluster}) {json.dumps(resources[nb])}")
            continue
        if not todo:
            continue
        executor = executors[nb]
        with executor.batch():
            handles = [executor.submit(run_job, job, root, force) for job in todo]
        ids = ", ".join(str(h.job_id) for h in handles)
        print(f"[medstudy] {nb}: {len(todo)} jobs submitted ({cluster}: {ids})", flush=True)
        for job, handle in zip(todo, handles, strict=True):
            record: dict[str, Any] = {
                "job": job.name,
                "cluster": cluster,
                "submitit_job_id": str(handle.job_id),
                "requested": resources[nb],
                "log_stdout": str(handle.paths.stdout),
                "log_stderr": str(handle.paths.stderr),
            }
            try:
                err = handle.exception()  # waits for the job; None if it succeeded
            except Exception as watch_err:  # noqa: BLE001 - e.g. sacct failing: this job's report
                err = watch_err
            if err is None:
                used = handle.result()
                record.update(used)
                n_run += used["status"] == "ran"
                n_reused += used["status"] == "reused"
                how = "done" if used["status"] == "ran" else "finished meanwhile (reused)"
                print(
                    f"  {job.name}  {how} in {used['wall_s']:.1f} s on {used['host']}", flush=True
                )
            else:
                cause = _failure(err)
                files = [p for p in (failed_output(job, root),) if p.exists()]
                files.append(handle.paths.stderr)
                failed[job.name] = (cause, files)
                record.update(status="failed", error=cause)
                print(f"  {job.name}  FAILED: {cause}", flush=True)
            write_json(folder / f"{job.name}.json", record)
    if dry_run:
        return 0
    print(
        f"[medstudy] {n_run} run, {n_reused} reused, {n_skipped} skipped, {len(failed)} failed, "
        f"{len(held)} not submitted, {time.perf_counter() - t_all:.1f} s",
        flush=True,
    )
    if not failed:
        return 0
    lines = [f"\n[medstudy] {len(failed)} job(s) FAILED:"]
    for name, (cause, files) in failed.items():
        lines.append(f"  {name}: {cause}")
        lines += [f"      open: {p}" for p in files]
    if held:
        lines.append("[medstudy] not submitted, because a job they read from failed:")
        lines += [f"  {name} (after {cause})" for name, cause in held.items()]
    print("\n".join(lines), file=sys.stderr, flush=True)
    return 1
