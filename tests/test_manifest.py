"""The manifest loader (medstudy.data.manifest), its decoding rules (medstudy.data.decode), the
memory-mapped image cache (medstudy.data.cache) and lazy batches (medstudy.data.tensors):
exact pixels from generated PNG/JPEG/DICOM files, every bad input failing before any work,
cache reuse and invalidation, memmap batches, and the smoke grid on a manifest dataset."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medstudy import grid
from medstudy.data import DataFileError, MemmapImages, TensorSplit, dataset_info, load_split
from medstudy.data import cache as cache_mod
from medstudy.data import manifest as manifest_mod
from medstudy.data import tensors as tensors_mod
from medstudy.data.decode import window
from medstudy.data.info import SPLITS
from medstudy.data.manifest import read_manifest

SIZE = 32


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", **attrs) -> None:
    """A minimal valid DICOM file (Secondary Capture, explicit VR little endian, 16-bit)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_images(folder: Path) -> dict[str, np.ndarray]:
    """40 files (grey/RGB PNG, a 16-bit PNG, a non-square PNG, a JPEG, DICOMs: plain,
    MONOCHROME1, rescale + window) and the (SIZE, SIZE, C) pixels each must decode to, worked
    out by hand from the rules of medstudy.data.decode (C = 1 grey, 3 colour)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    out: dict[str, np.ndarray] = {}

    def grey() -> np.ndarray:
        a = rng.integers(0, 256, (SIZE, SIZE)).astype(np.uint8)
        a[0, 0], a[0, 1] = 0, 255  # full range: DICOM min-max stretching is then the identity
        return a

    for i in range(16):
        a = grey()
        Image.fromarray(a).save(folder / f"grey{i:02d}.png")
        out[f"grey{i:02d}.png"] = a[..., None]
    for i in range(12):
        a = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
        Image.fromarray(a).save(folder / f"rgb{i:02d}.png")
        out[f"rgb{i:02d}.png"] = a
    wide = rng.integers(0, 256, (SIZE, SIZE + 8, 3)).astype(np.uint8)  # centre crop: cols 4..36
    Image.fromarray(wide).save(folder / "wide.png")
    out["wide.png"] = wide[:, 4 : 4 + SIZE]
    a = grey()
    Image.fromarray(a.astype(np.uint16) * 257).save(folder / "deep16.png")
    out["deep16.png"] = a[..., None]  # 16-bit scaled by 255/65535: v*257 -> v
    jpeg = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    Image.fromarray(jpeg).save(folder / "photo.jpg", quality=90)
    with Image.open(folder / "photo.jpg") as im:  # lossy: the reference is PIL's own decode
        out["photo.jpg"] = np.asarray(im.convert("RGB"))
    for i in range(7):
        a = grey()
        write_dicom(folder / f"plain{i}.dcm", a.astype(np.uint16) * 3 + 100)  # min-max -> a
        out[f"plain{i}.dcm"] = a[..., None]
    a = grey()
    write_dicom(folder / "mono1.dcm", a.astype(np.uint16), photometric="MONOCHROME1")
    out["mono1.dcm"] = (255 - a)[..., None]
    # stored s, value 2 s - 100 (rescale), window centre 128 width 256: exactly clip(value)
    s = rng.integers(0, 201, (SIZE, SIZE)).astype(np.uint16)
    write_dicom(
        folder / "ct.dcm",
        s,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=128,
        WindowWidth=256,
    )
    out["ct.dcm"] = np.clip(2 * s.astype(np.int64) - 100, 0, 255).astype(np.uint8)[..., None]
    assert len(out) == 40
    return out


def write_manifest(path: Path, rows: list[tuple[object, ...]], header: str = "path,label") -> None:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("manifest_images") / "images"
    return folder, make_images(folder)


@pytest.fixture
def data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image_dir: tuple[Path, dict[str, np.ndarray]]
) -> Path:
    """A data dir holding ``mixed.csv`` (all 40 files, relative paths, labels i % 2) and an
    empty results/cache root for this test."""
    folder, expected = image_dir
    data = tmp_path / "data"
    data.mkdir()
    names = sorted(expected)
    write_manifest(data / "mixed.csv", [(f"{folder}/{n}", i % 2) for i, n in enumerate(names)])
    monkeypatch.setenv("MEDSTUDY_DATA_DIR", str(data))
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.delenv("MEDSTUDY_CACHE_DIR", raising=False)
    return data


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file the manifest loader decodes (the real decoder still runs)."""
    calls: list[Path] = []
    real = manifest_mod.decode

    def counted(path: Path, size: int, channels: int) -> np.ndarray:
        calls.append(path)
        return real(path, size, channels)

    monkeypatch.setattr(manifest_mod, "decode", counted)
    return calls


def _cache_files(results: Path) -> list[str]:
    return sorted(p.name for p in (results / "cache").glob("*.npy"))


# ------------------------------------------------------------------------------- decoding --
def test_decoded_pixels_labels_and_splits_are_exact(data_dir, image_dir):
    folder, expected = image_dir
    manifest = read_manifest("mixed")
    for split in SPLITS:
        s = load_split("mixed", split, SIZE)
        rows = [r for r in manifest.rows if r.split == split]
        assert isinstance(s.images, np.memmap) and s.images.shape == (len(rows), SIZE, SIZE, 3)
        for image, label, row in zip(s.images, s.labels, rows, strict=True):
            want = expected[Path(row.path).name]
            want = np.repeat(want, 3, axis=2) if want.shape[2] == 1 else want  # grey -> RGB
            np.testing.assert_array_equal(image, want, err_msg=row.path)
            assert label == row.label == sorted(expected).index(Path(row.path).name) % 2
        assert list(s.ids) == [f"mixed:{split}:{i:06d}" for i in range(len(rows))]
    info = s.info
    assert (info.task, info.n_channels, info.n_classes) == ("binary-class", 3, 2)
    # 20 per class: test round(0.2 * 20) = 4, val round(0.125 * 16) = 2, train the other 14
    assert info.n_samples == {"train": 28, "val": 4, "test": 8}
    # grey files only: a 1-channel dataset, decoded exactly
    grey = [n for n in sorted(expected) if expected[n].shape[2] == 1]
    write_manifest(data_dir / "grey.csv", [(f"{folder}/{n}", i % 2) for i, n in enumerate(grey)])
    manifest = read_manifest("grey")
    images = np.concatenate([load_split("grey", s, SIZE).images for s in SPLITS])
    assert images.shape[3] == 1
    for image, row in zip(images, manifest.rows, strict=True):
        np.testing.assert_array_equal(image, expected[Path(row.path).name], err_msg=row.path)


def test_resize_is_a_centre_crop_then_bicubic(data_dir):
    s = load_split("mixed", "train", 20)
    k, row = next(
        (k, r) for k, r in enumerate(read_manifest("mixed").rows) if r.path.endswith("wide.png")
    )
    assert row.split == "train"
    with Image.open(row.file) as im:
        w, h = im.size
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
        want = np.asarray(im.convert("RGB").crop(box).resize((20, 20), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(s.images[k], want)


def test_dicom_window_functions_match_the_standard():
    x = np.array([-10.0, 0.0, 50.0, 99.0, 100.0, 101.0, 150.0, 400.0])
    # PS3.3 C.11.2.1.2.1 with centre 100, width 101: ymin below 49.5, ymax above 149.5
    linear = np.clip(((x - 99.5) / 100 + 0.5) * 255, 0, 255)
    linear[x <= 49.5], linear[x > 149.5] = 0, 255
    np.testing.assert_allclose(window(x, 100, 101), linear)
    exact = np.clip((x - 100) / 101 + 0.5, 0, 1) * 255
    np.testing.assert_allclose(window(x, 100, 101, "LINEAR_EXACT"), exact)
    np.testing.assert_allclose(
        window(x, 100, 101, "sigmoid"), 255 / (1 + np.exp(-4 * (x - 100) / 101))
    )
    with pytest.raises(ValueError, match=r"unknown VOILUTFunction 'GAMMA'; valid: \['LINEAR'"):
        window(x, 100, 101, "GAMMA")


def test_split_column_and_absolute_paths_are_honoured(data_dir, image_dir):
    folder, expected = image_dir
    names = sorted(expected)[:9]
    # every other path relative to the CSV's own folder (the images' parent), the rest absolute
    rows = [
        (f"images/{n}" if i % 2 else folder / n, i % 3, SPLITS[i % 3]) for i, n in enumerate(names)
    ]
    csv = folder.parent / "split.csv"
    write_manifest(csv, rows, "path,label,split")
    (data_dir / "split.csv").symlink_to(csv)  # a symlinked CSV: paths relative to its target
    for k, split in enumerate(SPLITS):
        s = load_split("split", split, SIZE)
        assert list(s.labels) == [k, k, k]
        assert s.info.task == "multi-class" and s.info.n_classes == 3


def test_stratified_split_is_seeded_and_per_class(data_dir):
    manifest = read_manifest("mixed")
    again = read_manifest("mixed")
    assert [r.split for r in manifest.rows] == [r.split for r in again.rows]
    for label in (0, 1):
        counts = [sum(r.split == s and r.label == label for r in manifest.rows) for s in SPLITS]
        assert counts == [14, 2, 4]


def test_dataset_info_decodes_nothing_and_a_name_with_an_npz_too_is_refused(data_dir, decode_calls):
    info = dataset_info("mixed")
    assert (info.n_channels, info.n_samples["test"], info.source) == (3, 8, "manifest")
    assert decode_calls == []
    np.savez(data_dir / "mixed_64.npz", x=np.zeros(1))
    with pytest.raises(DataFileError, match=r"'mixed' is both a manifest and \['mixed_64.npz'\]"):
        load_split("mixed", "test", SIZE)


# ------------------------------------------------------------------------------ bad input --
#: case -> (rows, header, message): each names the CSV line, the path and what is valid.
BAD: dict[str, tuple[list[tuple[object, ...]], str, str]] = {
    "missing file": (
        [("grey00.png", 0), ("nowhere.png", 1), ("grey01.png", 1)],
        "path,label",
        r"missing files: line 3 \(nowhere.png -> .*nowhere.png\)\. Relative paths are relative to",
    ),
    "bad label": (
        [("grey00.png", 0), ("grey01.png", "cat"), ("grey02.png", "-1"), ("grey03.png", "1.0")],
        "path,label",
        r"bad labels: line 3 \(grey01.png\): 'cat'; line 4 \(grey02.png\): '-1'; line 5 "
        r"\(grey03.png\): '1.0'\. Valid: integer class indices 0..K-1",
    ),
    "absent class": (
        [("grey00.png", 0), ("grey01.png", 2), ("grey02.png", 0)],
        "path,label",
        r"labels span 0..2 but classes \[1\] have no image; valid: integer class indices",
    ),
    "duplicate path": (
        [("grey00.png", 0), ("grey01.png", 1), ("./grey00.png", 1)],
        "path,label",
        r"duplicate paths: line 4 \(./grey00.png\) repeats line 2\. Valid: each file once",
    ),
    "unreadable image": (
        [("grey00.png", 0, "train"), ("junk.png", 1, "val"), ("grey01.png", 1, "test")],
        "path,label,split",
        r"line 3 \(junk.png\): not an image PIL or pydicom can read",
    ),
    "broken dicom": (
        [("grey00.png", 0, "train"), ("junk.dcm", 1, "val"), ("grey01.png", 1, "test")],
        "path,label,split",
        r"line 3 \(junk.dcm\): DICOM without image attributes \['Rows', 'Columns', "
        r"'SamplesPerPixel'\]",
    ),
    "unknown split": (
        [("grey00.png", 0, "train"), ("grey01.png", 1, "training"), ("grey02.png", 1, "test")],
        "path,label,split",
        r"unknown split values: line 3 \(grey01.png\): 'training'\. Valid: \['train', 'val', "
        r"'test'\]",
    ),
    "empty split": (
        [("grey00.png", 0, "train"), ("grey01.png", 1, "test")],
        "path,label,split",
        r"no rows in split\(s\) \['val'\]; every split in \['train', 'val', 'test'\] needs rows",
    ),
    "bad header": (
        [("grey00.png", 0, "p1")],
        "path,label,patient",
        r"header \['path', 'label', 'patient'\]; valid columns: path,label or path,label,split",
    ),
    "tiny class": (
        [("grey00.png", 0), ("grey01.png", 1), ("grey02.png", 0), ("grey03.png", 0)],
        "path,label",
        r"classes too small for the stratified split: class 1: 1\. Each class needs >= 3",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_manifest_fails_before_any_work(case, data_dir, image_dir, decode_calls):
    folder, _ = image_dir
    rows, header, message = BAD[case]
    (folder / "junk.png").write_bytes(b"\x89PNG not really")
    (folder / "junk.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x01\x02")
    write_manifest(folder / "bad.csv", rows, header)
    (data_dir / "bad.csv").symlink_to(folder / "bad.csv")
    with pytest.raises(DataFileError, match=message) as err:
        load_split("bad", "train", SIZE)
    assert str(data_dir / "bad.csv") in str(err.value)
    assert decode_calls == [] and _cache_files(data_dir.parent / "results") == []


def test_grid_refuses_a_bad_manifest_before_any_job(data_dir, image_dir, capsys, real_data_dir):
    folder, _ = image_dir
    for f in real_data_dir.iterdir():  # the natural-image weights the smoke arms check
        (data_dir / f.name).symlink_to(f)
    write_manifest(data_dir / "bad.csv", [(f"{folder}/grey00.png", 0), ("gone.png", 1)])
    assert grid.main(["--profile", "smoke", "--datasets", "bad", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "dataset 'bad'" in err and "missing files: line 3 (gone.png" in err


# ---------------------------------------------------------------------------------- cache --
def test_cache_is_reused_then_rebuilt_when_a_file_or_label_changes(
    data_dir, image_dir, decode_calls, tmp_path
):
    folder, expected = image_dir
    names = sorted(expected)
    own = tmp_path / "own"  # a private copy: this test rewrites a file
    own.mkdir()
    for n in names:
        (own / n).write_bytes((folder / n).read_bytes())
    rows = [(f"{own}/{n}", i % 2) for i, n in enumerate(names)]
    write_manifest(data_dir / "own.csv", rows)
    results = data_dir.parent / "results"
    first = load_split("own", "train", SIZE)
    assert len(decode_calls) == 40 and len(_cache_files(results)) == 1
    again = load_split("own", "test", SIZE)  # another split: the same cache, no decoding
    assert len(decode_calls) == 40 and again.provenance == first.provenance
    assert _cache_files(results) == [f"own_{SIZE}px_{first.provenance.md5[:16]}.npy"]
    # a changed file (new pixels, new mtime): new key, everything decoded again, old file gone
    target = next(r for r in read_manifest("own").rows if r.path.endswith("rgb00.png"))
    k = [r for r in read_manifest("own").rows if r.split == target.split].index(target)
    new = np.full((SIZE, SIZE, 3), 17, dtype=np.uint8)
    Image.fromarray(new).save(target.file)
    os.utime(target.file, ns=(time.time_ns() + 10**9,) * 2)
    changed = load_split("own", target.split, SIZE)
    assert len(decode_calls) == 80 and changed.provenance.md5 != first.provenance.md5
    np.testing.assert_array_equal(changed.images[k], new)
    assert _cache_files(results) == [f"own_{SIZE}px_{changed.provenance.md5[:16]}.npy"]
    # a relabelled row changes the data key (it enters the run ids)
    rows[0] = (rows[0][0], 1 - rows[0][1])
    rows[1] = (rows[1][0], 1 - rows[1][1])
    write_manifest(data_dir / "own.csv", rows)
    assert load_split("own", "train", SIZE).provenance.md5 != changed.provenance.md5


def test_cache_dir_follows_medstudy_cache_dir(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSTUDY_CACHE_DIR", str(tmp_path / "shared_cache"))
    s = load_split("mixed", "val", SIZE)
    assert Path(s.images.filename).parent == tmp_path / "shared_cache"
    assert not (data_dir.parent / "results" / "cache").exists()


def test_memo_skips_rehashing_unchanged_files(data_dir, monkeypatch):
    load_split("mixed", "val", SIZE)
    hashed: list[Path] = []
    monkeypatch.setattr(cache_mod, "md5_of_file", lambda p: hashed.append(p) or "x")
    load_split("mixed", "val", SIZE)
    assert hashed == []


# ---------------------------------------------------------------------------- lazy batches --
def test_memmap_batches_match_the_in_memory_split(data_dir, monkeypatch):
    split = load_split("mixed", "train", SIZE)
    assert isinstance(split.images, np.memmap) and split.images.base is not None
    lazy = TensorSplit.from_split(split)
    eager = TensorSplit.from_split(split, lazy=False)
    assert isinstance(lazy.images, MemmapImages) and isinstance(eager.images, torch.Tensor)
    assert lazy.images.shape == eager.images.shape == (28, 3, SIZE, SIZE)
    released: list[bool] = []  # the mapped pages are dropped after every read
    real_release = tensors_mod.release_pages
    monkeypatch.setattr(tensors_mod, "release_pages", lambda a: released.append(real_release(a)))
    gens = [torch.Generator().manual_seed(3) for _ in range(2)]
    pairs = zip(lazy.batches(8, True, gens[0]), eager.batches(8, True, gens[1]), strict=True)
    for (xa, ya, ia), (xb, yb, ib) in pairs:
        assert xa.dtype == torch.uint8 and xa.is_contiguous()
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    assert released == [True] * 4  # 28 rows in batches of 8
    assert torch.equal(lazy.images[2:9], eager.images[2:9])
    rows = np.array([9, 0, 27, 3])
    sub = TensorSplit.from_split(split, indices=rows)
    assert isinstance(sub.images, MemmapImages) and len(sub) == 4
    assert torch.equal(sub.images[torch.arange(4)], eager.images[torch.from_numpy(rows)])
    assert list(sub.ids) == list(split.ids[rows]) and torch.equal(sub.labels, eager.labels[rows])


# ------------------------------------------------------------------------------ smoke grid --
PROFILE = """
profile: manifest_smoke
description: notebooks 01-02 on a manifest dataset (tests/test_manifest.py)
backbone: resnet20_cifar
image_size: 28
datasets: [mixed]
pretrain:
  epochs: 1
  batch_size: 16
  max_train: 0
  seed: 0
notebooks:
  01_pretrain:
    arms: [ssl:simclr]
  02_transfer:
    arms: [scratch, ssl:simclr]
    protocols: [linear, finetune]
    fractions: [1.0]
    seeds: [0]
    finetune_arms: [scratch]
    finetune_epochs: 1
    patience: 1
    batch_size: 16
    fusion_arms: []
"""


@pytest.mark.slow
def test_smoke_grid_runs_on_a_manifest_dataset(data_dir, tmp_path, real_data_dir):
    """Notebooks 01 (SimCLR, the whole memory-mapped train split) and 02 (linear probe and
    fine-tuning) run on the 40-file manifest, at 28 px, through the grid."""
    for f in real_data_dir.iterdir():  # the natural-image weights the configs check
        (data_dir / f.name).symlink_to(f)
    params = tmp_path / "params"
    params.mkdir()
    (params / "manifest_smoke.yaml").write_text(PROFILE)
    results = tmp_path / "grid_results"
    env = {**os.environ, "MEDSTUDY_PARAMS_DIR": str(params), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "medstudy.grid", "--profile", "manifest_smoke"]
    done = subprocess.run(
        [*cmd, "--results", str(results)], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 run, 0 skipped" in done.stdout
    metrics = pd.concat(pd.read_csv(p) for p in results.glob("transfer/*/metrics.csv"))
    assert set(metrics["dataset"]) == {"mixed"}
    assert {"linear", "finetune"} <= set(metrics["protocol"])
    assert metrics["value"].notna().any()
    assert list((results / "pretrain").glob("*/DONE"))
    assert [p.name for p in (results / "cache").glob("mixed_28px_*.npy")]
