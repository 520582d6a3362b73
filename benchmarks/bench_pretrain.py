"""SimCLR pretraining throughput on CPU: our loop vs lightly's reference recipe vs bare compute.

ResNet-20 at 28 px, batch 256, SimCLR (lightly's ``SimCLRProjectionHead`` + ``NTXentLoss``, SGD):

- **(a) ours**: ``medstudy.pretrain.pretrain`` end to end (Lightning loop, in-memory uint8 tensors,
  batched tensor augmentation); images/s of the training part of each epoch, from
  ``history.csv`` (the kNN monitor is timed separately and excluded).
- **(b) lightly reference**: ``lightly.transforms.SimCLRTransform(input_size=28,
  cj_strength=0.5, gaussian_blur=0.0)`` (lightly's CIFAR-10 setting, the closest to our recipe)
  applied per PIL image in a torchvision ``DataLoader``, with the same model, loss, optimiser
  and batch; measured with 0 and 2 workers, the faster one is the reference.
- **(c) bare compute**: the same model + loss + optimiser step on pre-augmented tensors.

(a) and (c) train in channels_last, as the loop does; (b) uses the default memory format, as
lightly's recipe does, and (b') shows it with channels_last, to separate the two gains. The
two augmentation pipelines are also timed alone ("data only").

Targets: a/b >= 1.5 (batched augmentation pays off) and c/a <= 1.15 (the loop adds little).
Run: ``python benchmarks/bench_pretrain.py`` (``--threads``, default every CPU; ``--steps``,
``--dataset``). The
table goes first and the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from medstudy.augment import make_views, recipe_for_dataset
from medstudy.config import PretrainConfig
from medstudy.data import load_split, sample_fraction
from medstudy.models import create_backbone
from medstudy.ssl import get_method
from medstudy.ssl.base import StepContext

BATCH = 256


class _PILDataset(torch.utils.data.Dataset):
    """uint8 (N,H,W,C) → PIL RGB images through a lightly transform (2 views per item)."""

    def __init__(self, images: np.ndarray, transform: object) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        img = self.images[i]
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).convert("RGB")
        return self.transform(pil)  # type: ignore[operator]


def _simclr(channels_last: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    method = get_method("simclr").build(create_backbone("resnet20_cifar", seed=0))
    if channels_last:
        method = method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.SGD(method.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    return method, opt


def _step(method: torch.nn.Module, opt: torch.optim.Optimizer, views: list[torch.Tensor]) -> None:
    ctx = StepContext(0, 1, 0, 1, torch.Generator())
    loss = method.training_step(views, ctx)  # type: ignore[operator]
    opt.zero_grad()
    loss.backward()
    opt.step()


def _timed_steps(
    batches: Iterator[list[torch.Tensor]], steps: int, channels_last: bool, warmup: int = 1
) -> float:
    """Images/s over ``steps`` steps after ``warmup`` steps (loading time included)."""
    method, opt = _simclr(channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def step() -> None:
        _step(method, opt, [v.contiguous(memory_format=fmt) for v in next(batches)])

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - t0)


def bench_ours(dataset: str, n_train: int, epochs: int) -> dict[str, float]:
    from medstudy.pretrain import pretrain

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDSTUDY_RESULTS_DIR"] = tmp
        cfg = PretrainConfig(
            dataset=dataset, arm="ssl:simclr", epochs=epochs, batch_size=BATCH, max_train=n_train
        )
        t0 = time.perf_counter()
        result = pretrain(cfg, progress=False)
        wall = time.perf_counter() - t0
    trained = result.history[result.history["method"] != "init"]
    later = trained.iloc[1:] if len(trained) > 1 else trained  # epoch 1 includes warm-up
    return {
        "img_per_s": float(later["img_per_s"].median()),
        "epoch_time_s": float(later["epoch_time_s"].median()),
        "knn_time_s": float(trained["knn_time_s"].median()),
        "wall_s": wall,
    }


def bench_lightly(images: np.ndarray, steps: int, workers: int, channels_last: bool) -> float:
    from lightly.transforms import SimCLRTransform

    transform = SimCLRTransform(input_size=28, cj_strength=0.5, gaussian_blur=0.0)
    loader = torch.utils.data.DataLoader(
        _PILDataset(images, transform),
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )

    def batches() -> Iterator[list[torch.Tensor]]:
        while True:
            yield from loader

    return _timed_steps(iter(batches()), steps, channels_last)


def bench_data_only(images: np.ndarray, dataset: str) -> tuple[float, float]:
    """Images/s of the two augmentation pipelines alone (2 views per image, no model)."""
    from lightly.transforms import SimCLRTransform

    transform = SimCLRTransform(input_size=28, cj_strength=0.5, gaussian_blur=0.0)
    loader = torch.utils.data.DataLoader(_PILDataset(images, transform), batch_size=BATCH)
    t0 = time.perf_counter()
    n = sum(BATCH for _ in loader)
    lightly_rate = n / (time.perf_counter() - t0)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    recipe = recipe_for_dataset(get_method("simclr").recipe, dataset, x.shape[1])
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for start in range(0, len(x), BATCH):
        make_views(x[start : start + BATCH], recipe, g)
    return lightly_rate, len(x) / (time.perf_counter() - t0)


def bench_bare(images: np.ndarray, dataset: str, steps: int) -> float:
    x = torch.from_numpy(images[:BATCH].transpose(0, 3, 1, 2).copy())
    recipe = recipe_for_dataset(get_method("simclr").recipe, dataset, x.shape[1])
    views = make_views(x, recipe, torch.Generator().manual_seed(0))

    def batches() -> Iterator[list[torch.Tensor]]:
        while True:
            yield views

    # The same model as (a), which trains in channels_last.
    return _timed_steps(iter(batches()), steps, channels_last=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="pcam28_subset")
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24, help="timed steps for (b) and (c)")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch intra-op threads (default: every CPU, as run_all.sh gives its one job at a "
        "time); use 1 on a shared machine (2 threads collapse when another process holds a core)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    split = load_split(args.dataset, "train")
    idx = sample_fraction(split.labels, min(1.0, args.n_train / len(split)), seed=0)
    images = split.images[idx]

    data_lightly, data_ours = bench_data_only(images, args.dataset)
    bare = bench_bare(images, args.dataset, args.steps)
    ours = bench_ours(args.dataset, args.n_train, args.epochs)
    lightly0 = bench_lightly(images, args.steps, workers=0, channels_last=False)
    lightly2 = bench_lightly(images, args.steps, workers=2, channels_last=False)
    lightly_cl = bench_lightly(images, args.steps, workers=0, channels_last=True)
    ref = max(lightly0, lightly2)
    a_b, c_a = ours["img_per_s"] / ref, bare / ours["img_per_s"]

    rows = [
        ("(a) medstudy pretrain loop (channels_last)", ours["img_per_s"], ""),
        ("(b) lightly SimCLRTransform + DataLoader, 0 workers", lightly0, ""),
        ("(b) lightly SimCLRTransform + DataLoader, 2 workers", lightly2, ""),
        ("(b') as (b), 0 workers, model in channels_last", lightly_cl, "info"),
        ("(c) bare compute on pre-augmented tensors", bare, ""),
        ("data only: lightly PIL pipeline, 0 workers", data_lightly, "info"),
        ("data only: medstudy.augment.make_views", data_ours, "info"),
        ("a / b (target >= 1.5)", a_b, "pass" if a_b >= 1.5 else "FAIL"),
        ("a / b' (same memory format)", ours["img_per_s"] / lightly_cl, "info"),
        ("c / a (target <= 1.15)", c_a, "pass" if c_a <= 1.15 else "FAIL"),
    ]
    print(f"SimCLR, resnet20_cifar, 28 px, batch {BATCH}, {args.dataset}, threads={args.threads}")
    print(f"{'what (img/s: source images per second)':54s} | {'img/s or ratio':>14s} | target")
    print("-" * 80)
    for name, value, verdict in rows:
        print(f"{name:54s} | {value:14.2f} | {verdict}")
    print(
        f"(a) epoch: {ours['epoch_time_s']:.1f} s training + {ours['knn_time_s']:.1f} s kNN "
        f"monitor for {len(images)} images; whole run {ours['wall_s']:.1f} s"
    )
    out = {
        "bench": "pretrain",
        "dataset": args.dataset,
        "n_train": int(len(images)),
        "batch": BATCH,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "ours_img_per_s": round(ours["img_per_s"], 1),
        "lightly_img_per_s_workers0": round(lightly0, 1),
        "lightly_img_per_s_workers2": round(lightly2, 1),
        "lightly_channels_last_img_per_s": round(lightly_cl, 1),
        "bare_img_per_s": round(bare, 1),
        "data_only_lightly_img_per_s": round(data_lightly, 1),
        "data_only_ours_img_per_s": round(data_ours, 1),
        "a_over_b": round(a_b, 3),
        "c_over_a": round(c_a, 3),
        "pass_a_over_b": a_b >= 1.5,
        "pass_c_over_a": c_a <= 1.15,
        "knn_monitor_s_per_epoch": round(ours["knn_time_s"], 2),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
