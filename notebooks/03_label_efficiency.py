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
# # 03 · Label efficiency
#
# - Repeats notebook 02's protocols at label fractions of train (stratified, nested
#   1 % ⊂ 10 % ⊂ 100 %, seeded, ≥ 1 example per class); val and test stay complete.
# - Plots the primary metric against the label fraction (log scale), one curve per arm, with the
#   across-seed mean and 95 % t-interval.
# - Tabulates the normalised area under each label-efficiency curve (with its across-seed CI)
#   and the slope per decade of labels: the quantities of claims C3 (linear probe, fewest
#   labels) and C4 (degradation as labels shrink).
# - Every unit is cached in `results/label_efficiency/<run_id>/` (metrics, per-sample
#   predictions, details); 100 %-label units finished by notebook 02 are copied, not recomputed.

# %% tags=["parameters"]
dataset: str = "synth_lesions"  # a name of the INFO table, or any MedMNIST-format <name>.npz
arms: list[str] = ["scratch", "natural_sup"]  # init arms; SSL arms need notebook 01's runs
protocols: list[str] = ["linear", "knn"]  # subset of linear, knn, finetune
fractions: list[float] = [0.01, 0.1, 1.0]  # label fractions of train, each in (0, 1]
seeds: list[int] = [0, 1, 2]  # subset seeds (also head init, batch order, scratch's init)
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
max_train: int = 0  # cap on train images (stratified, fixed seed) before the fractions, 0 for none
max_val: int = 0  # cap on model-selection val images (stratified, fixed seed), 0 for all
max_test: int = 0  # cap on test images, 0 for all (a tiny plumbing run only)
keep_finetuned: bool = True  # write each fine-tuned unit's weights (04-06 read 02's)
fractions_of: str = "pool"  # pool: fractions of the capped pool; split: of the whole split
val_labels: str = "full"  # full: select on all of val; fraction: on a same-fraction subset
fusion_arms: list[str] = []  # two or more arms fused by DVME at every fraction (empty: none)
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

# %%
# %matplotlib inline
from medstudy.config import LabelEfficiencyConfig
from medstudy.figures import (
    label_efficiency_table,
    plot_label_efficiency,
    primary_metric,
    transfer_table,
)
from medstudy.transfer import run_transfer, unit_paths

cfg = LabelEfficiencyConfig.from_namespace(globals())  # the parameters above, type-checked
cfg

# %% [markdown]
# ## Evaluate every arm × protocol × fraction × seed (cached)
# A seed fixes one nested family of stratified train subsets, so the curve of one seed shows
# the effect of adding labels to the *same* examples. Finished units are loaded. The table shows
# every metric at the smallest fraction (claim C3 reads the linear probe's row there).

# %%
metrics = run_transfer(cfg, stage="label_efficiency")
transfer_table(metrics, split="test", fraction=min(cfg.fractions))

# %% [markdown]
# ## Metric vs label fraction
# One panel per protocol; the band is the 95 % t-interval over seeds (absent with one seed).
# A flatter curve degrades less when labels are scarce.

# %%
plot_label_efficiency(metrics, primary_metric(cfg.dataset), split="test")

# %% [markdown]
# ## Area under the label-efficiency curve
# The trapezoid area under metric vs log10(fraction), divided by the log range: the mean metric
# over a log-spaced label budget, on the metric's own scale. The CI is over the per-seed areas;
# `slope_per_decade` is the OLS gain per 10× labels.

# %%
label_efficiency_table(metrics, primary_metric(cfg.dataset), split="test")

# %% [markdown]
# ## Files written

# %%
unit_paths(metrics, stage="label_efficiency")
