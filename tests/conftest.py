"""Shared fixtures. Real-data tests need the offline files in MEDSTUDY_DATA_DIR; under CI
(CI=true) their absence is an error, never a skip."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="session")
def finetuned_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder with one real fine-tuned transfer unit (scratch, synth_lesions, seed
    0, a few steps): the input of the stages that read notebook 02's models (05, 06)."""
    import torch

    from medstudy.config import TransferConfig
    from medstudy.transfer import run_transfer

    root = tmp_path_factory.mktemp("finetuned_results")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSTUDY_RESULTS_DIR", str(root))
        cfg = TransferConfig(
            dataset="synth_lesions",
            arms=("scratch",),
            protocols=("finetune",),
            max_train=96,
            finetune_epochs=1,
            patience=1,
            batch_size=32,
        )
        run_transfer(cfg)
    torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for a test module (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): on a shared 2-core machine two threads slow the
    small convolutions of these tests down 10-20x whenever another process holds a core."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
