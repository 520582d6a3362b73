"""The claims under test (DESIGN §1), one registry row each, and their verdicts.

``CLAIMS`` maps ``"C1"`` … ``"C9"`` to a frozen :class:`Claim`; :func:`evaluate_claims` reads the
finished runs under ``results/`` and returns one row per (claim, dataset, comparison[,
statistic]) with the effect, its CI, the raw and the multiplicity-adjusted p-value and a verdict.
Notebook 07 shows the table; :func:`save_claims` writes ``results/claims.csv``, which
``medstudy.report`` turns into the paper's tables and macros (the forest plot is
:func:`medstudy.figures.plot_forest`).

Modules: :mod:`.columns` (the table's columns and verdicts), :mod:`.index` (the finished runs by
:class:`Key`, read through :mod:`medstudy.results`), :mod:`.pairing`, :mod:`.claim` (the record,
``STATISTICS``, ``FRACTION_RULES``, ``ARM_GROUPS``, ``EVALUATORS``), :mod:`.rule` (the test rule),
:mod:`.rows`, :mod:`.evaluators`, :mod:`.registry` (``CLAIMS``) and :mod:`.table`
(:func:`evaluate_claims` and the table's I/O).

Data contract (inputs)
----------------------
- Predictions of finished runs (:func:`medstudy.results.collect_predictions`):
  the identifying columns ``stage, dataset, arm, protocol, fraction, seed, split, distortion,
  severity``, a ``sample_id``, ``y_true`` (or ``y_true_0 … y_true_{L-1}`` for multi-label) and
  probabilities ``score_0 … score_{K-1}`` (binary: the positive class is 1, i.e. ``score_1``).
  Only ``split == "test"`` rows are tested; ``val`` is used only to *select* (claim C8).
- One (stage, dataset, arm, protocol, fraction, seed, distortion, severity) key must come from
  one run: two finished runs holding the same key (e.g. a smoke and a quick run in the same
  results dir) are an error that names them, never a silent pick.
- Pairing: A and B are joined on ``sample_id`` (row order is irrelevant); the two sets of sample
  ids must be identical (else an error naming both runs) and so must ``y_true``.

Direction and effect
--------------------
Every comparison is written ``A − B`` and ``effect = statistic(A) − statistic(B)`` on the
metric's own scale (AUC or kappa in [0, 1] units, not points). The metric is the dataset task's
``PRIMARY_METRIC`` (binary / multi-class / multi-label → AUC, ordinal → quadratic kappa). A
claim says which arm should be *better* (``direction = +1``: A better than B); a statistic
says which sign is better (``STATISTICS``: higher metric/area is better, a smaller
label-efficiency slope or a smaller relative drop under distortion is better). The *expected
sign* of the effect is their product.

The test rule (one rule, applied to every row)
----------------------------------------------
Let S be the number of training seeds that both arms have (seeds are paired: seed s of A and
seed s of B saw the same label subset and the same test cases).

- S ≥ 2: the *seed × case t test* (:func:`medstudy.stats.seed_case_test`). ``effect`` = mean
  over seeds of the per-seed ``A − B``; its variance adds the training (seed-to-seed) variance
  of the per-seed differences / S and the test-case variance of the seed-averaged difference
  (DeLong placements for binary AUC, a class-stratified case bootstrap shared by every seed
  otherwise); the t reference distribution has Welch–Satterthwaite df; p and the CI come from
  the same t statistic, so they always agree. Its size is checked by simulation
  (``tests/test_seed_case.py``, ``benchmarks/bench_seed_case.py``).
- S = 1, binary AUC: paired *DeLong* test (Sun & Xu fast DeLong; normal CI of the difference).
- S = 1, any other metric or statistic: paired class-stratified bootstrap with BCa CI.
- For binary AUC rows the per-seed DeLong results (AUCs, difference, CI, p) are kept in the
  per-seed breakdown (``claims_df.attrs["per_seed"]``, ``results/claims_per_seed.csv``, shown
  by :func:`claim_detail`); other rows list the per-seed point estimates there.

All p-values are two-sided, so a significant effect of the wrong sign can be *contradicted*.
Multiplicity: ``cfg.correction`` (Holm by default) within each claim's family of *primary*
rows (datasets × comparisons; the rows whose statistic is the claim's primary one, and for C7
the regions it names), and separately within its secondary rows (C4's AULC, C7's pointing game
and small / large lesions, C9's condition number), so descriptive rows never weaken the test
of the claim itself; rows without a p-value are excluded from the family. The verdict of a row (:func:`medstudy.claims.table.row_verdict`) is
directional only if all three hold: at least ``cfg.min_seeds`` (default 3) paired seeds (one
seed compares two trained models, not two init methods), the adjusted p below alpha, and the
unadjusted CI on the same side of 0 — then ``supported`` if the effect has the expected sign,
``contradicted`` if not; otherwise ``inconclusive`` with its ``reason``. ``not run`` (with a
``reason``) when an input is missing; every claim appears in the table at least once. Each
tested row also reports ``df`` and ``mde``, the minimum detectable |effect| at 80 % power for
its alpha, from the same SE and df (for one seed: the CI half-width over z), so a reader can
tell "no effect" from "too small a study".

Claim level: each claim names its primary statistic and how its rows combine
(:class:`Claim`, :func:`dataset_verdicts`, :func:`claim_summary`): "supported on k of n
datasets, contradicted on j", from the three row verdicts only.

Claim-specific choices
----------------------
- C3 uses the *smallest* label fraction present in the label-efficiency stage for that dataset
  and protocol (over all arms); an arm without that fraction is "not run", never moved to
  another fraction.
- C4 (SparK vs contrastive SSL under fine-tuning): per seed, the metric at every label fraction
  both arms share (≥ 2 needed), then the OLS slope against log10(fraction) and the normalised
  area under that curve (:func:`medstudy.stats.label_efficiency_slope`,
  :func:`medstudy.stats.area_under_label_curve`); the bootstrap resamples seeds and test cases
  (the same cases at every fraction), so the CI covers both sources of noise.
- C5's protocol is fine-tuning. Missing fine-tune rows make it "not run"; there is no fallback
  to the linear probe.
- C8: each DVME variant (protocols ``dvme_*`` of arm ``fusion``) is its own comparison against
  the best single-encoder linear probe. "Best" is chosen on **val** (highest mean over seeds of
  the primary metric in ``metrics.csv``; ties → alphabetical first) among the fusion's input
  encoders (``fusion_arms`` in the fusion run's ``config.json``; if that key is absent, every
  linear-probe arm, and the ``note`` says so), then compared on **test**. Selecting on test
  would bias the comparison in favour of the single encoder.
- C6 (robustness) reads the ``robustness`` stage: per arm and seed, fine-tune predictions at
  label fraction 1.0 on the clean test set (``distortion`` missing/"none", ``severity`` 0; the
  stage writes them) and under every (distortion, severity) both arms share. The statistic is
  the chance-normalised drop ``mean_c (m_clean − m_c) / (m_clean − chance)`` (chance: AUC 0.5,
  kappa 0; :func:`medstudy.corruption.chance_normalised_drop`), lower is better. The plain
  relative drop would favour weak models, which have less room to fall.
- C7 and C9 test case-level values that are not predictions (:mod:`.case_evaluators`, the
  same rule through :func:`medstudy.claims.rule.compare_cases`). C7: per-image attribution
  mass in the lesion regions (synth_lesions: all / minute / small / large) or the lung fields
  (chest X-ray), one comparison per (arm pair, method, region), methods flagged by the sanity
  check left out. C9: effective rank (primary) and condition number of the last layer of the
  pretrained encoders, arm − scratch, the bootstrap resampling feature rows; the claim is
  two-sided (``direction = 0``: pretraining *changes* them), so it is never contradicted.
- Generated data (synth_lesions) enter C7 only (``Claim.synthetic``); every other claim is
  about medical images and leaves it out.
"""

from medstudy.claims.claim import (
    ARM_GROUPS,
    EVALUATORS,
    FRACTION_RULES,
    STATISTICS,
    Claim,
    NotRunError,
    Statistic,
    evaluator,
)
from medstudy.claims.columns import (
    CLAIM_COLUMNS,
    EXTRA_COLUMNS,
    MINUS,
    PER_SEED_COLUMNS,
    STAGE_NOTEBOOK,
    TEXT_COLUMNS,
    VERDICT_COLOURS,
    VERDICTS,
)
from medstudy.claims.index import Key, MixedCodeError, ResultsIndex, is_clean
from medstudy.claims.pairing import PairedPredictions, pair_predictions, prediction_arrays
from medstudy.claims.registry import CLAIMS
from medstudy.claims.table import (
    CLAIM_VERDICTS,
    claim_detail,
    claim_summary,
    claim_verdicts,
    claims_table,
    dataset_verdicts,
    evaluate_claims,
    inventory,
    load_claims,
    row_verdict,
    save_claims,
)

__all__ = [
    "ARM_GROUPS",
    "CLAIMS",
    "CLAIM_COLUMNS",
    "CLAIM_VERDICTS",
    "EVALUATORS",
    "EXTRA_COLUMNS",
    "FRACTION_RULES",
    "MINUS",
    "PER_SEED_COLUMNS",
    "STAGE_NOTEBOOK",
    "STATISTICS",
    "TEXT_COLUMNS",
    "VERDICTS",
    "VERDICT_COLOURS",
    "Claim",
    "Key",
    "MixedCodeError",
    "NotRunError",
    "PairedPredictions",
    "ResultsIndex",
    "Statistic",
    "claim_detail",
    "claim_summary",
    "claim_verdicts",
    "dataset_verdicts",
    "row_verdict",
    "claims_table",
    "evaluate_claims",
    "evaluator",
    "inventory",
    "is_clean",
    "load_claims",
    "pair_predictions",
    "prediction_arrays",
    "save_claims",
]
