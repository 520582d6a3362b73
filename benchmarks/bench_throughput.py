"""CPU training throughput (images/s) of every SSL method and of supervised fine-tuning, by
backbone and image size: the numbers behind "how long does a profile take" on a CPU.

One training step = what the loops do per batch: batched on-device augmentation of a uint8
batch (the method's recipe; fine-tuning: ``FINETUNE_RECIPE``), channels_last, forward, loss,
backward and the method's own optimiser step (SGD, Adam or LAMB as ``medstudy.ssl`` says;
fine-tuning: SGD). No Lightning, data loading or kNN monitor (bench_pretrain measures the
loop's overhead over this). fp32, as the CPU profiles run. Images are random uint8 (cost does
not depend on the pixels). An image counts once however many views its method makes.

Configurations: ResNet-20 at 28 px and at 64 px (batch ``--batch``), and ``timm:resnet50`` at
64 px (batch ``--batch-r50``) within a time budget (``--r50-budget`` s): the methods left when
it is spent are listed as not measured. Each cell: ``--warmup`` untimed steps, then the median
step time of ``--steps`` timed steps.

Run: ``python benchmarks/bench_throughput.py`` (``--threads`` default 2). The table goes first;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from medstudy.augment import augment_batch, make_views
from medstudy.data.tensors import to_float, to_model_input
from medstudy.evaluate.batches import FINETUNE_RECIPE
from medstudy.models import Classifier, create_backbone
from medstudy.pretrain.module import OPTIMIZERS
from medstudy.ssl import METHODS, get_method
from medstudy.ssl.base import StepContext

METHOD_ORDER = ("simclr", "mocov2", "byol", "barlowtwins", "swav", "dino", "spark")
CONFIGS = (("resnet20_cifar", 28), ("resnet20_cifar", 64), ("timm:resnet50", 64))


def _ssl_step(name: str, backbone_name: str, batch: int) -> Any:
    spec = get_method(name)
    method = spec.build(create_backbone(backbone_name, seed=0))
    method = method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    params = [p for p in method.parameters() if p.requires_grad]
    groups = [
        {"params": params, "weight_decay": spec.optim.weight_decay, "lr": spec.optim.lr(batch)}
    ]
    opt = OPTIMIZERS[spec.optim.name](groups, spec.optim)
    gen = torch.Generator().manual_seed(0)

    def step(images: torch.Tensor, i: int) -> None:
        views = [
            v.contiguous(memory_format=torch.channels_last)
            for v in make_views(images, spec.recipe, gen)
        ]
        ctx = StepContext(i, 1000, 0, 1, gen)
        loss = method.training_step(views, ctx)
        opt.zero_grad()
        loss.backward()
        method.on_after_backward(ctx)
        opt.step()
        method.on_step_end(ctx)

    return step


def _finetune_step(backbone_name: str) -> Any:
    backbone = create_backbone(backbone_name, seed=0)
    model = Classifier(backbone, torch.nn.Linear(backbone.feature_dim, 2))
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    view = FINETUNE_RECIPE.views[0]

    def step(images: torch.Tensor, i: int) -> None:
        x = to_model_input(augment_batch(to_float(images), view, gen))
        labels = torch.randint(0, 2, (images.shape[0],), generator=gen)
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _measure(step: Any, images: torch.Tensor, warmup: int, steps: int) -> float:
    for i in range(warmup):
        step(images, i)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(images, warmup + i)
        times.append(time.perf_counter() - t0)
    return images.shape[0] / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batch-r50", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--r50-budget", type=float, default=120.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    assert set(METHOD_ORDER) == set(METHODS), "a method is missing from the benchmark"
    warnings.filterwarnings("ignore", message="SparK: .* mask grid")  # ResNet-50 at 64 px
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    t_all = time.perf_counter()
    for backbone_name, size in CONFIGS:
        batch = args.batch_r50 if backbone_name.startswith("timm:") else args.batch
        images = torch.randint(
            0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator()
        )
        t_config = time.perf_counter()
        for name in (*METHOD_ORDER, "finetune"):
            spent = time.perf_counter() - t_config
            if backbone_name.startswith("timm:") and spent > args.r50_budget:
                skipped.append(f"{backbone_name}@{size}:{name}")
                continue
            t0 = time.perf_counter()
            if name == "finetune":
                step = _finetune_step(backbone_name)
            else:
                step = _ssl_step(name, backbone_name, batch)
            rate = _measure(step, images, args.warmup, args.steps)
            rows.append({
                "backbone": backbone_name, "size": size, "batch": batch, "method": name,
                "img_per_s": round(rate, 1), "cell_s": round(time.perf_counter() - t0, 1),
            })  # fmt: skip
            print(
                f"{backbone_name:>15} {size:>3} px  batch {batch:>3}  {name:<12} "
                f"{rate:8.1f} img/s   ({rows[-1]['cell_s']} s)",
                flush=True,
            )
    total = time.perf_counter() - t_all
    print(f"total {total:.0f} s; not measured (budget): {skipped or 'none'}")
    print(
        json.dumps(
            {
                "rows": rows,
                "skipped": skipped,
                "total_s": round(total, 1),
                "threads": args.threads,
                "warmup": args.warmup,
                "steps": args.steps,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            }
        )  # fmt: skip
    )


if __name__ == "__main__":
    main()
