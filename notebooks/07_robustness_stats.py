# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Statistics: the claims, their verdicts and the paper
#
# - Reads every finished run under `results/` (per-sample test predictions of notebooks 02,
#   03 and, once they exist, 04–06) and tests each published claim C1–C9 of
#   `medstudy.claims.CLAIMS` with a paired test on the same test cases (A − B).
# - One rule for every row: several seeds → the seed × case t test (training and test-case
#   variance, Welch–Satterthwaite df); one seed → DeLong (binary AUC) or a stratified BCa
#   bootstrap. p-values are corrected within each claim (Holm by default).
# - Gives each row a verdict (*supported*, *contradicted*, *inconclusive*) with its effect,
#   CI, adjusted p, df and minimum detectable effect, or *not run* with the reason; a
#   directional verdict needs ≥ `min_seeds` paired seeds. No claim is dropped.
# - Writes `results/claims.csv` and `results/claims_per_seed.csv`, then builds the paper's
#   tables, macros and figures in `<results>/paper/generated/` (and the PDF if LaTeX is installed).

# %% tags=["parameters"]
alpha: float = 0.05  # significance level for the verdicts; CIs are (1 - alpha)
correction: str = "holm"  # multiplicity correction within each claim: holm | fdr_bh
min_seeds: int = 3  # fewest paired seeds for a directional verdict (else inconclusive)
n_boot: int = 2000  # bootstrap replicates (hierarchical and paired bootstraps)
seed: int = 0  # seeds every bootstrap
profile: str = "quick"  # the profile analysed (recorded in claims.csv and the paper)
datasets: list[str] = []  # datasets to test; empty means every dataset with results
allow_mixed_code: bool = False  # pair runs of one stage made by different code versions

# %%
from medstudy.config import ClaimsConfig

cfg = ClaimsConfig.from_namespace(globals())  # the parameters above, type-checked
cfg

# %% [markdown]
# ## The claims under test
# Each row of the registry says what was published, by whom, which stage and protocol test it,
# and which arms are compared (A − B; `ssl:*` expands to every SSL arm that has results,
# `@contrastive` to the contrastive SSL arms).

# %%
from medstudy.claims import claims_table

claims_table()

# %% [markdown]
# ## What the results hold
# The finished runs the tests can use: test predictions per stage, dataset, protocol and arm,
# with their seeds and label fractions. A claim whose inputs are absent here is *not run*.

# %%
from medstudy.claims import inventory

inventory()

# %% [markdown]
# ## Testing every claim
# Effects are on the metric's own scale (AUC or kappa, not points). `p_adj` is corrected within
# each claim across its datasets and comparisons; `reason` says why a row was not run.

# %%
from medstudy.claims import evaluate_claims

claims = evaluate_claims(cfg=cfg)
claims

# %% [markdown]
# ## One line per claim
# Each claim's primary rows combined as the registry says (C5: both comparisons; C7, C9: each
# comparison on its own): "supported on k of n datasets, contradicted on j".

# %%
from medstudy.claims import claim_summary

claim_summary(claims)

# %% [markdown]
# ## What this budget could have detected
# An *inconclusive* row is not evidence of no effect. `mde` is the smallest |effect| that the
# row's design (its standard error and df) detects with 80 % power at the row's α: where it is
# small, an effect that large is ruled out; where it is large, the study was too small to say.

# %%
power_cols = ["claim", "dataset", "comparison", "metric", "effect", "mde", "n_seeds", "df"]
claims.loc[claims["test"] != "", [*power_cols, "alpha", "verdict"]].round(3)

# %% [markdown]
# ## Forest plot
# One panel per claim; a dot is the effect A − B, the bar its CI, the colour the verdict. The
# dashed line is no difference.

# %%
from medstudy.figures import plot_forest

forest = plot_forest(claims)
# %% [markdown]
# ## C1 · natural-image init vs scratch (fine-tuning)
# Srinivasan et al. and Truong et al. report that supervised natural-image weights beat
# training from scratch. With several seeds the pooled row is followed by each seed's DeLong
# test (binary AUC) or point estimate.

# %%
from medstudy.claims import claim_detail

claim_detail(claims, "C1")

# %% [markdown]
# ## C2 · in-domain SSL started from natural weights vs natural weights
# Does continuing with self-supervision on the medical images add to the natural-image init?

# %%
claim_detail(claims, "C2")

# %% [markdown]
# ## C3 · SSL vs supervised features with few labels (linear probe)
# Tested at the smallest label fraction of notebook 03. `published` holds the gain Truong et
# al. report for that dataset (metric units), next to the effect we measure.

# %%
claim_detail(claims, "C3")

# %% [markdown]
# ## C4 · masked image modelling vs contrastive SSL as labels shrink
# The slope of the metric against log10(label fraction) (smaller = degrades less) and the area
# under that curve (larger = better overall), SparK − contrastive, with fine-tuning.

# %%
claim_detail(claims, "C4")

# %% [markdown]
# ## C5 · curricular SSL on pneumonia
# Curriculum vs scratch and vs natural-image init, fine-tuned on PneumoniaMNIST. The protocol
# is fixed: without fine-tuning results this claim is not run.

# %%
claim_detail(claims, "C5")

# %% [markdown]
# ## C6 · robustness to distortions
# The mean relative drop of the metric over the distortion suite (notebook 06), pretrained
# arms − scratch; a negative effect means the pretrained model degrades less.

# %%
claim_detail(claims, "C6")

# %% [markdown]
# ## C7 · attributions on lesions and lungs
# Notebook 05's per-image attribution mass inside the ground-truth region (synth_lesions: all
# lesions and each size class, minute lesions being the claim's point; chest X-ray: the lung
# fields), SSL arm − reference, paired image by image over seeds. A method the sanity check
# flags (insensitive to the weights) is left out, with a row that says so.

# %%
claim_detail(claims, "C7")

# %% [markdown]
# ## C8 · DVME fusion vs the best single embedding
# Each DVME variant against the single-encoder linear probe with the best *validation* metric
# (chosen on val, compared on test, so the choice does not favour either side).

# %%
claim_detail(claims, "C8")

# %% [markdown]
# ## C9 · representation statistics
# Effective rank (primary) and condition number of the last layer of notebook 01's encoders on
# notebook 04's fixed test sample, pretrained arm − scratch. The claim says pretraining
# *changes* them, so either sign supports it; the bootstrap resamples the feature rows.

# %%
claim_detail(claims, "C9")

# %% [markdown]
# ## Saving the claims table
# `results/claims.csv` is the single source of the paper's claims table and of every number
# quoted in its text; `results/claims_per_seed.csv` keeps the per-seed breakdown.

# %%
from medstudy.claims import save_claims

claims_files = save_claims(claims)
claims_files

# %% [markdown]
# ## Building the paper
# Tables, macros and figures in `<results>/paper/generated/`, from results files only; the PDF is
# compiled when LaTeX is installed.

# %%
from medstudy.report import build_paper

paper_files = build_paper()
paper_files

# %% [markdown]
# ## Files written

# %%
[*claims_files, *paper_files]
