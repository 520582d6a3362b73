"""Expand a profile (``params/<profile>.yaml``) into papermill jobs and run them in order.

A *job* is one notebook execution: ``results/executed/<notebook>__<key>.ipynb``. Jobs run in
notebook order (01 → 07), which is the dependency order. A job is skipped when its stamp
(``results/executed/<notebook>__<key>.done.json``) records the same *job hash*: the hash of its
parameters, the notebook's source, the package's code version
(:func:`medstudy.codeversion.package_version`, a hash of every ``medstudy`` source file), the
md5s of its dataset files and the stamps of the jobs it reads from. So a code change
re-executes every job; inside a notebook every expensive unit is cached by run_id and reused
only if its stage's code is unchanged (:func:`medstudy.results.is_current`), so a re-executed
notebook recomputes only what the change touched.

Launchers: ``local`` (the default) executes the jobs one after another on this machine and
stops at the first failure. ``slurm`` submits them through submitit (:func:`run_slurm`): one
job array per notebook, each notebook's array once the notebooks before it have ended,
resources from the profile's ``slurm`` block, the same stamps and per-job locks, every failure
collected and summarised at the end. ``--slurm-cluster local`` sends the same
submission to submitit's local executor (each job a subprocess of this machine) instead of a
Slurm cluster: laptops, CI and ``tests/test_slurm.py``.

CLI (``run_all.sh`` passes its flags here)::

    python -m medstudy.grid [--profile quick] [--only 01,03] [--datasets a,b] [--dry-run]
                            [--results DIR] [--force] [--launcher local|slurm]
                            [--slurm-cluster slurm|local]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from medstudy import paths
from medstudy.codeversion import package_version
from medstudy.config import (
    ClaimsConfig,
    ConfigError,
    InterpretConfig,
    LabelEfficiencyConfig,
    PretrainConfig,
    RepresentationsConfig,
    RobustnessConfig,
    StageConfig,
    TransferConfig,
    validate_dataset,
)
from medstudy.data.loaders import DataFileError, dataset_inputs
from medstudy.locks import hold_lock
from medstudy.results import now_iso, write_json

#: How a notebook is split into papermill jobs: one per dataset × arm, per dataset, or once.
FAN_OUTS: tuple[str, ...] = ("dataset_arm", "dataset", "once")


@dataclass(frozen=True)
class NotebookSpec:
    """One notebook of the study: its config class, how a profile fans it out into jobs, and
    the results stage it writes (``""``: the claims table, not a stage)."""

    name: str
    config: type[StageConfig]
    fan_out: str
    stage: str


#: Every notebook, in dependency order (a notebook reads only the stages of earlier ones).
NOTEBOOKS: dict[str, NotebookSpec] = {
    nb.name: nb
    for nb in (
        NotebookSpec("01_pretrain", PretrainConfig, "dataset_arm", PretrainConfig.stage),
        NotebookSpec("02_transfer", TransferConfig, "dataset", TransferConfig.stage),
        NotebookSpec(
            "03_label_efficiency", LabelEfficiencyConfig, "dataset", LabelEfficiencyConfig.stage
        ),
        NotebookSpec(
            "04_representations", RepresentationsConfig, "dataset", RepresentationsConfig.stage
        ),
        NotebookSpec("05_interpretability", InterpretConfig, "dataset", InterpretConfig.stage),
        NotebookSpec("06_robustness", RobustnessConfig, "dataset", RobustnessConfig.stage),
        NotebookSpec("07_robustness_stats", ClaimsConfig, "once", ""),
    )
}
PROFILES: tuple[str, ...] = ("smoke", "quick", "full")
#: The profile's shared ``pretrain`` block: exactly the notebook-01 settings that notebooks 02/03
#: mirror as ``pretrain_<key>`` (TransferConfig) to find 01's checkpoints.
PRETRAIN_KEYS: tuple[str, ...] = tuple(
    f.name.removeprefix("pretrain_")
    for f in fields(TransferConfig)
    if f.name.startswith("pretrain_")
)


class GridError(ValueError):
    """A profile or a CLI flag is invalid."""


@dataclass
class Job:
    notebook: str
    key: str
    params: dict[str, Any]
    dataset: str | None = None
    upstream: list[str] = field(default_factory=list)  # job names this job reads from

    @property
    def name(self) -> str:
        return f"{self.notebook}__{self.key}"

    def output(self, root: Path) -> Path:
        return paths.executed_dir(root) / f"{self.name}.ipynb"

    def stamp(self, root: Path) -> Path:
        return paths.executed_dir(root) / f"{self.name}.done.json"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


#: The top-level keys of a profile file (``profile`` is set from the file name).
PROFILE_KEYS = (
    "profile", "description", "backbone", "image_size", "datasets", "pretrain", "notebooks",
    "slurm",
)  # fmt: skip


def load_profile(profile: str) -> dict[str, Any]:
    """Read ``params/<profile>.yaml`` (the shipped :data:`PROFILES` or a user's own file);
    unknown profiles name the valid ones."""
    path = paths.params_dir() / f"{profile}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", profile) or not path.exists():
        valid = sorted(p.stem for p in paths.params_dir().glob("*.yaml"))
        raise GridError(f"unknown profile {profile!r}; valid: {valid}")
    with open(path) as fh:
        spec = yaml.safe_load(fh)
    # The file name is the profile's identity (results root, the label in the paper).
    spec["profile"] = profile
    for key in ("datasets", "notebooks"):
        if key not in spec:
            raise GridError(f"{path}: missing top-level key {key!r}")
    # a typo ("image_sise: 64") would otherwise be ignored and the run silently use the default
    unknown_top = sorted(set(spec) - set(PROFILE_KEYS))
    if unknown_top:
        raise GridError(
            f"{path}: unknown top-level keys {unknown_top}; valid: {list(PROFILE_KEYS)}"
        )
    unknown = sorted(set(spec["notebooks"]) - set(NOTEBOOKS))
    if unknown:
        raise GridError(f"{path}: unknown notebooks {unknown}; valid: {list(NOTEBOOKS)}")
    return spec


def expand(
    spec: dict[str, Any], only: Sequence[str] = (), datasets: Sequence[str] = ()
) -> list[Job]:
    """The profile's jobs in dependency order, filtered by ``only`` (e.g. ``["01", "03"]``)."""
    chosen = list(datasets) or list(spec["datasets"])
    common = {
        "backbone": spec.get("backbone", "resnet20_cifar"),
        "image_size": spec.get("image_size", 28),
    }
    pretrain = spec.get("pretrain", {})
    unknown_pre = sorted(set(pretrain) - set(PRETRAIN_KEYS))
    if unknown_pre:
        raise GridError(f"pretrain block: unknown keys {unknown_pre}; valid: {list(PRETRAIN_KEYS)}")
    if pretrain.get("paired") and "seed" in pretrain:
        raise GridError(
            "pretrain block: 'paired: true' takes the pretraining seeds from the later notebooks' "
            "seeds; remove 'seed'"
        )
    prefixes = {o.split("_")[0] for o in only}
    bad = sorted(prefixes - {n.split("_")[0] for n in NOTEBOOKS})
    if bad:
        raise GridError(f"--only: unknown notebooks {bad}; valid: {[n[:2] for n in NOTEBOOKS]}")
    jobs: list[Job] = []
    by_dataset: dict[str, list[str]] = {}
    for nb in NOTEBOOKS:
        if nb not in spec["notebooks"]:
            continue
        nb_spec = dict(spec["notebooks"][nb] or {})
        if NOTEBOOKS[nb].fan_out == "once":
            job = Job(nb, "all", {**nb_spec, "datasets": chosen, "profile": spec["profile"]})
            job.upstream = [j.name for j in jobs]
            jobs.append(job)
            continue
        per_arm = NOTEBOOKS[nb].fan_out == "dataset_arm"
        arms = nb_spec.pop("arms", []) if per_arm else []
        # A notebook may run on a subset of the profile's datasets (e.g. a pneumonia-only arm)
        # and override parameters for one dataset (``per_dataset: {name: {param: value}}``,
        # e.g. the curriculum fine-tuned only on chest X-ray, where claim C5 tests it).
        only_ds = nb_spec.pop("datasets", None)
        per_dataset = nb_spec.pop("per_dataset", None) or {}
        bad_over = (
            sorted(k for k, v in per_dataset.items() if not isinstance(v, dict | None))
            if isinstance(per_dataset, dict)
            else []
        )
        if not isinstance(per_dataset, dict) or bad_over:
            raise GridError(
                f"{nb}: per_dataset must map a dataset to {{parameter: value}}; bad: "
                f"{bad_over or per_dataset!r}"
            )
        for what, names in (("datasets", only_ds or []), ("per_dataset", per_dataset)):
            unknown_ds = sorted(set(names) - set(spec["datasets"]))
            if unknown_ds:
                raise GridError(f"{nb}: {what} {unknown_ds} are not in the profile's datasets")
        overridden = {k for over in per_dataset.values() for k in over}
        clash = sorted((set(nb_spec) | overridden) & set(PRETRAIN_KEYS)) if per_arm else []
        if clash:
            raise GridError(
                f"{nb}: {clash} belong in the profile's shared 'pretrain' block, so that later "
                "notebooks find the checkpoints 01 wrote"
            )
        for ds in chosen:
            # A notebook's ``datasets`` trims the profile's own datasets to those its claims
            # need; a dataset named on the command line that the profile does not list (e.g.
            # a MedMNIST-format file dropped into the data dir) runs in every notebook.
            if only_ds is not None and ds not in only_ds and ds in spec["datasets"]:
                continue
            upstream = list(by_dataset.get(ds, []))
            over = dict(per_dataset.get(ds) or {})
            if per_arm:
                shared = {k: v for k, v in pretrain.items() if k != "paired"}
                for arm in over.pop("arms", arms):
                    params = {**common, "dataset": ds, "arm": arm, **shared, **nb_spec, **over}
                    key = f"{ds}__{_slug(arm)}"
                    if not pretrain.get("paired"):
                        jobs.append(Job(nb, key, params, ds, upstream))
                        continue
                    # Pretraining replicates: one run per downstream seed (seed s of 02-06
                    # uses the encoder pretrained with seed s), all in this arm's one job so
                    # that the kernel start and the figures are paid once, not per seed; each
                    # run keeps its own folder, so an interrupted job resumes seed by seed.
                    # (a profile of 01 alone has no downstream seeds: then seed 0 only)
                    seeds = downstream_seeds(spec, ds) or [0]
                    replicates = {"seed": seeds[0], "replicates": seeds}
                    jobs.append(Job(nb, key, {**params, **replicates}, ds, upstream))
            else:
                # the profile's shared keys go to the notebooks whose config has them (06 has
                # no pretrain_* fields); the notebook's own keys always go (and are validated)
                fields_ = {f.name for f in fields(NOTEBOOKS[nb].config)}
                shared = {**common, **{f"pretrain_{k}": v for k, v in pretrain.items()}}
                params = {k: v for k, v in shared.items() if k in fields_}
                params["dataset"] = ds
                params.update(nb_spec)
                params.update(over)
                if ds not in spec["datasets"] and not _accepts_new_dataset(nb, params):
                    continue
                jobs.append(Job(nb, ds, params, ds, upstream))
        for job in jobs:
            if job.notebook == nb and job.dataset:
                by_dataset.setdefault(job.dataset, []).append(job.name)
    if prefixes:
        jobs = [j for j in jobs if j.notebook.split("_")[0] in prefixes]
    return jobs


def _accepts_new_dataset(notebook: str, params: dict[str, Any]) -> bool:
    """Whether a notebook can run on a dataset named on the command line that the profile does
    not list. A notebook whose config refuses the dataset itself (05 needs ground-truth masks)
    is skipped with a note on stderr, and its claim rows say *not run*; any other error is
    left to :func:`validate_jobs`, which fails before any work."""
    try:
        NOTEBOOKS[notebook].config.from_params(**params)
    except ConfigError as err:
        if repr(params["dataset"]) not in str(err):
            return True
        print(f"[medstudy] {notebook} skipped on {params['dataset']}: {err}", file=sys.stderr)
        return False
    return True


def downstream_seeds(spec: dict[str, Any], dataset: str) -> list[int]:
    """Every seed a later notebook of the profile uses for ``dataset`` (its own ``seeds`` or a
    ``per_dataset`` override), sorted: the pretraining replicates a paired profile needs."""
    seeds: set[int] = set()
    for nb, nb_spec in spec["notebooks"].items():
        if NOTEBOOKS[nb].fan_out != "dataset" or not nb_spec:
            continue
        over = (nb_spec.get("per_dataset") or {}).get(dataset) or {}
        seeds.update(over.get("seeds", nb_spec.get("seeds", [0])))
    return sorted(seeds)


def job_hash(job: Job, root: Path) -> str:
    notebook = paths.notebooks_dir() / f"{job.notebook}.ipynb"
    upstream = {}
    for name in job.upstream:
        stamp = paths.executed_dir(root) / f"{name}.done.json"
        upstream[name] = json.loads(stamp.read_text())["hash"] if stamp.exists() else None
    payload = {
        "params": job.params,
        "notebook": hashlib.sha256(notebook.read_bytes()).hexdigest(),
        "code": package_version(),
        "data": dataset_inputs(job.dataset, int(job.params.get("image_size", 28))),
        "upstream": upstream,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_finished(job: Job, root: Path) -> bool:
    stamp = job.stamp(root)
    if not stamp.exists() or not job.output(root).exists():
        return False
    return json.loads(stamp.read_text()).get("hash") == job_hash(job, root)


def failed_output(job: Job, root: Path) -> Path:
    """Where a job's notebook is executed, and stays when it fails."""
    return paths.executed_dir(root) / f"{job.name}.partial.ipynb"


def execute(job: Job, root: Path) -> float:
    """Run one job with papermill; returns wall seconds. Raises on failure."""
    import papermill as pm  # imported here: it starts slowly and only a run needs it

    notebook = paths.notebooks_dir() / f"{job.notebook}.ipynb"
    out = job.output(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # Executed under a ".partial" name and renamed on success: an interrupted job never leaves
    # an executed notebook that looks finished, and a failed one is kept for the reader (the
    # error message points to it).
    partial = failed_output(job, root)
    pm.execute_notebook(
        str(notebook),
        str(partial),
        parameters=job.params,
        kernel_name="python3",
        progress_bar=False,
        cwd=str(paths.notebooks_dir()),
    )
    os.replace(partial, out)
    wall = time.perf_counter() - t0
    write_json(
        job.stamp(root),
        {"hash": job_hash(job, root), "params": job.params, "end": now_iso(), "wall_s": wall},
    )
    return wall


def check_writable(root: Path) -> None:
    """Fail before any work if the results dir cannot be created or written (a read-only
    mount, a path through a file, no permission), naming it and the ways to choose another."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=".write-check-", delete=True)
        probe.close()
    except OSError as err:
        raise GridError(
            f"results dir {root} is not writable ({type(err).__name__}: {err.strerror or err}); "
            "choose another with --results DIR or MEDSTUDY_RESULTS_DIR"
        ) from None


def run(
    profile: str = "quick",
    only: Sequence[str] = (),
    datasets: Sequence[str] = (),
    dry_run: bool = False,
    force: bool = False,
    launcher: str = "local",
    slurm_cluster: str | None = None,
) -> int:
    if launcher not in LAUNCHERS:
        raise GridError(f"unknown launcher {launcher!r}; valid: {list(LAUNCHERS)}")
    if slurm_cluster is not None and launcher != "slurm":
        raise GridError("--slurm-cluster applies to --launcher slurm only")
    if slurm_cluster is not None and slurm_cluster not in SLURM_CLUSTERS:
        raise GridError(f"unknown --slurm-cluster {slurm_cluster!r}; valid: {list(SLURM_CLUSTERS)}")
    spec = load_profile(profile)
    if datasets:
        for ds in datasets:
            validate_dataset(ds)
    jobs = expand(spec, only, datasets)
    validate_jobs(jobs)
    if launcher == "slurm":
        slurm_resources(spec)  # a bad slurm block fails here, before the results dir is made
    root = paths.results_dir()
    if not dry_run:
        check_writable(root)
    print(f"[medstudy] profile={profile} jobs={len(jobs)} results={root}", flush=True)
    if launcher == "slurm":
        return run_slurm(jobs, root, spec, dry_run, force, slurm_cluster or "slurm")
    t_all = time.perf_counter()
    n_skipped = 0
    for i, job in enumerate(jobs, 1):
        finished = not force and is_finished(job, root)
        tag = f"[{i}/{len(jobs)}] {job.name}"
        if dry_run:
            print(f"{tag}  {'done (skip)' if finished else 'to run'}  {json.dumps(job.params)}")
            continue
        if finished:
            n_skipped += 1
            print(f"{tag}  skipped (finished, unchanged)", flush=True)
            continue
        try:
            # one process per job: a second run_all.sh on this results dir waits here, then
            # finds the job finished (same stamp) and reuses it
            with hold_lock(f"job__{job.name}", f"job {job.name}", root):
                if not force and is_finished(job, root):
                    n_skipped += 1
                    print(f"{tag}  finished by another process meanwhile (reused)", flush=True)
                    continue
                print(f"{tag}  running …", flush=True)
                wall = execute(job, root)
        except Exception as err:  # noqa: BLE001 - report which notebook to open, then stop
            print(
                f"\n[medstudy] FAILED: {job.name}: {type(err).__name__}: {str(err)[:2000]}\n"
                f"Open the executed notebook to see the failing cell: {failed_output(job, root)}",
                file=sys.stderr,
            )
            return 1
        print(f"{tag}  done in {wall:.1f} s", flush=True)
    if dry_run:
        return 0
    print(
        f"[medstudy] {len(jobs) - n_skipped} run, {n_skipped} skipped, "
        f"{time.perf_counter() - t_all:.1f} s",
        flush=True,
    )
    return 0


def validate_jobs(jobs: Sequence[Job]) -> None:
    """Check every job's parameters against its stage config, and read each dataset's identity
    (a bad manifest fails here, naming the CSV line, not in notebook 01), before any work."""
    for job in jobs:
        if job.notebook not in NOTEBOOKS:
            raise GridError(f"{job.notebook}: no such notebook in this version of medstudy")
        try:
            NOTEBOOKS[job.notebook].config.from_params(**job.params)
        except (ValueError, TypeError) as err:
            raise GridError(f"profile job {job.name}: {err}") from None
        if not (paths.notebooks_dir() / f"{job.notebook}.ipynb").exists():
            raise GridError(f"notebook missing: {paths.notebooks_dir() / job.notebook}.ipynb")
    pairs = {(j.dataset, int(j.params.get("image_size", 28))) for j in jobs if j.dataset}
    for ds, size in sorted(pairs):
        try:
            dataset_inputs(ds, size)
        except DataFileError as err:
            raise GridError(f"dataset {ds!r}: {err}") from None


#: Where ``--launcher slurm`` sends its jobs (``--slurm-cluster``): a Slurm cluster, or
#: submitit's local executor, which runs every submitted job as a subprocess of this machine
#: through the same pickling, logging and result files (laptops, CI, tests/test_slurm.py).
SLURM_CLUSTERS: tuple[str, ...] = ("slurm", "local")
LAUNCHERS: tuple[str, ...] = ("local", "slurm")
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
        if not force and is_finished(job, root):
            status = "reused"
        else:
            try:
                execute(job, root)
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
            elif not force and is_finished(job, root):
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


ENV_DIRS = (
    "MEDSTUDY_DATA_DIR", "MEDSTUDY_RESULTS_DIR", "MEDSTUDY_PARAMS_DIR", "MEDSTUDY_CACHE_DIR",
)  # fmt: skip


def absolutise_env_dirs(names: Sequence[str] = ENV_DIRS) -> None:
    """Rewrite relative ``MEDSTUDY_*_DIR`` variables as absolute paths (against this cwd)."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            os.environ[name] = str(Path(value).expanduser().resolve())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profile", default="quick", help=f"{list(PROFILES)} or params/<name>.yaml"
    )
    parser.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 01,03")
    parser.add_argument("--datasets", default="", help="override the profile's datasets")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs, run nothing")
    parser.add_argument("--results", default="", help="results dir (MEDSTUDY_RESULTS_DIR)")
    parser.add_argument("--force", action="store_true", help="re-run finished jobs too")
    parser.add_argument("--launcher", default="local", help="local | slurm (submitit)")
    parser.add_argument(
        "--slurm-cluster",
        default=None,
        help="with --launcher slurm: slurm (default) | local (submitit's local executor: the "
        "same submission, each job a subprocess of this machine)",
    )
    args = parser.parse_args(argv)
    # Notebook kernels run with the notebooks folder as cwd: a relative data or results dir
    # must be pinned to what it means here, or the kernels would look somewhere else.
    absolutise_env_dirs()
    if args.results:
        os.environ["MEDSTUDY_RESULTS_DIR"] = str(Path(args.results).resolve())
    elif not os.environ.get("MEDSTUDY_RESULTS_DIR"):
        # One results root per profile: smoke, quick and full runs never mix in one claims table.
        os.environ["MEDSTUDY_RESULTS_DIR"] = str(paths.repo_root() / "results" / args.profile)
    only = [s for s in args.only.split(",") if s]
    datasets = [s for s in args.datasets.split(",") if s]
    try:
        return run(
            args.profile,
            only,
            datasets,
            args.dry_run,
            args.force,
            args.launcher,
            args.slurm_cluster,
        )
    except (GridError, ValueError) as err:
        print(f"[medstudy] error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
