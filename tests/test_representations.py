"""medstudy.representations: the notebook-04 stage end to end on a tiny synth_lesions sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medstudy import paths, repstats
from medstudy import representations as rep
from medstudy.config import ConfigError, RepresentationsConfig, TransferConfig
from medstudy.models import RESNET20_FILE
from medstudy.results import finished_run_ids, read_config
from medstudy.stats import seed_case_test
from medstudy.transfer import run_transfer

# natural_sup needs the offline CIFAR weights; without them the stage is tested on scratch only
HAS_NATURAL = (paths.data_dir() / RESNET20_FILE).exists()
ARMS = ("scratch", "natural_sup") if HAS_NATURAL else ("scratch",)
STATS = ("effective_rank", "condition_number", "alignment", "uniformity", "eigenvalue_1")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _cfg(**kw: object) -> RepresentationsConfig:
    # paired: natural_sup gets seeds 0 and 1 (identical weights), as a paired profile would
    base = dict(arms=ARMS, seeds=(0, 1), sources=("pretrained",), n_samples=64, n_boot=20)
    return RepresentationsConfig(**{**base, "pretrain_paired": True, **kw})


@pytest.fixture(scope="module")
def computed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSTUDY_RESULTS_DIR", str(root))
        metrics = rep.run_representations(_cfg())
    return root, metrics


@pytest.fixture
def results(computed: tuple[Path, pd.DataFrame], monkeypatch: pytest.MonkeyPatch) -> pd.DataFrame:
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(computed[0]))
    return computed[1]


def test_every_layer_gets_every_statistic_from_the_saved_features(results: pd.DataFrame) -> None:
    units = results[["arm", "seed", "run_id"]].drop_duplicates()
    assert len(units) == 2 * len(ARMS)
    assert set(results["protocol"]) == {"pretrained"} and set(results["split"]) == {"test"}
    rid = units["run_id"].iloc[0]
    layers = rep.unit_layers(rid)
    assert layers == ["stage0", "stage1", "stage2", "stage3"]  # resnet20_cifar: stem + 3 stages
    names = set(results["metric"])
    assert {f"{s}@{layer}" for s in STATS for layer in layers} <= names
    # the saved features are exactly what the metrics were computed from
    last = rep.load_features(rid)
    assert last.layer == "stage3" and last.features.shape == (len(last.sample_id), 64)
    assert 60 <= len(last.sample_id) <= 68  # ~n_samples, stratified per class
    mine = results[results["run_id"] == rid].set_index("metric")["value"]
    assert mine["effective_rank@stage3"] == pytest.approx(
        repstats.effective_rank(last.features), rel=1e-12
    )
    assert mine["condition_number@stage3"] == pytest.approx(
        repstats.condition_number(last.features), rel=1e-12
    )
    with pytest.raises(ValueError, match="unknown layer 'stage9'.*valid"):
        rep.load_features(rid, "stage9")


def test_second_call_computes_nothing(
    results: pd.DataFrame, computed: tuple[Path, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = finished_run_ids("representations", computed[0])

    def fail(*_a: object, **_k: object) -> None:
        raise AssertionError("a cached unit was recomputed")

    monkeypatch.setattr(rep, "_compute", fail)
    again = rep.run_representations(_cfg())
    pd.testing.assert_frame_equal(results, again)
    assert finished_run_ids("representations", computed[0]) == before


def test_same_config_gives_identical_numbers(
    results_tmp: Path, computed: tuple[Path, pd.DataFrame]
) -> None:
    fresh = rep.run_representations(_cfg(arms=("scratch",), seeds=(1,)))  # an empty results dir
    old = computed[1][(computed[1]["arm"] == "scratch") & (computed[1]["seed"] == 1)]
    pd.testing.assert_frame_equal(fresh, old.reset_index(drop=True))


def test_cka_of_an_arm_with_itself_is_one_at_every_layer(results: pd.DataFrame) -> None:
    for debiased in (False, True):
        cka = rep.cka_table(results, debiased)
        same = cka[(cka["arm_a"] == cka["arm_b"]) & (cka["layer_a"] == cka["layer_b"])]
        assert len(same) == 2 * 4 * len(ARMS) * 2  # seeds × layers × arms × {arms, layers}
        np.testing.assert_allclose(same["cka"], 1.0, rtol=0, atol=1e-9)
        assert cka["cka"].between(-0.2, 1 + 1e-9).all()


@pytest.mark.skipif(not HAS_NATURAL, reason=f"{RESNET20_FILE} not in MEDSTUDY_DATA_DIR")
def test_paired_features_feed_the_seed_case_test(results: pd.DataFrame) -> None:
    per_seed = rep.paired_features(results, "natural_sup")
    assert len(per_seed) == 2
    y, a, b = per_seed[0]
    assert a.shape == b.shape and y.shape[0] == a.shape[0]
    res = seed_case_test(rep.CASE_STATISTICS["effective_rank"], per_seed, n_boot=20)
    er = results[results["metric"] == "effective_rank@stage3"].set_index(["arm", "seed"])["value"]
    expected = np.mean([er["natural_sup", s] - er["scratch", s] for s in (0, 1)])
    assert res.diff == pytest.approx(expected, rel=1e-12) and res.n_seeds == 2
    table = rep.statistics_table(results, n_boot=20).set_index(["arm", "statistic"])
    row = table.loc[("natural_sup", "effective_rank")]
    assert row["diff_vs_scratch"] == pytest.approx(expected, rel=1e-12)
    assert row["diff_ci_low"] < row["diff_vs_scratch"] < row["diff_ci_high"]  # estimate ± z SE
    assert row["n_paired_seeds"] == 2 and table.loc[("scratch", "effective_rank")]["n_seeds"] == 2


def test_tables_embeddings_and_figures(
    results: pd.DataFrame, computed: tuple[Path, pd.DataFrame]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    table = rep.layer_table(results)
    assert len(table) == 4 * len(ARMS) and (table["n_seeds"] == 2).all()
    sp = rep.spectra(results)
    first = sp.sort_values("component").groupby(["arm", "seed", "layer"])["eigenvalue"]
    assert (first.diff().dropna() <= 1e-9).all()  # descending
    emb = rep.embeddings(results, perplexity=10.0)
    assert set(emb["arm"]) == set(ARMS) and set(emb["seed"]) == {0}
    n_runs = len(finished_run_ids("representations", computed[0]))
    pd.testing.assert_frame_equal(emb, rep.embeddings(results, perplexity=10.0))  # cached
    assert len(finished_run_ids("representations", computed[0])) == n_runs
    for fig in (
        rep.plot_spectra(results),
        rep.plot_cka(rep.cka_table(results), "arms"),
        rep.plot_cka(rep.cka_table(results), "layers"),
        rep.plot_embeddings(emb),
    ):
        assert fig.axes
    assert len(rep.unit_paths(results)) == 2 * len(ARMS)


@pytest.mark.slow
def test_finetuned_source_reads_the_transfer_unit(results_tmp: Path) -> None:
    tcfg = TransferConfig(
        arms=("scratch",),
        protocols=("finetune",),
        max_train=96,
        finetune_epochs=1,
        patience=1,
        batch_size=32,
    )
    run_transfer(tcfg)
    metrics = rep.run_representations(_cfg(arms=("scratch",), seeds=(0,), sources=("finetuned",)))
    (rid,) = metrics["run_id"].unique()
    config = read_config("representations", rid)
    assert config["source"] == "finetuned" and config["seed"] == 0
    (src,) = finished_run_ids("transfer")
    assert config["source_unit"] == f"transfer/{src}"
    assert set(metrics["protocol"]) == {"finetuned"} and set(metrics["fraction"]) == {1.0}


def test_missing_fine_tuned_unit_fails_before_any_work(results_tmp: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run notebook 02"):
        rep.run_representations(_cfg(sources=("pretrained", "finetuned")))
    assert not (results_tmp / "representations").exists()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"sources": ("imagenet",)}, r"unknown source 'imagenet'; valid: \['pretrained'"),
        ({"views_recipe": "spark"}, r"unknown views_recipe 'spark'.*valid: \['barlowtwins'"),
        ({"views_recipe": "nope"}, "unknown views_recipe 'nope'"),
        ({"arms": ("ssl:nope",)}, "unknown SSL method"),
        ({"finetune_arms": ("curriculum",)}, r"finetune_arms \['curriculum'\] are not in"),
        ({"n_samples": 3}, "'n_samples' must be 0"),
        ({"device": "tpu"}, "'device' must be one of"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; valid"),
    ],
)
def test_bad_parameters_fail_naming_the_valid_choices(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _cfg(**kw)


def test_unknown_parameter_is_rejected_with_the_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown parameter.*'n_sample'.*valid"):
        RepresentationsConfig.from_params(n_sample=10)
