"""medstudy.robustness: the distortion stage on a real fine-tuned unit (tiny synth data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medstudy.config import ConfigError, RobustnessConfig
from medstudy.results import collect_predictions, finished_run_ids
from medstudy.robustness import run_robustness, suite

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def finetuned(finetuned_synth: Path) -> Path:
    return finetuned_synth


def _cfg(**kw: object) -> RobustnessConfig:
    base = dict(dataset="synth_lesions", arms=("scratch",), seeds=(0,))
    return RobustnessConfig(**{**base, **kw})


def test_clean_condition_reproduces_the_transfer_predictions_and_runs_are_cached(
    finetuned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(finetuned))
    cfg = _cfg(distortions=("gaussian_noise", "jpeg"), severities=(1, 5))
    metrics = run_robustness(cfg)
    conds = set(zip(metrics["distortion"], metrics["severity"], strict=True))
    assert conds == {
        ("none", 0),
        ("gaussian_noise", 1),
        ("gaussian_noise", 5),
        ("jpeg", 1),
        ("jpeg", 5),
    }
    rob = collect_predictions("robustness", finetuned)
    src = collect_predictions("transfer", finetuned)
    src = src[src["split"] == "test"].sort_values("sample_id")
    clean = rob[rob["distortion"] == "none"].sort_values("sample_id")
    cols = [c for c in src.columns if c.startswith("score_")]
    np.testing.assert_array_equal(clean["sample_id"].to_numpy(), src["sample_id"].to_numpy())
    np.testing.assert_allclose(clean[cols].to_numpy(), src[cols].to_numpy(), rtol=0, atol=1e-6)

    # severity 5 noise changes the predictions more than severity 1 does
    def moved(sev: int) -> float:
        d = rob[(rob["distortion"] == "gaussian_noise") & (rob["severity"] == sev)]
        d = d.sort_values("sample_id")
        return float(np.abs(d[cols].to_numpy() - clean[cols].to_numpy()).mean())

    assert moved(5) > moved(1) > 0
    # cached: a second call computes nothing and returns the same metrics
    before = finished_run_ids("robustness", finetuned)
    again = run_robustness(cfg)
    assert finished_run_ids("robustness", finetuned) == before
    pd.testing.assert_frame_equal(metrics, again)


def test_every_arm_sees_the_same_distorted_images() -> None:
    from medstudy.robustness import Condition, distorted

    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    c = Condition("gaussian_noise", 3)
    assert torch.equal(distorted(images, c, "synth_lesions"), distorted(images, c, "synth_lesions"))


def test_missing_fine_tuned_unit_fails_before_any_work(results_tmp: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run notebook 02"):
        run_robustness(_cfg())
    assert not (results_tmp / "robustness").exists()


def test_default_suite_follows_the_modality() -> None:
    names = {c.distortion for c in suite(_cfg(dataset="pneumoniamnist"), 1)}
    assert "stain_shift" not in names and "none" in names
    assert "stain_shift" in {c.distortion for c in suite(_cfg(), 3)}
    with pytest.raises(ValueError, match="need RGB"):
        suite(_cfg(dataset="pneumoniamnist", distortions=("stain_shift",)), 1)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"severities": (0, 6)}, "outside 1-5"),
        ({"distortions": ("fog",)}, "unknown distortion 'fog'; valid"),
        ({"protocol": "knn"}, "unknown protocol 'knn'"),
        ({"arms": ("ssl:nope",)}, "unknown SSL method"),
    ],
)
def test_bad_parameters_fail_naming_the_valid_choices(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _cfg(**kw)
