"""Tidy results: run ids, atomic writes, manifests, metrics and predictions, and the cache.

Layout (DESIGN §7)::

    results/<stage>/<run_id>/
        config.json          the resolved config
        manifest.json        git SHA + dirty flag, code version, versions, data md5s, device,
                             seed, times
        metrics.csv          long/tidy, columns METRIC_COLUMNS
        predictions.parquet  sample_id, y_true, score_* (+ the identifying columns)
        DONE                 written last; a run without it is unfinished and is recomputed

``run_id`` is a hash of the resolved config plus the md5s of its inputs, so a change of either
gives a new run and an unchanged one is found again (the cache). A finished run is reused only
if the code that made it is the code installed now (:func:`is_current`, the stage's
:func:`medstudy.codeversion.stage_version` in ``manifest["code"]``); otherwise its stage
recomputes it in place, so one folder never holds two versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medstudy import paths
from medstudy.codeversion import stage_version

METRIC_COLUMNS: tuple[str, ...] = (
    "stage",
    "dataset",
    "arm",
    "protocol",
    "fraction",
    "seed",
    "split",
    "distortion",
    "severity",
    "metric",
    "value",
)
# Columns that identify a prediction row besides the sample; shared with METRIC_COLUMNS.
PREDICTION_KEYS: tuple[str, ...] = (
    "stage",
    "dataset",
    "arm",
    "protocol",
    "fraction",
    "seed",
    "split",
    "distortion",
    "severity",
)
DONE_FILE = "DONE"
#: The code version an unfinished run folder is being computed by (its resume points are
#: only reused by the same code).
CODE_FILE = "CODE"
#: Fault injection for tests: a process with this environment variable set to a file name
#: SIGKILLs itself between writing that file's temp copy and renaming it (:func:`atomic_write`).
FAULT_KILL_BEFORE_RENAME = "MEDSTUDY_FAULT_KILL_BEFORE_RENAME"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.csv"
PREDICTIONS_FILE = "predictions.parquet"
DETAILS_FILE = "details.json"
#: The details key of a copied run naming its origin ``"<stage>/<run_id>"`` (:func:`copy_run`).
COPIED_FROM = "copied_from"
#: Keys every finished run's manifest holds (:meth:`Run.manifest`); ``git`` holds GIT_KEYS.
MANIFEST_KEYS: tuple[str, ...] = (
    "stage", "run_id", "git", "code", "versions", "inputs", "data", "seed", "device", "start",
    "end", "wall_time_s",
)  # fmt: skip
GIT_KEYS: tuple[str, ...] = ("sha", "dirty")
PACKAGES: tuple[str, ...] = (
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "statsmodels",
    "torch",
    "torchvision",
    "timm",
    "lightly",
    "lightning",
    "captum",
    "medmnist",
    "papermill",
)


# ------------------------------------------------------------------------------ atomic I/O --
def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` via ``write(tmp)`` on a temp file in the same folder, then rename.

    A crash before the rename leaves at most a ``.tmp`` file, never a half-written ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp name keeps the real suffix (tools such as papermill check it) behind ".tmp".
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        if os.environ.get(FAULT_KILL_BEFORE_RENAME) == path.name:
            # Fault injection (tests/test_faults.py): die like a killed kernel in the middle of
            # this write, the temp file written and the real one not yet in place.
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno is None or err.filename is not None:
            raise
        # write(2) errors (a full disk: ENOSPC, EIO) name no file; name the one being written.
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp(\.[^.]+)?$")


def is_temp_file(path: Path | str) -> bool:
    """True for a leftover temp file of :func:`atomic_write` (``.<stem>.<random>.tmp<suffix>``),
    which only a crash between the write and the rename leaves behind."""
    return _TEMP_NAME.match(Path(path).name) is not None


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


# -------------------------------------------------------------------------------- run ids --
def config_hash(config: Any, inputs: Mapping[str, str] | None = None, length: int = 12) -> str:
    """Stable hash of a (dataclass or dict) config plus ``{input name: md5}``."""
    payload = {"config": _jsonable(config), "inputs": dict(sorted((inputs or {}).items()))}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def run_id(config: Any, inputs: Mapping[str, str] | None = None) -> str:
    """``run_id`` = hash of the resolved config and the md5s of its inputs."""
    return config_hash(config, inputs)


def is_done(stage: str, rid: str) -> bool:
    """True when ``results/<stage>/<rid>/`` was finished (its DONE marker exists)."""
    return (paths.run_dir(stage, rid) / DONE_FILE).exists()


def run_code_version(stage: str, rid: str, root: Path | None = None) -> str | None:
    """The code version recorded in a run's manifest (None: no manifest, or a run made before
    versions were recorded)."""
    path = _run_dir(stage, rid, root) / MANIFEST_FILE
    if not path.exists():
        return None
    code = json.loads(path.read_text()).get("code")
    return code.get("version") if isinstance(code, dict) else None


def is_current(stage: str, rid: str) -> bool:
    """True when the run is finished *and* was made by the code installed now (its stage's
    :func:`~medstudy.codeversion.stage_version`): the test a stage uses to skip a unit. A
    finished run of other code is recomputed, never reused silently."""
    return is_done(stage, rid) and run_code_version(stage, rid) == stage_version(stage)


# ------------------------------------------------------------------------------- manifest --
def git_state(root: Path | None = None) -> dict[str, Any]:
    root = root or paths.repo_root()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": dirty}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------- runs --
class Run:
    """One run's folder. Use as a context manager; the DONE marker is written on clean exit.

    >>> with Run("transfer", cfg, inputs={"pneumoniamnist.npz": md5}, seed=0) as run:
    ...     run.log_metrics(rows)
    ...     run.save_predictions(df)
    """

    def __init__(
        self,
        stage: str,
        config: Any,
        inputs: Mapping[str, str] | None = None,
        data: Mapping[str, Any] | None = None,
        seed: int | None = None,
        device: str = "cpu",
    ) -> None:
        self.stage = stage
        self.config = config
        self.inputs = dict(inputs or {})
        self.data = dict(data or {})
        self.seed = seed
        self.device = device
        self.id = run_id(config, self.inputs)
        self.dir = paths.run_dir(stage, self.id)
        self._metrics: list[dict[str, Any]] = []
        self._t0 = 0.0
        self._start = ""

    @property
    def done(self) -> bool:
        return is_done(self.stage, self.id)

    def __enter__(self) -> Run:
        code = stage_version(self.stage)
        marker = self.dir / CODE_FILE
        if self.dir.exists() and (
            (self.dir / DONE_FILE).exists()
            or not marker.exists()
            or marker.read_text().strip() != code
        ):
            # A finished run is entered again only when other code made it, and an unfinished
            # one of other (or unknown) code: none of its files, resume points included, may
            # leak into this computation. An unfinished run of this code keeps its resume
            # points.
            shutil.rmtree(self.dir)
        elif self.dir.exists():
            # an unfinished run of this code: keep its resume points, drop the temp files of
            # writes a kill interrupted
            for f in self.dir.rglob("*"):
                if f.is_file() and is_temp_file(f):
                    f.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, code + "\n")
        self._t0, self._start = time.perf_counter(), now_iso()
        write_json(self.dir / CONFIG_FILE, self.config)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            return  # no DONE marker: the run is unfinished and will be recomputed
        if self._metrics:
            write_metrics(self.dir / METRICS_FILE, self._metrics)
        write_json(self.dir / MANIFEST_FILE, self.manifest())
        atomic_write_text(self.dir / DONE_FILE, now_iso() + "\n")

    def manifest(self) -> dict[str, Any]:
        import torch

        return {
            "stage": self.stage,
            "run_id": self.id,
            "git": git_state(),
            "code": {"version": stage_version(self.stage)},
            "versions": {"python": platform.python_version(), **package_versions()},
            "inputs": self.inputs,
            "data": self.data,
            "seed": self.seed,
            "device": self.device,
            "torch_threads": torch.get_num_threads(),
            "host": platform.node(),
            "start": self._start,
            "end": now_iso(),
            "wall_time_s": round(time.perf_counter() - self._t0, 3),
        }

    def log_metrics(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self._metrics.extend(dict(r) for r in rows)

    def save_predictions(self, df: pd.DataFrame, name: str = PREDICTIONS_FILE) -> Path:
        return write_predictions(self.dir / name, df)

    def save_details(self, details: Mapping[str, Any]) -> Path:
        """The protocol's choices and facts of the run (selected L2, best epoch, n_train, …)."""
        return write_json(self.dir / DETAILS_FILE, details)

    def path(self, name: str) -> Path:
        return self.dir / name


def metric_rows(base: Mapping[str, Any], values: Mapping[str, float]) -> list[dict[str, Any]]:
    """Tidy rows ``{**base, metric, value}`` for every metric in ``values``."""
    rows = []
    for metric, value in values.items():
        row = {c: None for c in METRIC_COLUMNS}
        row.update(base)
        row.update(metric=metric, value=float(value))
        rows.append(row)
    return rows


def write_metrics(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    df = pd.DataFrame(list(rows))
    unknown = sorted(set(df.columns) - set(METRIC_COLUMNS))
    if unknown:
        raise ValueError(f"metrics rows have columns outside the schema: {unknown}")
    df = df.reindex(columns=list(METRIC_COLUMNS))
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def predictions_frame(
    base: Mapping[str, Any], ids: np.ndarray, y_true: np.ndarray, scores: np.ndarray
) -> pd.DataFrame:
    """Per-sample predictions: identifying columns, ``sample_id``, ``y_true`` (or ``y_true_j``
    for multi-label) and ``score_k`` (probabilities; for binary tasks the positive class is 1)."""
    df = pd.DataFrame({"sample_id": np.asarray(ids)})
    y = np.asarray(y_true)
    if y.ndim == 2:
        for j in range(y.shape[1]):
            df[f"y_true_{j}"] = y[:, j]
    else:
        df["y_true"] = y
    s = np.asarray(scores, dtype=np.float64)
    for k in range(s.shape[1]):
        df[f"score_{k}"] = s[:, k]
    for key in reversed(PREDICTION_KEYS):
        df.insert(0, key, base.get(key))
    return df


def write_predictions(path: Path, df: pd.DataFrame) -> Path:
    if "sample_id" not in df.columns:
        raise ValueError("predictions need a sample_id column (paired tests depend on it)")
    return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def _collect(
    pattern: str, read: Callable[[Path], pd.DataFrame], columns: list[str], root: Path | None
) -> pd.DataFrame:
    """Concatenate one file kind of every *finished* run (DONE marker), with a run_id column."""
    root = root or paths.results_dir()
    frames = []
    for f in sorted(root.glob(pattern)):
        if (f.parent / DONE_FILE).exists():
            df = read(f)
            df["run_id"] = f.parent.name
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)


def collect_metrics(stage: str | None = None, root: Path | None = None) -> pd.DataFrame:
    """All finished runs' metrics.csv concatenated (``stage=None``: every stage)."""
    pattern = f"{stage}/*/{METRICS_FILE}" if stage else f"*/*/{METRICS_FILE}"
    return _collect(pattern, pd.read_csv, [*METRIC_COLUMNS, "run_id"], root)


def collect_predictions(stage: str | None = None, root: Path | None = None) -> pd.DataFrame:
    """All finished runs' predictions concatenated, with a ``run_id`` column."""
    pattern = f"{stage}/*/*.parquet" if stage else "*/*/*.parquet"
    return _collect(pattern, pd.read_parquet, [*PREDICTION_KEYS, "sample_id", "run_id"], root)


# ------------------------------------------------------------------- reading finished runs --
def _run_dir(stage: str, rid: str, root: Path | None) -> Path:
    return (root / stage / rid) if root is not None else paths.run_dir(stage, rid)


def finished_run_ids(stage: str, root: Path | None = None) -> list[str]:
    """The run ids of ``stage`` that are finished (hold a DONE marker), sorted."""
    base = (root or paths.results_dir()) / stage
    return sorted(p.parent.name for p in base.glob(f"*/{DONE_FILE}"))


def has_finished_runs(stage: str, root: Path | None = None) -> bool:
    return bool(finished_run_ids(stage, root))


def read_config(stage: str, rid: str, root: Path | None = None) -> dict[str, Any]:
    """The resolved config a run was computed from (``{}`` if the run has none)."""
    path = _run_dir(stage, rid, root) / CONFIG_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def read_details(stage: str, rid: str, root: Path | None = None) -> dict[str, Any]:
    """A run's details (the protocol's choices; ``{}`` if it wrote none)."""
    path = _run_dir(stage, rid, root) / DETAILS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def read_metrics(stage: str, rid: str, root: Path | None = None) -> pd.DataFrame:
    """A finished run's tidy metrics with a ``run_id`` column; an unfinished run is an error."""
    run_dir = _run_dir(stage, rid, root)
    if not (run_dir / DONE_FILE).exists():
        raise FileNotFoundError(f"{run_dir}: not a finished run (no {DONE_FILE} marker)")
    return pd.read_csv(run_dir / METRICS_FILE).assign(run_id=rid)


def read_predictions(stage: str, rid: str, root: Path | None = None) -> pd.DataFrame:
    """A finished run's per-sample predictions; an unfinished run is an error."""
    run_dir = _run_dir(stage, rid, root)
    if not (run_dir / DONE_FILE).exists():
        raise FileNotFoundError(f"{run_dir}: not a finished run (no {DONE_FILE} marker)")
    return pd.read_parquet(run_dir / PREDICTIONS_FILE)


def run_origin(details: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(stage, run_id)`` of the run a :func:`copy_run` copy was made from (its details record
    the origin; its manifest is the origin's), or None for a run computed in its own folder."""
    origin = details.get(COPIED_FROM)
    if not isinstance(origin, str) or origin.count("/") != 1:
        return None
    stage, rid = origin.split("/")
    return stage, rid


def copy_run(rid: str, src_stage: str, dst_stage: str) -> Path:
    """Copy the finished run ``src_stage/rid`` to ``dst_stage/rid`` (same computation, another
    stage's folder): the ``stage`` column of its metrics and predictions is rewritten and
    ``details`` records the origin; the manifest is kept as is (it describes the computation
    that ran). The DONE marker is written last, so an interrupted copy is never finished."""
    src, dst = paths.run_dir(src_stage, rid), paths.run_dir(dst_stage, rid)
    if not (src / DONE_FILE).exists():
        raise FileNotFoundError(f"{src}: not a finished run (no {DONE_FILE} marker)")
    dst.mkdir(parents=True, exist_ok=True)
    (dst / DONE_FILE).unlink(missing_ok=True)
    for f in sorted(src.iterdir()):
        if f.name == DONE_FILE or f.name.startswith("."):
            continue
        if f.name == METRICS_FILE:
            df = pd.read_csv(f).assign(stage=dst_stage)
            atomic_write(dst / f.name, lambda tmp, df=df: df.to_csv(tmp, index=False))
        elif f.suffix == ".parquet":
            df = pd.read_parquet(f).assign(stage=dst_stage)
            atomic_write(dst / f.name, lambda tmp, df=df: df.to_parquet(tmp, index=False))
        elif f.name == DETAILS_FILE:
            details = {**json.loads(f.read_text()), COPIED_FROM: f"{src_stage}/{rid}"}
            write_json(dst / f.name, details)
        elif f.is_file():
            atomic_write(dst / f.name, lambda tmp, f=f: shutil.copyfile(f, tmp))
    atomic_write_text(dst / DONE_FILE, now_iso() + "\n")
    return dst


def find_runs(stage: str, where: Mapping[str, Any], root: Path | None = None) -> list[str]:
    """Finished runs of ``stage`` whose config matches every ``key: value`` of ``where``
    (floats compared to 1e-9), sorted. Later stages find their inputs this way, never by
    opening run folders themselves."""

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) or isinstance(b, float):
            try:
                return abs(float(a) - float(b)) < 1e-9
            except (TypeError, ValueError):
                return False
        return a == b

    return [
        rid
        for rid in finished_run_ids(stage, root)
        if all(same(read_config(stage, rid, root).get(k), v) for k, v in where.items())
    ]
