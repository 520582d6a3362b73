"""medstudy.grid: profile expansion, validation before work, skipping finished jobs."""

from __future__ import annotations

import json

import pytest

from medstudy import grid, paths
from medstudy import jobs as jobs_mod
from medstudy.config import ConfigError, PretrainConfig
from medstudy.grid import GridError, expand, load_profile


def test_every_profile_expands_and_validates():
    for profile in grid.PROFILES:
        spec = load_profile(profile)
        jobs = expand(spec)
        assert jobs, profile
        order = [list(grid.NOTEBOOKS).index(j.notebook) for j in jobs]
        assert order == sorted(order)  # dependency order
        if not profile.startswith("full"):  # GPU devices, and data not on this machine
            grid.validate_jobs(jobs)


def test_smoke_expansion_shape():
    spec = load_profile("smoke")
    jobs = expand(spec)
    n_ds = len(spec["datasets"])
    n_01 = len(spec["notebooks"]["01_pretrain"].get("datasets") or spec["datasets"])
    n_arms = len(spec["notebooks"]["01_pretrain"]["arms"])
    by_nb = {nb: [j for j in jobs if j.notebook == nb] for nb in grid.NOTEBOOKS}
    assert len(by_nb["01_pretrain"]) == n_01 * n_arms
    n_02 = len(spec["notebooks"]["02_transfer"]["datasets"])  # a notebook's own dataset subset
    assert len(by_nb["02_transfer"]) == n_02 < n_ds and len(by_nb["07_robustness_stats"]) == 1
    j01 = by_nb["01_pretrain"][0]
    assert j01.name == "01_pretrain__pneumoniamnist__ssl-simclr"
    assert j01.params["epochs"] == spec["pretrain"]["epochs"]
    j02 = by_nb["02_transfer"][0]
    assert j02.params["pretrain_epochs"] == spec["pretrain"]["epochs"]
    assert all(u.startswith("01_pretrain__pneumoniamnist__") for u in j02.upstream)
    assert len(by_nb["07_robustness_stats"][0].upstream) == len(jobs) - 1


def test_only_and_datasets_filters():
    spec = load_profile("smoke")
    jobs = expand(spec, only=["01", "07"], datasets=["retinamnist"])
    assert {j.notebook for j in jobs} == {"01_pretrain", "07_robustness_stats"}
    assert {j.dataset for j in jobs if j.dataset} == {"retinamnist"}
    with pytest.raises(GridError, match=r"--only: unknown notebooks \['09'\]"):
        expand(spec, only=["09"])


def test_bad_profile_and_dataset_fail_before_work(capsys):
    assert grid.main(["--profile", "huge"]) == 2
    assert (
        "unknown profile 'huge'; valid: ['full', 'full128', 'full224', 'quick', 'smoke']"
        in capsys.readouterr().err
    )
    assert grid.main(["--profile", "smoke", "--datasets", "mnist"]) == 2
    assert "unknown dataset 'mnist'" in capsys.readouterr().err


def test_notebook_dataset_subset_must_be_in_the_profile():
    spec = load_profile("smoke")
    spec["notebooks"]["02_transfer"]["datasets"] = ["dermamnist"]
    with pytest.raises(GridError, match=r"02_transfer: datasets \['dermamnist'\] are not in"):
        expand(spec)


def test_a_users_own_profile_file_runs(tmp_path, monkeypatch):
    params = tmp_path / "params"
    params.mkdir()
    smoke = (grid.paths.params_dir() / "smoke.yaml").read_text()
    smoke_jobs = [j.name for j in expand(load_profile("smoke"))]
    (params / "mine.yaml").write_text(smoke.replace("profile: smoke", "profile: smoke-copy"))
    monkeypatch.setattr(grid.paths, "params_dir", lambda: params)
    spec = load_profile("mine")
    assert spec["profile"] == "mine"  # the file name, whatever the file says
    jobs = expand(spec)
    assert [j.name for j in jobs] == smoke_jobs
    assert jobs[-1].params["profile"] == "mine"  # notebook 07 labels the claims with it
    with pytest.raises(GridError, match=r"unknown profile '../mine'; valid: \['mine'\]"):
        load_profile("../mine")


def test_per_dataset_overrides_reach_only_their_dataset():
    spec = load_profile("smoke")
    spec["notebooks"]["02_transfer"]["per_dataset"] = {
        "pneumoniamnist": {"finetune_arms": ["scratch", "natural_sup", "curriculum"]}
    }
    spec["notebooks"]["01_pretrain"]["per_dataset"] = {"retinamnist": {"arms": ["ssl:simclr"]}}
    jobs = {j.name: j for j in expand(spec)}
    assert jobs["02_transfer__pneumoniamnist"].params["finetune_arms"][-1] == "curriculum"
    assert jobs["02_transfer__retinamnist"].params["finetune_arms"] == ["scratch", "natural_sup"]
    assert "01_pretrain__retinamnist__ssl-spark" not in jobs
    assert "01_pretrain__pneumoniamnist__ssl-spark" in jobs
    spec["notebooks"]["02_transfer"]["per_dataset"] = {"dermamnist": {"seeds": [0]}}
    with pytest.raises(GridError, match=r"per_dataset \['dermamnist'\] are not in"):
        expand(spec)
    spec["notebooks"]["02_transfer"]["per_dataset"] = {"retinamnist": ["seeds", 0]}
    with pytest.raises(GridError, match=r"per_dataset must map a dataset to .*\['retinamnist'\]"):
        expand(spec)
    spec["notebooks"]["02_transfer"].pop("per_dataset")
    spec["notebooks"]["01_pretrain"]["per_dataset"] = {"retinamnist": {"lr_scale": 0.5}}
    with pytest.raises(GridError, match=r"\['lr_scale'\] belong in the profile's shared"):
        expand(spec)


def test_pretrain_keys_must_stay_shared():
    spec = load_profile("smoke")
    spec["notebooks"]["01_pretrain"] = {"arms": ["scratch"], "epochs": 3}
    with pytest.raises(GridError, match=r"\['epochs'\] belong in the profile's shared"):
        expand(spec)


def test_bad_job_parameter_is_named():
    spec = load_profile("smoke")
    spec["notebooks"]["02_transfer"] = {"arms": ["scratch"], "fractions": [2.0]}
    with pytest.raises(GridError, match=r"02_transfer__pneumoniamnist: fractions must be in"):
        grid.validate_jobs(expand(spec, only=["02"]))


def test_dry_run_lists_jobs(capsys, results_tmp):
    assert grid.main(["--profile", "smoke", "--dry-run", "--only", "07"]) == 0
    out = capsys.readouterr().out
    assert "07_robustness_stats__all  to run" in out


def test_stamp_skips_only_unchanged_jobs(results_tmp):
    job = expand(load_profile("smoke"), only=["02"], datasets=["retinamnist"])[0]
    root = paths.results_dir()
    assert not jobs_mod.is_finished(job, root)
    job.output(root).parent.mkdir(parents=True)
    job.output(root).write_text("{}")
    job.stamp(root).write_text(json.dumps({"hash": jobs_mod.job_hash(job, root)}))
    assert jobs_mod.is_finished(job, root)
    job.params["seeds"] = [0, 1, 2]  # a changed parameter invalidates the stamp
    assert not jobs_mod.is_finished(job, root)


def test_a_code_change_invalidates_every_stamp(results_tmp, monkeypatch):
    job = expand(load_profile("smoke"), only=["02"], datasets=["retinamnist"])[0]
    root = paths.results_dir()
    job.output(root).parent.mkdir(parents=True)
    job.output(root).write_text("{}")
    job.stamp(root).write_text(json.dumps({"hash": jobs_mod.job_hash(job, root)}))
    assert jobs_mod.is_finished(job, root)
    monkeypatch.setattr(jobs_mod, "package_version", lambda: "edited-code")
    assert not jobs_mod.is_finished(job, root)


def test_relative_env_dirs_are_pinned_before_kernels_start(tmp_path, monkeypatch):
    # papermill runs kernels in notebooks/; a relative MEDSTUDY_DATA_DIR must keep its meaning
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDSTUDY_DATA_DIR", "../data_here")
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", "res")
    grid.absolutise_env_dirs()
    import os

    assert os.environ["MEDSTUDY_DATA_DIR"] == str((tmp_path / "../data_here").resolve())
    assert os.environ["MEDSTUDY_RESULTS_DIR"] == str(tmp_path / "res")


def test_paired_pretraining_makes_one_run_per_downstream_seed():
    spec = load_profile("smoke")
    spec["pretrain"] = {**spec["pretrain"], "paired": True}
    spec["pretrain"].pop("seed")
    jobs = expand(spec)
    pre = [j for j in jobs if j.notebook == "01_pretrain" and j.dataset == "pneumoniamnist"]
    seeds = sorted(
        set(spec["notebooks"]["02_transfer"]["seeds"])
        | set(spec["notebooks"]["03_label_efficiency"]["seeds"])
    )
    arms = spec["notebooks"]["01_pretrain"]["arms"]
    # one job per arm runs every replicate; each run is one seed's config
    assert sorted(j.params["arm"] for j in pre) == sorted(arms)
    assert all(j.params["replicates"] == seeds and j.params["seed"] == seeds[0] for j in pre)
    assert all("paired" not in j.params for j in pre)  # not a notebook-01 parameter
    cfg = PretrainConfig.from_params(**pre[0].params)
    assert [c.seed for c in cfg.runs()] == seeds and all(not c.replicates for c in cfg.runs())
    # the replicate list is job-level: the run of seed s has one identity however it was run
    single = {k: v for k, v in pre[0].params.items() if k != "replicates"}
    for run, seed in zip(cfg.runs(), seeds, strict=True):
        assert run.identity() == PretrainConfig.from_params(**{**single, "seed": seed}).identity()
    with pytest.raises(ConfigError, match="replicates"):
        PretrainConfig.from_params(**{**single, "replicates": [0, 0]})
    downstream = [j for j in jobs if j.notebook in ("02_transfer", "03_label_efficiency")]
    assert downstream and all(j.params["pretrain_paired"] is True for j in downstream)
    grid.validate_jobs(jobs)
    spec["pretrain"]["seed"] = 0
    with pytest.raises(GridError, match="remove 'seed'"):
        expand(spec)


def test_paired_units_use_the_encoder_of_their_own_seed():
    from medstudy.config import TransferConfig
    from medstudy.transfer.encoders import encoder_seed

    fixed = TransferConfig(dataset="synth_lesions", pretrain_seed=0)
    paired = TransferConfig(dataset="synth_lesions", pretrain_seed=0, pretrain_paired=True)
    assert [encoder_seed(fixed, "ssl:simclr", s) for s in (0, 1, 2)] == [0, 0, 0]
    assert [encoder_seed(paired, "ssl:simclr", s) for s in (0, 1, 2)] == [0, 1, 2]
    assert [encoder_seed(fixed, "scratch", s) for s in (0, 1, 2)] == [0, 1, 2]


def test_a_dataset_named_on_the_command_line_runs_where_it_can(tmp_path, monkeypatch, capsys):
    """A MedMNIST-format file the profile does not list runs in every notebook whose config
    takes it; a profile dataset keeps each notebook's own subset of the profile."""
    monkeypatch.setenv("MEDSTUDY_DATA_DIR", str(tmp_path))
    (tmp_path / "standin.npz").write_bytes(b"")  # validate_dataset only needs the file
    spec = load_profile("smoke")
    jobs = expand(spec, datasets=["standin"])
    by_notebook = {j.notebook for j in jobs if j.dataset == "standin"}
    assert by_notebook == {nb for nb in grid.NOTEBOOKS if nb[:2] in ("01", "02", "03", "04", "06")}
    assert "05_interpretability skipped on standin" in capsys.readouterr().err  # no masks
    assert sum(j.notebook == "07_robustness_stats" for j in jobs) == 1
    only_pneumonia = spec["notebooks"]["04_representations"]["datasets"]
    assert "retinamnist" not in only_pneumonia
    jobs = expand(spec, datasets=["retinamnist"])
    assert not any(j.notebook == "04_representations" for j in jobs)
