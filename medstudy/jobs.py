"""The jobs of a study: the notebooks, one papermill execution each, and their stamps.

A *job* is one notebook execution: ``results/executed/<notebook>__<key>.ipynb``. It is finished
when its stamp (``results/executed/<notebook>__<key>.done.json``) records the same *job hash*:
the hash of its parameters, the notebook's source, the package's code version
(:func:`medstudy.codeversion.package_version`), the md5s of its dataset files and the stamps of
the jobs it reads from. Both launchers (:mod:`medstudy.grid`'s local loop and
:mod:`medstudy.slurm`) execute a job here, so a job means the same thing wherever it ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medstudy import paths
from medstudy.codeversion import package_version
from medstudy.config import (
    ClaimsConfig,
    InterpretConfig,
    LabelEfficiencyConfig,
    PretrainConfig,
    RepresentationsConfig,
    RobustnessConfig,
    StageConfig,
    TransferConfig,
)
from medstudy.data.loaders import DataFileError, dataset_inputs
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
