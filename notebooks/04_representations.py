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
# # 04 · What pretraining does to the learned representations
#
# - Feeds one fixed, seeded, stratified sample of the test split through every arm's encoder:
#   the pretrained encoders of notebook 01 and the fine-tuned backbones of notebook 02.
# - Per backbone stage: the PCA eigen-spectrum, the DR study's condition number, the effective
#   rank, and alignment / uniformity on two augmented views (the same views for every arm).
# - Compares arms with linear CKA (between arms at each layer, between layers within an arm)
#   and shows a seeded t-SNE of the last layer per arm, coloured by label.
# - Claim C9 (effective rank of the last layer, pretrained arm vs scratch) is tested in
#   notebook 07 from the saved features.
# - Writes one cached unit per source × arm × seed in `results/representations/<run_id>/`:
#   `metrics.csv` and `features_<layer>.npz` (features, sample ids, labels).

# %% tags=["parameters"]
dataset: str = "synth_lesions"  # a name of the INFO table, or any MedMNIST-format <name>.npz
arms: list[str] = ["scratch", "natural_sup"]  # init arms to compare
seeds: list[int] = [0]  # downstream seeds (pretrained source: mapped to encoder seeds as in 02)
sources: list[str] = ["pretrained", "finetuned"]  # pretrained (notebook 01) and/or finetuned (02)
finetune_arms: list[str] = []  # arms with a fine-tuned unit in notebook 02; empty means every arm
n_samples: int = 500  # test images in the fixed stratified sample; 0 means the whole test split
n_spectrum: int = 100  # PCA eigenvalues kept per layer
views_recipe: str = "simclr"  # augmentation recipe of the two views (alignment, uniformity)
backbone: str = "resnet20_cifar"  # the encoders' backbone
image_size: int = 28  # image side in pixels
pretrain_epochs: int = 1  # notebook 01's settings, to find its checkpoints
pretrain_batch_size: int = 256  # notebook 01's batch size
pretrain_lr_scale: float = 1.0  # notebook 01's lr_scale
pretrain_natural_lr_mult: float = 1.0  # notebook 01's backbone LR factor for natural_sup+ssl
pretrain_max_train: int = 512  # notebook 01's train cap
pretrain_max_val: int = 0  # notebook 01's kNN-monitor val cap
pretrain_curriculum: list[str] = ["simclr:1", "spark:1"]  # notebook 01's curriculum stages
pretrain_seed: int = 0  # the encoder seed of every pretrained arm (unless paired)
pretrain_natural_weights: str = ""  # notebook 01 natural_weights (local natural_sup checkpoint)
pretrain_natural_ssl_weights: str = "dino"  # notebook 01 natural_ssl release: dino, swav or mocov2
pretrain_natural_ssl_file: str = ""  # notebook 01 natural_ssl_file (local copy; "": download)
pretrain_torch_compile: bool = False  # notebook 01 torch_compile
pretrain_devices: int = 1  # notebook 01 devices
pretrain_num_nodes: int = 1  # notebook 01 num_nodes
pretrain_sync_batchnorm: bool = False  # notebook 01 sync_batchnorm
pretrain_paired: bool = False  # true: seed s uses the encoder pretrained with seed s
device: str = "cpu"  # cpu, cuda (an error without a GPU) or auto
n_boot: int = 200  # bootstrap replicates for the standard error of the table's CIs
cka_debiased: bool = False  # debiased HSIC estimator for CKA (Song et al. 2012)
tsne_perplexity: float = 30.0  # t-SNE perplexity of the embedding plots

# %%
# %matplotlib inline
from medstudy.config import RepresentationsConfig
from medstudy.representations import (
    cka_table,
    embeddings,
    layer_table,
    plot_cka,
    plot_embeddings,
    plot_spectra,
    run_representations,
    statistics_table,
    unit_paths,
)

cfg = RepresentationsConfig.from_namespace(globals())  # the parameters above, type-checked
cfg

# %% [markdown]
# ## Per-layer features and statistics of every unit (cached)
# Every encoder is located first, so a missing notebook-01 or notebook-02 run stops here with
# its name. A unit is identified by its encoder's weights and the sample, so a re-run loads it.

# %%
metrics = run_representations(cfg)
metrics.head()

# %% [markdown]
# ## Statistics by layer
# Mean over seeds. Effective rank counts the directions the features really use; the
# condition number (99.9th over 90th percentile eigenvalue) grows when a few directions
# dominate; lower alignment means two views of an image land closer, lower uniformity means
# the features spread more evenly over the sphere.

# %%
layer_table(metrics)

# %% [markdown]
# ## PCA eigen-spectra
# Standardised layer outputs, as in the DR study's code. A flatter spectrum spreads variance
# over more directions.

# %%
plot_spectra(metrics)

# %% [markdown]
# ## Last layer: effective rank and condition number with CIs
# The CIs resample test cases (the same rows for every arm, so the difference from scratch is
# paired); seed-to-seed variance enters in notebook 07's seed × case test of claim C9.

# %%
statistics_table(metrics, cfg.n_boot)

# %% [markdown]
# ## Linear CKA
# CKA is 1 for representations equal up to rotation and scale. Between arms it says where in
# the network pretraining changes what is represented; CKA of an arm with scratch is C9's
# secondary statistic.

# %%
cka = cka_table(metrics, cfg.cka_debiased)
plot_cka(cka, "arms")

# %% [markdown]
# ## CKA between the layers of each arm
# Blocks of high CKA show stages that pass their representation on largely unchanged.

# %%
plot_cka(cka, "layers")

# %% [markdown]
# ## 2-D embedding of the last layer
# A seeded t-SNE per arm (its first seed). Class structure visible here without any label
# having been used is what pretraining promises; t-SNE distances between clusters mean little.

# %%
plot_embeddings(embeddings(metrics, cfg.tsne_perplexity))

# %% [markdown]
# ## Files written

# %%
unit_paths(metrics)
