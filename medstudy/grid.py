"""Expand a profile (``params/<profile>.yaml``) into papermill jobs and run them in order.

A *job* (:mod:`medstudy.jobs`) is one notebook execution:
``results/executed/<notebook>__<key>.ipynb``. Jobs run in notebook order (01 → 07), which is the dependency order. A job is skipped when its
stamp records the same *job hash* (:func:`medstudy.jobs.job_hash`: its parameters, the
notebook's source, the package's code version, its data files' md5s and the stamps of the jobs
it reads from). So a code change re-executes every job; inside a notebook every expensive unit
is cached by run_id and reused only if its stage's code is unchanged
(:func:`medstudy.results.is_current`), so a re-executed notebook recomputes only what the
change touched.

Launchers: ``local`` (the default) executes the jobs one after another on this machine and
stops at the first failure. ``slurm`` submits them through submitit
(:func:`medstudy.slurm.run_slurm`): one job array per notebook, each notebook's array once the
notebooks before it have ended, resources from the profile's ``slurm`` block, the same stamps
and per-job locks, every failure collected and summarised at the end. ``--slurm-cluster local``
sends the same submission to submitit's local executor (each job a subprocess of this machine)
instead of a Slurm cluster: laptops, CI and ``tests/test_slurm.py``.

CLI (``run_all.sh`` passes its flags here)::

    python -m medstudy.grid [--profile quick] [--only 01,03] [--datasets a,b] [--dry-run]
                            [--results DIR] [--force] [--launcher local|slurm]
                            [--slurm-cluster slurm|local] [--override FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from medstudy import jobs as jobs_mod
from medstudy import paths, profiles
from medstudy.config import ConfigError, TransferConfig, validate_dataset
from medstudy.jobs import NOTEBOOKS, GridError, Job, check_writable, failed_output, validate_jobs
from medstudy.locks import hold_lock
from medstudy.slurm import SLURM_CLUSTERS, run_slurm, slurm_resources

#: How the jobs are run: one after another here, or submitted through submitit.
LAUNCHERS: tuple[str, ...] = ("local", "slurm")

PROFILES: tuple[str, ...] = ("smoke", "quick", "full", "full128", "full224")
#: The profile's shared ``pretrain`` block: exactly the notebook-01 settings that notebooks 02/03
#: mirror as ``pretrain_<key>`` (TransferConfig) to find 01's checkpoints.
PRETRAIN_KEYS: tuple[str, ...] = tuple(
    f.name.removeprefix("pretrain_")
    for f in fields(TransferConfig)
    if f.name.startswith("pretrain_")
)


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


def run(
    profile: str = "quick",
    only: Sequence[str] = (),
    datasets: Sequence[str] = (),
    dry_run: bool = False,
    force: bool = False,
    launcher: str = "local",
    slurm_cluster: str | None = None,
    overrides: Sequence[Path] = (),
) -> int:
    if launcher not in LAUNCHERS:
        raise GridError(f"unknown launcher {launcher!r}; valid: {list(LAUNCHERS)}")
    if slurm_cluster is not None and launcher != "slurm":
        raise GridError("--slurm-cluster applies to --launcher slurm only")
    if slurm_cluster is not None and slurm_cluster not in SLURM_CLUSTERS:
        raise GridError(f"unknown --slurm-cluster {slurm_cluster!r}; valid: {list(SLURM_CLUSTERS)}")
    spec = load_profile(profile, overrides)
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
        finished = not force and jobs_mod.is_finished(job, root)
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
                if not force and jobs_mod.is_finished(job, root):
                    n_skipped += 1
                    print(f"{tag}  finished by another process meanwhile (reused)", flush=True)
                    continue
                print(f"{tag}  running …", flush=True)
                wall = jobs_mod.execute(job, root)
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
    parser.add_argument("--profile", default="quick", help=f"{list(PROFILES)} or params/<x>.yaml")
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
        return run(
            args.profile,
            only,
            datasets,
            args.dry_run,
            args.force,
            args.launcher,
            args.slurm_cluster,
            overrides,
        )
    except (GridError, ValueError) as err:
        print(f"[medstudy] error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
