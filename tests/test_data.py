"""medstudy.data: INFO, load_split (md5, provenance, shapes, errors), sampling, tensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medstudy.data import (
    INFO,
    DataFileError,
    TensorSplit,
    load_split,
    loaders,
    sample_fraction,
    sample_fractions,
    to_model_input,
)


def _write_npz(path: Path, n: dict[str, int], shape=(28, 28), n_classes=2, label_shape="n1"):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in n.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, *shape), dtype=np.uint8)
        labels = rng.integers(0, n_classes, k).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None] if label_shape == "n1" else labels
    np.savez(path, **arrays)
    return path


SMALL = {"train": 20, "val": 6, "test": 8}


# ------------------------------------------------------------------------------ INFO table --
def test_info_covers_every_2d_medmnist_flag_and_study_sets():
    from medmnist import INFO as MEDMNIST_INFO

    flags_2d = {f for f in MEDMNIST_INFO if not f.endswith("3d")}
    assert flags_2d <= set(INFO)
    assert {"pcam28_subset", "synth_lesions"} <= set(INFO)
    assert INFO["retinamnist"].task == "ordinal-regression"
    assert INFO["chestmnist"].is_multilabel and INFO["chestmnist"].n_outputs == 14
    assert INFO["pneumoniamnist"].md5[28] == "28209eda62fecd6e6a2d98b1501bb15f"
    assert INFO["pathmnist"].md5[64] == MEDMNIST_INFO["pathmnist"]["MD5_64"]


# ------------------------------------------------------------------------ real offline data --
@pytest.mark.realdata
@pytest.mark.parametrize(
    ("name", "status", "n", "channels"),
    [
        ("retinamnist", "official", (1080, 120, 400), 3),
        ("pneumoniamnist", "declared-non-official", (4708, 524, 624), 1),
        ("pcam28_subset", "declared-non-official", (20000, 3000, 3000), 3),
    ],
)
def test_real_files_load_with_provenance(real_data_dir, name, status, n, channels):
    for split, k in zip(("train", "val", "test"), n, strict=True):
        s = load_split(name, split)
        assert s.images.shape == (k, 28, 28, channels) and s.images.dtype == np.uint8
        assert s.labels.shape == (k,) and s.labels.dtype == np.int64
        assert s.provenance.status == status
        assert len(set(s.ids)) == k and s.ids[0] == f"{name}:{split}:000000"


@pytest.mark.realdata
def test_pneumonia_train_composition(real_data_dir):
    s = load_split("pneumoniamnist", "train")
    assert np.bincount(s.labels).tolist() == [1214, 3494]


# ------------------------------------------------------------------------------ bad files --
def _copy_data(real_dir: Path, tmp: Path, name: str) -> Path:
    shutil.copy(real_dir / f"{name}.npz", tmp / f"{name}.npz")
    return tmp / f"{name}.npz"


@pytest.mark.realdata
def test_wrong_md5_official_file_fails_and_names_file(real_data_dir, tmp_path):
    path = _copy_data(real_data_dir, tmp_path, "retinamnist")
    with open(path, "ab") as fh:  # a trailing byte: still a readable zip, different md5
        fh.write(b"\0")
    with pytest.raises(DataFileError, match=r"retinamnist\.npz: md5 .* differs from the official"):
        load_split("retinamnist", "test", data_dir=tmp_path)


@pytest.mark.realdata
def test_undeclared_non_official_file_fails(real_data_dir, tmp_path):
    # pneumoniamnist's rebuilt train split is accepted only through checksums.json.
    _copy_data(real_data_dir, tmp_path, "pneumoniamnist")
    with pytest.raises(DataFileError, match=r"pneumoniamnist\.npz: md5 1708a32f"):
        load_split("pneumoniamnist", "test", data_dir=tmp_path)
    decl = {"pneumoniamnist.npz": {"md5": "1708a32fe0308fc40ee4816a84c4bdd8", "source": "x"}}
    (tmp_path / "checksums.json").write_text(json.dumps(decl))
    s = load_split("pneumoniamnist", "test", data_dir=tmp_path)
    assert s.provenance.status == "declared-non-official" and s.provenance.source == "x"


@pytest.mark.realdata
def test_declared_md5_mismatch_fails(real_data_dir, tmp_path):
    _copy_data(real_data_dir, tmp_path, "pneumoniamnist")
    decl = {"pneumoniamnist.npz": {"md5": "0" * 32, "source": "x"}}
    (tmp_path / "checksums.json").write_text(json.dumps(decl))
    with pytest.raises(DataFileError, match=r"pneumoniamnist\.npz: md5 .* declared in"):
        load_split("pneumoniamnist", "test", data_dir=tmp_path)


def test_study_file_without_declaration_fails(tmp_path):
    _write_npz(tmp_path / "pcam28_subset.npz", SMALL)
    with pytest.raises(DataFileError, match=r"pcam28_subset\.npz: pcam28_subset has no official"):
        load_split("pcam28_subset", "val", data_dir=tmp_path)


def test_missing_file_offline_names_file_md5_and_place(tmp_path):
    with pytest.raises(DataFileError) as err:
        load_split("breastmnist", "train", data_dir=tmp_path)
    msg = str(err.value)
    assert "breastmnist.npz not found" in msg
    assert INFO["breastmnist"].md5[28] in msg
    assert str(tmp_path / "breastmnist.npz") in msg
    assert "zenodo" in msg


def test_missing_file_download_failure_is_clear(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSTUDY_OFFLINE")

    def refuse(info, size, root):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(loaders, "download_medmnist", refuse)
    with pytest.raises(DataFileError, match=r"the download failed: OSError: Network is unreach"):
        load_split("breastmnist", "train", data_dir=tmp_path)


def test_missing_study_file_points_to_readme(tmp_path):
    with pytest.raises(DataFileError, match=r"pcam28_subset\.npz not found.*data/README\.md"):
        load_split("pcam28_subset", "train", data_dir=tmp_path)


def test_corrupt_and_truncated_npz(tmp_path):
    path = _write_npz(tmp_path / "mystudy.npz", SMALL)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match=r"mystudy\.npz: cannot be read as an npz"):
        load_split("mystudy", "train", data_dir=tmp_path)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(DataFileError, match=r"mystudy\.npz: cannot be read as an npz"):
        load_split("mystudy", "train", data_dir=tmp_path)


def test_split_sizes_disagreeing_with_info(tmp_path):
    path = _write_npz(tmp_path / "breastmnist.npz", SMALL)
    md5 = loaders.file_md5(path)
    (tmp_path / "checksums.json").write_text(json.dumps({"breastmnist.npz": {"md5": md5}}))
    with pytest.raises(DataFileError, match=r"breastmnist\.npz: the train split has 20 samples"):
        load_split("breastmnist", "train", data_dir=tmp_path)


def test_missing_arrays(tmp_path):
    np.savez(tmp_path / "partial.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataFileError, match=r"partial\.npz: missing arrays"):
        load_split("partial", "train", data_dir=tmp_path)


# ------------------------------------------------------------------ a student's own dataset --
@pytest.mark.parametrize("label_shape", ["n", "n1"])
def test_new_medmnist_format_file_works_by_name(tmp_path, monkeypatch, label_shape):
    monkeypatch.setenv("MEDSTUDY_DATA_DIR", str(tmp_path))
    _write_npz(tmp_path / "mynewmnist.npz", SMALL, n_classes=3, label_shape=label_shape)
    with pytest.warns(UserWarning, match="not declared"):
        s = load_split("mynewmnist", "val")
    assert s.info.task == "multi-class" and s.info.n_classes == 3
    assert s.images.shape == (6, 28, 28, 1) and s.labels.shape == (6,)
    assert s.provenance.status == "undeclared"
    from medstudy.config import validate_dataset

    assert validate_dataset("mynewmnist") == "mynewmnist"


def test_unknown_dataset_and_split_list_valid_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'.*pneumoniamnist"):
        load_split("nope", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"unknown split 'training'; valid: \['train'"):
        load_split("retinamnist", "training", data_dir=tmp_path)


# ------------------------------------------------------------------------------- sampling --
def test_sampler_stratified_nested_seeded_at_least_one_per_class():
    rng = np.random.default_rng(1)
    labels = rng.choice(5, size=2000, p=[0.6, 0.2, 0.15, 0.045, 0.005])
    fracs = [0.001, 0.01, 0.1, 0.5, 1.0]
    subsets = sample_fractions(labels, fracs, seed=3)
    counts = np.bincount(labels, minlength=5)
    for f in fracs:
        got = np.bincount(labels[subsets[f]], minlength=5)
        assert (got >= 1).all()  # every class at least once
        expect = np.maximum(1, np.round(f * counts)).astype(int)
        assert got.tolist() == np.minimum(expect, counts).tolist()  # stratified
    for small, big in zip(fracs, fracs[1:], strict=False):
        assert set(subsets[small]) <= set(subsets[big])  # nested
    assert len(subsets[1.0]) == 2000
    again = sample_fractions(labels, fracs, seed=3)
    assert all(np.array_equal(subsets[f], again[f]) for f in fracs)  # seeded
    other = sample_fractions(labels, fracs, seed=4)
    assert not np.array_equal(subsets[0.1], other[0.1])
    assert np.array_equal(sample_fraction(labels, 0.1, seed=3), subsets[0.1])


def test_sampler_multilabel_nested_and_covers_labels():
    rng = np.random.default_rng(0)
    labels = (rng.random((500, 6)) < [0.3, 0.1, 0.05, 0.02, 0.5, 0.01]).astype(int)
    subsets = sample_fractions(labels, [0.01, 0.1, 1.0], seed=0)
    assert set(subsets[0.01]) <= set(subsets[0.1]) <= set(subsets[1.0])
    assert (labels[subsets[0.01]].sum(0) >= 1).all()


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, "0.1", True])
def test_sampler_rejects_bad_fraction(bad):
    with pytest.raises((ValueError, TypeError), match="fraction"):
        sample_fractions(np.array([0, 1, 1]), [bad], seed=0)


# -------------------------------------------------------------------------------- tensors --
def test_tensor_split_and_model_input(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSTUDY_DATA_DIR", str(tmp_path))
    _write_npz(tmp_path / "greyset.npz", SMALL)
    with pytest.warns(UserWarning):
        s = load_split("greyset", "train")
    ts = TensorSplit.from_split(s)
    assert ts.images.dtype == torch.uint8 and ts.images.shape == (20, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    batches = list(ts.batches(8, shuffle=True, generator=g))
    assert [len(b[2]) for b in batches] == [8, 8, 4]
    seen = torch.cat([b[2] for b in batches]).sort().values
    assert torch.equal(seen, torch.arange(20))
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        next(ts.batches(8, shuffle=True))
    x = to_model_input(ts.images[:2].float() / 255)
    assert x.shape == (2, 3, 28, 28)
    assert torch.equal(x[:, 0] * 0.229 + 0.485, x[:, 1] * 0.224 + 0.456) or torch.allclose(
        x[:, 0] * 0.229 + 0.485, x[:, 1] * 0.224 + 0.456, atol=1e-6
    )
