"""medstudy.claims on a tiny planted results tree (tests/fake_results.py): verdicts, reasons,
multiplicity, pairing, and the fast metrics against medstudy.metrics / medstudy.stats."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_results import add_runs, labels, planted_scores
from statsmodels.stats.multitest import multipletests

from medstudy import claims as cl
from medstudy import stats
from medstudy.config import ClaimsConfig
from medstudy.figures import plot_forest
from medstudy.metrics import METRICS, quadratic_kappa

CFG = ClaimsConfig(n_boot=199, seed=0)
PNEU = "pneumoniamnist"


def c_rows(df: pd.DataFrame, claim: str) -> pd.DataFrame:
    return df[df["claim"] == claim].reset_index(drop=True)


def one_row(df: pd.DataFrame, claim: str, comparison: str) -> pd.Series:
    rows = df[(df["claim"] == claim) & (df["comparison"] == comparison)]
    assert len(rows) == 1, df[["claim", "comparison", "verdict", "reason"]]
    return rows.iloc[0]


def c1(root: Path, arms: dict[str, float], **kw: object) -> pd.Series:
    add_runs(root, "transfer", PNEU, arms, **kw)
    df = cl.evaluate_claims(root, CFG)
    return one_row(df, "C1", f"natural_sup {cl.MINUS} scratch")


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------
def test_planted_better_arm_supports_c1(results_tmp: Path) -> None:
    r = c1(results_tmp, {"natural_sup": 3.0, "scratch": 0.3})
    assert r["verdict"] == "supported"
    assert r["effect"] > 0.1 and r["ci_low"] > 0
    assert r["p_adj"] < 0.05 and r["test"] == "seed-case t"
    assert (r["n_seeds"], r["n_test"]) == (3, 120)
    assert (r["metric"], r["protocol"], r["stage"]) == ("auc", "finetune", "transfer")


def test_swapped_arms_contradict_c1(results_tmp: Path) -> None:
    r = c1(results_tmp, {"natural_sup": 0.3, "scratch": 3.0})
    assert r["verdict"] == "contradicted"
    assert r["effect"] < -0.1 and r["ci_high"] < 0


def test_identical_arms_are_inconclusive(results_tmp: Path) -> None:
    same = {"natural_sup": "twin", "scratch": "twin"}
    r = c1(results_tmp, {"natural_sup": 1.5, "scratch": 1.5}, noise_key=same)
    assert r["verdict"] == "inconclusive"
    assert r["effect"] == 0.0 and r["p"] == 1.0


def test_missing_arm_is_not_run_with_reason(results_tmp: Path) -> None:
    add_runs(results_tmp, "transfer", PNEU, {"natural_sup": 2.0})
    df = cl.evaluate_claims(results_tmp, CFG)
    r = c_rows(df, "C1").iloc[0]
    assert r["verdict"] == "not run" and np.isnan(r["p"]) and np.isnan(r["p_adj"])
    assert "arm scratch has no finetune predictions" in r["reason"] and PNEU in r["reason"]


def test_every_claim_appears_with_the_required_columns(results_tmp: Path) -> None:
    add_runs(results_tmp, "transfer", PNEU, {"natural_sup": 2.0, "scratch": 1.0})
    df = cl.evaluate_claims(results_tmp, CFG)
    assert list(df.columns[: len(cl.CLAIM_COLUMNS)]) == list(cl.CLAIM_COLUMNS)
    assert [f"C{i}" for i in range(1, 10)] == list(cl.CLAIMS)
    assert set(df["claim"]) == set(cl.CLAIMS)
    assert set(df["verdict"]) <= set(cl.VERDICTS)
    not_run = df[df["verdict"] == "not run"]
    assert (not_run["reason"].str.len() > 0).all()
    reasons = dict(zip(not_run["claim"], not_run["reason"], strict=False))
    assert reasons["C6"] == "no robustness results (notebook 06 not run)"
    assert reasons["C7"] == "no interpretability results (notebook 05 not run)"
    assert reasons["C9"] == "no representations results (notebook 04 not run)"
    assert "label_efficiency" in reasons["C3"] and "03" in reasons["C3"]


def test_empty_results_dir_still_lists_every_claim(results_tmp: Path) -> None:
    df = cl.evaluate_claims(results_tmp, CFG)
    assert list(df["claim"]) == list(cl.CLAIMS)
    assert (df["verdict"] == "not run").all()


def test_c5_has_no_fallback_to_the_linear_probe(results_tmp: Path) -> None:
    add_runs(results_tmp, "transfer", PNEU, {"scratch": 1.0, "natural_sup": 1.0})
    add_runs(results_tmp, "transfer", PNEU, {"curriculum": 3.0, "scratch": 1.0}, protocol="linear")
    rows = c_rows(cl.evaluate_claims(results_tmp, CFG), "C5")
    assert set(rows["verdict"]) == {"not run"} and len(rows) == 2
    assert rows["reason"].str.contains("arm curriculum has no finetune predictions").all()


# --------------------------------------------------------------------------------------------
# Multiplicity, pairing, test choice
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("correction", ["holm", "fdr_bh"])
def test_adjustment_matches_statsmodels_within_the_family(
    results_tmp: Path, correction: str
) -> None:
    arms = {"natural_sup": 1.0, "ssl:simclr": 1.3, "ssl:spark": 2.5, "natural_sup+ssl:simclr": 1.0}
    for ds in (PNEU, "pcam28_subset"):
        add_runs(results_tmp, "label_efficiency", ds, arms, "linear", fractions=(0.1, 1.0))
    cfg = ClaimsConfig(n_boot=199, correction=correction)
    rows = c_rows(cl.evaluate_claims(results_tmp, cfg), "C3")
    # the curriculum joins C3's SSL arms; it has no runs here, so its rows are "not run" and
    # stay out of the family
    missing = rows[rows["verdict"] == "not run"]
    assert set(missing["arm_a"]) == {"curriculum"} and missing["p_adj"].isna().all()
    fam = rows[rows["verdict"] != "not run"]
    assert len(fam) == 6 and fam["p"].notna().all()
    assert (fam["fraction"] == 0.1).all()  # the smallest fraction
    expected = multipletests(fam["p"].to_numpy(), method=correction)[1]
    np.testing.assert_allclose(fam["p_adj"].to_numpy(), expected)


def test_not_run_rows_are_excluded_from_the_family(results_tmp: Path) -> None:
    add_runs(results_tmp, "transfer", PNEU, {"curriculum": 2.0, "scratch": 1.0})
    rows = c_rows(cl.evaluate_claims(results_tmp, CFG), "C5")
    tested = rows[rows["verdict"] != "not run"]
    assert len(rows) == 2 and len(tested) == 1
    assert tested["p_adj"].iloc[0] == tested["p"].iloc[0]  # a family of one


def test_pairing_ignores_row_order(results_tmp: Path) -> None:
    runs = add_runs(results_tmp, "transfer", PNEU, {"natural_sup": 2.0, "scratch": 1.2})
    before = cl.evaluate_claims(results_tmp, CFG)
    victim = runs[0] / "predictions.parquet"
    df = pd.read_parquet(victim)
    df.sample(frac=1.0, random_state=3).to_parquet(victim, index=False)
    after = cl.evaluate_claims(results_tmp, CFG)
    cols = ["effect", "ci_low", "ci_high", "p", "p_adj", "verdict"]
    pd.testing.assert_frame_equal(before[cols], after[cols])


def test_mismatched_sample_ids_raise_naming_the_runs(results_tmp: Path) -> None:
    runs = add_runs(results_tmp, "transfer", PNEU, {"natural_sup": 2.0, "scratch": 1.2}, seeds=(0,))
    victim = runs[1] / "predictions.parquet"
    df = pd.read_parquet(victim)
    df.loc[df.index[-1], "sample_id"] = "test-9999"
    df.to_parquet(victim, index=False)
    with pytest.raises(ValueError, match="sample ids differ") as err:
        cl.evaluate_claims(results_tmp, CFG)
    assert runs[0].name in str(err.value) and runs[1].name in str(err.value)


def test_pair_predictions_checks_y_true_and_duplicates() -> None:
    y = labels(PNEU, "test")
    ids = [f"t{i}" for i in range(len(y))]
    a = pd.DataFrame({"sample_id": ids, "y_true": y, "score_0": 0.5, "score_1": 0.5, "run_id": "A"})
    b = a.assign(run_id="B")
    paired = cl.pair_predictions(a, b.iloc[::-1])
    np.testing.assert_array_equal(paired.y, a.sort_values("sample_id")["y_true"])
    with pytest.raises(ValueError, match=r"\('A',\).*\('B',\).*disagree on y_true"):
        cl.pair_predictions(a, b.assign(y_true=1 - y))
    with pytest.raises(ValueError, match="repeat sample_id"):
        cl.pair_predictions(pd.concat([a, a.iloc[:1]]), b)


def test_one_seed_binary_uses_delong(results_tmp: Path) -> None:
    r = c1(results_tmp, {"natural_sup": 1.5, "scratch": 1.0}, seeds=(0,))
    y = labels(PNEU, "test")
    a = planted_scores(PNEU, y, 1.5, "natural_sup|0|test|1.0|None|None")[:, 1]
    b = planted_scores(PNEU, y, 1.0, "scratch|0|test|1.0|None|None")[:, 1]
    d = stats.delong_test(y, a, b)
    assert r["test"] == "delong" and r["n_seeds"] == 1
    np.testing.assert_allclose(
        [r["effect"], r["ci_low"], r["ci_high"], r["p"]], [d.diff, d.ci_low, d.ci_high, d.p_value]
    )


def test_one_seed_ordinal_uses_the_paired_bootstrap(results_tmp: Path) -> None:
    add_runs(
        results_tmp, "transfer", "retinamnist", {"natural_sup": 3.0, "scratch": 0.3}, seeds=(0,)
    )
    r = one_row(cl.evaluate_claims(results_tmp, CFG), "C1", f"natural_sup {cl.MINUS} scratch")
    assert (r["metric"], r["test"]) == ("qwk", "paired bootstrap (BCa)")
    # one seed compares two trained models, not two inits: never a directional verdict
    assert r["verdict"] == "inconclusive" and "min_seeds 3" in r["reason"]
    assert r["p_adj"] < 0.05 and r["ci_low"] > 0  # the test itself is clear


def test_per_seed_breakdown_and_claim_detail(results_tmp: Path) -> None:
    add_runs(results_tmp, "transfer", PNEU, {"natural_sup": 2.0, "scratch": 1.0})
    df = cl.evaluate_claims(results_tmp, CFG)
    per_seed = df.attrs["per_seed"]
    assert list(per_seed.columns) == list(cl.PER_SEED_COLUMNS)
    c1_seeds = per_seed[per_seed["claim"] == "C1"]
    assert sorted(c1_seeds["seed"]) == [0, 1, 2] and set(c1_seeds["test"]) == {"delong"}
    pooled = one_row(df, "C1", f"natural_sup {cl.MINUS} scratch")
    assert pooled["effect"] == pytest.approx(c1_seeds["effect"].mean())  # mean over seeds
    detail = cl.claim_detail(df, "C1")
    assert list(detail["level"]) == ["all seeds", "seed 0", "seed 1", "seed 2"]
    with pytest.raises(ValueError, match="unknown claim 'C10'; valid"):
        cl.claim_detail(df, "C10")


def test_duplicate_runs_for_one_key_are_an_error(results_tmp: Path) -> None:
    runs = add_runs(results_tmp, "transfer", PNEU, {"natural_sup": 2.0, "scratch": 1.0}, seeds=(0,))
    shutil.copytree(runs[1], runs[1].with_name("stale-run"))  # e.g. a smoke run left behind
    with pytest.raises(ValueError, match="more than one finished run.*stale-run"):
        cl.evaluate_claims(results_tmp, CFG)


def test_runs_of_two_code_versions_are_refused_by_name_unless_allowed(results_tmp: Path) -> None:
    runs = add_runs(results_tmp, "transfer", PNEU, {"natural_sup": 2.0, "scratch": 1.0})
    for i, run in enumerate(runs):  # one run made by newer code than the others
        manifest = {"code": {"version": "new0code" if i == 1 else "old0code"}}
        (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(cl.MixedCodeError, match=r"2 code versions.*new0code: 1 run\(s\)") as err:
        cl.evaluate_claims(results_tmp, CFG)
    assert runs[1].name in str(err.value) and "allow_mixed_code" in str(err.value)
    assert len(cl.inventory(results_tmp))  # listing pairs nothing: allowed
    df = cl.evaluate_claims(results_tmp, replace(CFG, allow_mixed_code=True))
    assert one_row(df, "C1", f"natural_sup {cl.MINUS} scratch")["test"] != ""
    # one version throughout (here: all the new one) is fine
    for run in runs:
        (run / "manifest.json").write_text(json.dumps({"code": {"version": "new0code"}}))
    assert len(cl.evaluate_claims(results_tmp, CFG))


def test_selected_datasets_only(results_tmp: Path) -> None:
    for ds in (PNEU, "pcam28_subset"):
        add_runs(results_tmp, "transfer", ds, {"natural_sup": 2.0, "scratch": 1.0}, seeds=(0,))
    df = cl.evaluate_claims(results_tmp, ClaimsConfig(n_boot=99, datasets=("pcam28_subset",)))
    assert set(c_rows(df, "C1")["dataset"]) == {"pcam28_subset"}
    c5 = c_rows(df, "C5").iloc[0]
    assert c5["verdict"] == "not run" and "not among the selected datasets" in c5["reason"]


# --------------------------------------------------------------------------------------------
# C4, C6, C8
# --------------------------------------------------------------------------------------------
def test_c4_flatter_curve_supports_spark(results_tmp: Path) -> None:
    fr = (0.01, 0.1, 1.0)
    add_runs(results_tmp, "label_efficiency", PNEU, {"ssl:spark": 2.0}, fractions=fr)
    add_runs(
        results_tmp,
        "label_efficiency",
        PNEU,
        {"ssl:simclr": 2.0},
        fractions=fr,
        fraction_strength=1.5,
    )
    rows = c_rows(cl.evaluate_claims(results_tmp, CFG), "C4").set_index("statistic")
    assert rows.loc["slope", "effect"] < 0 and rows.loc["slope", "expected_sign"] == -1
    assert rows.loc["aulc", "effect"] > 0 and rows.loc["aulc", "expected_sign"] == 1
    assert set(rows["verdict"]) == {"supported"}
    assert rows.loc["slope", "note"] == "fractions 0.01, 0.1, 1"


def test_c4_needs_two_shared_fractions(results_tmp: Path) -> None:
    add_runs(results_tmp, "label_efficiency", PNEU, {"ssl:spark": 2.0, "ssl:simclr": 2.0})
    rows = c_rows(cl.evaluate_claims(results_tmp, CFG), "C4")
    assert len(rows) == 2 and set(rows["verdict"]) == {"not run"}
    assert rows["reason"].str.contains("needs >= 2").all()


def test_c6_chance_normalised_drop(results_tmp: Path) -> None:
    clean = (None, None, 0.0)
    add_runs(
        results_tmp,
        "robustness",
        PNEU,
        {"natural_sup": 2.5},
        conditions=[clean, ("blur", 3, 0.3), ("noise", 5, 0.5)],
    )
    add_runs(
        results_tmp,
        "robustness",
        PNEU,
        {"scratch": 2.5},
        conditions=[clean, ("blur", 3, 2.0), ("noise", 5, 2.5)],
    )
    rows = c_rows(cl.evaluate_claims(results_tmp, CFG), "C6")
    r = one_row(rows, "C6", f"natural_sup {cl.MINUS} scratch")
    assert r["statistic"] == "chance_drop" and r["expected_sign"] == -1
    assert r["effect"] < 0 and r["verdict"] == "supported"
    assert r["note"] == "2 distorted conditions (2 distortions)"
    assert (rows.loc[rows["comparison"] != r["comparison"], "verdict"] == "not run").all()


@pytest.mark.parametrize(
    "inputs",
    [
        {"fusion_arms": ["natural_sup", "ssl:simclr"]},
        # what medstudy.evaluate.transfer writes: arm -> weights fingerprint
        {"encoders": {"natural_sup": "f0", "ssl:simclr": "f1"}},
    ],
)
def test_c8_best_single_probe_is_chosen_on_val(results_tmp: Path, inputs: dict) -> None:
    add_runs(results_tmp, "transfer", PNEU, {"fusion": 2.0}, "dvme_encoders", config=inputs)
    add_runs(results_tmp, "transfer", PNEU, {"fusion": 2.0}, "dvme_concat", config=inputs)
    add_runs(
        results_tmp,
        "transfer",
        PNEU,
        {"natural_sup": 2.5, "ssl:simclr": 0.5, "scratch": 3.0},
        "linear",
    )
    # make ssl:simclr the best on *val* although natural_sup is better on test
    for f in (results_tmp / "transfer").glob("*ssl_simclr-linear*/metrics.csv"):
        m = pd.read_csv(f)
        m.loc[(m["split"] == "val") & (m["metric"] == "auc"), "value"] = 0.999
        m.to_csv(f, index=False)
    rows = c_rows(cl.evaluate_claims(results_tmp, CFG), "C8")
    assert list(rows["comparison"]) == [
        f"fusion:dvme_concat {cl.MINUS} ssl:simclr",
        f"fusion:dvme_encoders {cl.MINUS} ssl:simclr",
    ]  # scratch is not a fusion input, so it is not a candidate
    assert rows["note"].str.contains("ssl:simclr (0.9990)", regex=False).all()
    assert (rows["protocol"] == "dvme_concat vs linear").iloc[0]


# --------------------------------------------------------------------------------------------
# Fast metrics, registry, outputs
# --------------------------------------------------------------------------------------------
def test_condition_metrics_equal_the_reference_metrics() -> None:
    rng = np.random.default_rng(0)
    y5 = rng.integers(0, 5, size=80)
    s5 = rng.dirichlet(np.ones(5), size=(80, 3))
    qwk = METRICS["qwk"].per_condition("ordinal-regression", 5)(y5, s5)
    ref = [quadratic_kappa(y5, s5[:, c].argmax(1), 5) for c in range(3)]
    np.testing.assert_allclose(qwk, ref)
    y2 = rng.integers(0, 2, size=80)
    s2 = np.round(rng.random((80, 3, 2)), 1)  # ties
    aucs = METRICS["auc"].per_condition("binary-class", 2)(y2, s2)
    np.testing.assert_allclose(aucs, [stats.auc(y2, s2[:, c, 1]) for c in range(3)])


def test_registry_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown kind 'oops'; valid"):
        cl.Claim("CX", "t", "s", "oops", ("transfer",), "linear")
    with pytest.raises(ValueError, match="unknown statistic"):
        cl.Claim("CX", "t", "s", "paired", ("transfer",), "linear", statistics=("median",))
    assert all(c.family == c.id for c in cl.CLAIMS.values())
    assert cl.CLAIMS["C3"].published_for("retinamnist") == pytest.approx(0.1479)
    # the full profile reads the full PCam: the same published gain as its 28 px subset
    assert cl.CLAIMS["C3"].published_for("pcam") == cl.CLAIMS["C3"].published_for("pcam28_subset")
    assert len(cl.claims_table()) == 9


def test_save_load_forest_and_inventory(results_tmp: Path) -> None:
    add_runs(results_tmp, "transfer", PNEU, {"natural_sup": 2.0, "scratch": 1.0})
    df = cl.evaluate_claims(results_tmp, CFG)
    paths = cl.save_claims(df, results_tmp)
    assert [p.name for p in paths] == ["claims.csv", "claims_per_seed.csv"]
    back = cl.load_claims(results_tmp)
    pd.testing.assert_series_equal(back["verdict"], df["verdict"])
    assert len(back.attrs["per_seed"]) == len(df.attrs["per_seed"])
    fig = plot_forest(df)
    assert len(fig.axes) == 1  # only C1 was tested
    assert fig.axes[0].get_title(loc="left").startswith("C1:")
    # a subset: C1 is left out, so no panel has a row, and the untested ones are listed
    other = plot_forest(df, claim_ids=["C2", "C7"])
    assert len(other.axes) == 1 and not other.axes[0].lines  # an empty panel, no rows
    assert any("no claim could be tested" in t.get_text() for t in other.axes[0].texts)
    assert any("C7 not run" in t.get_text() for t in other.texts)
    with pytest.raises(ValueError, match="unknown claim ids"):
        plot_forest(df, claim_ids=["C1", "C99"])
    inv = cl.inventory(results_tmp)
    assert set(inv["arm"]) == {"natural_sup", "scratch"} and set(inv["seeds"]) == {"0,1,2"}


def _slow_placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. 1988 placement values by their definition (O(m n), ties count 1/2)."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)  # V10 (per positive), V01 (per negative)


def test_a_claims_row_is_reproduced_by_an_independent_route(results_tmp: Path) -> None:
    """C1 with 3 seeds: effect, CI and p rebuilt from the per-seed predictions with sklearn's
    AUC, placement values from the definition, hand variances and scipy's t."""
    from scipy import stats as sps
    from sklearn.metrics import roc_auc_score

    r = c1(results_tmp, {"natural_sup": 1.6, "scratch": 1.2}, seeds=(0, 1, 2))
    y = labels(PNEU, "test")
    d, v10, v01 = [], [], []
    for seed in (0, 1, 2):
        a = planted_scores(PNEU, y, 1.6, f"natural_sup|{seed}|test|1.0|None|None")[:, 1]
        b = planted_scores(PNEU, y, 1.2, f"scratch|{seed}|test|1.0|None|None")[:, 1]
        d.append(roc_auc_score(y, a) - roc_auc_score(y, b))
        (a10, a01), (b10, b01) = _slow_placements(y, a), _slow_placements(y, b)
        v10.append(a10 - b10)
        v01.append(a01 - b01)
    d = np.array(d)
    m10, m01 = np.mean(v10, axis=0), np.mean(v01, axis=0)  # the seed-averaged difference
    var10, var01 = m10.var(ddof=1) / m10.size, m01.var(ddof=1) / m01.size
    var_case = var10 + var01
    df_case = var_case**2 / (var10**2 / (m10.size - 1) + var01**2 / (m01.size - 1))
    var_seed = d.var(ddof=1) / 3
    df = (var_seed + var_case) ** 2 / (var_seed**2 / 2 + var_case**2 / df_case)
    se = np.sqrt(var_seed + var_case)
    t = sps.t.ppf(0.975, df)
    expected = [
        d.mean(),
        d.mean() - t * se,
        d.mean() + t * se,
        2 * sps.t.sf(abs(d.mean()) / se, df),
    ]
    got = [r["effect"], r["ci_low"], r["ci_high"], r["p"]]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert r["df"] == pytest.approx(df, rel=1e-9)
    mde = (t + sps.t.ppf(0.8, df)) * se
    assert r["mde"] == pytest.approx(mde, rel=1e-9)
    assert r["test"] == "seed-case t" and r["n_seeds"] == 3


def test_fewer_than_min_seeds_never_give_a_directional_verdict(results_tmp: Path) -> None:
    r = c1(results_tmp, {"natural_sup": 3.0, "scratch": 0.3}, seeds=(0, 1))
    assert r["p_adj"] < 0.05 and r["ci_low"] > 0  # a clear effect …
    assert r["verdict"] == "inconclusive" and "min_seeds 3" in r["reason"]  # … but 2 seeds


def test_verdict_and_ci_always_agree() -> None:
    from types import SimpleNamespace

    from medstudy.claims import row_verdict

    row = SimpleNamespace(
        p_adj=0.01, effect=0.05, ci_low=-0.01, ci_high=0.1, n_seeds=3, expected_sign=1
    )
    assert row_verdict(row, CFG)[0] == "inconclusive"  # CI straddles 0 although p_adj < alpha
    row.ci_low = 0.01
    assert row_verdict(row, CFG) == ("supported", "")
    row.effect, row.ci_low, row.ci_high = -0.05, -0.1, -0.01
    assert row_verdict(row, CFG) == ("contradicted", "")


def test_claim_summary_is_conjunctive_for_c5_and_counts_datasets() -> None:
    rows = pd.DataFrame(
        {
            "claim": ["C5", "C5", "C1", "C1", "C1"],
            "dataset": [PNEU, PNEU, PNEU, "retinamnist", "pcam28_subset"],
            "comparison": ["curriculum − scratch", "curriculum − natural_sup"] + ["x"] * 3,
            "statistic": ["metric"] * 5,
            "verdict": ["supported", "inconclusive", "supported", "contradicted", "not run"],
        }
    )
    summary = cl.claim_summary(rows).set_index("claim")
    assert summary.loc["C5", "verdict"] == "inconclusive"  # needs both comparisons
    assert summary.loc["C1", "summary"] == "supported on 1 of 2 datasets, contradicted on 1"
    assert summary.loc["C1", "verdict"] == "inconclusive" and "mixed" not in set(summary["verdict"])
    assert summary.loc["C9", "verdict"] == "not run"
