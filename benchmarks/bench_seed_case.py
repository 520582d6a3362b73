"""Calibration of the seed x case comparison: ``hierarchical_bootstrap_diff`` (old) vs
``seed_case_test`` (new), for S in {2, 3, 5} training seeds x seed-SD / case-SE in
{0, 0.5, 1, 2, 4}. For every cell: false-positive rate at alpha (exchangeable arms), coverage of
the ``1 - alpha`` CI of the true seed-averaged AUC difference, and power against a real
difference of ``--effect`` case SEs. Prints a markdown table; ``--out`` writes the JSON.

Simulation model (binary AUC, both arms on the same N test cases, S seeds per arm): the score of
case i under arm k trained with seed s is

    (mu_k + u_ks) y_i + z_i + gamma w_ki + sigma eps_ksi,     all N(0, 1) except u ~ N(0, tau^2)

- z_i: case difficulty shared by both arms (cancels in the paired difference);
- w_ki: arm k's own case effect, shared by its seeds (case noise common to the seeds);
- eps_ksi: case noise of one trained model (case noise specific to a seed);
- u_ks: the seed's shift of the arm's separation -- training variance of the population AUC.

The population AUC of (k, s) is Phi((mu_k + u_ks) / a), a^2 = 2 (1 + gamma^2 + sigma^2), and the
seed-averaged truth is Phi(mu_k / sqrt(a^2 + tau^2)) (a Gaussian integral), so the true
difference is known exactly. "case SE" is the SE of ONE seed's paired AUC difference from test-
case sampling (root-mean DeLong variance over simulated null test sets, tau = 0); "seed SD" is
the SD over seeds of the true per-seed difference, tau solved for it by Gauss-Hermite
quadrature. Under H0 mu_A = mu_B; under H1 mu_A is solved so the seed-averaged true difference
is ``effect * case SE``.

Run: ``python benchmarks/bench_seed_case.py [--reps 300] [--n-boot 1000] [--n-per-class 100]
[--methods old,new] [--out seed_case.json]``. The old method costs ~10x the new per data set;
``--methods new`` runs the new one alone at a larger ``--reps``. Monte Carlo SE of a rate near
0.05 is sqrt(0.05 * 0.95 / reps).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy
from scipy import stats as sps
from scipy.optimize import brentq

from medstudy import stats as st

N_SEEDS: tuple[int, ...] = (2, 3, 5)
RATIOS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
MU: float = 1.0  # separation of arm B (and of both arms under H0): AUC ~ 0.70
GAMMA: float = 0.7  # arm-specific case effect shared by the seeds
SIGMA: float = 0.5  # seed-specific case noise
SCALE: float = math.sqrt(2.0 * (1.0 + GAMMA**2 + SIGMA**2))  # `a` of the docstring
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(80)  # E f(Z), Z ~ N(0, 1)
_GH_W = _GH_W / _GH_W.sum()


def simulate(
    rng: np.random.Generator, reps: int, n_seeds: int, n_per_class: int, mu_a: float, tau: float
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and scores (reps, S, 2, N) of arms A and B (model in the module docstring)."""
    y = np.r_[np.zeros(n_per_class, dtype=int), np.ones(n_per_class, dtype=int)]
    n = y.size
    shift = np.array([mu_a, MU])[None, None, :, None] + rng.normal(0, tau, (reps, n_seeds, 2, 1))
    scores = (
        shift * y
        + rng.normal(size=(reps, 1, 1, n))
        + GAMMA * rng.normal(size=(reps, 1, 2, n))
        + SIGMA * rng.normal(size=(reps, n_seeds, 2, n))
    )
    return y, scores


def true_auc(mu: float, tau: float) -> float:
    """Seed-averaged population AUC: E_u Phi((mu + u) / a) = Phi(mu / sqrt(a^2 + tau^2))."""
    return float(sps.norm.cdf(mu / math.sqrt(SCALE**2 + tau**2)))


def seed_sd(tau: float) -> float:
    """SD over seeds of the true per-seed difference under H0: sqrt(2) SD_u Phi((MU + u) / a)."""
    vals = sps.norm.cdf((MU + tau * _GH_X) / SCALE)
    mean = float(np.dot(_GH_W, vals))
    return math.sqrt(2.0 * max(float(np.dot(_GH_W, (vals - mean) ** 2)), 0.0))


def tau_for(target_sd: float) -> float:
    return 0.0 if target_sd == 0.0 else brentq(lambda t: seed_sd(t) - target_sd, 1e-9, 50.0)


def mu_for(delta: float, tau: float) -> float:
    return brentq(lambda m: true_auc(m, tau) - true_auc(MU, tau) - delta, MU, MU + 10.0)


def case_se(rng: np.random.Generator, n_per_class: int, draws: int = 300) -> float:
    y, scores = simulate(rng, draws, 1, n_per_class, MU, 0.0)
    z = float(sps.norm.ppf(0.975))
    var = [((r.ci_high - r.diff) / z) ** 2 for r in (st.delong_test(y, *s[0]) for s in scores)]
    return math.sqrt(float(np.mean(var)))


def run_cell(
    rng: np.random.Generator,
    n_seeds: int,
    ratio: float,
    se_case: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    tau = tau_for(ratio * se_case)
    delta = args.effect * se_case
    out: dict[str, Any] = {"n_seeds": n_seeds, "ratio": ratio, "tau": tau, "delta": delta}
    hits: dict[str, list[float]] = {}
    for hyp, mu_a, truth in (("h0", MU, 0.0), ("h1", mu_for(delta, tau), delta)):
        y, scores = simulate(rng, args.reps, n_seeds, args.n_per_class, mu_a, tau)
        for rep, sim in enumerate(scores):
            per_seed = [(y, s[0], s[1]) for s in sim]
            results: dict[str, Any] = {}
            if "old" in args.methods:
                results["old"] = st.hierarchical_bootstrap_diff(
                    "auc", per_seed, n_boot=args.n_boot, seed=rep, alpha=args.alpha
                )
            if "new" in args.methods:
                results["new"] = st.seed_case_test("auc", per_seed, alpha=args.alpha)
                hits.setdefault(f"new_{hyp}_df", []).append(results["new"].df)
            for name, r in results.items():
                hits.setdefault(f"{name}_{hyp}_reject", []).append(r.p_value < args.alpha)
                hits.setdefault(f"{name}_{hyp}_cover", []).append(r.ci_low <= truth <= r.ci_high)
    for name in args.methods:
        out[f"fpr_{name}"] = float(np.mean(hits[f"{name}_h0_reject"]))
        out[f"power_{name}"] = float(np.mean(hits[f"{name}_h1_reject"]))
        out[f"coverage_h0_{name}"] = float(np.mean(hits[f"{name}_h0_cover"]))
        out[f"coverage_h1_{name}"] = float(np.mean(hits[f"{name}_h1_cover"]))
        out[f"coverage_{name}"] = (out[f"coverage_h0_{name}"] + out[f"coverage_h1_{name}"]) / 2
    if "new" in args.methods:
        out["median_df_new_h0"] = float(np.median(hits["new_h0_df"]))
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| S | seed SD / case SE | FPR old | FPR new | coverage old | coverage new "
        "| power old | power new | median df new |"
    )
    lines = [head, "|" + "---|" * 9]
    keys = ("fpr_old", "fpr_new", "coverage_old", "coverage_new", "power_old", "power_new")
    for r in rows:
        cells = [f"{r[k]:.3f}" if k in r else "-" for k in keys]
        df = f"{r['median_df_new_h0']:.1f}" if "median_df_new_h0" in r else "-"
        lines.append(f"| {r['n_seeds']} | {r['ratio']:g} | " + " | ".join(cells) + f" | {df} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=300, help="simulated data sets per cell and H")
    ap.add_argument("--n-boot", type=int, default=1000, help="replicates of the old bootstrap")
    ap.add_argument("--n-per-class", type=int, default=100, help="test cases per class")
    ap.add_argument("--effect", type=float, default=3.0, help="H1 difference in case SEs")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--methods",
        type=lambda v: tuple(v.split(",")),
        default=("old", "new"),
        help="comma list of old (hierarchical_bootstrap_diff) and new (seed_case_test)",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()
    if not args.methods or set(args.methods) - {"old", "new"}:
        ap.error(f"--methods must be a comma list of old, new; got {','.join(args.methods)}")

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    se_case = case_se(rng, args.n_per_class)
    rows = []
    for n_seeds in N_SEEDS:
        for ratio in RATIOS:
            rows.append(run_cell(rng, n_seeds, ratio, se_case, args))
            print(f"S={n_seeds} ratio={ratio:g} done ({time.perf_counter() - t0:.0f} s)")
    elapsed = time.perf_counter() - t0
    mc_se = math.sqrt(args.alpha * (1 - args.alpha) / args.reps)
    print(
        f"\n{args.reps} data sets per cell and hypothesis, N = {2 * args.n_per_class} cases "
        f"(balanced), case SE = {se_case:.4f}, H1 difference = {args.effect:g} case SE = "
        f"{args.effect * se_case:.4f} AUC, alpha = {args.alpha}, old n_boot = {args.n_boot}; "
        f"Monte Carlo SE of a rate near alpha = {mc_se:.3f}; {elapsed:.0f} s\n"
    )
    print(table(rows))
    if args.out is not None:
        meta = {
            "date": dt.date.today().isoformat(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "case_se": se_case,
            "model": {"mu": MU, "gamma": GAMMA, "sigma": SIGMA},
            "elapsed_s": elapsed,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        }
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
