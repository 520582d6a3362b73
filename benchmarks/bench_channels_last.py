"""Memory layout of the backbones: NHWC (``channels_last``, what every backbone uses) vs NCHW.

One fine-tuning step (forward, backward, SGD step) of ``resnet20_cifar`` with its natural-image
weights on a batch of random 28 px images, in both layouts, alternating the two for ``--rounds``
rounds of ``--steps`` steps after a warm-up, so that a background load hits both alike. Reports
seconds per step (median and minimum per layout) and the NCHW / NHWC ratio of the medians.

Run: ``MEDSTUDY_DATA_DIR=../shared/data python benchmarks/bench_channels_last.py
[--batch 128] [--steps 8] [--rounds 4] [--threads N] [--out FILE.json]``.
Leave ``--threads`` unset for torch's default (every core). Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from medstudy.models import create_backbone


def make_step(layout: str, batch: int, seed: int = 0) -> Callable[[int], float]:
    """A closure timing ``n`` training steps (seconds per step) in ``layout`` (nhwc | nchw)."""
    torch.manual_seed(seed)
    backbone = create_backbone("resnet20_cifar", "natural_sup")  # NHWC weights
    x = torch.rand(batch, 3, 28, 28)
    if layout == "nchw":
        backbone = backbone.to(memory_format=torch.contiguous_format)
        body = torch.nn.Sequential(*backbone.stages)

        def forward(t: torch.Tensor) -> torch.Tensor:  # bypasses the NHWC conversion
            return backbone.pool(body(t.contiguous()))
    else:
        forward = backbone
    head = torch.nn.Linear(backbone.feature_dim, 2)
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            loss = head(forward(x)).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / n

    run(3)  # warm-up: oneDNN picks and caches its kernels
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {layout: make_step(layout, args.batch) for layout in ("nhwc", "nchw")}
    times: dict[str, list[float]] = {layout: [] for layout in steps}
    for _ in range(args.rounds):
        for layout, run in steps.items():
            times[layout].append(run(args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"| layout | s/step (median) | s/step (min) |  batch {args.batch}, 28 px, resnet20_cifar")
    print("|---|---|---|")
    for layout, values in times.items():
        print(f"| {layout} | {med[layout]:.3f} | {min(values):.3f} |")
    print(f"NCHW / NHWC (medians): {med['nchw'] / med['nhwc']:.2f}")
    if args.out:
        record = {
            "times_s_per_step": times,
            "ratio_nchw_over_nhwc": med["nchw"] / med["nhwc"],
            "threads": torch.get_num_threads(),
            "loadavg": os.getloadavg(),
            "torch": torch.__version__,
            "machine": platform.machine(),
        }
        args.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
