"""FLOPs per image of every method's training step, and the GPU-hour budget of a profile.

Issue #16 asks for "the FLOPs per image per method" and "the GPU-hour estimate for ``full``,
with the arithmetic shown and the assumed GPU's peak and utilisation". Both come from counts
here, never from timing, so they do not depend on this machine or its load.

1. **Per image.** Every method of :data:`medstudy.ssl.METHODS` is built on a seeded backbone and
   counted the way :class:`medstudy.pretrain.module.PretrainModule` runs it: the views of a
   random uint8 batch from :func:`medstudy.augment.make_views` with the method's recipe
   (channels_last), a :class:`~medstudy.ssl.StepContext`, ``training_step(views, ctx)`` and
   ``loss.backward()`` in train mode, under ``torch.utils.flop_counter.FlopCounterMode``. So
   every view, every momentum forward (MoCo's key encoder, BYOL's target, DINO's teacher) and
   SparK's dense-equivalent masked encoder and decoder are in the count. SwAV is counted with
   its queue full (``ctx.epoch = 1``, as from its second epoch on). Beside them: supervised
   fine-tuning (backbone + linear head, cross-entropy, the fine-tuning augmentation, as
   :func:`medstudy.evaluate.finetune.finetune`) and the eval forward (backbone in eval mode, no
   grad: frozen features, the kNN monitor, val/test scoring). Each is counted at two batch
   sizes b1 < b2; a count is ``a·b + c`` (``a`` per image, ``c`` per step, e.g. SwAV's queue
   logits), the table gives ``F(b2) / (b2/b1 · F(b1))`` (1 = proportional to the batch) and the
   per-image cost ``a + c/B`` at the profile's batch ``B``.
2. **The profile.** :func:`medstudy.grid.load_profile` and :func:`medstudy.grid.expand` give the
   jobs, each job's config (``from_params``) its runs: pretraining runs per replicate with their
   :func:`~medstudy.arms.arm_plan` stages (``batch = min(batch_size, n_train)``, last partial
   batch dropped) and the kNN monitor (train + val forward at the init and after every
   ``knn_every``-th epoch); transfer units from :func:`~medstudy.transfer.plan_units`,
   deduplicated across notebooks 02 and 03 as their run ids are (a unit with the same
   identity is copied, not recomputed); frozen features once per (encoder, split), as the
   on-disk feature cache. Split sizes from :data:`medstudy.data.info.INFO`; label-fraction
   sizes from :func:`medstudy.data.sample_fractions` on the train labels read at 28 px
   (MedMNIST+ holds the same images at every size; no 64 px file is read). Fine-tuning stops
   early (``patience``): the budget takes every unit to ``finetune_epochs`` (an upper bound)
   and also gives the earliest possible stop (a lower bound).
3. **GPU-hours** = FLOPs / (peak × utilisation) / 3600 s, per stage and in total. Beside them,
   each step type's optimiser steps in the profile and its dispatched aten operators (about one
   kernel launch each in eager mode): the compute time per operator at a utilisation says when
   a step is launch-bound rather than FLOP-bound.

FlopCounterMode counts matrix products and convolutions (forward and backward), 2 FLOPs per
multiply-add, the convention of the GPUs' peak figures. It does not count elementwise work:
BatchNorm, activations, SparK's masking and sparse-BN statistics, the losses' softmax and
normalisations, the augmentation's ``grid_sample`` (its blur convolutions and hue einsum are
counted, shown apart, not in the step), the optimiser step and EMA updates (sized here
analytically: FLOPs per parameter per step × parameters / batch), data movement, checkpoints.
Those cost time but no matrix-unit FLOPs, which is what the utilisation factor has to absorb.
The linear probe (scipy L-BFGS, float64) and the kNN protocol run on the CPU: bounded apart.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_flops.py [--configs
resnet20_cifar@28,timm:resnet50@64,timm:resnet50@224] [--batches 4,8] [--profile full]
[--threads 1]``. The tables go first; the last line is one JSON object. Figures:
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

#: NVIDIA A100 80 GB (SXM), dense BF16 tensor-core peak (A100 datasheet; 624 is with sparsity).
PEAK_FLOPS = 312e12
#: Utilisations (model FLOPs utilisation, MFU) the budget is given at: 30-40 %, the optimistic
#: assumption for ResNet-50 with channels_last + bf16; 10-15 %, the pessimistic one for 64 px
#: images (small feature maps: many small kernels, launch- and elementwise-bound).
UTILISATIONS: tuple[float, ...] = (0.40, 0.30, 0.15, 0.10)
#: NVIDIA DeepLearningExamples, PyTorch ResNet-50 v1.5 README, "Training performance: NVIDIA
#: DGX A100 (8x A100 80GB)": 2470 img/s on 1 GPU, mixed precision, 224 px (pytorch-21.03 NGC
#: container, DALI). With this bench's training-step count it gives a measured utilisation.
NVIDIA_R50_IMG_S = 2470.0

#: Elementwise FLOPs per parameter per optimiser step (approximate): SGD with momentum and
#: weight decay (decay, momentum buffer, update; Nesterov +2), Adam (two moments, bias
#: corrections, sqrt, divide, decay), LAMB (Adam's + the two norms of the trust ratio + clip).
OPTIMIZER_FLOPS_PER_PARAM: dict[str, int] = {"sgd": 6, "sgd_nesterov": 8, "adam": 12, "lamb": 20}
EMA_FLOPS_PER_PARAM = 3  # p_ema = m * p_ema + (1 - m) * p
SUPERVISED = "supervised"  # the fine-tuning step's kind
FORWARD = "forward"  # the eval forward's kind
FINETUNE_CLASSES = 5  # head width of the supervised count (the largest of the study's tasks)


# ------------------------------------------------------------------------------ counting ----
class _OpCount(TorchDispatchMode):
    """Counts the aten operators dispatched (about one GPU kernel launch each in eager mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.n += 1
        return func(*args, **(kwargs or {}))


def _count(fn: Callable[[], None]) -> tuple[int, int]:
    """(FLOPs, aten operators) of ``fn()``."""
    with FlopCounterMode(display=False) as counter, _OpCount() as ops:
        fn()
    return int(counter.get_total_flops()), ops.n


def _flops(fn: Callable[[], None]) -> int:
    return _count(fn)[0]


def _images(batch: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)


@dataclass(frozen=True)
class StepCount:
    """One count at one batch size: FLOPs of the step and of making its inputs (``aug``)."""

    flops: int
    aug: int
    trainable: int  # parameters the optimiser updates
    ema: int  # parameters of momentum copies (updated by EMA after each step)
    ops: int  # aten operators of the step (forward + backward)


def count_ssl(method: str, backbone: str, size: int, batch: int, seed: int = 0) -> StepCount:
    """FLOPs of one ``training_step`` + backward of ``method``, as the pretraining loop runs it."""
    from medstudy.augment import make_views, recipe_for_dataset
    from medstudy.models import create_backbone
    from medstudy.runtime import make_generator, seeded
    from medstudy.ssl import StepContext, get_method

    spec = get_method(method)
    with seeded(seed):
        model = spec.build(create_backbone(backbone, seed=seed))
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.train()
    if hasattr(model, "queue_filled"):  # SwAV: the queue is in use from its second epoch on
        model.queue_filled.fill_(10**9)
    # RGB, no rotation invariance: the colour ops only change uncounted elementwise work
    recipe = recipe_for_dataset(spec.recipe, "", 3)
    generator = make_generator("cpu", seed)
    images = _images(batch, size, seed)
    views: list[torch.Tensor] = []

    def augment() -> None:
        views.extend(
            v.contiguous(memory_format=torch.channels_last)
            for v in make_views(images, recipe, generator)
        )

    aug = _flops(augment)
    ctx = StepContext(
        step=10, max_steps=1000, epoch=1, max_epochs=200, generator=generator, image_channels=3
    )
    flops, ops = _count(lambda: model.training_step(views, ctx).backward())
    params = list(model.parameters())
    return StepCount(
        flops,
        aug,
        sum(p.numel() for p in params if p.requires_grad),
        sum(p.numel() for p in params if not p.requires_grad),
        ops,
    )


def _classifier(backbone: str, seed: int) -> nn.Module:
    from medstudy.models import Classifier, create_backbone

    bb = create_backbone(backbone, seed=seed)
    head = nn.Linear(bb.feature_dim, FINETUNE_CLASSES)
    return Classifier(bb, head).to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def count_supervised(backbone: str, size: int, batch: int, seed: int = 0) -> StepCount:
    """FLOPs of one fine-tuning step (every layer trains; the fine-tuning augmentation)."""
    from medstudy.evaluate.batches import image_transform
    from medstudy.runtime import make_generator

    model = _classifier(backbone, seed).train()
    transform = image_transform(True, "", 3)
    generator = make_generator("cpu", seed)
    images = _images(batch, size, seed)
    labels = torch.arange(batch) % FINETUNE_CLASSES
    inputs: list[torch.Tensor] = []
    aug = _flops(lambda: inputs.extend(transform((images,), True, generator)))
    loss_fn = nn.CrossEntropyLoss()
    flops, ops = _count(lambda: loss_fn(model(inputs[0]), labels).backward())
    n = sum(p.numel() for p in model.parameters())
    return StepCount(flops, aug, n, 0, ops)


def count_forward(backbone: str, size: int, batch: int, seed: int = 0) -> StepCount:
    """FLOPs of the eval forward of the backbone (features, kNN, scoring)."""
    from medstudy.data import to_float, to_model_input
    from medstudy.models import create_backbone

    bb = create_backbone(backbone, seed=seed).eval()
    x = to_model_input(to_float(_images(batch, size, seed)))

    def forward() -> None:
        with torch.no_grad():
            bb(x)

    flops, ops = _count(forward)
    return StepCount(flops, 0, 0, 0, ops)


def count_dvme(tokens: str, n_enc: int, dim: int, n_out: int, batch: int, train: bool) -> int:
    """FLOPs of one DVME training step (or eval forward) on ``n_enc`` cached (batch, dim)
    features: the fusion model only, the encoders are frozen and their features cached."""
    from medstudy.evaluate.dvme import DVME
    from medstudy.runtime import seeded_build

    model = seeded_build(lambda: DVME([dim] * n_enc, n_out, tokens), 0)
    feats = [torch.randn(batch, dim) for _ in range(n_enc)]
    if train:
        labels = torch.arange(batch) % n_out
        model.train()
        return _flops(lambda: nn.functional.cross_entropy(model(*feats), labels).backward())
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(*feats)

    return _flops(forward)


@dataclass
class PerImage:
    """A kind of step on one backbone at one size: ``F(b) = a·b + c`` from two batch sizes."""

    backbone: str
    size: int
    kind: str  # an SSL method, SUPERVISED or FORWARD
    batches: tuple[int, int]
    flops: tuple[int, int]  # F(b1), F(b2)
    aug_per_image: float
    trainable: int
    ema: int
    optimizer: str  # key of OPTIMIZER_FLOPS_PER_PARAM ("" = no optimiser step)
    ops: int  # aten operators per step at the larger batch

    @property
    def a(self) -> float:
        (b1, b2), (f1, f2) = self.batches, self.flops
        return (f2 - f1) / (b2 - b1)

    @property
    def c(self) -> float:
        return self.flops[0] - self.a * self.batches[0]

    @property
    def linearity(self) -> float:
        """``F(b2) / (b2/b1 · F(b1))``: 1 when the count is proportional to the batch."""
        (b1, b2), (f1, f2) = self.batches, self.flops
        return f2 / (f1 * b2 / b1)

    def at(self, batch: int) -> float:
        """Counted FLOPs per image at ``batch`` images per step."""
        return self.a + self.c / batch

    def update_per_image(self, batch: int) -> float:
        """Analytic optimiser + EMA FLOPs per image at ``batch`` (not in the count)."""
        per_step = OPTIMIZER_FLOPS_PER_PARAM.get(self.optimizer, 0) * self.trainable
        return (per_step + EMA_FLOPS_PER_PARAM * self.ema) / batch


class Counts:
    """Per-image counts, computed once per (backbone, size, kind) at the given batch pair."""

    def __init__(self, batches: tuple[int, int]) -> None:
        self.batches = batches
        self._rows: dict[tuple[str, int, str], PerImage] = {}
        self._dvme: dict[tuple[str, int, int, int, bool], float] = {}

    def get(self, backbone: str, size: int, kind: str) -> PerImage:
        key = (backbone, size, kind)
        if key not in self._rows:
            self._rows[key] = self._count(backbone, size, kind)
        return self._rows[key]

    def _count(self, backbone: str, size: int, kind: str) -> PerImage:
        from medstudy.ssl import get_method

        if kind == SUPERVISED:
            counts = [count_supervised(backbone, size, b) for b in self.batches]
            optimizer = "sgd_nesterov"
        elif kind == FORWARD:
            counts = [count_forward(backbone, size, b) for b in self.batches]
            optimizer = ""
        else:
            counts = [count_ssl(kind, backbone, size, b) for b in self.batches]
            optimizer = get_method(kind).optim.name
        return PerImage(
            backbone,
            size,
            kind,
            self.batches,
            (counts[0].flops, counts[1].flops),
            counts[1].aug / self.batches[1],
            counts[1].trainable,
            counts[1].ema,
            optimizer,
            counts[1].ops,
        )

    def dvme(self, tokens: str, n_enc: int, dim: int, n_out: int, train: bool) -> float:
        """DVME FLOPs per sample (from the larger batch; it is linear in the batch)."""
        key = (tokens, n_enc, dim, n_out, train)
        if key not in self._dvme:
            b = self.batches[1]
            self._dvme[key] = count_dvme(tokens, n_enc, dim, n_out, b, train) / b
        return self._dvme[key]

    def rows(self) -> list[PerImage]:
        return list(self._rows.values())


# ------------------------------------------------------------------------- the profile ------
@dataclass
class Work:
    """Image passes of one kind in one stage: ``flops`` (with every unit at its epoch cap) and
    ``flops_min`` (every fine-tuning unit stopping at its earliest possible epoch)."""

    stage: str
    item: str
    runs: int = 0
    images: int = 0
    images_min: int = 0
    flops: float = 0.0
    flops_min: float = 0.0
    steps: int = 0  # optimiser steps (training rows, at the epoch caps)
    gpu: bool = True  # False: runs on the CPU (linear probe, kNN protocol)

    def add(
        self, images: int, per_image: float, images_min: int | None = None, steps: int = 0
    ) -> None:
        lo = images if images_min is None else images_min
        self.images += images
        self.images_min += lo
        self.flops += images * per_image
        self.flops_min += lo * per_image
        self.steps += steps


@dataclass
class Budget:
    """Every stage's work in a profile, in insertion order."""

    work: dict[tuple[str, str], Work] = field(default_factory=dict)
    datasets: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: optimiser steps of each network step type: (backbone, size, kind, batch) -> steps
    steps: dict[tuple[str, int, str, int], int] = field(default_factory=dict)

    def add_steps(self, backbone: str, size: int, kind: str, batch: int, steps: int) -> None:
        key = (backbone, size, kind, batch)
        self.steps[key] = self.steps.get(key, 0) + steps

    def at(self, stage: str, item: str, gpu: bool = True) -> Work:
        return self.work.setdefault((stage, item), Work(stage, item, gpu=gpu))


@lru_cache(maxsize=32)
def _labels(dataset: str, split: str) -> np.ndarray:
    """``split``'s labels, read at 28 px (the same images as at every MedMNIST+ size)."""
    from medstudy.data import load_split

    return np.asarray(load_split(dataset, split, 28).labels)


def _split_size(dataset: str, split: str) -> int:
    from medstudy.data.info import INFO

    return int(INFO[dataset].n_samples[split])


def _cap_size(labels: np.ndarray, cap: int, seed: int) -> int:
    """Size of the stratified cap of ``labels`` to ``cap`` (0 = no cap)."""
    from medstudy.data import sample_fraction

    if 0 < cap < len(labels):
        return len(sample_fraction(labels, cap / len(labels), seed))
    return len(labels)


def _knn_evaluations(epochs: list[int], every: int) -> int:
    """kNN monitor passes of a run: the init, then after every ``every``-th epoch and at each
    stage's end (:meth:`medstudy.pretrain.module.PretrainModule.end_epoch`)."""
    n, done = 1, 0
    for stage_epochs in epochs:
        for e in range(1, stage_epochs + 1):
            n += (done + e) % every == 0 or e == stage_epochs
        done += stage_epochs
    return n


def _pretrain(job_params: dict[str, Any], counts: Counts, budget: Budget) -> None:
    from medstudy.arms import arm_plan
    from medstudy.config import PretrainConfig

    cfg = PretrainConfig.from_params(**job_params)
    for run in cfg.runs():
        labels = _labels(run.dataset, "train")
        n_train = _cap_size(labels, run.max_train, run.seed)
        n_val = _split_size(run.dataset, "val")
        plan = arm_plan(run.arm, run.epochs, run.curriculum)
        batch = min(run.batch_size, n_train)
        per_epoch = n_train // batch * batch  # drop_last
        for stage in plan.stages:
            item = f"curriculum: {stage.method}" if run.arm == "curriculum" else run.arm
            per_image = counts.get(run.backbone, run.image_size, stage.method).at(batch)
            work = budget.at("01 pretrain: SSL steps", item)
            work.runs += 1
            steps = stage.epochs * (per_epoch // batch)
            work.add(stage.epochs * per_epoch, per_image, steps=steps)
            budget.add_steps(run.backbone, run.image_size, stage.method, batch, steps)
        passes = _knn_evaluations([s.epochs for s in plan.stages], run.knn_every)
        work = budget.at(
            "01 pretrain: kNN monitor", f"train + val forward, knn_every={run.knn_every}"
        )
        work.runs += 1
        work.add(passes * (n_train + n_val), counts.get(run.backbone, run.image_size, FORWARD).a)


def _fraction_sizes(cfg: Any, seed: int) -> dict[str, dict[float, int]]:
    """``{"train": {fraction: n}, "val": {fraction: n}}`` of a transfer config and seed (the
    rule of :func:`medstudy.transfer.units.unit_subsets`)."""
    from medstudy.data import sample_fraction, sample_fractions
    from medstudy.transfer import CAP_SEED
    from medstudy.transfer.units import MIN_VAL_PER_CLASS, train_fraction

    train, val = _labels(cfg.dataset, "train"), _labels(cfg.dataset, "val")
    if cfg.fractions_of == "pool" and 0 < cfg.max_train < len(train):
        train = train[sample_fraction(train, cfg.max_train / len(train), CAP_SEED)]
    if 0 < cfg.max_val < len(val):
        val = val[sample_fraction(val, cfg.max_val / len(val), CAP_SEED)]
    fracs = sorted({float(f) for f in (*cfg.fractions, *cfg.finetune_fractions)})
    effective = {f: train_fraction(cfg, f, len(train)) for f in fracs}
    idx = sample_fractions(train, sorted(set(effective.values())), seed)
    sizes = {
        "train": {f: len(idx[effective[f]]) for f in fracs},
        "val": dict.fromkeys(fracs, len(val)),
    }
    if cfg.val_labels == "fraction":
        val_idx = sample_fractions(val, fracs, seed, MIN_VAL_PER_CLASS)
        sizes["val"] = {f: len(val_idx[f]) for f in fracs}
    return sizes


@dataclass(frozen=True)
class Fit:
    """One supervised fit's schedule: ``images`` and ``steps`` per epoch, epoch bounds."""

    images: int
    steps: int
    most: int  # the epoch cap (no early stop)
    fewest: int  # the best epoch is the first, then ``patience`` epochs without improvement


def plan_fit(n: int, settings: Any) -> Fit:
    """The schedule of a fit on ``n`` images (:class:`medstudy.evaluate.batches.TensorBatches`:
    ``min_steps_per_epoch`` repeats a small set; a lone last sample is skipped). Patience counts
    after the frozen warm-up only."""
    bs = settings.batch_size
    per_pass = math.ceil(n / bs)
    passes = max(1, math.ceil(settings.min_steps_per_epoch / max(per_pass, 1)))
    lone = 1 if n % bs == 1 and n > 1 else 0
    fewest = min(settings.max_epochs, max(settings.warmup_frozen_epochs, 1) + settings.patience)
    return Fit(passes * (n - lone), passes * (per_pass - lone), settings.max_epochs, fewest)


TRANSFER_STAGES = {"02": "02 transfer", "03": "03 label efficiency"}


def _transfer(
    notebook: str, job_params: dict[str, Any], counts: Counts, budget: Budget, seen: set[str]
) -> None:
    from medstudy.evaluate.finetune import TrainSettings
    from medstudy.evaluate.linear import L2_GRID, MAX_ITER
    from medstudy.grid import NOTEBOOKS
    from medstudy.models import create_backbone
    from medstudy.transfer import CAP_SEED, plan_units
    from medstudy.transfer.encoders import encoder_seed

    cfg = NOTEBOOKS[notebook].config.from_params(**job_params)
    tag = notebook[:2]
    stage = TRANSFER_STAGES.get(tag, f"{tag} transfer")
    ds = cfg.dataset
    n_split = {s: _split_size(ds, s) for s in ("val", "test")}
    test = n_split["test"]
    fwd = counts.get(cfg.backbone, cfg.image_size, FORWARD).a
    sup = counts.get(cfg.backbone, cfg.image_size, SUPERVISED)
    dim = create_backbone(cfg.backbone).feature_dim
    n_out = _n_outputs(ds)
    pool = {"max_train": cfg.max_train, "fractions_of": cfg.fractions_of, "max_val": cfg.max_val}
    cap = cfg.max_train if cfg.fractions_of == "pool" else 0
    n_pool = _cap_size(_labels(ds, "train"), cap, CAP_SEED)  # the split features are read from
    sizes: dict[int, dict[str, dict[float, int]]] = {}
    for unit in plan_units(cfg):
        if unit.seed not in sizes:
            sizes[unit.seed] = _fraction_sizes(cfg, unit.seed)
        n = sizes[unit.seed]["train"][unit.fraction]
        n_val = sizes[unit.seed]["val"][unit.fraction]
        encoders = [
            cfg.pretrain_config(a, seed=encoder_seed(cfg, a, unit.seed)).identity()
            for a in unit.arms
        ]
        # what the unit's run id hashes (medstudy.transfer.units.unit_config; the stage is not
        # in it, so notebook 03 copies notebook 02's identical units)
        identity = json.dumps(
            [ds, asdict(unit), encoders, cfg.image_size, pool, cfg.val_labels],
            sort_keys=True,
            default=str,
        )
        if identity in seen:
            budget.at(stage, "units copied from the other notebook").runs += 1
            continue
        seen.add(identity)
        if unit.protocol in ("linear", "knn") or unit.protocol.startswith("dvme"):
            # frozen features: one extraction per (encoder, split), cached on disk by content
            for enc in encoders:
                for split in ("train", "val", "test"):
                    key = json.dumps(["features", ds, enc, split, pool], sort_keys=True)
                    if key in seen:
                        continue
                    seen.add(key)
                    work = budget.at("02 frozen features (03 reads the cache)", "encoder x split")
                    work.runs += 1
                    work.add(n_pool if split == "train" else n_split[split], fwd)
        if unit.protocol == "finetune":
            settings = TrainSettings(**unit.params)
            fit = plan_fit(n, settings)
            frozen = settings.warmup_frozen_epochs  # a frozen backbone: forward only
            train = budget.at(stage, f"fine-tune f={unit.fraction:g}: train steps")
            train.runs += 1
            train.add(
                (fit.most - frozen) * fit.images,
                sup.at(settings.batch_size),
                max(fit.fewest - frozen, 0) * fit.images,
                steps=fit.most * fit.steps,
            )
            budget.add_steps(
                cfg.backbone, cfg.image_size, SUPERVISED, settings.batch_size, fit.most * fit.steps
            )
            if frozen:
                train.add(frozen * fit.images, fwd)
            score = budget.at(stage, f"fine-tune f={unit.fraction:g}: val each epoch + test")
            score.runs += 1
            score.add(fit.most * n_val + test, fwd, fit.fewest * n_val + test)
        elif unit.protocol.startswith("dvme"):
            settings = TrainSettings(**{k: v for k, v in unit.params.items() if k != "tokens"})
            fit = plan_fit(n, settings)
            tokens, n_enc = unit.params["tokens"], len(unit.arms)
            work = budget.at(stage, f"DVME {tokens} (cached features)")
            work.runs += 1
            step = counts.dvme(tokens, n_enc, dim, n_out, True)
            steps = fit.most * fit.steps
            work.add(fit.most * fit.images, step, fit.fewest * fit.images, steps=steps)
            evals = counts.dvme(tokens, n_enc, dim, n_out, False)
            work.add(fit.most * n_val + test, evals, fit.fewest * n_val + test)
        elif unit.protocol == "linear":
            # scipy L-BFGS-B on the CPU: per function evaluation 2 products of (n, D) by
            # (D, K), i.e. 4·D·K per train row; bound: one evaluation per iteration, every
            # grid point at max_iter (line searches can add a few evaluations)
            work = budget.at(f"{tag} CPU", "linear probe: L-BFGS bound", gpu=False)
            work.runs += 1
            work.add(len(L2_GRID) * MAX_ITER * n, 4.0 * dim * n_out)
        else:
            # cosine similarity of every val/test query with every train row: 2·D each
            work = budget.at(f"{tag} CPU", "kNN protocol: query x train", gpu=False)
            work.runs += 1
            work.add((n_val + test) * n, 2.0 * dim)


def _n_outputs(dataset: str) -> int:
    from medstudy.data.info import INFO

    return INFO[dataset].n_outputs


def profile_budget(profile: str, counts: Counts) -> Budget:
    """Every job of ``profile`` as :class:`Work` rows (module docstring, point 2)."""
    from medstudy.data.info import INFO
    from medstudy.grid import expand, load_profile

    spec = load_profile(profile)
    budget = Budget()
    seen: set[str] = set()
    for job in expand(spec):
        if job.notebook == "01_pretrain":
            _pretrain(job.params, counts, budget)
        elif job.notebook in ("02_transfer", "03_label_efficiency"):
            _transfer(job.notebook, job.params, counts, budget, seen)
        elif job.notebook not in budget.notes:
            budget.notes.append(job.notebook)  # no network training (e.g. 07: statistics)
    for ds in spec["datasets"]:
        budget.datasets[ds] = {s: int(INFO[ds].n_samples[s]) for s in ("train", "val", "test")}
    return budget


# ------------------------------------------------------------------------------- output -----
def gpu_hours(flops: float, utilisation: float) -> float:
    return flops / (PEAK_FLOPS * utilisation) / 3600.0


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line, *body = (
        " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )
    return "\n".join([line, "-|-".join("-" * w for w in widths), *body])


def per_image_table(rows: list[PerImage], batch: int) -> str:
    fwd = {(r.backbone, r.size): r.a for r in rows if r.kind == FORWARD}
    b1, b2 = rows[0].batches
    out = []
    for r in rows:
        ratio = r.at(batch) / fwd[(r.backbone, r.size)] if (r.backbone, r.size) in fwd else math.nan
        out.append(
            [
                r.backbone,
                str(r.size),
                r.kind,
                f"{r.flops[0] / b1 / 1e9:.4f}",
                f"{r.flops[1] / b2 / 1e9:.4f}",
                f"{r.linearity:.5f}",
                f"{r.c / 1e6:.2f}",
                f"{r.at(batch) / 1e9:.4f}",
                f"{ratio:.2f}",
                f"{r.aug_per_image / 1e6:.3f}",
                f"{r.update_per_image(batch) / 1e6:.3f}",
                str(r.ops),
            ]
        )
    header = [
        "backbone",
        "px",
        "step",
        f"GFLOP/img b={b1}",
        f"b={b2}",
        f"F({b2})/{b2 // b1}F({b1})",
        "per-step MFLOP",
        f"GFLOP/img @{batch}",
        "x fwd",
        "aug MFLOP/img",
        f"opt+EMA MFLOP/img @{batch}",
        "aten ops/step",
    ]
    return _table(header, out)


def budget_table(budget: Budget) -> str:
    """GPU stages in notebook order (units copied from the other notebook last), then the CPU
    side."""
    order = sorted(
        budget.work.values(),
        key=lambda w: (not w.gpu, w.stage, w.item.startswith("units copied")),
    )
    rows = []
    for w in order:
        if not w.images:
            empty = [w.stage, w.item, str(w.runs), "-", "-", "-", "0"]
            rows.append([*empty, *(["0"] * len(UTILISATIONS))])
            continue
        rows.append(
            [
                w.stage,
                w.item,
                str(w.runs),
                f"{w.images / w.runs:,.0f}",
                f"{w.steps:,}" if w.steps else "-",
                f"{w.flops / w.images / 1e9:.4g}",
                f"{w.flops / 1e15:,.1f}",
                *(f"{gpu_hours(w.flops, u):,.2f}" if w.gpu else "CPU" for u in UTILISATIONS),
            ]
        )
    header = [
        "stage",
        "item",
        "runs",
        "image passes/run",
        "optimiser steps",
        "GFLOP/pass",
        "PFLOP",
        *(f"GPU-h @{u:.0%}" for u in UTILISATIONS),
    ]
    return _table(header, rows)


def step_table(budget: Budget, counts: Counts) -> str:
    """Each network step type of the profile: its FLOPs, operators and time at a utilisation;
    ``us/op`` is the compute time per dispatched operator at the highest utilisation."""
    rows = []
    top = max(UTILISATIONS)
    for (backbone, size, kind, batch), steps in sorted(budget.steps.items(), key=lambda kv: -kv[1]):
        r = counts.get(backbone, size, kind)
        flops = r.at(batch) * batch
        rows.append(
            [
                f"{backbone}@{size}",
                kind,
                str(batch),
                f"{steps:,}",
                f"{flops / 1e9:.1f}",
                str(r.ops),
                f"{flops / PEAK_FLOPS * 1e3:.2f}",
                *(f"{flops / (PEAK_FLOPS * u) * 1e3:.2f}" for u in UTILISATIONS),
                f"{flops / (PEAK_FLOPS * top) * 1e6 / r.ops:.1f}",
            ]
        )
    header = [
        "network",
        "step",
        "batch",
        "steps",
        "GFLOP/step",
        "aten ops/step",
        "ms @100%",
        *(f"ms @{u:.0%}" for u in UTILISATIONS),
        f"us/op @{top:.0%}",
    ]
    return _table(header, rows)


def totals(budget: Budget) -> dict[str, Any]:
    gpu = [w for w in budget.work.values() if w.gpu]
    flops, flops_min = sum(w.flops for w in gpu), sum(w.flops_min for w in gpu)
    return {
        "flops": flops,
        "flops_earliest_stop": flops_min,
        "cpu_flops_bound": sum(w.flops for w in budget.work.values() if not w.gpu),
        "gpu_hours": {f"{u:.2f}": gpu_hours(flops, u) for u in UTILISATIONS},
        "gpu_hours_earliest_stop": {f"{u:.2f}": gpu_hours(flops_min, u) for u in UTILISATIONS},
        "by_stage": {
            stage: sum(w.flops for w in gpu if w.stage == stage)
            for stage in dict.fromkeys(w.stage for w in gpu)
        },
    }


def print_budget(budget: Budget, counts: Counts) -> dict[str, Any]:
    """Print the profile's tables and arithmetic; return its totals."""
    print(f"\nprofile datasets (train/val/test): {budget.datasets}")
    print(budget_table(budget))
    print("\nper step (batch = the profile's; tiny label fractions run smaller batches):")
    print(step_table(budget, counts))
    tot = totals(budget)
    cap, early = tot["flops"], tot["flops_earliest_stop"]
    print(f"\nGPU total, every fine-tuning unit to its epoch cap: {cap / 1e15:,.1f} PFLOP")
    print(f"GPU total, every unit at its earliest stop: {early / 1e15:,.1f} PFLOP")
    for u in UTILISATIONS:
        print(
            f"  {cap:.4g} FLOP / ({PEAK_FLOPS / 1e12:.0f}e12 FLOP/s x {u:.2f}) / 3600 s = "
            f"{gpu_hours(cap, u):,.2f} GPU-h   (earliest stop: {gpu_hours(early, u):,.2f})"
        )
    print(f"CPU side (not in the GPU-hours), bound: {tot['cpu_flops_bound'] / 1e15:,.2f} PFLOP")
    if budget.notes:
        print(f"no network training in: {budget.notes}")
    return tot


def nvidia_utilisation(counts: Counts, batch: int) -> float | None:
    """NVIDIA's measured ResNet-50 training throughput as a utilisation of the peak, with this
    bench's count of the 224 px supervised step (None if that step was not counted)."""
    rows = [r for r in counts.rows() if r.kind == SUPERVISED and r.size == 224]
    rows = [r for r in rows if r.backbone.removeprefix("timm:").split(".")[0] == "resnet50"]
    if not rows:
        return None
    per_image = rows[0].at(batch)
    mfu = NVIDIA_R50_IMG_S * per_image / PEAK_FLOPS
    print(
        f"\nNVIDIA's measured ResNet-50 training (1x A100 80GB, AMP, 224 px): "
        f"{NVIDIA_R50_IMG_S:.0f} img/s x {per_image / 1e9:.2f} GFLOP/img = "
        f"{NVIDIA_R50_IMG_S * per_image / 1e12:.1f} TFLOP/s = {mfu:.1%} of the peak"
    )
    return mfu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        default="resnet20_cifar@28,timm:resnet50@64,timm:resnet50@224",
        help="backbone@size pairs to count every step on",
    )
    parser.add_argument("--batches", default="4,8", help="the two batch sizes b1 < b2")
    parser.add_argument("--train-batch", type=int, default=256, help="B of the per-image column")
    parser.add_argument("--profile", default="full", help="profile to budget ('' = none)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    batches = tuple(int(b) for b in args.batches.split(","))
    if len(batches) != 2 or not 1 < batches[0] < batches[1]:
        parser.error("--batches needs two sizes 1 < b1 < b2 (BatchNorm needs 2 images)")
    configs = []
    for entry in args.configs.split(","):
        name, _, size = entry.rpartition("@")
        if not name or not size.isdigit():
            parser.error(f"--configs: {entry!r} is not backbone@size")
        configs.append((name, int(size)))
    torch.set_num_threads(args.threads)
    from medstudy.ssl import METHODS

    counts = Counts((batches[0], batches[1]))
    for backbone, size in configs:
        for kind in (*METHODS, SUPERVISED, FORWARD):
            counts.get(backbone, size, kind)
    print(per_image_table(counts.rows(), args.train_batch), flush=True)
    shown = len(counts.rows())
    result: dict[str, Any] = {}
    if args.profile:
        budget = profile_budget(args.profile, counts)
        extra = counts.rows()[shown:]
        if extra:  # the profile's own backbone/size, if not among --configs
            print("\nthe profile's backbone and size:\n" + per_image_table(extra, args.train_batch))
        result = {
            "profile": args.profile,
            "datasets": budget.datasets,
            "work": [asdict(w) for w in budget.work.values()],
            "steps": [
                {"backbone": k[0], "size": k[1], "kind": k[2], "batch": k[3], "steps": v}
                for k, v in budget.steps.items()
            ],
            "totals": print_budget(budget, counts),
        }
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": args.threads,
        "batches": list(batches),
        "train_batch": args.train_batch,
        "gpu": "NVIDIA A100 80GB, dense BF16 tensor-core peak",
        "peak_flops": PEAK_FLOPS,
        "utilisations": list(UTILISATIONS),
        "nvidia_r50_img_s": NVIDIA_R50_IMG_S,
        "nvidia_r50_utilisation": nvidia_utilisation(counts, args.train_batch),
    }
    per_image = [
        {**asdict(r), "a": r.a, "c": r.c, "linearity": r.linearity,
         "per_image_at_train_batch": r.at(args.train_batch),
         "update_per_image": r.update_per_image(args.train_batch)}
        for r in counts.rows()
    ]  # fmt: skip
    print(json.dumps({"meta": meta, "per_image": per_image, **result}))


if __name__ == "__main__":
    main()
