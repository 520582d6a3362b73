"""Peak memory of training from the memory-mapped image cache (issue #16, full-resolution data).

Acceptance: "a memory-mapped cache of 20 000 images at 64 px trains without loading the whole
file into RAM; record the peak RSS". The benchmark

1. writes N random 64 px RGB PNGs and a manifest (``path,label``; the seeded 70/10/20 split);
2. builds the cache through the real path (``load_split`` → probe, md5, decode, streamed
   ``.npy``) in a child process;
3. in a fresh child process per mode, loads the train and val splits and
   - reads one shuffled pass over every train batch (touches the whole train part of the file),
   - fine-tunes (``medstudy.evaluate.finetune``, the study's one supervised loop) on the first
     ``--train-rows`` train rows for one epoch,
   sampling ``/proc/self/status`` (VmRSS, RssAnon, RssFile) every 10 ms, plus ``ru_maxrss``.

Modes: ``lazy`` (the default path: ``TensorSplit.from_split`` on a memmap split gives
:class:`~medstudy.data.tensors.MemmapImages`, which drops its mapped pages after every read),
``lazy-keep`` (the same without dropping pages, to show what the page
release buys) and ``eager`` (``lazy=False``: the whole split in one tensor, the old path).
RssFile counts mapped file pages, which the OS can reclaim; RssAnon is the process's own memory.

    OMP_NUM_THREADS=1 python benchmarks/bench_memmap.py [--n 20000] [--size 64] [--workdir DIR]

Prints a table and one JSON line (``{"bench": "memmap", ...}``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MODES = ("lazy", "lazy-keep", "eager")
STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile")


def read_status() -> dict[str, int]:
    """VmRSS / RssAnon / RssFile of this process in MiB (Linux /proc)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in STATUS_KEYS:
            out[key] = int(value.split()[0]) // 1024
    return out


class PeakSampler(threading.Thread):
    """Samples :func:`read_status` every ``period`` s and keeps each key's peak."""

    def __init__(self, period: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.period, self.peak, self.running = period, dict.fromkeys(STATUS_KEYS, 0), True

    def run(self) -> None:
        while self.running:
            for key, value in read_status().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(self.period)

    def take(self) -> dict[str, int]:
        """The peaks since the last ``take`` (then reset to the current values)."""
        peak, self.peak = dict(self.peak), read_status()
        return peak

    def stop(self) -> dict[str, int]:
        self.running = False
        self.join()
        return self.take()


def write_pngs(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """N random RGB PNGs (labels i % 2) and ``<folder>/bench.csv``; returns the CSV."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["path,label"]
    for i in range(n):
        name = f"images/{i:06d}.png"
        if not (folder / name).exists():
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                folder / name
            )
        lines.append(f"{name},{i % 2}")
    csv = folder / "bench.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def child_build(size: int) -> dict[str, object]:
    from medstudy.data import load_split

    t0 = time.perf_counter()
    train = load_split("bench", "train", size)
    seconds = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return {"build_s": round(seconds, 1), "file": str(train.images.filename), "ru_maxrss": ru}


def child_train(
    size: int, mode: str, train_rows: int, batch: int, fit_batch: int
) -> dict[str, object]:
    import numpy as np
    import torch

    from medstudy.data import TensorSplit, load_split, tensors
    from medstudy.evaluate.finetune import TrainSettings, finetune
    from medstudy.models import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("resnet20_cifar", init="scratch")
    base = read_status()
    sampler = PeakSampler()
    sampler.start()
    if mode == "lazy-keep":
        tensors.release_pages = lambda array: False  # keep the mapped pages
    lazy = mode != "eager"
    t0 = time.perf_counter()
    train_split, val_split = load_split("bench", "train", size), load_split("bench", "val", size)
    train = TensorSplit.from_split(train_split, lazy=lazy)
    val = TensorSplit.from_split(val_split, lazy=lazy)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_read = 0
    for images, _, _ in train.batches(
        batch, shuffle=True, generator=torch.Generator().manual_seed(0)
    ):
        n_read += int(images.shape[0])
    pass_s = time.perf_counter() - t0
    pass_peak = sampler.take()
    rows = np.arange(min(train_rows, len(train_split)))
    sub = TensorSplit.from_split(train_split, lazy=lazy, indices=rows)
    # a small fit batch: at 64 px the activations of a 256 batch (~1.5 GB) would hide the data
    settings = TrainSettings(max_epochs=1, patience=1, batch_size=fit_batch, lr=0.05)
    t0 = time.perf_counter()
    fit = finetune(backbone, sub, val, train_split.info, settings, seed=0)
    fit_s = time.perf_counter() - t0
    fit_peak = sampler.stop()
    return {
        "mode": mode,
        "images_type": type(train.images).__name__,
        "n_train": len(train_split),
        "n_read": n_read,
        "fit_rows": len(rows),
        "fit_steps": int(np.ceil(len(rows) / fit_batch)),
        "fit_val": round(float(fit.best_value), 4),
        "load_s": round(load_s, 2),
        "pass_s": round(pass_s, 2),
        "pass_img_s": round(n_read / pass_s),
        "fit_s": round(fit_s, 1),
        "base": base,
        "pass_peak": pass_peak,
        "fit_peak": fit_peak,
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def run_child(args: argparse.Namespace, env: dict[str, str], *extra: str) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--size", str(args.size), "--batch", str(args.batch)]
    cmd += ["--train-rows", str(args.train_rows), "--fit-batch", str(args.fit_batch), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {extra} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="images in the manifest")
    parser.add_argument("--size", type=int, default=64, help="image size (px)")
    parser.add_argument("--batch", type=int, default=256, help="batch size of the full pass")
    parser.add_argument("--fit-batch", type=int, default=64, help="batch size of the fit")
    parser.add_argument("--train-rows", type=int, default=2048, help="rows fine-tuned on")
    parser.add_argument("--workdir", default="", help="keep PNGs and cache here (default: temp)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "build":
        print(json.dumps(child_build(args.size)))
        return
    if args.child:
        run = child_train(args.size, args.child, args.train_rows, args.batch, args.fit_batch)
        print(json.dumps(run))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        t0 = time.perf_counter()
        write_pngs(work / "data", args.n, args.size)
        png_s = time.perf_counter() - t0
        env = {**os.environ, "MEDSTUDY_DATA_DIR": str(work / "data")}
        env.update(
            MEDSTUDY_RESULTS_DIR=str(work / "results"), MEDSTUDY_CACHE_DIR=str(work / "cache")
        )
        build = run_child(args, env, "--child", "build")
        file_mb = Path(str(build["file"])).stat().st_size / 2**20
        runs = [run_child(args, env, "--child", mode) for mode in MODES]
    print(f"\n{args.n} images at {args.size} px RGB: cache {file_mb:.0f} MiB, built in "
          f"{build['build_s']} s (PNGs written in {png_s:.0f} s; build peak RSS "
          f"{build['ru_maxrss']} MiB)")  # fmt: skip
    print("MiB    | base = after imports and model build | peak while loading + one shuffled")
    print("       | pass over every train batch | peak while fine-tuning (compute dominates)")
    print("mode       images         base VmRSS/Anon/File  pass VmRSS/Anon/File  "
          "fit VmRSS/Anon/File  ru_maxrss  pass img/s  fit s")  # fmt: skip
    for r in runs:
        b, p, f = (r[k] for k in ("base", "pass_peak", "fit_peak"))
        cells = ["/".join(str(x[k]) for k in STATUS_KEYS) for x in (b, p, f)]
        print(f"{r['mode']:<10} {r['images_type']:<13} {cells[0]:>20}  {cells[1]:>20}  "
              f"{cells[2]:>19}  {r['ru_maxrss']:>9}  {r['pass_img_s']:>10}  {r['fit_s']:>5}")  # fmt: skip
    summary = {"bench": "memmap", "n": args.n, "size": args.size, "file_mib": round(file_mb)}
    print(json.dumps({**summary, "build": build, "runs": runs}))


if __name__ == "__main__":
    main()
