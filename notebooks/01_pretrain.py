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
# # 01 · Pretraining one init arm
#
# - Loads one dataset through the checked data path (md5 + provenance) and shows examples;
#   for `synth_lesions` also the ground-truth lesion masks used by claim C7.
# - Builds the encoder for one **arm**: `scratch` (seeded random init), `natural_sup` (real
#   natural-image weights), `natural_ssl` (published self-supervised ImageNet ResNet-50:
#   DINO, SwAV or MoCo v2), `ssl:<method>` / `natural_sup+ssl:<method>` (in-domain SSL from
#   scratch / from natural weights) or `curriculum` (several SSL methods in sequence).
# - Shows the batched augmentation (pairs of views) and trains with the one pretraining loop,
#   monitoring kNN accuracy on val every epoch.
# - Writes `results/pretrain/<run_id>/`: `config.json`, `manifest.json`, `metrics.csv`,
#   `history.csv` and the encoder checkpoint. Re-running loads the cached run.

# %% tags=["parameters"]
dataset: str = "synth_lesions"  # a key of medstudy.data.INFO, or a MedMNIST-format <name>.npz
arm: str = "ssl:simclr"  # scratch natural_sup natural_ssl ssl:<m> natural_sup+ssl:<m> curriculum
backbone: str = "resnet20_cifar"  # a key of medstudy.models.BACKBONES, or "timm:<model>"
image_size: int = 28  # pixels (MedMNIST sizes: 28, 64, 128, 224)
epochs: int = 1  # pretraining epochs; 0 trains nothing (init only)
batch_size: int = 256  # images per step
lr_scale: float = 1.0  # times each method's recipe LR (its optimiser, LR x batch/base batch)
natural_lr_mult: float = 1.0  # natural_sup+ssl arms: backbone LR is lr times this (heads: lr)
max_train: int = 512  # cap on train images, stratified and seeded; 0 means all
max_val: int = 0  # cap on the kNN monitor's val images, 0 for all (a tiny plumbing run only)
curriculum: list[str] = ["simclr:1", "spark:1"]  # method:epochs stages, used by the curriculum arm
knn_k: int = 20  # neighbours of the kNN monitor
seed: int = 0  # seeds init, sampling, augmentation and batch order
device: str = "cpu"  # cpu | cuda | auto (never changed silently)
natural_weights: str = ""  # local natural_sup checkpoint (relative: in the data dir; "": default)
natural_ssl_weights: str = "dino"  # natural_ssl release: dino, swav or mocov2 (needs timm:resnet50)
natural_ssl_file: str = ""  # local copy of that release's file (offline); empty: download it
torch_compile: bool = False  # compile backbone stages with torch.compile (own run id when on)
devices: int = 1  # DDP ranks (forked, CPU/gloo only in this version; batch_size is global)
num_nodes: int = 1  # multi-node DDP: not runnable in this version (must be 1)
sync_batchnorm: bool = False  # SyncBatchNorm under DDP (needs a GPU: not runnable yet)
views_method: str = "simclr"  # the SSL recipe whose augmented views are shown (display only)
knn_every: int = 1  # kNN monitor every n epochs and at each stage's end (display only)
replicates: list[int] = []  # seeds of the pretraining replicates this job runs ([]: only seed)

# %%
from medstudy.config import PretrainConfig

cfg = PretrainConfig.from_namespace(globals())  # the parameters above, type-checked
cfg

# %% [markdown]
# ## The data
# Every split comes through `load_split`, which checks the file's md5 against the official one
# (or the declaration in `checksums.json`) and records its provenance in the run manifest.

# %%
from medstudy.data import summarize_dataset

summarize_dataset(cfg.dataset, cfg.image_size)

# %%
from medstudy.data import plot_dataset_examples

examples = plot_dataset_examples(cfg.dataset, cfg.image_size, n=8, seed=cfg.seed)

# %% [markdown]
# ## Augmented views
# The SSL methods learn by making views of one image agree (contrastive) or by reconstructing
# masked patches (SparK). Augmentation runs batched on the training device, with per-sample
# parameters from an explicit generator; grey X-rays get no colour jitter.

# %%
from medstudy.pretrain import plot_views

views = plot_views(cfg.dataset, cfg.views_method, n=6, seed=cfg.seed, size=cfg.image_size)

# %% [markdown]
# ## Pretraining
# One loop for every method: seeded, checkpointed every epoch (an interrupted run resumes),
# with an online kNN monitor on val. `scratch`, `natural_sup` and `natural_ssl` train nothing;
# their kNN accuracy is the baseline the SSL arms have to beat.

# %%
import pandas as pd

from medstudy.pretrain import pretrain

# one run per pretraining replicate (a paired profile runs every downstream seed here), else
# the one run of `seed`; each run has its own folder, and a finished one is loaded, not re-run
runs = [pretrain(c) for c in cfg.runs()]
result = runs[0]  # the curves and the outputs below show the first run
pd.DataFrame(
    [
        {"seed": r.seed, "cached": out.cached, **out.metrics}
        for r, out in zip(cfg.runs(), runs, strict=True)
    ]
)

# %%
from medstudy.pretrain import plot_history

curves = plot_history(result.history)

# %% [markdown]
# **Reading the kNN curve.** Epoch 0 is the initialisation the method started from, so the
# curve answers "did pretraining add anything a nearest-neighbour classifier can use?". At
# 28 px random convolutional features are a strong kNN baseline, and two augmented views of one
# image are barely closer than two different images at init (see `benchmarks/README.md`,
# `bench_ssl_knn`). SimCLR's negatives supply that instance signal from the first step; BYOL,
# SwAV, DINO and Barlow Twins have to bootstrap it, and on a CPU budget of a few hundred steps
# their curves stay near epoch 0. A flat curve is a finding about the budget, not a crash.

# %% [markdown]
# ## Outputs

# %%
[r.run_dir for r in runs]
