"""Our SSL methods beside lightly's own reference training, at the same small budget.

Issue #15: at ~160 steps only SimCLR beat random-init features on PneumoniaMNIST. This bench
separates "our implementation" from "the method at this budget". For every method it trains,
from the same seeded random ``resnet20_cifar`` and on the same capped train images (2 000,
stratified, as the kNN monitor's), with the same batch size and number of steps:

- **ours**: ``medstudy.pretrain.pretrain`` (arm ``ssl:<method>``), exactly as the study runs it
  (each method's optimiser recipe, :class:`medstudy.ssl.base.OptimRecipe`);
- **lightly**: the method as lightly's CIFAR-10 benchmark (``docs/source/getting_started/
  benchmarks/cifar10_benchmark.py``) builds it: lightly's transform on PIL images (32 → 28 px,
  blur off, no local crops), lightly's heads and loss at the benchmark's sizes, its optimiser
  (SGD 0.06 × batch/128, momentum 0.9, weight decay 5e-4, cosine over epochs; SwAV: Adam 1e-3,
  weight decay 1e-6), a constant EMA momentum of 0.99 and a symmetric MoCo loss; the kept
  encoder is the online/student backbone, as that benchmark's kNN reads it. Only the backbone
  (ours, 64-d features) replaces its ResNet-18, so both sides learn the same network.

SparK has no lightly reference (lightly 1.6 has no SparK, and keyu-tian/SparK is not a
package): its row is ours only.

Every encoder, and the random init, is then read on the val split in two ways, and compared with
the init on the same val cases by a paired DeLong test (A = trained, B = init; positive class 1 =
pneumonia; :func:`medstudy.stats.delong_test`):

- kNN (k = 20, cosine, T = 0.07, the monitor's votes) → AUC of the pneumonia vote;
- a linear probe (:func:`medstudy.evaluate.linear.fit_linear_probe`) fitted on 1 500 of the
  2 000 train images, its L2 strength chosen on the other 500 (never on val) → val AUC.

Both against two baselines: the random init as it is (batch-norm running statistics at their
defaults, what the kNN monitor reads at epoch 0) and the random init with its batch-norm
statistics recalibrated on the train images (:func:`recalibrated`): a few SGD steps adapt
those statistics whatever the method learns, so only a gain over the second says the weights
learned something.

Run: ``python benchmarks/bench_ssl_reference.py [--dataset pneumoniamnist] [--methods simclr,dino]
[--epochs 20] [--batch-size 128] [--max-train 2000] [--seed 0 | --seeds 0,1,2,3,4] [--threads 2]
[--results DIR]``. With ``--seeds``, every method trains at each seed (its own init and its own
2 000 train images; the same val), and :func:`pooled_rows` adds the seed-averaged differences
(:func:`medstudy.stats.seed_case_test`) over all seeds and over all but the first. ``ours`` runs
are cached by run id under ``--results`` (share it with ``bench_ssl_knn.py`` to reuse its runs).
The table goes first; the last line is one JSON object. Figures: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SGD_LR, SGD_WD, EMA = 0.06, 5e-4, 0.99  # lightly's CIFAR-10 benchmark, batch 128


# --------------------------------------------------------------- lightly's reference models --
class _Reference(nn.Module):
    """A lightly-benchmark model: ``loss(views)``; ``before_step()`` (EMA updates); the kept
    encoder is ``self.backbone``."""

    ema: tuple[tuple[nn.Module, nn.Module], ...] = ()

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def before_step(self) -> None:
        from lightly.models.utils import update_momentum

        for online, target in self.ema:
            update_momentum(online, target, m=EMA)

    def optimizer(self, batch_size: int) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(
            params, lr=SGD_LR * batch_size / 128, momentum=0.9, weight_decay=SGD_WD
        )


def _frozen_copy(module: nn.Module) -> nn.Module:
    from lightly.models.utils import deactivate_requires_grad

    twin = copy.deepcopy(module)
    deactivate_requires_grad(twin)
    return twin


class RefSimCLR(_Reference):
    def __init__(self, backbone: nn.Module, dim: int) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules.heads import SimCLRProjectionHead

        super().__init__(backbone)
        self.head = SimCLRProjectionHead(dim, 512, 128)
        self.criterion = NTXentLoss()

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        z0, z1 = (self.head(self.backbone(v)) for v in views[:2])
        return self.criterion(z0, z1)


class RefMoCo(_Reference):
    def __init__(self, backbone: nn.Module, dim: int) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules.heads import MoCoProjectionHead

        super().__init__(backbone)
        self.head = MoCoProjectionHead(dim, 512, 128)
        self.key_backbone, self.key_head = _frozen_copy(backbone), _frozen_copy(self.head)
        self.ema = ((self.backbone, self.key_backbone), (self.head, self.key_head))
        self.criterion = NTXentLoss(temperature=0.1, memory_bank_size=(4096, 128))

    def _pair(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        query = self.head(self.backbone(q))
        with torch.no_grad():
            key = self.key_head(self.key_backbone(k))
        return self.criterion(query, key)

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        return 0.5 * (self._pair(views[0], views[1]) + self._pair(views[1], views[0]))


class RefBYOL(_Reference):
    def __init__(self, backbone: nn.Module, dim: int) -> None:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead

        super().__init__(backbone)
        self.projection = BYOLProjectionHead(dim, 1024, 256)
        self.prediction = BYOLPredictionHead(256, 1024, 256)
        self.target_backbone = _frozen_copy(backbone)
        self.target_projection = _frozen_copy(self.projection)
        self.ema = (
            (self.backbone, self.target_backbone),
            (self.projection, self.target_projection),
        )
        self.criterion = NegativeCosineSimilarity()

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        p0, p1 = (self.prediction(self.projection(self.backbone(v))) for v in views[:2])
        with torch.no_grad():
            z0, z1 = (self.target_projection(self.target_backbone(v)) for v in views[:2])
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


class RefBarlowTwins(_Reference):
    def __init__(self, backbone: nn.Module, dim: int) -> None:
        from lightly.loss import BarlowTwinsLoss
        from lightly.models.modules.heads import ProjectionHead

        super().__init__(backbone)
        # the benchmark's 2-layer head for CIFAR-10
        self.head = ProjectionHead(
            [(dim, 2048, nn.BatchNorm1d(2048), nn.ReLU(inplace=True)), (2048, 2048, None, None)]
        )
        self.criterion = BarlowTwinsLoss()

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        z0, z1 = (self.head(self.backbone(v)) for v in views[:2])
        return self.criterion(z0, z1)


class RefSwAV(_Reference):
    def __init__(self, backbone: nn.Module, dim: int) -> None:
        from lightly.loss import SwaVLoss
        from lightly.models.modules.heads import SwaVProjectionHead, SwaVPrototypes

        super().__init__(backbone)
        self.head = SwaVProjectionHead(dim, 512, 128)
        self.prototypes = SwaVPrototypes(128, 512)
        self.criterion = SwaVLoss()

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        self.prototypes.normalize()
        out = [
            self.prototypes(nn.functional.normalize(self.head(self.backbone(v)), dim=1))
            for v in views
        ]
        return self.criterion(out[:2], out[2:])

    def optimizer(self, batch_size: int) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3 * batch_size / 128, weight_decay=1e-6)


class RefDINO(_Reference):
    def __init__(self, backbone: nn.Module, dim: int) -> None:
        from lightly.loss import DINOLoss

        super().__init__(backbone)
        self.head = self._head(dim)
        self.teacher_backbone = _frozen_copy(backbone)
        self.teacher_head = self._head(dim)
        self.teacher_head.load_state_dict(self.head.state_dict())
        for p in self.teacher_head.parameters():
            p.requires_grad = False
        self.ema = ((self.backbone, self.teacher_backbone), (self.head, self.teacher_head))
        self.criterion = DINOLoss(output_dim=2048)
        self.epoch = 0

    @staticmethod
    def _head(dim: int) -> nn.Module:
        import warnings

        from lightly.models.modules.heads import DINOProjectionHead, ProjectionHead

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            head = DINOProjectionHead(dim, 2048, 256, 2048, batch_norm=True)
        # the benchmark's 2-layer head for CIFAR-10
        head.layers = ProjectionHead(
            [(dim, 2048, nn.BatchNorm1d(2048), nn.GELU()), (2048, 256, None, None)]
        ).layers
        return head

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            teacher = [self.teacher_head(self.teacher_backbone(v)) for v in views[:2]]
        student = [self.head(self.backbone(v)) for v in views]
        return self.criterion(teacher, student, epoch=self.epoch)


REFERENCES: dict[str, Callable[[nn.Module, int], _Reference]] = {
    "simclr": RefSimCLR,
    "mocov2": RefMoCo,
    "byol": RefBYOL,
    "barlowtwins": RefBarlowTwins,
    "swav": RefSwAV,
    "dino": RefDINO,
}


def reference_transform(method: str, size: int) -> Callable[[Any], list[torch.Tensor]]:
    """lightly's transform for ``method`` as its CIFAR-10 benchmark sets it, at ``size`` px."""
    from lightly.transforms import DINOTransform, SimCLRTransform, SwaVTransform

    if method == "dino":
        return DINOTransform(global_crop_size=size, n_local_views=0, gaussian_blur=(0, 0, 0))
    if method == "swav":
        return SwaVTransform(
            crop_sizes=(size,),
            crop_counts=(2,),
            crop_min_scales=(0.14,),
            crop_max_scales=(1.0,),
            gaussian_blur=0.0,
        )
    return SimCLRTransform(input_size=size, gaussian_blur=0.0)  # MoCo, BYOL, Barlow Twins too


class _PILViews(torch.utils.data.Dataset[list[torch.Tensor]]):
    def __init__(self, images: np.ndarray, transform: Callable[[Any], list[torch.Tensor]]) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        from PIL import Image

        img = self.images[i]
        pil = Image.fromarray(img if img.ndim == 3 and img.shape[-1] == 3 else img.squeeze())
        return self.transform(pil.convert("RGB"))  # grey → 3 equal channels, as to_model_input


def train_reference(
    method: str, images: np.ndarray, args: argparse.Namespace
) -> tuple[nn.Module, list[float], float]:
    """lightly's reference training of ``method`` from our seeded init; (encoder, epoch losses,
    wall s)."""
    from medstudy.models import create_backbone

    backbone = create_backbone("resnet20_cifar", seed=args.seed)
    torch.manual_seed(args.seed)  # heads, transforms and batch order (the reference's own RNG)
    random.seed(args.seed)
    model = REFERENCES[method](backbone, backbone.feature_dim)
    loader = torch.utils.data.DataLoader(
        _PILViews(images, reference_transform(method, images.shape[1])),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    opt = model.optimizer(args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    losses = []
    t0 = time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        if isinstance(model, RefDINO):
            model.epoch = epoch
        total, n = 0.0, 0
        for views in loader:
            model.before_step()
            loss = model.loss(views)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"lightly {method}: non-finite loss at epoch {epoch}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()), n + 1
        sched.step()
        losses.append(total / max(n, 1))
    return model.backbone, losses, time.perf_counter() - t0


# ------------------------------------------------------------------------------- reading ----
def recalibrated(init: nn.Module, train: Any, batch_size: int = 256) -> nn.Module:
    """A copy of ``init`` whose batch-norm running statistics are the train images' (a
    cumulative average over one pass in train mode, no gradient), weights untouched.

    A random init keeps BN's default statistics (mean 0, var 1), so in eval mode its features
    are badly scaled; any training, even a few steps, adapts those statistics to the data.
    This baseline separates what the weights learned from what the statistics adapted.
    """
    from medstudy.data.tensors import to_float, to_model_input

    net = copy.deepcopy(init)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
    net.train()
    with torch.no_grad():
        for images, _, _ in train.batches(batch_size):
            net(to_model_input(to_float(images)))
    return net.eval()


def val_scores(
    net: nn.Module, train: Any, val: Any, info: Any, k: int, seed: int
) -> dict[str, np.ndarray]:
    """Class-1 (pneumonia) val scores of ``net``'s features: ``knn`` (the monitor's votes, k,
    T = 0.07) and ``linear`` (a probe fitted on 75 % of train, its L2 chosen on the other 25 %,
    stratified and seeded; never on val)."""
    from medstudy.evaluate.features import extract_features
    from medstudy.evaluate.knn import KNN_TEMPERATURE, knn_predict
    from medstudy.evaluate.linear import fit_linear_probe

    y_tr = train.labels.cpu().numpy().reshape(-1)
    rng = np.random.default_rng(seed)
    select = np.zeros(len(y_tr), dtype=bool)
    for c in np.unique(y_tr):
        members = np.flatnonzero(y_tr == c)
        select[rng.choice(members, round(0.25 * len(members)), replace=False)] = True
    f_tr, f_va = extract_features(net, train), extract_features(net, val)
    votes = knn_predict(f_tr, y_tr, f_va, info.n_classes, k, KNN_TEMPERATURE)
    probe = fit_linear_probe(f_tr[~select], y_tr[~select], f_tr[select], y_tr[select], info)
    return {"knn": votes[:, 1], "linear": probe.predict_scores(f_va)[:, 1]}


def init_baselines(
    init: nn.Module, train: Any, val: Any, info: Any, k: int, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """Val scores of the random init as it is (``""``) and BN-recalibrated (``"_bn"``): the
    two baselines every encoder trained from ``init`` is read against (computed once)."""
    nets = {"": init, "_bn": recalibrated(init, train)}
    return {tag: val_scores(net, train, val, info, k, seed) for tag, net in nets.items()}


def _diff_fields(name: str, final: float, init: float, res: Any) -> dict[str, float]:
    """The row fields of one trained − init comparison (a DeLong or seed-case result)."""
    return {
        f"{name}_init": init,
        f"{name}_final": final,
        f"{name}_diff": res.diff,
        f"{name}_lo": res.ci_low,
        f"{name}_hi": res.ci_high,
        f"{name}_p": res.p_value,
    }


def read_encoder(
    scores: dict[str, np.ndarray], baselines: dict[str, dict[str, np.ndarray]], val: Any
) -> dict[str, float]:
    """An encoder's kNN and linear-probe val ``scores`` (:func:`val_scores`), each paired
    (DeLong) with the init's (``{kind}_*``) and with the BN-recalibrated init's
    (``{kind}_bn_*``) from :func:`init_baselines`."""
    from medstudy.stats import delong_test

    y_va = val.labels.cpu().numpy().reshape(-1)
    out: dict[str, float] = {}
    for kind in ("knn", "linear"):
        for tag, base_scores in baselines.items():
            name, final_k, base = f"{kind}{tag}", scores[kind], base_scores[kind]
            res = delong_test(y_va, final_k, base)
            out.update(_diff_fields(name, res.auc_a, res.auc_b, res))
    return out


def run_method(
    method: str, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    """Train ``method`` (ours, and lightly's reference if it has one) at ``args.seed`` and read
    every encoder on val: (table rows, val scores by ``impl`` and ``"init"`` / ``"init_bn"``,
    plus ``"y"``: the val labels), the scores for :func:`pooled_rows`."""
    from medstudy.config import PretrainConfig
    from medstudy.data import TensorSplit
    from medstudy.models import create_backbone
    from medstudy.pretrain import load_encoder, load_pretrain_data, pretrain

    cfg = PretrainConfig(
        dataset=args.dataset,
        arm=f"ssl:{method}",
        epochs=args.epochs,
        batch_size=args.batch_size,
        # each method's own optimiser recipe (medstudy.ssl METHODS[m].optim) at this batch
        max_train=args.max_train,
        knn_k=args.knn_k,
        seed=args.seed,
    )
    data = load_pretrain_data(cfg)
    train, val = TensorSplit.from_split(data.train), TensorSplit.from_split(data.val)
    info = data.train.info
    init = create_backbone(cfg.backbone, seed=cfg.seed)
    baselines = init_baselines(init, train, val, info, args.knn_k, args.seed)
    scores: dict[str, Any] = {
        "y": val.labels.cpu().numpy().reshape(-1),
        "init": baselines[""],
        "init_bn": baselines["_bn"],
    }

    def read(encoder: nn.Module) -> dict[str, np.ndarray]:
        return val_scores(encoder, train, val, info, args.knn_k, args.seed)

    steps = args.epochs * (len(train) // args.batch_size)
    rows = []
    t0 = time.perf_counter()
    result = pretrain(cfg, progress=False)
    trained = result.history[result.history["method"] != "init"]
    scores["ours"] = read(load_encoder(cfg))
    rows.append(
        {
            "method": method,
            "impl": "ours",
            "seed": args.seed,
            "steps": steps,
            "loss_first": float(trained["loss"].iloc[0]),
            "loss_last": float(trained["loss"].iloc[-1]),
            "wall_s": time.perf_counter() - t0,
            "cached": result.cached,
            **read_encoder(scores["ours"], baselines, val),
        }
    )
    if method in REFERENCES:
        encoder, losses, wall = train_reference(method, data.train.images, args)
        scores["lightly"] = read(encoder)
        rows.append(
            {
                "method": method,
                "impl": "lightly",
                "seed": args.seed,
                "steps": steps,
                "loss_first": losses[0],
                "loss_last": losses[-1],
                "wall_s": wall,
                "cached": False,
                **read_encoder(scores["lightly"], baselines, val),
            }
        )
    return rows, scores


def pooled_rows(
    method: str, per_seed: dict[int, dict[str, Any]], seed_sets: list[tuple[int, ...]]
) -> list[dict[str, Any]]:
    """One row per implementation and seed set: the seed-averaged val-AUC difference, trained
    minus init (A = the encoder trained from seed s's init, B = that same init; positive class
    1 = pneumonia), by :func:`medstudy.stats.seed_case_test`, which pairs every seed on the same
    val cases and carries both the seed-to-seed and the case-sampling variance (t with
    Welch-Satterthwaite df). A one-seed DeLong CI says nothing about another init; this does."""
    from medstudy.stats import seed_case_test

    rows = []
    impls = [i for i in ("ours", "lightly") if all(i in sc for sc in per_seed.values())]
    for impl in impls:
        for seeds in seed_sets:
            row: dict[str, Any] = {"method": method, "impl": impl, "seeds": list(seeds)}
            for kind in ("knn", "linear"):
                for tag, base in (("", "init"), ("_bn", "init_bn")):
                    res = seed_case_test(
                        "auc",
                        [
                            (per_seed[s]["y"], per_seed[s][impl][kind], per_seed[s][base][kind])
                            for s in seeds
                        ],
                    )
                    name = f"{kind}{tag}"
                    row.update(_diff_fields(name, res.estimate_a, res.estimate_b, res))
                    row[f"{name}_df"] = res.df
            rows.append(row)
    return rows


def _fmt(row: dict[str, Any], kind: str) -> str:
    return (
        f"{row[f'{kind}_init']:.3f}→{row[f'{kind}_final']:.3f} {row[f'{kind}_diff']:+.3f} "
        f"[{row[f'{kind}_lo']:+.3f}, {row[f'{kind}_hi']:+.3f}] p={row[f'{kind}_p']:.3f}"
    )


def _readouts(row: dict[str, Any]) -> str:
    return (
        f"kNN AUC {_fmt(row, 'knn')}  (BN-recal. init {_fmt(row, 'knn_bn')})  "
        f"linear AUC {_fmt(row, 'linear')}  (BN-recal. init {_fmt(row, 'linear_bn')})"
    )


def parse_budget(
    parser: argparse.ArgumentParser, choice: str, valid: list[str], multi_seed: bool = False
) -> tuple[argparse.Namespace, list[str]]:
    """The 300-step budget's options (shared with ``choose_ssl_on_val``) and ``--<choice>``, a
    comma list of ``valid`` names; bad values stop the run before any work. Sets the threads.
    ``multi_seed``: also ``--seeds`` (``args.seed_list``; else ``[args.seed]``)."""
    parser.add_argument(f"--{choice}", default=",".join(valid))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    if multi_seed:
        parser.add_argument(
            "--seeds",
            default="",
            help="comma list of seeds (overrides --seed): every method at each seed, then the "
            "seed-averaged differences (seed_case_test) over all of them and over all but the first",
        )
    parser.add_argument("--knn-k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default="", help="results dir (default: a temporary one)")
    args = parser.parse_args()
    chosen = [m.strip() for m in getattr(args, choice).split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(valid))
    if unknown:
        parser.error(f"--{choice}: unknown {unknown}; valid: {sorted(valid)}")
    if args.epochs < 1 or args.batch_size < 2:
        parser.error("--epochs must be >= 1 and --batch-size >= 2")
    try:
        given = getattr(args, "seeds", "")
        args.seed_list = [int(x) for x in given.split(",") if x.strip()] or [args.seed]
    except ValueError:
        parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    if len(set(args.seed_list)) < len(args.seed_list) or min(args.seed_list) < 0:
        parser.error(f"--seed/--seeds: distinct seeds >= 0, got {args.seed_list}")
    args.seed = args.seed_list[0]
    torch.set_num_threads(args.threads)
    return args, chosen


def main() -> None:
    from medstudy.ssl import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="pneumoniamnist")
    args, methods = parse_budget(parser, "methods", list(METHODS), multi_seed=True)
    results = Path(args.results) if args.results else Path(tempfile.mkdtemp(prefix="bench_ref_"))
    os.environ["MEDSTUDY_RESULTS_DIR"] = str(results)
    rows = []
    for method in methods:
        per_seed = {}
        for seed in args.seed_list:
            args.seed = seed
            seed_rows, per_seed[seed] = run_method(method, args)
            for row in seed_rows:
                rows.append(row)
                print(
                    f"{row['method']:<12} {row['impl']:<8} seed {seed}  steps {row['steps']}  "
                    f"loss {row['loss_first']:.3g}→{row['loss_last']:.3g}  {_readouts(row)}  "
                    f"{row['wall_s']:.0f} s",
                    flush=True,
                )
        if len(per_seed) >= 2:
            # all seeds, and all but the first: a setting chosen on val at the first seed
            # (SparK's LR at seed 0, choose_ssl_on_val) is judged out of sample by the rest
            sets = [tuple(args.seed_list)]
            if len(per_seed) >= 3:
                sets.append(tuple(args.seed_list[1:]))
            for row in pooled_rows(method, per_seed, sets):
                rows.append(row)
                print(
                    f"{row['method']:<12} {row['impl']:<8} seeds {row['seeds']} (seed-case t)  "
                    f"{_readouts(row)}",
                    flush=True,
                )
    args.seed = args.seed_list[0]
    print_json(args, rows, results, dataset=args.dataset)


def print_json(
    args: argparse.Namespace, rows: list[dict[str, Any]], results: Path, **meta: Any
) -> None:
    """The last line of a 300-step bench: its budget, versions and rows as one JSON object."""
    meta |= {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_train": args.max_train,
        "seed": args.seed,
        "seeds": args.seed_list,
        "threads": args.threads,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "results": str(results),
    }
    print(json.dumps({"meta": meta, "rows": rows}, default=lambda v: None if math.isnan(v) else v))


if __name__ == "__main__":
    main()
