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
# # 02 · Transfer with all labels
#
# - Evaluates every init arm (scratch, natural-image supervised, in-domain SSL, …) on one dataset
#   with all training labels, under three protocols: a linear probe and a weighted kNN (k = 20)
#   on frozen features, and full fine-tuning with early stopping on val.
# - Fuses several frozen encoders with DVME (Truong et al. 2021): attention over encoders, over
#   embedding dimensions, and the no-attention ablation (claim C8).
# - Every arm × protocol × seed is one cached unit in `results/transfer/<run_id>/`:
#   `metrics.csv` (val + test), `predictions.parquet` (per-sample, with sample ids, for the
#   paired tests of notebook 07) and `details.json`; frozen features are cached in
#   `results/features/`.
# - Feeds claims C1 and C2 (fine-tuning), C3 at 100 % labels, and C8.

# %% tags=["parameters"]
dataset: str = "synth_lesions"  # a name of the INFO table, or any MedMNIST-format <name>.npz
arms: list[str] = ["scratch", "natural_sup"]  # init arms; SSL arms need notebook 01's runs
protocols: list[str] = ["linear", "knn", "finetune"]  # subset of linear, knn, finetune
fractions: list[float] = [1.0]  # label fractions of train (this notebook: all labels)
seeds: list[int] = [0]  # evaluation seeds (head init, batch order; scratch's init)
finetune_arms: list[str] = []  # arms to fine-tune (empty: every arm)
finetune_fractions: list[float] = []  # fractions to fine-tune at (empty: every fraction)
finetune_epochs: int = 20  # max fine-tuning epochs (early stopping on val usually ends sooner)
finetune_lr: float = 0.05  # SGD (Nesterov) LR of the head; cosine decay per step
backbone_lr_mult: float = 0.1  # a pretrained backbone trains at finetune_lr times this
warmup_frozen_epochs: int = 0  # epochs with a frozen pretrained backbone before unfreezing
finetune_augment: bool = True  # random resized crop + flip on fine-tuning batches
finetune_select_on: str = ""  # val metric picking the epoch (auc, qwk, …); empty: primary
finetune_min_steps: int = 1  # min steps per fine-tuning epoch (tiny fractions repeat data)
patience: int = 5  # epochs without a better val primary metric before stopping
batch_size: int = 128  # fine-tuning batch size
max_train: int = 0  # cap on train images (stratified, fixed seed), 0 for the whole split
max_val: int = 0  # cap on model-selection val images (stratified, fixed seed), 0 for all
max_test: int = 0  # cap on test images, 0 for all (a tiny plumbing run only)
keep_finetuned: bool = True  # write each fine-tuned unit's weights (04-06 read 02's)
fractions_of: str = "pool"  # pool: fractions of the capped pool; split: of the whole split
val_labels: str = "full"  # full: select on all of val; fraction: on a same-fraction subset
fusion_arms: list[str] = []  # two or more arms fused by DVME (empty: no fusion)
fusion_modes: list[str] = ["encoders", "dims", "concat"]  # DVME token layouts + ablation
backbone: str = "resnet20_cifar"  # backbone of every arm
image_size: int = 28  # MedMNIST image size
pretrain_epochs: int = 1  # notebook 01's settings, to find its checkpoints …
pretrain_batch_size: int = 256  # … (they are part of each encoder's identity)
pretrain_lr_scale: float = 1.0  # notebook 01 lr_scale
pretrain_natural_lr_mult: float = 1.0  # notebook 01 backbone LR factor (natural init)
pretrain_max_train: int = 512  # notebook 01 train cap
pretrain_max_val: int = 0  # notebook 01 kNN-monitor val cap
pretrain_curriculum: list[str] = ["simclr:1", "spark:1"]  # notebook 01 curriculum stages
pretrain_seed: int = 0  # seed of the pretrained encoders
pretrain_natural_weights: str = ""  # notebook 01 natural_weights (local natural_sup checkpoint)
pretrain_natural_ssl_weights: str = "dino"  # notebook 01 natural_ssl release: dino, swav or mocov2
pretrain_natural_ssl_file: str = ""  # notebook 01 natural_ssl_file (local copy; "": download)
pretrain_torch_compile: bool = False  # notebook 01 torch_compile
pretrain_devices: int = 1  # notebook 01 devices
pretrain_num_nodes: int = 1  # notebook 01 num_nodes
pretrain_sync_batchnorm: bool = False  # notebook 01 sync_batchnorm
pretrain_paired: bool = False  # seed s uses the encoder pretrained with seed s (replicates)
device: str = "cpu"  # cpu, cuda (an error without a GPU) or auto
n_boot: int = 500  # bootstrap replicates of the bar chart's 95 % CIs

# %%
# %matplotlib inline
from medstudy.config import TransferConfig
from medstudy.figures import (
    plot_transfer,
    primary_metric,
    transfer_table,
)
from medstudy.transfer import run_transfer, unit_paths

cfg = TransferConfig.from_namespace(globals())  # the parameters above, type-checked
cfg

# %% [markdown]
# ## Evaluate every arm × protocol (cached)
# Each unit fits its protocol on the train split (val and test are never subsampled), selects
# its hyper-parameter or epoch on val with the task's primary metric, and scores val and test.
# Finished units are loaded, not recomputed; an SSL arm without a finished notebook-01 run stops
# here with the name of the missing run.

# %%
metrics = run_transfer(cfg, stage="transfer")
transfer_table(metrics, split="test")

# %% [markdown]
# ## Primary metric with 95 % CIs
# Bars are the mean over seeds; error bars are a stratified bootstrap over test cases of that
# seed-averaged metric, computed from the saved per-sample predictions. DVME units appear as the
# arm `fusion`.

# %%
plot_transfer(metrics, primary_metric(cfg.dataset), split="test", n_boot=cfg.n_boot)

# %% [markdown]
# ## Files written
# One folder per unit (config, manifest, metrics, predictions, details, and the fitted probe or
# fine-tuned weights).

# %%
unit_paths(metrics, stage="transfer")
