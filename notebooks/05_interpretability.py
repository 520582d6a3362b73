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
# # 05 · Interpretability: where do the fine-tuned models look?
#
# - Explains every fine-tuned model of notebook 02 (one per arm × seed) with captum attribution
#   methods (Grad-CAM, saliency, integrated gradients; occlusion on request), always for the
#   *true* class, on one fixed seeded sample of test images shared by every arm and seed.
# - Scores the maps against ground truth: attribution mass inside the lesion masks, pointing game
#   and pixel AUC by lesion size (minute / small / large) on `synth_lesions`; mass inside the
#   lung fields on chest X-rays (claim C7, tested in notebook 07).
# - Runs the cascading-randomisation sanity check (Adebayo et al. 2018): a method whose maps
#   survive random weights is flagged and left out of C7.
# - On `synth_lesions`, erases the minute lesions and re-scores the models: does the task need them?
# - Writes one cached unit per arm × seed in `results/interpretability/<run_id>/`: per-sample
#   rows (`sample_id`, `method`, `size_class`, `metric`, `value`), their means in `metrics.csv`,
#   and the sanity cascades in the details.

# %% tags=["parameters"]
dataset: str = "synth_lesions"  # synth_lesions (lesion masks) or a chest X-ray (lung fields)
arms: list[str] = ["scratch", "natural_sup"]  # arms with a fine-tuned unit from notebook 02
seeds: list[int] = [0]  # the units' seeds
methods: list[str] = ["grad_cam", "saliency", "integrated_gradients"]  # keys of ATTRIBUTIONS
n_images: int = 200  # seeded test sample shared by all arms; synth_lesions: images with lesions
ig_steps: int = 32  # integrated-gradients steps
protocol: str = "finetune"  # finetune or linear: which transfer units to explain
fraction: float = 1.0  # the units' label fraction
source_stage: str = "transfer"  # the stage that wrote the units (transfer or label_efficiency)
image_size: int = 28  # the units' image size
pointing_tolerance: float = 1.0  # pointing-game tolerance in px (0 is the strict game)
lung_fields: bool = True  # score lung-field mass on chest X-ray datasets
erase_minute: bool = True  # synth_lesions: accuracy with the minute lesions erased
sanity_check: bool = True  # run the cascading randomisation per method
sanity_images: int = 8  # images used by the sanity check
sanity_threshold: float = 0.5  # flag a method whose fully random maps correlate at least this much
device: str = "cpu"  # cpu, cuda (an error without a GPU) or auto
n_overlay: int = 4  # images in the overlay grid
n_lung_figure: int = 32  # chest X-rays in the lung-mask check
n_boot: int = 1000  # bootstrap replicates of the table's CIs

# %%
# %matplotlib inline
from medstudy.config import InterpretConfig
from medstudy.interpret import (
    erasure_table,
    mask_metric_table,
    plot_lung_fields,
    plot_overlays,
    run_interpret,
    sanity_table,
    unit_paths,
)

cfg = InterpretConfig.from_namespace(globals())  # the parameters above, type-checked
cfg

# %% [markdown]
# ## Explain and score every fine-tuned model (cached)
# Each unit computes the maps of every method on the same sampled images, scores them against
# the masks and runs the sanity check; a finished unit is loaded, and a missing fine-tuned unit
# stops here with its name.

# %%
metrics = run_interpret(cfg)
metrics.head()

# %% [markdown]
# ## What the maps look like
# Rows are test images (those with minute lesions first), then the ground-truth regions
# (magenta minute, yellow small, cyan large lesions; red lung fields), then the positive part of
# each arm's map per method, with the regions outlined. Every map explains the true class.

# %%
plot_overlays(cfg)

# %% [markdown]
# ## Mask metrics by lesion size (or lung fields), with 95 % CIs
# Per image the value is averaged over seeds; the BCa bootstrap then resamples images.
# `mass_in_mask` is the share of positive attribution inside the region (chance: its
# `area_fraction`), `pointing_game` whether the top pixel hits it, `pixel_auc` how well the map
# ranks region pixels above the rest (chance 0.5). Compare arms within a size class: the
# regions' areas differ by design.

# %%
mask_metric_table(metrics, n_boot=cfg.n_boot)

# %% [markdown]
# ## Sanity check: do the maps depend on the learned weights?
# The blocks are re-initialised from the head down; each column is the mean Spearman
# correlation with the trained model's maps after that block. A method still correlated once
# every weight is random (`flagged`) shows the input rather than the model, and C7 ignores it.

# %%
sanity_table(metrics)

# %% [markdown]
# ## Does the task need the minute lesions?
# Accuracy on the test images with minute lesions, as they are and with those lesions inpainted
# from the local background; `regraded` scores against the grade of the remaining lesions. A
# model that reads the minute lesions drops against the original grade and follows the new one.

# %%
erasure_table(metrics)

# %% [markdown]
# ## Lung-field masks (chest X-rays only)
# The lung fields come from image processing (Otsu thresholds, morphology, two largest
# components; `medstudy.masks.lung_field_mask`); check them by eye here. Nothing is shown for a
# dataset without lung fields.

# %%
plot_lung_fields(cfg)

# %% [markdown]
# ## Files written

# %%
unit_paths(metrics)
