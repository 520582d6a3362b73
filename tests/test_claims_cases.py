"""Claims C7 (attribution mass) and C9 (representation statistics) on planted results trees
(tests/fake_results.py): verdicts, the two-sided rule of C9, the sanity-flag exclusion, NaN
images, and effects recomputed by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_results import add_interpret_runs, add_representation_runs

from medstudy import claims as cl
from medstudy import repstats, stats
from medstudy.claims.case_evaluators import attribution_cases
from medstudy.config import ClaimsConfig
from medstudy.results import collect_predictions

CFG = ClaimsConfig(n_boot=199, seed=0)
SYN = "synth_lesions"
M = cl.MINUS


def rows_of(df: pd.DataFrame, claim: str) -> pd.DataFrame:
    return df[df["claim"] == claim].set_index(["comparison", "statistic"])


# --------------------------------------------------------------------------------------------
# C7
# --------------------------------------------------------------------------------------------
def test_c7_planted_lesion_focus_is_supported_per_region(results_tmp: Path) -> None:
    arms = {"ssl:simclr": 0.25, "natural_sup": 0.0, "scratch": -0.05}
    add_interpret_runs(results_tmp, SYN, arms, methods=("grad_cam",))
    df = rows_of(cl.evaluate_claims(results_tmp, CFG), "C7")
    for ref in ("natural_sup", "scratch"):
        for region in ("all", "minute"):
            r = df.loc[(f"ssl:simclr {M} {ref} [grad_cam, {region}]", "mass_in_mask")]
            assert r["verdict"] == "supported", r["reason"]
            assert r["test"] == "seed-case t" and r["n_seeds"] == 3 and r["n_test"] == 40
            assert r["role"] == "primary" and r["expected_sign"] == 1
            # pointing game was planted at 0.5 for every arm: no directional verdict
            pg = df.loc[(f"ssl:simclr {M} {ref} [grad_cam, {region}]", "pointing_game")]
            assert pg["role"] == "secondary" and pg["verdict"] != "contradicted"
    # arms absent from the results give "not run" rows, never silence
    missing = df[df["verdict"] == "not run"]
    assert missing["reason"].str.contains("curriculum").any()
    summary = cl.claim_summary(cl.evaluate_claims(results_tmp, CFG)).set_index("claim")
    assert summary.loc["C7", "summary"].endswith("comparisons, contradicted on 0")


def test_c7_reversed_focus_is_contradicted(results_tmp: Path) -> None:
    add_interpret_runs(results_tmp, SYN, {"ssl:simclr": -0.2, "natural_sup": 0.1})
    df = rows_of(cl.evaluate_claims(results_tmp, CFG), "C7")
    r = df.loc[(f"ssl:simclr {M} natural_sup [grad_cam, minute]", "mass_in_mask")]
    assert r["verdict"] == "contradicted" and r["ci_high"] < 0


def test_c7_effect_is_the_seed_mean_of_image_means_and_matches_seed_case_test(
    results_tmp: Path,
) -> None:
    add_interpret_runs(results_tmp, SYN, {"ssl:simclr": 0.1, "natural_sup": 0.0}, nan_every=5)
    df = rows_of(cl.evaluate_claims(results_tmp, CFG), "C7")
    r = df.loc[(f"ssl:simclr {M} natural_sup [grad_cam, all]", "mass_in_mask")]
    # by hand: images with a value for every seed of both arms (seed 1 lost every 5th image)
    p = collect_predictions("interpretability", results_tmp)
    p = p[(p["size_class"] == "all") & (p["metric"] == "mass_in_mask")]
    wide = p.pivot_table(index="sample_id", columns=["arm", "seed"], values="value").dropna()
    assert len(wide) == 32 and r["n_test"] == 32
    diffs = [wide[("ssl:simclr", s)].mean() - wide[("natural_sup", s)].mean() for s in range(3)]
    assert r["effect"] == pytest.approx(np.mean(diffs), abs=1e-12)
    per_seed = [
        (np.zeros(32), wide[("ssl:simclr", s)].to_numpy(), wide[("natural_sup", s)].to_numpy())
        for s in range(3)
    ]
    ref = stats.seed_case_test(
        lambda _y, v: float(np.mean(v)), per_seed, n_boot=CFG.n_boot, seed=CFG.seed
    )
    assert (r["ci_low"], r["ci_high"], r["p"], r["df"]) == pytest.approx(
        (ref.ci_low, ref.ci_high, ref.p_value, ref.df), abs=1e-12
    )


def test_c7_leaves_out_a_method_the_sanity_check_flags(results_tmp: Path) -> None:
    add_interpret_runs(
        results_tmp, SYN, {"ssl:simclr": 0.2, "natural_sup": 0.0},
        methods=("grad_cam", "saliency"), flagged=("saliency",),
    )  # fmt: skip
    c7 = cl.evaluate_claims(results_tmp, CFG).query("claim == 'C7'")
    assert not c7["comparison"].str.contains("saliency,").any()
    flagged = c7[c7["comparison"] == "[saliency]"].iloc[0]
    assert flagged["verdict"] == "not run" and "insensitive to the weights" in flagged["reason"]
    assert "ssl:simclr seed 0" in flagged["reason"]
    assert c7["comparison"].str.contains(r"\[grad_cam, all\]").any()


def test_attribution_cases_pair_images_and_seeds(results_tmp: Path) -> None:
    add_interpret_runs(results_tmp, SYN, {"a": 0.1, "b": 0.0}, seeds=(0, 1), n_images=6)
    frame = collect_predictions("interpretability", results_tmp)
    frame = frame.sample(frac=1.0, random_state=0)  # row order must not matter
    per_seed, seeds, runs = attribution_cases(frame, "a", "b", "grad_cam", "all", "mass_in_mask")
    assert seeds == [0, 1] and len(runs[0]) == 2 and len(runs[1]) == 2
    for s, (_, va, vb) in zip(seeds, per_seed, strict=True):
        sel = frame[(frame["seed"] == s) & (frame["size_class"] == "all")]
        sel = sel[sel["metric"] == "mass_in_mask"].sort_values("sample_id")
        np.testing.assert_array_equal(va, sel.loc[sel["arm"] == "a", "value"].to_numpy())
        np.testing.assert_array_equal(vb, sel.loc[sel["arm"] == "b", "value"].to_numpy())


# --------------------------------------------------------------------------------------------
# C9
# --------------------------------------------------------------------------------------------
def test_c9_change_in_either_direction_supports_and_never_contradicts(results_tmp: Path) -> None:
    arms = {"scratch": 4, "natural_sup": 12, "ssl:simclr": 1}
    add_representation_runs(results_tmp, "retinamnist", arms)
    df = rows_of(cl.evaluate_claims(results_tmp, CFG), "C9")
    up = df.loc[(f"natural_sup {M} scratch", "effective_rank")]
    down = df.loc[(f"ssl:simclr {M} scratch", "effective_rank")]
    assert up["effect"] > 0 and down["effect"] < 0
    assert up["expected_sign"] == 0
    assert up["verdict"] == "supported" and down["verdict"] == "supported"
    assert up["test"] == "seed-case t" and up["n_seeds"] == 3 and up["n_test"] == 120
    assert df.loc[(f"natural_sup {M} scratch", "condition_number")]["role"] == "secondary"


def test_c9_identical_statistics_are_inconclusive(results_tmp: Path) -> None:
    add_representation_runs(results_tmp, "retinamnist", {"scratch": 6, "natural_sup": 6})
    df = rows_of(cl.evaluate_claims(results_tmp, CFG), "C9")
    r = df.loc[(f"natural_sup {M} scratch", "effective_rank")]
    assert r["verdict"] == "inconclusive" and r["ci_low"] < 0 < r["ci_high"]


def test_c9_effect_is_the_effective_rank_difference(results_tmp: Path) -> None:
    runs = add_representation_runs(
        results_tmp, "retinamnist", {"scratch": 3, "natural_sup": 9}, seeds=(0,)
    )
    df = rows_of(cl.evaluate_claims(results_tmp, CFG), "C9")
    r = df.loc[(f"natural_sup {M} scratch", "effective_rank")]
    er = {}
    for run in runs:
        with np.load(run / "features_stage3.npz") as z:
            er[run.name.split("-")[2]] = repstats.effective_rank(z["features"])
    assert r["effect"] == pytest.approx(er["natural_sup"] - er["scratch"], abs=1e-9)
    # one seed: a paired bootstrap and no directional verdict (min_seeds 3)
    assert r["test"] == "paired bootstrap (BCa)" and r["verdict"] == "inconclusive"
    assert "min_seeds" in r["reason"]


def test_c9_without_results_is_not_run(results_tmp: Path) -> None:
    df = cl.evaluate_claims(results_tmp, CFG)
    r = df[df["claim"] == "C9"].iloc[0]
    assert r["verdict"] == "not run" and "notebook 04 not run" in r["reason"]


def test_generated_data_enter_c7_only(results_tmp: Path) -> None:
    from fake_results import add_runs

    add_runs(results_tmp, "transfer", SYN, {"natural_sup": 3.0, "scratch": 0.3})
    add_runs(results_tmp, "transfer", "pneumoniamnist", {"natural_sup": 3.0, "scratch": 0.3})
    add_interpret_runs(results_tmp, SYN, {"natural_sup+ssl:simclr": 0.2, "natural_sup": 0.0})
    df = cl.evaluate_claims(results_tmp, ClaimsConfig(n_boot=99, datasets=(SYN, "pneumoniamnist")))
    assert set(df.loc[df["claim"] == "C1", "dataset"]) == {"pneumoniamnist"}
    assert SYN in set(df.loc[df["claim"] == "C7", "dataset"])


def test_primary_and_secondary_rows_are_separate_families(results_tmp: Path) -> None:
    from statsmodels.stats.multitest import multipletests

    add_interpret_runs(
        results_tmp, SYN, {"ssl:simclr": 0.05, "natural_sup": 0.0},
        regions=("all", "minute", "small", "large"),
    )  # fmt: skip
    c7 = cl.evaluate_claims(results_tmp, CFG).query("claim == 'C7' and verdict != 'not run'")
    prim = c7[c7["role"] == "primary"]
    assert set(prim["statistic"]) == {"mass_in_mask"}
    assert set(prim["comparison"].str.extract(r", (\w+)\]$")[0]) == {"all", "minute"}
    for role, fam in c7.groupby("role"):
        expected = multipletests(fam["p"].to_numpy(), method="holm")[1]
        np.testing.assert_allclose(fam["p_adj"].to_numpy(), expected, err_msg=role)
    assert len(prim) == 2 and len(c7) == 8
