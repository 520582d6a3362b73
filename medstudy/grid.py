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

CLI (``run_all.sh`` passes its flags here)::

    python -m medstudy.grid [--profile quick] [--only 01,03] [--datasets a,b] [--dry-run]
                            [--results DIR] [--force] [--launcher local|slurm]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from medstudy import paths, profiles
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
PROFILES: tuple[str, ...] = ("smoke", "quick", "full", "full128", "full224")
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


def load_profile(profile: str, overrides: Sequence[Path] = ()) -> dict[str, Any]:
    """``params/<profile>.yaml`` (a shipped :data:`PROFILES` or a user's file) with its ``base:``
    chain and ``overrides`` applied (:mod:`medstudy.profiles`); unknown names list the valid."""
    try:
        spec = profiles.resolve(profile, overrides)
    except profiles.ProfileError as err:
        raise GridError(str(err)) from None
    path = paths.params_dir() / f"{profile}.yaml"
    spec["profile"] = profile  # the file name: its identity (results root, label in the paper)
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
    overrides: Sequence[Path] = (),
) -> int:
    spec = load_profile(profile, overrides)
    if datasets:
        for ds in datasets:
            validate_dataset(ds)
    jobs = expand(spec, only, datasets)
    validate_jobs(jobs)
    root = paths.results_dir()
    if not dry_run:
        check_writable(root)
    print(f"[medstudy] profile={profile} jobs={len(jobs)} results={root}", flush=True)
    if launcher == "slurm":
        return run_slurm(jobs, root, spec, dry_run=dry_run, force=force)
    if launcher != "local":
        raise GridError(f"unknown launcher {launcher!r}; valid: ['local', 'slurm']")
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


def run_slurm(
    jobs: Sequence[Job], root: Path, spec: dict[str, Any], dry_run: bool, force: bool
) -> int:
    """Submit each notebook's jobs as a submitit array and wait before the next notebook.

    Notebook order is the dependency order, so one array per notebook keeps it without a
    home-made scheduler. Slurm options come from the profile's ``slurm`` block.
    """
    try:
        import submitit
    except ImportError as err:
        raise GridError("--launcher slurm needs submitit: pip install -e '.[slurm]'") from err
    todo = [j for j in jobs if force or not is_finished(j, root)]
    if dry_run:
        for j in todo:
            print(f"slurm: would submit {j.name}")
        return 0
    executor = submitit.AutoExecutor(folder=str(root / "slurm"))
    executor.update_parameters(**spec.get("slurm", {}))
    for nb in NOTEBOOKS:
        batch = [j for j in todo if j.notebook == nb]
        if not batch:
            continue
        with executor.batch():
            handles = [executor.submit(execute, j, root) for j in batch]
        for job, handle in zip(batch, handles, strict=True):
            try:
                handle.result()
            except Exception as err:  # noqa: BLE001
                print(f"[medstudy] FAILED on slurm: {job.name}: {err}", file=sys.stderr)
                return 1
    return 0


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
    parser.add_argument("--profile", default="quick", help=f"{list(PROFILES)} or params/<x>.yaml")
    parser.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 01,03")
    parser.add_argument("--datasets", default="", help="override the profile's datasets")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs, run nothing")
    parser.add_argument("--results", default="", help="results dir (MEDSTUDY_RESULTS_DIR)")
    parser.add_argument("--force", action="store_true", help="re-run finished jobs too")
    parser.add_argument("--launcher", default="local", help="local | slurm (submitit)")
    parser.add_argument("--override", action="append", default=[], help="profiles.py; repeatable")
    args = parser.parse_args(argv)
    overrides = profiles.override_paths(args.override)
    # Notebook kernels run with the notebooks folder as cwd: a relative data or results dir
    # must be pinned to what it means here, or the kernels would look somewhere else.
    absolutise_env_dirs()
    if args.results:
        os.environ["MEDSTUDY_RESULTS_DIR"] = str(Path(args.results).resolve())
    elif not os.environ.get("MEDSTUDY_RESULTS_DIR"):
        # One results root per profile: smoke, quick and full runs never mix in one claims table.
        label = profiles.results_label(args.profile, overrides)
        os.environ["MEDSTUDY_RESULTS_DIR"] = str(paths.repo_root() / "results" / label)
    only = [s for s in args.only.split(",") if s]
    datasets = [s for s in args.datasets.split(",") if s]
    try:
        return run(args.profile, only, datasets, args.dry_run, args.force, args.launcher, overrides)
    except (GridError, ValueError) as err:
        print(f"[medstudy] error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
