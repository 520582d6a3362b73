"""Time every distortion of ``medstudy.distortions`` on a test-set-sized batch, all 5 severities.

For each distortion, the wall time of ``apply_distortion`` at severities 1–5 (summed) on
``--n`` random 28 px images with 8-bit values (like ``to_float`` of the real data), once RGB and
once grey. The target is the whole suite of one test set in seconds: < 5 s per distortion for
the 5 severities, JPEG (a per-image libjpeg round trip) < 30 s. Each distortion is warmed up
once on 64 images first.

Run: ``python benchmarks/bench_robustness.py [--n 10000] [--threads N] [--out FILE.json]``.
Prints a markdown table; ``--out`` also writes the numbers, the load average and the versions
as JSON. Leave ``--threads`` unset for torch's default (every core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from medstudy.distortions import DISTORTIONS, RGB_ONLY, SEVERITIES, apply_distortion

TARGET_S = 5.0
TARGET_S_OVERRIDES = {"jpeg": 30.0}


def random_images(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g).float().div_(255)


def time_distortion(name: str, images: torch.Tensor, seed: int) -> list[float]:
    """Seconds per severity (1..5); one generator per severity, as notebook 06 would use."""
    apply_distortion(images[:64], name, 1, torch.Generator().manual_seed(seed))  # warm-up
    times = []
    for severity in SEVERITIES:
        g = torch.Generator().manual_seed(seed + severity)
        t0 = time.perf_counter()
        apply_distortion(images, name, severity, g)
        times.append(time.perf_counter() - t0)
    return times


def run(n: int, size: int, seed: int, names: list[str]) -> dict[str, Any]:
    batches = {"rgb": random_images(n, 3, size, seed), "grey": random_images(n, 1, size, seed)}
    load_start = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        row: dict[str, Any] = {"target_s": TARGET_S_OVERRIDES.get(name, TARGET_S)}
        for kind, images in batches.items():
            if kind == "grey" and name in RGB_ONLY:
                row[kind] = None  # not defined for grey images
                continue
            per_severity = time_distortion(name, images, seed)
            row[kind] = {"total_s": sum(per_severity), "per_severity_s": per_severity}
        totals = [row[k]["total_s"] for k in batches if row[k] is not None]
        row["pass"] = all(t < row["target_s"] for t in totals)
        results[name] = row
        print(f"  {name}: done", flush=True)
    return {
        "n": n,
        "size": size,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        "| distortion | RGB [s] | grey [s] | target [s] | pass |",
        "|---|---:|---:|---:|---|",
    ]
    for name, row in report["results"].items():
        cells = [f"{row[k]['total_s']:.2f}" if row[k] else "n/a" for k in ("rgb", "grey")]
        lines.append(
            f"| {name} | {cells[0]} | {cells[1]} | {row['target_s']:.0f} | "
            f"{'yes' if row['pass'] else 'NO'} |"
        )
    total_rgb = sum(r["rgb"]["total_s"] for r in report["results"].values())
    lines.append(f"| **all (RGB)** | {total_rgb:.1f} | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images per batch")
    parser.add_argument("--size", type=int, default=28, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated distortion names")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [s for s in args.only.split(",") if s] or list(DISTORTIONS)
    if unknown := sorted(set(names) - set(DISTORTIONS)):
        parser.error(f"unknown distortions {unknown}; valid: {list(DISTORTIONS)}")
    report = run(args.n, args.size, args.seed, names)
    print(
        f"\n{args.n} images of {args.size} px, 5 severities each; torch {report['torch']}, "
        f"{report['threads']} thread(s), {report['cpus']} CPUs; load average "
        f"{report['loadavg_start'][0]:.2f} at start, {report['loadavg_end'][0]:.2f} at end\n"
    )
    print(table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
