"""Every path of the study, derived from the repo root and four environment variables.

- ``MEDSTUDY_DATA_DIR``: where dataset files and offline weights live (default ``<repo>/data``).
- ``MEDSTUDY_RESULTS_DIR``: where runs are written (default ``<repo>/results``).
- ``MEDSTUDY_PARAMS_DIR``: where profiles are read (default ``<repo>/params``).
- ``MEDSTUDY_CACHE_DIR``: decoded-image caches (default ``<results>/cache``).

Relative values of any of them are resolved against the current working directory at call
time, so ``MEDSTUDY_DATA_DIR=../shared/data ./run_all.sh`` means what it says.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parent.parent


def repo_root() -> Path:
    """The repository root (the folder holding ``pyproject.toml``)."""
    return REPO_ROOT


def _env_dir(var: str, default: Path) -> Path:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser().resolve() if value else default


def data_dir() -> Path:
    """Folder with ``<name>.npz`` files, ``checksums.json`` and local weights."""
    return _env_dir("MEDSTUDY_DATA_DIR", REPO_ROOT / "data")


def results_dir() -> Path:
    """Root of one study's run outputs (git-ignored).

    ``run_all.sh --profile P`` uses ``results/P`` unless ``--results`` or this variable says
    otherwise, so the smoke, quick and full studies never mix; notebooks run by hand in
    JupyterLab write to ``results/`` itself.
    """
    return _env_dir("MEDSTUDY_RESULTS_DIR", REPO_ROOT / "results")


def cache_dir() -> Path:
    """Decoded-image caches of the manifest and PCam datasets (``medstudy.data.cache``):
    ``MEDSTUDY_CACHE_DIR``, default ``<results>/cache``. Point several results roots (profiles)
    at one folder to decode a large dataset once for all of them."""
    return _env_dir("MEDSTUDY_CACHE_DIR", results_dir() / "cache")


def stage_dir(stage: str) -> Path:
    """``results/<stage>/``: one sub-folder per run_id."""
    return results_dir() / stage


def run_dir(stage: str, run_id: str) -> Path:
    """``results/<stage>/<run_id>/``."""
    return stage_dir(stage) / run_id


def executed_dir(root: Path | None = None) -> Path:
    """Executed notebooks written by papermill (under ``root``, default the results dir)."""
    return (root or results_dir()) / "executed"


def notebooks_dir() -> Path:
    return REPO_ROOT / "notebooks"


def params_dir() -> Path:
    """Profile grids: ``params/{smoke,quick,full}.yaml``, or ``$MEDSTUDY_PARAMS_DIR`` (a folder
    of your own profiles; the tests use it for throw-away ones)."""
    return _env_dir("MEDSTUDY_PARAMS_DIR", REPO_ROOT / "params")


def paper_dir() -> Path:
    """The manuscript template (``main.tex``); see :func:`paper_build_dir` for the built paper."""
    return REPO_ROOT / "paper"


def paper_build_dir() -> Path:
    """Where the paper of the current results root is built: ``<results>/paper``.

    ``paper/`` in the repo holds only the template; the built paper (a copy of ``main.tex``,
    ``generated/`` tables, macros and figures, and the PDF) lives with the results it was made
    from, so two profiles or a test run never overwrite each other's paper.
    """
    return results_dir() / "paper"


def paper_generated_dir() -> Path:
    """Generated tables, macros and figures: ``<results>/paper/generated``."""
    return paper_build_dir() / "generated"
