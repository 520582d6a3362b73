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
# # 06 · Robustness to image distortions
#
# - Scores every fine-tuned model of notebook 02 (one per arm × seed) on the test split clean
#   and under the dataset's distortion suite at severities 1–5 (MedMNIST-C / ImageNet-C
#   definitions scaled to 28 px, `medstudy.distortions.DISTORTIONS`).
# - Every arm and seed sees exactly the same distorted images, so arms are compared image by
#   image (claim C6, tested in notebook 07).
# - Reports the metric against severity, the chance-normalised drop
#   `(m_clean − m_c) / (m_clean − chance)` and the mCE normalised by `scratch` (ImageNet-C).
# - Writes one cached unit per arm × seed in `results/robustness/<run_id>/`: `metrics.csv` and
#   `predictions.parquet` with `distortion` and `severity` columns.

# %% tags=["parameters"]
dataset: str = "pneumoniamnist"  # a name of the INFO table, or any MedMNIST-format <name>.npz
arms: list[str] = ["scratch", "natural_sup"]  # arms with a fine-tuned unit from notebook 02
seeds: list[int] = [0]  # the units' seeds
protocol: str = "finetune"  # finetune or linear: which transfer units to distort
fraction: float = 1.0  # the units' label fraction
source_stage: str = "transfer"  # the stage that wrote the units (transfer or label_efficiency)
image_size: int = 28  # the units' image size
distortions: list[str] = []  # names of medstudy.distortions.DISTORTIONS; empty: the modality suite
severities: list[int] = [1, 2, 3, 4, 5]  # severities, each 1 to 5
max_test: int = 0  # cap on test images (stratified, fixed seed); 0 means all
device: str = "cpu"  # cpu, cuda (an error without a GPU) or auto
example_index: int = 0  # which test image the distortion grid shows

# %%
# %matplotlib inline
from medstudy.config import RobustnessConfig
from medstudy.figures import plot_severity_curves, robustness_table
from medstudy.robustness import plot_distortion_grid, run_robustness, unit_paths

cfg = RobustnessConfig.from_namespace(globals())  # the parameters above, type-checked
cfg

# %% [markdown]
# ## The distortion suite on one real test image
# Each row is a distortion, each column a severity (1 = mild, 5 = severe). Stochastic
# distortions draw from a generator seeded by the condition alone, which is what makes the
# comparison between arms paired.

# %%
plot_distortion_grid(cfg)

# %% [markdown]
# ## Score every fine-tuned model under every condition (cached)
# The clean condition (distortion `none`, severity 0) reproduces notebook 02's test
# predictions exactly; a missing fine-tuned unit stops here with its name.

# %%
metrics = run_robustness(cfg)
metrics.head()

# %% [markdown]
# ## Metric against severity
# One panel per distortion; a line per arm (mean over seeds). The dashed line is chance.

# %%
plot_severity_curves(metrics)

# %% [markdown]
# ## Chance-normalised drop and mCE
# The drop divides by the distance from chance, so a weak model cannot look robust merely by
# having little to lose; mCE (ImageNet-C) sums each arm's error over severities, divides by
# `scratch`'s, and averages over distortions (below 1: more robust than scratch).

# %%
robustness_table(metrics)

# %% [markdown]
# ## Files written

# %%
unit_paths(metrics)
