"""Time ``generate_synth_lesions`` for 10 000 images at 28 and 64 px; print one JSON line.

Target (DESIGN): each under 10 s on a 2-core CPU. Run: ``python benchmarks/bench_synth.py``
(``--n`` and ``--repeats`` to change the workload; the best of the repeats is reported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from medstudy.data.synth import generate_synth_lesions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 64])
    args = parser.parse_args()
    generate_synth_lesions(16, size=28, seed=0)  # warm-up: imports (scipy, pandas)
    out: dict[str, object] = {
        "bench": "synth",
        "n": args.n,
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    for size in args.sizes:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            data = generate_synth_lesions(args.n, size=size, seed=0)
            times.append(time.perf_counter() - t0)
        out[f"seconds_{size}px"] = round(min(times), 3)
        out[f"ms_per_image_{size}px"] = round(1000 * min(times) / max(args.n, 1), 4)
        out[f"lesions_{size}px"] = len(data.lesions)
        out[f"under_10s_{size}px"] = min(times) < 10.0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
