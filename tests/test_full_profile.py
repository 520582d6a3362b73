"""The ``full`` profile (DESIGN §5): its ``base:`` variants, the override rules, and its exact
design run on CPU with tiny data and steps through every notebook (params/overrides/cpu_tiny).

What the end-to-end test substitutes, and why (nothing else differs from ``full``):

- data: full's MedMNIST+ 64 px files and the PCam h5 files are not on these offline machines
  (data/README.md), so the run takes ``--datasets synth_lesions``, the one data set that exists
  at 64 px offline: it is generated, at any size, by the project's own data path;
- ImageNet weights: timm's ResNet-50 and the DINO ResNet-50 release cannot be downloaded here, so
  the test writes two local files of the same architecture and layout, a *seeded random*
  ResNet-50 (NOT ImageNet weights), declares them in the data dir's checksums.json as
  non-official test stand-ins, and points full's ``natural_weights`` / ``natural_ssl_file`` at
  them through a second override; the real files go in the same place (data/README.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medstudy import paths
from medstudy.config import PretrainConfig, TransferConfig
from medstudy.config.analysis import RepresentationsConfig
from medstudy.grid import NOTEBOOKS, GridError, expand, load_profile
from medstudy.profiles import DESIGN_KEYS

TINY = paths.params_dir() / "overrides" / "cpu_tiny.yaml"
DESIGN_PARAMS = ("backbone", "image_size", "arms", "arm", "protocols", "seeds", "fractions",
                 "finetune_arms", "fusion_arms", "fusion_modes", "methods", "severities",
                 "replicates", "dataset", "datasets", "pretrain_paired")  # fmt: skip


def _drop(spec: dict, *keys: str) -> dict:
    return {k: v for k, v in spec.items() if k not in keys}


def test_full128_and_full224_are_full_at_their_image_size() -> None:
    full = load_profile("full")
    for size in (128, 224):
        variant = load_profile(f"full{size}")
        assert variant["image_size"] == size and variant["profile"] == f"full{size}"
        same = ("image_size", "profile", "description")
        assert _drop(variant, *same) == _drop(full, *same)
        jobs = expand(variant, datasets=["synth_lesions"])
        assert {j.params["image_size"] for j in jobs if "image_size" in j.params} == {size}


def test_full_has_every_arm_method_and_seeds_x_fractions() -> None:
    from medstudy.arms import BASE_ARMS, SSL_PREFIX
    from medstudy.ssl import METHODS

    full = load_profile("full")
    assert (full["backbone"], full["image_size"]) == ("timm:resnet50", 64)
    assert set(full["notebooks"]) == set(NOTEBOOKS)
    arms = full["notebooks"]["02_transfer"]["arms"]
    assert set(BASE_ARMS) <= set(arms)
    assert {SSL_PREFIX + m for m in METHODS} <= set(arms)
    assert any(a.startswith("natural_sup+ssl:") for a in arms)
    le = full["notebooks"]["03_label_efficiency"]
    assert le["seeds"] == [0, 1, 2, 3, 4] and le["fractions"] == [0.01, 0.05, 0.1, 0.25, 0.5, 1.0]
    assert le["protocols"] == ["linear", "knn", "finetune"] and le["arms"] == arms
    assert full["pretrain"]["paired"] is True
    # 01 pretrains every arm that is pretrained (scratch and natural_sup train nothing there)
    assert set(full["notebooks"]["01_pretrain"]["arms"]) == set(arms) - {"scratch", "natural_sup"}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"pretrain": {"epochz": 1}}, r"'pretrain\.epochz' is not in the profile; valid keys "
         r"under 'pretrain': \[.*'epochs'"),
        ({"notebooks": {"02_transfer": {"max_tset": 1}}},
         r"'notebooks\.02_transfer\.max_tset' is not in the profile.*'max_test'"),
        ({"imgae_size": 28}, r"'imgae_size' is not in the profile; valid keys: \[.*'image_size'"),
        ({"image_size": 28}, r"'image_size' defines the study's design"),
        ({"notebooks": {"03_label_efficiency": {"seeds": [0]}}},
         r"'notebooks\.03_label_efficiency\.seeds' defines the study's design"),
        ({"backbone": "resnet20_cifar"}, r"'backbone' defines the study's design"),
    ],
)  # fmt: skip
def test_an_override_key_the_profile_lacks_or_a_design_key_fails_naming_it(
    tmp_path: Path, override: dict, message: str
) -> None:
    path = _write(tmp_path / "bad.yaml", override)
    with pytest.raises(GridError, match=message):
        load_profile("full", [path])


def test_a_bad_override_fails_on_the_command_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medstudy.grid import main

    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(tmp_path / "unused"))  # main sets it
    path = _write(tmp_path / "bad.yaml", {"pretrain": {"epochz": 1}})
    results = tmp_path / "results"
    argv = ["--profile", "full", "--override", str(path), "--results", str(results)]
    assert main(argv) == 2
    assert not results.exists()


def test_base_cycles_and_missing_bases_fail(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDSTUDY_PARAMS_DIR", str(tmp_path))
    _write(tmp_path / "a.yaml", {"base": "b"})
    _write(tmp_path / "b.yaml", {"base": "a"})
    _write(tmp_path / "c.yaml", {"base": "nope"})
    with pytest.raises(GridError, match=r"'base:' cycle: a -> b -> a"):
        load_profile("a")
    with pytest.raises(GridError, match=r"unknown profile 'nope'; valid: \['a', 'b', 'c'\]"):
        load_profile("c")


def test_the_tiny_override_keeps_full_s_design(monkeypatch) -> None:
    """Same jobs, and in every job the same design parameters; only sizes, steps, bootstrap
    replicates and the device differ."""
    full = load_profile("full")
    tiny = load_profile("full", [TINY])
    for key in ("backbone", "image_size", "datasets", "profile"):
        assert tiny[key] == full[key]
    full_jobs, tiny_jobs = expand(full), expand(tiny)
    assert [j.name for j in tiny_jobs] == [j.name for j in full_jobs]
    changed = set()
    for a, b in zip(full_jobs, tiny_jobs, strict=True):
        assert set(a.params) == set(b.params)
        for key in DESIGN_PARAMS:
            assert a.params.get(key) == b.params.get(key), (a.name, key)
        changed |= {k for k in a.params if a.params[k] != b.params[k]}
    assert changed == {
        "device", "epochs", "batch_size", "max_train", "max_val", "max_test", "curriculum",
        "finetune_epochs", "finetune_min_steps", "patience", "n_boot", "n_samples", "n_spectrum",
        "tsne_perplexity", "n_images", "ig_steps", "sanity_images", "pretrain_epochs",
        "pretrain_batch_size", "pretrain_max_train", "pretrain_max_val", "pretrain_curriculum",
    }  # fmt: skip
    assert not changed & DESIGN_KEYS
    # the curriculum keeps its methods in order; only each stage's epochs shrink
    methods = [s.split(":")[0] for s in tiny["pretrain"]["curriculum"]]
    assert methods == [s.split(":")[0] for s in full["pretrain"]["curriculum"]]
    # MEDSTUDY_OVERRIDE is the same as --override
    monkeypatch.setenv("MEDSTUDY_OVERRIDE", str(TINY))
    from medstudy.profiles import override_paths

    assert load_profile("full", override_paths()) == tiny


def test_new_caps_leave_existing_run_ids_unchanged() -> None:
    """max_val (01), max_test and pretrain_max_val (02/03/04), keep_finetuned: at their
    defaults they are not in any identity, so every existing run id stays."""
    assert "max_val" not in PretrainConfig().identity()
    transfer = TransferConfig().identity()
    assert not {"max_test", "pretrain_max_val", "keep_finetuned"} & set(transfer)
    assert "pretrain_max_val" not in RepresentationsConfig().identity()
    assert PretrainConfig(max_val=16).identity()["max_val"] == 16
    assert TransferConfig(max_test=16).identity()["max_test"] == 16
    assert "keep_finetuned" not in TransferConfig(keep_finetuned=False).identity()


def test_full_offline_without_its_data_fails_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """No silent substitute: offline, full's missing 64 px file fails the run before any job,
    naming the file to fetch."""
    from medstudy.grid import main

    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("MEDSTUDY_DATA_DIR", str(empty))
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(tmp_path / "unused"))  # main sets it
    results = tmp_path / "results"
    argv = ["--profile", "full", "--datasets", "pneumoniamnist", "--results", str(results)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pneumoniamnist_64.npz not found" in err and "MEDSTUDY_OFFLINE is set" in err
    assert not (results / "executed").exists()


# ------------------------------------------------------------------ the tiny CPU end to end --
def _stand_in_data(data: Path) -> Path:
    """A data dir: the shared files, plus stand-in ResNet-50 weight files (seeded random, NOT
    ImageNet; declared as such), and the override that points full at them."""
    import timm
    import torch

    data.mkdir()
    shared = paths.data_dir()
    for f in shared.iterdir():
        if f.name != "checksums.json":
            (data / f.name).symlink_to(f)
    torch.manual_seed(0)
    state = timm.create_model("resnet50", pretrained=False).state_dict()
    torch.save(state, data / "resnet50_standin.pth")  # timm's layout (natural_sup)
    head = ("fc.weight", "fc.bias")  # the DINO release: a torchvision state dict, no head
    torch.save({k: v for k, v in state.items() if k not in head}, data / "dino_standin.pth")
    sums = json.loads((shared / "checksums.json").read_text())
    for name in ("resnet50_standin.pth", "dino_standin.pth"):
        sums[name] = {
            "md5": hashlib.md5((data / name).read_bytes()).hexdigest(),
            "official": False,
            "source": "TEST STAND-IN: timm resnet50, seeded random init, NOT ImageNet weights",
        }
    (data / "checksums.json").write_text(json.dumps(sums, indent=1))
    weights = {"natural_weights": "resnet50_standin.pth", "natural_ssl_file": "dino_standin.pth"}
    return _write(data.parent / "standin_weights.yaml", {"pretrain": weights})


def check_full_run(results: Path, jobs: list) -> None:
    """Every job finished; the transfer and label-efficiency stages hold a test row for every
    arm x protocol x fraction x seed of full.yaml; every pretraining replicate exists; every run
    config says full's backbone and image size; the claims table and the paper exist."""
    full = load_profile("full")
    assert [j.notebook for j in jobs if j.notebook.startswith("07")] == ["07_robustness_stats"]
    for job in jobs:  # every job finished
        assert job.stamp(results).exists() and job.output(results).exists(), job.name
    nb = full["notebooks"]
    for stage, key in (("transfer", "02_transfer"), ("label_efficiency", "03_label_efficiency")):
        runs = [json.loads(p.read_text()) for p in (results / stage).glob("*/config.json")]
        assert {(r["backbone"], r["image_size"]) for r in runs} == {("timm:resnet50", 64)}
        metrics = pd.concat(pd.read_csv(p) for p in (results / stage).glob("*/metrics.csv")).query(
            "split == 'test'"
        )
        single = metrics[~metrics["arm"].str.contains(r"\|")] if "arm" in metrics else metrics
        want = {
            (arm, protocol, float(fraction), int(seed))
            for arm in nb[key]["arms"]
            for protocol in nb[key]["protocols"]
            for fraction in nb[key]["fractions"]
            for seed in nb[key]["seeds"]
        }
        got = set(
            zip(
                single["arm"],
                single["protocol"],
                single["fraction"].astype(float),
                single["seed"].astype(int),
                strict=True,
            )
        )
        assert want <= got, sorted(want - got)[:10]
    pre = [json.loads(p.read_text()) for p in (results / "pretrain").glob("*/config.json")]
    assert {(c["arm"], c["seed"]) for c in pre} == {
        (arm, seed) for arm in nb["01_pretrain"]["arms"] for seed in nb["02_transfer"]["seeds"]
    }  # paired: one pretraining run per arm and downstream seed
    assert {(c["backbone"], c["image_size"]) for c in pre} == {("timm:resnet50", 64)}
    claims = pd.read_csv(results / "claims.csv")
    assert sorted(claims["claim"].unique()) == [f"C{i}" for i in range(1, 10)]
    assert (results / "paper" / "paper.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(
    os.environ.get("MEDSTUDY_TEST_FULL") != "1",
    reason="opt-in (MEDSTUDY_TEST_FULL=1): ~44 min and ~16 GB on a 2-core CPU, beyond the "
    "suite's 20-min budget; the fast tests above check full's design and the override",
)
def test_full_profile_runs_on_cpu_with_the_tiny_override(real_data_dir, tmp_path):
    """~44 min and ~16 GB of disk on a 2-core CPU (README, Profiles): full's 13 arms x 5 seeds x
    6 fractions x 3 protocols make ~1 500 units, each ~0.7-2 s on a ResNet-50 at 64 px. So it is
    opt-in: ``MEDSTUDY_TEST_FULL=1 ./run_tests.sh tests/test_full_profile.py``."""
    weights = _stand_in_data(tmp_path / "data")
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "medstudy.grid", "--profile", "full", "--override", str(TINY),
           "--override", str(weights), "--datasets", "synth_lesions", "--results", str(results)]  # fmt: skip
    env = {**os.environ, "MEDSTUDY_DATA_DIR": str(tmp_path / "data")}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3 * 3600, env=env)
    wall = time.perf_counter() - t0
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_full_run(
        results, expand(load_profile("full", [TINY, weights]), datasets=["synth_lesions"])
    )
    print(f"full profile, cpu_tiny override, synth_lesions: {wall:.0f} s")


def test_max_test_caps_the_test_split_stratified_and_hashes_its_ids() -> None:
    from medstudy.transfer.data import load_transfer_data

    whole = load_transfer_data(TransferConfig(dataset="synth_lesions"))
    capped = load_transfer_data(TransferConfig(dataset="synth_lesions", max_test=16))
    assert whole.test_hash == "" and len(capped.splits["test"]) < len(whole.splits["test"])
    assert 16 <= len(capped.splits["test"]) <= 20  # stratified, >= 1 per class
    assert set(capped.splits["test"].labels) == set(whole.splits["test"].labels)
    assert capped.test_hash and set(capped.splits["test"].ids) <= set(whole.splits["test"].ids)
