"""SSL recipe settings chosen on val (issue #15): SparK's optimiser, horizontal flips on chest X-ray.

Each question trains its options from the same seeded random ``resnet20_cifar`` on the same
2 000 stratified PneumoniaMNIST train images, batch 128, 20 epochs = 300 steps (the budget of
``bench_ssl_knn`` and ``bench_ssl_reference``), through ``medstudy.pretrain`` exactly as the
study runs it, with only the question's setting changed. Every encoder is read on the **val**
split by ``bench_ssl_reference.read_encoder``: kNN (the monitor's votes) and linear-probe AUC
(L2 chosen on 500 held-out train images), each paired by DeLong with the random init. Options
are then paired with the question's default on the same val cases (positive class pneumonia;
A = option, B = default).

The rule, fixed before any run: the default (the cited source's setting) stays unless another
option beats it on val, i.e. a paired 95 % CI above 0 for kNN or linear AUC and neither CI
below 0. Test is never read.

- ``spark_optimizer``: SparK's own recipe (LAMB, 2e-4 x batch/256, wd 0.04) gives 1e-4 at batch
  128, a step size meant for 1 600 epochs; the options are LAMB at SparK's absolute ImageNet
  LR (2e-4 x 4096/256 = 3.2e-3) and lightly's SGD rule (0.06 x batch/128), the recipe SparK
  had here before.
- ``cxr_hflip``: SimCLR's recipe flips half the views; a flipped chest X-ray puts the heart on
  the right. Option: no horizontal flip in any view.

Run: ``python benchmarks/choose_ssl_on_val.py [--questions spark_optimizer,cxr_hflip]
[--epochs 20] [--threads 2] [--results DIR]``. Each option trains in its own results folder
(an option changes the code a run id does not see). The last line is one JSON object; the
figures are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medstudy.ssl.base import LIGHTLY_CIFAR10_SGD, MethodSpec
from medstudy.ssl.spark import SPARK_LAMB, SPARK_LAMB_AT_IMAGENET_LR


def _no_hflip(spec: MethodSpec) -> MethodSpec:
    views = tuple(replace(v, hflip_prob=0.0) for v in spec.recipe.views)
    return replace(spec, recipe=replace(spec.recipe, views=views))


@dataclass(frozen=True)
class Question:
    method: str
    default: str
    options: dict[str, Callable[[MethodSpec], MethodSpec]]


QUESTIONS: dict[str, Question] = {
    "spark_optimizer": Question(
        "spark",
        "lamb 2e-4 x b/256 (SparK)",
        {
            "lamb 2e-4 x b/256 (SparK)": lambda s: replace(s, optim=SPARK_LAMB),
            "lamb 3.2e-3 (SparK's ImageNet LR)": lambda s: replace(
                s, optim=SPARK_LAMB_AT_IMAGENET_LR
            ),
            "sgd 0.06 x b/128 (lightly)": lambda s: replace(s, optim=LIGHTLY_CIFAR10_SGD),
        },
    ),
    "cxr_hflip": Question(
        "simclr",
        "flip",
        {"flip": lambda s: s, "no flip": _no_hflip},
    ),
}


def train_option(
    question: str, name: str, args: argparse.Namespace, root: Path
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Pretrain the question's method with option ``name`` applied to its registry row."""
    from medstudy import ssl
    from medstudy.config import PretrainConfig
    from medstudy.pretrain import load_encoder, pretrain

    q = QUESTIONS[question]
    slug = "".join(c if c.isalnum() else "_" for c in name)
    os.environ["MEDSTUDY_RESULTS_DIR"] = str(root / question / slug)
    cfg = PretrainConfig(
        dataset="pneumoniamnist",
        arm=f"ssl:{q.method}",
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_train=args.max_train,
        seed=args.seed,
        knn_every=args.epochs,  # the monitor only observes; once at the end saves ~30 s
    )
    original = ssl.METHODS[q.method]
    ssl.METHODS[q.method] = q.options[name](original)
    try:
        t0 = time.perf_counter()
        result = pretrain(cfg, progress=False)
        encoder = load_encoder(cfg)
    finally:
        ssl.METHODS[q.method] = original
    trained = result.history[result.history["method"] != "init"]
    return encoder, {
        "loss_first": float(trained["loss"].iloc[0]),
        "loss_last": float(trained["loss"].iloc[-1]),
        "wall_s": time.perf_counter() - t0,
    }


def main() -> None:
    from bench_ssl_reference import (
        init_baselines,
        parse_budget,
        print_json,
        read_encoder,
        val_scores,
    )

    from medstudy.config import PretrainConfig
    from medstudy.data import TensorSplit
    from medstudy.models import create_backbone
    from medstudy.pretrain import load_pretrain_data
    from medstudy.stats import delong_test

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args, questions = parse_budget(parser, "questions", list(QUESTIONS))
    root = Path(args.results) if args.results else Path(tempfile.mkdtemp(prefix="choose_ssl_"))

    data = load_pretrain_data(
        PretrainConfig(dataset="pneumoniamnist", arm="scratch", max_train=args.max_train)
    )
    train, val = TensorSplit.from_split(data.train), TensorSplit.from_split(data.val)
    info = data.train.info
    y_va = val.labels.cpu().numpy().reshape(-1)
    init = create_backbone("resnet20_cifar", seed=args.seed)
    baselines = init_baselines(init, train, val, info, args.knn_k, args.seed)
    print(f"val: {len(y_va)} images, {int(y_va.sum())} pneumonia; train {len(train)}", flush=True)
    rows = []
    for question in questions:
        q = QUESTIONS[question]
        scores: dict[str, dict[str, np.ndarray]] = {}
        for name in q.options:
            encoder, row = train_option(question, name, args, root)
            scores[name] = val_scores(encoder, train, val, info, args.knn_k, args.seed)
            row.update(read_encoder(scores[name], baselines, val))
            row.update(question=question, option=name, default=name == q.default)
            for kind in ("knn", "linear"):
                res = delong_test(y_va, scores[name][kind], scores[q.default][kind])
                row.update(
                    {
                        f"{kind}_vs_default": res.diff,
                        f"{kind}_vs_default_lo": res.ci_low,
                        f"{kind}_vs_default_hi": res.ci_high,
                        f"{kind}_vs_default_p": res.p_value,
                    }
                )
            row["beats_default"] = bool(
                any(row[f"{k}_vs_default_lo"] > 0 for k in ("knn", "linear"))
                and all(row[f"{k}_vs_default_hi"] > 0 for k in ("knn", "linear"))
            )
            rows.append(row)
            print(
                f"{question:<16} {name:<36} loss {row['loss_first']:.3g}→{row['loss_last']:.3g}  "
                f"kNN {row['knn_final']:.3f} ({row['knn_diff']:+.3f} vs init "
                f"[{row['knn_lo']:+.3f}, {row['knn_hi']:+.3f}]; {row['knn_vs_default']:+.3f} "
                f"vs default [{row['knn_vs_default_lo']:+.3f}, {row['knn_vs_default_hi']:+.3f}])  "
                f"linear {row['linear_final']:.3f} ({row['linear_diff']:+.3f} vs init "
                f"[{row['linear_lo']:+.3f}, {row['linear_hi']:+.3f}]; "
                f"{row['linear_vs_default']:+.3f} vs default [{row['linear_vs_default_lo']:+.3f},"
                f" {row['linear_vs_default_hi']:+.3f}])  {row['wall_s']:.0f} s",
                flush=True,
            )
        # several winners: the one with the highest mean of its kNN and linear val AUC
        winners = [r for r in rows if r["question"] == question and r["beats_default"]]
        best = max(winners, key=lambda r: r["knn_final"] + r["linear_final"], default=None)
        print(f"{question}: chosen on val → {best['option'] if best else q.default}", flush=True)
    print_json(args, rows, root, dataset="pneumoniamnist")


if __name__ == "__main__":
    main()
