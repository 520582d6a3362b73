"""Time the two hot paths of ``medstudy.stats`` against naive baselines; print a table, then one
JSON line (the last line of output).

1. ``delong_test`` (fast DeLong, Sun & Xu 2014) on n = 100 000 paired scores; target < 0.2 s.
   Baseline: DeLong's structural components from an explicit n_pos x n_neg comparison matrix,
   O(n^2) time and memory, so it runs at ``--naive-n`` (default 10 000) and is compared with the
   fast version at the same n (its 100 000 time is extrapolated as (100 000 / naive_n)^2).
2. ``bootstrap_ci("auc", method="bca")``, 2 000 class-stratified replicates on n = 624 (the
   PneumoniaMNIST test set: 234 normal / 390 pneumonia); target < 2 s. Baseline: the same
   resamples with a Python loop calling ``sklearn.metrics.roc_auc_score`` per replicate (and per
   jackknife case for BCa).

Run: ``python benchmarks/bench_stats.py`` (``--repeats`` = best of k for the fast paths;
``--update-readme`` rewrites the ``## bench_stats`` section of ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from medstudy import stats as st

README = Path(__file__).resolve().parent / "README.md"
SECTION = "## bench_stats"


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Best wall time over ``repeats`` calls (the minimum is the least noisy estimate)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def naive_delong_z(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Paired DeLong z from explicit comparison matrices psi[i, j] = 1{x_i > w_j} + 1/2 1{=}."""
    pos, neg = y == 1, y == 0
    comps = []
    for s in (a, b):
        x, w = s[pos], s[neg]
        psi = (x[:, None] > w[None, :]) + 0.5 * (x[:, None] == w[None, :])
        comps.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = comps
    m, n = int(pos.sum()), int(neg.sum())
    var = np.var(v10a - v10b, ddof=1) / m + np.var(v01a - v01b, ddof=1) / n
    return float((auc_a - auc_b) / np.sqrt(var))


def paired_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    latent = rng.normal(size=n) + y
    return y, latent + rng.normal(0, 0.7, n), latent + rng.normal(0, 1.0, n)


def bench_delong(n: int, naive_n: int, repeats: int) -> dict[str, Any]:
    y, a, b = paired_scores(n, 0)
    st.delong_test(y[:1000], a[:1000], b[:1000])  # warm-up (imports, caches)
    t_fast, res = best_time(lambda: st.delong_test(y, a, b), repeats)
    ys, as_, bs = paired_scores(naive_n, 1)
    t_fast_small, res_small = best_time(lambda: st.delong_test(ys, as_, bs), repeats)
    t_naive_small, z_naive = best_time(lambda: naive_delong_z(ys, as_, bs), 1)
    return {
        "delong_n": n,
        "delong_fast_s": t_fast,
        "delong_z": res.z,
        "delong_naive_n": naive_n,
        "delong_fast_s_at_naive_n": t_fast_small,
        "delong_naive_s_at_naive_n": t_naive_small,
        "delong_ratio_at_naive_n": t_naive_small / t_fast_small,
        "delong_naive_s_extrapolated": t_naive_small * (n / naive_n) ** 2,
        "delong_agree_with_naive": bool(abs(res_small.z - z_naive) < 1e-8),
    }


def bench_bootstrap(n_neg: int, n_pos: int, n_boot: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(n_neg, dtype=int), np.ones(n_pos, dtype=int)]
    s = np.round(rng.normal(size=y.size) + 1.2 * y, 2)  # 2-decimal scores -> realistic ties
    st.bootstrap_ci("auc", y[::4], s[::4], n_boot=50)  # warm-up
    t_fast, fast = best_time(lambda: st.bootstrap_ci("auc", y, s, n_boot=n_boot, seed=0), repeats)

    def sk_auc(yy: np.ndarray, ss: np.ndarray) -> float:
        return float(roc_auc_score(yy, ss))

    # Same seed -> same stratified resamples; the generic path is a plain Python loop.
    t_loop, loop = best_time(lambda: st.bootstrap_ci(sk_auc, y, s, n_boot=n_boot, seed=0), 1)
    return {
        "boot_n": int(y.size),
        "boot_n_boot": n_boot,
        "boot_fast_s": t_fast,
        "boot_sklearn_loop_s": t_loop,
        "boot_ratio": t_loop / t_fast,
        "boot_ci": [fast.ci_low, fast.ci_high],
        "boot_agree_with_loop": bool(
            abs(fast.ci_low - loop.ci_low) < 1e-9 and abs(fast.ci_high - loop.ci_high) < 1e-9
        ),
    }


def table(out: dict[str, Any]) -> str:
    rows = [
        ("task", "n", "fast [s]", "naive [s]", "naive/fast", "target", "pass"),
        (
            f"delong_test, paired (naive O(n^2) at n={out['delong_naive_n']})",
            f"{out['delong_naive_n']:,}",
            f"{out['delong_fast_s_at_naive_n']:.4f}",
            f"{out['delong_naive_s_at_naive_n']:.3f}",
            f"{out['delong_ratio_at_naive_n']:.0f}x",
            "",
            "",
        ),
        (
            "delong_test, paired (naive extrapolated x(n/n_naive)^2)",
            f"{out['delong_n']:,}",
            f"{out['delong_fast_s']:.4f}",
            f"~{out['delong_naive_s_extrapolated']:.0f}",
            f"~{out['delong_naive_s_extrapolated'] / out['delong_fast_s']:.0f}x",
            f"< {out['delong_target_s']} s",
            str(out["delong_pass"]),
        ),
        (
            f"bootstrap_ci AUC, stratified BCa, B={out['boot_n_boot']} (naive: sklearn loop)",
            f"{out['boot_n']:,}",
            f"{out['boot_fast_s']:.4f}",
            f"{out['boot_sklearn_loop_s']:.3f}",
            f"{out['boot_ratio']:.0f}x",
            f"< {out['boot_target_s']} s",
            str(out["boot_pass"]),
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def update_readme(out: dict[str, Any], text_table: str) -> None:
    """Replace (or append) only the ``## bench_stats`` section; other sections are untouched."""
    body = (
        f"{SECTION}\n\n"
        "`python benchmarks/bench_stats.py` (fast paths: best of "
        f"{out['repeats']}; baselines: 1 run). Machine: {out['cpus']} CPUs, "
        f"Python {out['python']}, numpy {out['numpy']}.\n\n"
        "```text\n" + text_table + "\n```\n\n"
        f"- Fast DeLong on n = {out['delong_n']:,}: {out['delong_fast_s']:.3f} s "
        f"(target < {out['delong_target_s']} s: {'pass' if out['delong_pass'] else 'FAIL'}); "
        f"at n = {out['delong_naive_n']:,} it is {out['delong_ratio_at_naive_n']:.0f}x faster "
        "than the O(n^2) structural-components baseline, with identical z "
        f"({out['delong_agree_with_naive']}).\n"
        f"- Stratified BCa bootstrap of AUC, B = {out['boot_n_boot']}, n = {out['boot_n']}: "
        f"{out['boot_fast_s']:.3f} s (target < {out['boot_target_s']} s: "
        f"{'pass' if out['boot_pass'] else 'FAIL'}); {out['boot_ratio']:.0f}x faster than a "
        "Python loop over `roc_auc_score` on the same resamples, with the same CI "
        f"({out['boot_agree_with_loop']}).\n"
    )
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    start = text.find(SECTION + "\n")
    if start == -1:
        new = text.rstrip("\n") + "\n\n" + body
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        new = text[:start] + body + ("" if nxt == -1 else "\n" + text[nxt + 1 :])
    README.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="cases for delong_test")
    parser.add_argument("--naive-n", type=int, default=10_000, help="cases for the O(n^2) run")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {
        "bench": "stats",
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "repeats": args.repeats,
    }
    out.update(bench_delong(args.n, args.naive_n, args.repeats))
    out.update(bench_bootstrap(234, 390, args.n_boot, args.repeats))
    out["delong_target_s"] = 0.2
    out["boot_target_s"] = 2.0
    out["delong_pass"] = bool(out["delong_fast_s"] < out["delong_target_s"])
    out["boot_pass"] = bool(out["boot_fast_s"] < out["boot_target_s"])
    text_table = table(out)
    print(text_table)
    if args.update_readme:
        update_readme(out, text_table)
        print(f"updated {README}")
    rounded = {k: round(v, 5) if isinstance(v, float) else v for k, v in out.items()}
    rounded["boot_ci"] = [round(v, 5) for v in out["boot_ci"]]
    print(json.dumps(rounded))


if __name__ == "__main__":
    main()
