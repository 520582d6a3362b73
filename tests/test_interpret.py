"""medstudy.interpret: the attribution stage on a real fine-tuned unit (tiny synth data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medstudy import interpret
from medstudy.config import ConfigError, InterpretConfig
from medstudy.interpret import (
    inpaint_median,
    mask_metric_table,
    minute_erased,
    run_interpret,
    sanity_table,
    select_sample,
)
from medstudy.results import collect_predictions, finished_run_ids, read_details

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def finetuned(finetuned_synth: Path) -> Path:
    return finetuned_synth


def _cfg(**kw: object) -> InterpretConfig:
    base = dict(
        dataset="synth_lesions",
        arms=("scratch",),
        seeds=(0,),
        methods=("saliency", "grad_cam"),
        n_images=16,
        sanity_images=4,
    )
    return InterpretConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def scored(finetuned: Path) -> tuple[Path, pd.DataFrame]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSTUDY_RESULTS_DIR", str(finetuned))
        return finetuned, run_interpret(_cfg())


def test_per_sample_rows_by_size_class_in_range_and_paired(
    scored: tuple[Path, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, metrics = scored
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(root))
    rows = collect_predictions("interpretability", root)
    att = rows[rows["method"] != "erasure"]
    assert set(att["method"]) == {"saliency", "grad_cam"}
    assert set(att["size_class"]) == {"all", "minute", "small", "large"}
    assert set(att["metric"]) == {"mass_in_mask", "pointing_game", "pixel_auc", "area_fraction"}
    assert att["sample_id"].nunique() == 16
    v = att["value"].to_numpy()
    ok = np.isfinite(v)  # NaN only where a metric is undefined (e.g. a map with no positive mass)
    assert ok.mean() > 0.9 and ((v[ok] >= 0) & (v[ok] <= 1)).all()
    # one value per (sample, method, region, metric); "all" covers every sampled image
    assert not att.duplicated(["sample_id", "method", "size_class", "metric"]).any()
    assert (att[att["size_class"] == "all"].groupby(["method", "metric"]).size() == 16).all()
    # identifying columns for the claims layer, and the target is the true grade
    assert set(att["stage"]) == {"interpretability"} and set(att["split"]) == {"test"}
    assert att["distortion"].isna().all() and att["severity"].isna().all()
    assert set(att["arm"]) == {"scratch"} and set(att["seed"]) == {0}
    assert (att["y_true"] > 0).all()  # only images with lesions (grade >= 1) are sampled
    names = set(metrics["metric"])
    assert {"mass_in_mask:grad_cam:minute", "pointing_game:saliency:all"} <= names
    assert {"sanity_spearman:grad_cam", "sanity_flag:saliency", "accuracy:minute_erased"} <= names
    details = read_details("interpretability", metrics["run_id"].iloc[0], root)
    assert set(details["sanity_flag"]) == {"saliency", "grad_cam"}
    assert details["erasure"]["n_images"] == int(
        metrics.loc[metrics["metric"] == "n_images:minute_erased", "value"].iloc[0]
    )
    table = mask_metric_table(metrics, n_boot=50)
    assert (table["ci_low"] <= table["mean"] + 1e-12).all()
    assert (table["mean"] <= table["ci_high"] + 1e-12).all()
    assert set(sanity_table(metrics)["method"]) == {"saliency", "grad_cam"}


def test_cached_and_deterministic(
    scored: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, metrics = scored
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(root))
    before = finished_run_ids("interpretability", root)

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("a cached unit was recomputed")

    with monkeypatch.context() as mp:
        mp.setattr(interpret, "attribute", boom)
        again = run_interpret(_cfg())
    assert finished_run_ids("interpretability", root) == before
    pd.testing.assert_frame_equal(metrics, again)
    # recomputed from scratch in another results dir: identical numbers
    other = tmp_path / "other"
    import shutil

    shutil.copytree(root / "transfer", other / "transfer")
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(other))
    fresh = run_interpret(_cfg())
    pd.testing.assert_frame_equal(metrics, fresh)
    a = collect_predictions("interpretability", root).drop(columns="run_id")
    b = collect_predictions("interpretability", other).drop(columns="run_id")
    pd.testing.assert_frame_equal(a, b)


def test_sample_is_fixed_nested_and_only_images_with_lesions() -> None:
    small, large = select_sample(_cfg(n_images=8)), select_sample(_cfg(n_images=24))
    assert set(small.test.ids) <= set(large.test.ids)
    assert small.regions["all"].any(axis=(1, 2)).all()
    np.testing.assert_array_equal(select_sample(_cfg(n_images=8)).test.ids, small.test.ids)


def test_minute_lesions_are_erased_from_the_background_only() -> None:
    er = minute_erased(28)
    assert len(er.index) > 0 and er.images.shape[1:] == (28, 28, 3)
    # hand-made: a 1-px lesion on a flat background takes the background's value
    img = np.full((1, 7, 7, 3), 100, np.uint8)
    img[0, 3, 3] = (10, 20, 30)
    img[0, 0, 0] = 250  # an outlier that the median ignores
    erase = np.zeros((1, 7, 7), bool)
    erase[0, 3, 3] = True
    out = inpaint_median(img, erase, ~erase)
    assert tuple(out[0, 3, 3]) == (100, 100, 100)
    assert (out[~erase] == img[~erase]).all()


def test_missing_fine_tuned_unit_fails_before_any_work(results_tmp: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run notebook 02"):
        run_interpret(_cfg())
    assert not (results_tmp / "interpretability").exists()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"methods": ("gradcam",)}, r"unknown attribution method 'gradcam'; valid: \['grad_cam'"),
        ({"dataset": "retinamnist"}, r"no ground-truth mask.*valid: \['synth_lesions', 'pneum"),
        ({"dataset": "pneumoniamnist", "lung_fields": False}, r"valid: \['synth_lesions'\]"),
        ({"dataset": "chestmnist"}, "multi-label"),
        ({"protocol": "knn"}, r"unknown protocol 'knn'.*valid: \['finetune', 'linear'\]"),
        ({"arms": ("ssl:nope",)}, "unknown SSL method"),
        ({"sanity_images": 1}, "sanity_images"),
    ],
)
def test_bad_parameters_fail_naming_the_valid_choices(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _cfg(**kw)


def test_a_lung_field_request_on_synth_lesions_is_no_lung_metric() -> None:
    sample = select_sample(_cfg(lung_fields=True, n_images=4))
    assert "lung" not in sample.regions and "minute" in sample.regions
