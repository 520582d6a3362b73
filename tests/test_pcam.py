"""The full-PCam loader (medstudy.data.pcam) on tiny h5 files in torchvision's PCAM layout:
torchvision's file names, exact pixels at 96 px, the shared resize rule below it, the memmap
cache, split-size and offline errors naming the files and folder, and the download branch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medstudy.data import DataFileError, load_split
from medstudy.data import pcam as pcam_mod
from medstudy.data.info import INFO, SPLITS

h5py = pytest.importorskip("h5py")
TINY = {"train": 12, "val": 4, "test": 6}


def write_pcam(root: Path, split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """PCAM's layout: ``x`` (N, 96, 96, 3) uint8 and ``y`` (N, 1, 1, 1) uint8, gzip chunks."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 96, 96, 3)).astype(np.uint8)
    y = (np.arange(n) % 2).astype(np.uint8)
    folder = root / "pcam"
    folder.mkdir(parents=True, exist_ok=True)
    x_name, y_name = pcam_mod.pcam_files(split)
    with h5py.File(folder / x_name, "w") as f:
        f.create_dataset("x", data=x, chunks=(1, 96, 96, 3), compression="gzip")
    with h5py.File(folder / y_name, "w") as f:
        f.create_dataset("y", data=y.reshape(n, 1, 1, 1))
    return x, y


@pytest.fixture
def tiny_info(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(INFO, "pcam", dataclasses.replace(INFO["pcam"], n_samples=dict(TINY)))


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDSTUDY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.delenv("MEDSTUDY_CACHE_DIR", raising=False)
    return tmp_path / "data"


def test_file_names_are_torchvisions():
    assert pcam_mod.pcam_files("val") == (
        "camelyonpatch_level_2_split_valid_x.h5",
        "camelyonpatch_level_2_split_valid_y.h5",
    )


def test_pcam_splits_load_exactly_into_the_memmap_cache(roots, tiny_info):
    arrays = {s: write_pcam(roots, s, TINY[s], seed=i) for i, s in enumerate(SPLITS)}
    for split in SPLITS:
        s = load_split("pcam", split, 96)
        assert isinstance(s.images, np.memmap) and s.images.shape == (TINY[split], 96, 96, 3)
        np.testing.assert_array_equal(s.images, arrays[split][0])
        np.testing.assert_array_equal(s.labels, arrays[split][1])
        assert s.provenance.status == "pcam" and s.info.task == "binary-class"
    small = load_split("pcam", "test", 32)
    want = [
        np.asarray(Image.fromarray(im).resize((32, 32), Image.Resampling.BICUBIC))
        for im in arrays["test"][0]
    ]
    np.testing.assert_array_equal(small.images, np.stack(want))
    cached = sorted(p.name for p in (roots.parent / "results" / "cache").glob("*.npy"))
    assert [n.rsplit("_", 1)[0] for n in cached] == [
        "pcam_test_32px", "pcam_test_96px", "pcam_train_96px", "pcam_val_96px",
    ]  # fmt: skip


def test_a_split_of_the_wrong_size_names_the_file(roots):
    write_pcam(roots, "val", 4)
    with pytest.raises(DataFileError, match=r"valid_x.h5: 4 images and 4 labels .* has 32768"):
        load_split("pcam", "val", 96)


def test_offline_names_the_files_and_the_folder(roots, monkeypatch):
    called = []
    monkeypatch.setattr(pcam_mod, "download_pcam", lambda split, root: called.append(split))
    with pytest.raises(DataFileError) as err:
        load_split("pcam", "test", 96)
    message = str(err.value)
    assert "camelyonpatch_level_2_split_test_x.h5" in message
    assert "camelyonpatch_level_2_split_test_y.h5" in message
    assert f"not found in {roots / 'pcam'} (MEDSTUDY_OFFLINE is set" in message
    assert "torchvision.datasets.PCAM(root=" in message and called == []


def test_online_a_missing_split_is_downloaded_by_torchvision(roots, tiny_info, monkeypatch):
    monkeypatch.setenv("MEDSTUDY_OFFLINE", "0")
    called = []

    def fake_download(split: str, root: Path) -> None:  # what PCAM(download=True) leaves
        called.append((split, root))
        write_pcam(root, split, TINY[split])

    monkeypatch.setattr(pcam_mod, "download_pcam", fake_download)
    assert len(load_split("pcam", "val", 96)) == TINY["val"]
    assert called == [("val", roots)]
    monkeypatch.setattr(
        pcam_mod, "download_pcam", lambda s, r: (_ for _ in ()).throw(OSError("no route"))
    )
    with pytest.raises(DataFileError, match=r"test_x.h5.*the download failed: no route"):
        load_split("pcam", "test", 96)
