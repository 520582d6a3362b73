"""Audit a results tree without changing it: ``python -m medstudy.audit [--results DIR]``.

Every run folder ``<results>/<stage>/<run_id>/`` (``executed/``, ``paper/``, ``slurm/`` and the
image ``cache/`` are not stages) must be finished (DONE), with a parseable config and a manifest holding MANIFEST_KEYS
whose ``run_id``/``stage`` are the folder's (for a :func:`copy_run` copy: its origin's) and whose
config hash is the run id; the data files its manifest names must keep their md5 (a file not
found is only a warning); its tables must parse, and it holds predictions when the other runs of
its stage do. No temp file of an interrupted atomic write may be left anywhere (a partial
notebook in ``executed/`` is a warning), and every run ``claims.csv`` names must be a finished,
sound run of the row's stage. Exit code 0 without errors, 1 with, 2 without a results dir.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from medstudy import paths
from medstudy.results import (
    CONFIG_FILE,
    DETAILS_FILE,
    DONE_FILE,
    GIT_KEYS,
    MANIFEST_FILE,
    MANIFEST_KEYS,
    METRIC_COLUMNS,
    METRICS_FILE,
    PREDICTIONS_FILE,
    is_temp_file,
    run_id,
    run_origin,
)

ERROR, WARN = "error", "warn"
#: Folders of the results root that are not stages (notebooks, the paper, submitit logs, the
#: decoded-image cache of medstudy.data.cache).
NOT_STAGES = frozenset({"executed", "paper", "slurm", "cache"})
CLAIMS_FILE = "claims.csv"
PARTIAL_NOTEBOOK = ".partial.ipynb"


@dataclass(frozen=True)
class Problem:
    """One finding: ``path`` is relative to the results dir (absolute outside it)."""

    kind: str
    path: str
    message: str
    severity: str = ERROR

    def line(self) -> str:
        tag = "ERROR" if self.severity == ERROR else "WARN"
        return f"{tag} {self.kind} {self.path}: {self.message}"


def errors(problems: Sequence[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == ERROR]


def warnings(problems: Sequence[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == WARN]


def run_folders(root: Path) -> Iterator[tuple[str, Path]]:
    """``(stage, run folder)`` of every run folder under ``root``, sorted."""
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if stage_dir.name in NOT_STAGES or stage_dir.name.startswith("."):
            continue
        for run in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
            if not run.name.startswith("."):
                yield stage_dir.name, run


def _records(block: Any, where: str) -> Iterator[tuple[str, str, str]]:
    """``(where, file, md5)`` of every provenance record (``{"file", "md5", ...}``) in a block."""
    if isinstance(block, Mapping):
        file, md5 = block.get("file"), block.get("md5")
        if isinstance(file, str) and file and isinstance(md5, str) and md5:
            yield where, file, md5
        for key, value in block.items():
            yield from _records(value, f"{where}.{key}")
    elif isinstance(block, list):
        for i, value in enumerate(block):
            yield from _records(value, f"{where}[{i}]")


class _Audit:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []
        self._md5: dict[Path, str] = {}
        self._missing: set[str] = set()

    def add(self, kind: str, path: Path | str, message: str, severity: str = ERROR) -> None:
        self.problems.append(Problem(kind, self.rel(path), message, severity))

    def rel(self, path: Path | str) -> str:
        """``path`` relative to the results dir (as given when outside it)."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def failed_runs(self) -> set[tuple[str, str]]:
        """``(stage, run id)`` of every run folder with an error so far (a leftover temp file
        does not spoil the finished files beside it)."""
        parts = (Path(p.path).parts for p in errors(self.problems) if p.kind != "temp-file")
        return {(q[0], q[1]) for q in parts if len(q) >= 2}

    def read_json(self, path: Path, kind: str, required: bool = True) -> Any:
        if not path.exists():
            if required:
                self.add(kind, path.parent, f"finished run without {path.name}")
            return None
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            self.add(kind, path, f"does not parse ({type(err).__name__}: {err})")
            return None
        if kind != "config" and not isinstance(value, dict):
            self.add(kind, path, "is not a JSON object")
            return None
        return value

    def check_run(self, stage: str, run: Path) -> bool:
        """Check one run folder; True when it is finished (errors or not)."""
        if not (run / DONE_FILE).exists():
            self.add("unfinished", run, f"no {DONE_FILE} marker (interrupted or still running)")
            return False
        config = self.read_json(run / CONFIG_FILE, "config")
        manifest = self.read_json(run / MANIFEST_FILE, "manifest")
        details = self.read_json(run / DETAILS_FILE, "details", required=False) or {}
        origin = run_origin(details)
        want_stage, want_id = origin or (stage, run.name)
        copied = f" (copied from {want_stage}/{want_id})" if origin else ""
        if manifest is not None:
            missing = [k for k in MANIFEST_KEYS if k not in manifest]
            if missing:
                self.add("manifest", run, f"{MANIFEST_FILE} lacks key(s) {', '.join(missing)}")
            git = manifest.get("git", {k: None for k in GIT_KEYS})
            lacking = [k for k in GIT_KEYS if not isinstance(git, dict) or k not in git]
            if lacking:
                self.add("manifest", run, f"{MANIFEST_FILE} git block lacks {', '.join(lacking)}")
            for key, want in (("run_id", want_id), ("stage", want_stage)):
                if key in manifest and manifest[key] != want:
                    got = manifest[key]
                    self.add("manifest", run, f"manifest {key} {got!r} != {want!r}{copied}")
            self.check_data(run, manifest.get("data"))
        inputs = (manifest or {}).get("inputs")
        if config is not None and manifest is not None and isinstance(inputs, dict):
            got = run_id(config, inputs)
            if got != want_id:
                why = f"{CONFIG_FILE} or the manifest's inputs changed after the run"
                self.add("run-id", run, f"config hash {got} != run id {want_id}{copied}: {why}")
        self.check_tables(run)
        return True

    def check_data(self, run: Path, block: Any) -> None:
        data_dir = paths.data_dir()
        for where, file, md5 in _records(block, "data"):
            recorded = Path(file) if Path(file).is_absolute() else data_dir / file
            found = next((p for p in (recorded, data_dir / recorded.name) if p.is_file()), None)
            if found is None:
                if file not in self._missing:
                    self._missing.add(file)
                    msg = (
                        f"not found (nor in {data_dir}); md5 not checked ({self.rel(run)} {where})"
                    )
                    self.add("data-missing", file, msg, WARN)
                continue
            actual = self.md5(found)
            if actual != md5:
                self.add("data-md5", run, f"{where}: {found} has md5 {actual}, manifest says {md5}")

    def md5(self, path: Path) -> str:
        key = path.resolve()
        if key not in self._md5:
            digest = hashlib.md5()
            with open(key, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            self._md5[key] = digest.hexdigest()
        return self._md5[key]

    def check_tables(self, run: Path) -> None:
        metrics = run / METRICS_FILE
        if metrics.exists():
            try:
                columns = pd.read_csv(metrics).columns
            except Exception as err:  # noqa: BLE001 - any reader error means "unreadable"
                self.add("metrics", metrics, f"does not parse ({type(err).__name__}: {err})")
            else:
                lacking = [c for c in METRIC_COLUMNS if c not in columns]
                if lacking:
                    self.add("metrics", metrics, f"lacks column(s) {', '.join(lacking)}")
        elif (run / PREDICTIONS_FILE).exists():
            self.add("metrics", run, f"has {PREDICTIONS_FILE} but no {METRICS_FILE}")
        for table in sorted(run.glob("*.parquet")):
            try:
                if "sample_id" not in pq.read_schema(table).names:
                    self.add("predictions", table, "lacks a sample_id column")
                    continue
                pq.read_table(table, columns=["sample_id"])
            except Exception as err:  # noqa: BLE001
                self.add("predictions", table, f"unreadable ({type(err).__name__}: {err})")

    def check_stage_predictions(self, stage: str, finished: list[Path]) -> None:
        """A run of a stage whose other finished runs hold predictions must hold them too."""
        n = sum((r / PREDICTIONS_FILE).exists() for r in finished)
        for run in finished:
            if n and not (run / PREDICTIONS_FILE).exists():
                msg = f"no {PREDICTIONS_FILE}, unlike {n} other finished run(s) of {stage}"
                self.add("predictions", run, msg)

    def check_leftovers(self) -> None:
        executed = paths.executed_dir(self.root)
        for folder, dirs, files in os.walk(self.root):
            dirs.sort()
            for name in sorted(files):
                path = Path(folder) / name
                if is_temp_file(path):
                    self.add("temp-file", path, "leftover temp file of an interrupted write")
                elif name.endswith(PARTIAL_NOTEBOOK) and Path(folder) == executed:
                    self.add("partial-notebook", path, "interrupted or failed notebook run", WARN)

    def check_claims(self, failed: set[tuple[str, str]]) -> None:
        path = self.root / CLAIMS_FILE
        if not path.exists():
            return
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as err:  # noqa: BLE001
            self.add("claims", path, f"does not parse ({type(err).__name__}: {err})")
            return
        lacking = [c for c in ("stage", "runs_a", "runs_b") if c not in df.columns]
        if lacking:
            self.add("claims", path, f"lacks column(s) {', '.join(lacking)}")
            return
        for i, row in enumerate(df.to_dict("records")):
            what = " ".join(str(row.get(c, "")) for c in ("claim", "dataset", "comparison"))
            label = f"line {i + 2} ({what.strip()})"
            stage = row["stage"].strip()
            for column in ("runs_a", "runs_b"):
                for rid in filter(None, (r.strip() for r in row[column].split(","))):
                    if not stage:
                        self.add("claims", path, f"{label}: {column} names {rid} but no stage")
                    elif not (self.root / stage / rid / DONE_FILE).exists():
                        msg = f"{column} names run {rid}, not a finished {stage} run"
                        self.add("claims", path, f"{label}: {msg}")
                    elif (stage, rid) in failed:
                        msg = f"{column} names run {rid}, which fails the audit ({stage}/{rid})"
                        self.add("claims", path, f"{label}: {msg}")


def audit(results_dir: Path | str | None = None) -> list[Problem]:
    """Every problem (errors and warnings, see :class:`Problem`) of the results tree."""
    root = Path(results_dir) if results_dir is not None else paths.results_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"results dir {root} does not exist")
    a = _Audit(root)
    finished: dict[str, list[Path]] = {}
    for stage, run in run_folders(root):
        if a.check_run(stage, run):
            finished.setdefault(stage, []).append(run)
    for stage, runs in finished.items():
        a.check_stage_predictions(stage, runs)
    a.check_leftovers()
    a.check_claims(a.failed_runs())
    return a.problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medstudy.audit", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--results", type=Path, default=None, help="default: the results dir")
    args = parser.parse_args(argv)
    root = args.results if args.results is not None else paths.results_dir()
    if not root.is_dir():
        print(f"medstudy.audit: results dir {root} does not exist", file=sys.stderr)
        return 2
    problems = audit(root)
    for p in problems:
        print(p.line())
    n_err, n_warn = len(errors(problems)), len(warnings(problems))
    print(f"audit of {root}: {n_err} error(s), {n_warn} warning(s)")
    return 1 if n_err else 0


if __name__ == "__main__":
    sys.exit(main())
