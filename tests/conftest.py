"""Shared fixtures. Real-data tests need the offline files in MEDSTUDY_DATA_DIR; under CI
(CI=true) their absence is an error, never a skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medstudy import paths

REAL_FILES = ("pneumoniamnist.npz", "retinamnist.npz", "pcam28_subset.npz", "resnet20_cifar10.th")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    root = paths.data_dir()
    missing = [f for f in REAL_FILES if not (root / f).exists()]
    if missing:
        msg = f"offline data missing in MEDSTUDY_DATA_DIR={root}: {missing}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture
def results_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty results dir for the test."""
    root = tmp_path / "results"
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(root))
    return root


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never reach the network: a download attempt fails at once with the clear message.
    monkeypatch.setenv("MEDSTUDY_OFFLINE", "1")
