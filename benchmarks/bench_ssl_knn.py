"""Does each SSL method's encoder beat random-init features under the online kNN monitor?

For every (dataset, method) this runs ``medstudy.pretrain.pretrain`` (arm ``ssl:<method>``, from
scratch) with one budget and reads the val kNN accuracy (k = 20, cosine, T = 0.07) of
``history.csv``: epoch 0 is the random initialisation the method starts from (same seed, so the
same weights for every method), the last row is the final encoder. It also records the per-epoch
kNN curve, the first/last loss, the training throughput and two collapse diagnostics of the
final encoder on val images (mean per-dimension std of the L2-normalised features, and the
effective rank of the centred features, Roy & Vetterli 2007), and the view-identification rate
of the init and of the final encoder under the method's own augmentation
(:func:`view_identification`).

Run: ``python benchmarks/bench_ssl_knn.py [--datasets pneumoniamnist,retinamnist]
[--methods simclr,byol] [--epochs 10] [--batch-size 128] [--max-train 2000] [--threads 1]``.
Runs are written under ``--results`` (default: a temporary directory) and cached there by
run_id, so a rerun with the same budget only re-reads them. The table goes first and the last
line is one JSON object. Figures measured here are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

N_VIEW_ID = 256  # val images for the view-identification diagnostic (chance = 1/256)


def _feature_stats(backbone: torch.nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Mean per-dimension std of the L2-normalised features, and their effective rank."""
    from medstudy.data.tensors import to_float, to_model_input

    backbone.eval()
    with torch.no_grad():
        f = backbone(to_model_input(to_float(images)))
    spread = torch.nn.functional.normalize(f, dim=1).std(0).mean().item()
    s = torch.linalg.svdvals(f - f.mean(0))
    p = s / s.sum()
    erank = float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))
    return spread, erank


def view_identification(
    backbone: torch.nn.Module, images: torch.Tensor, method: str, dataset: str, seed: int = 0
) -> float:
    """How often a view's nearest neighbour (centred cosine, among the other views of N images)
    is the second view of the same image, under ``method``'s augmentation recipe.

    Chance is 1/N. Non-contrastive methods (BYOL, SwAV, DINO, Barlow Twins) bootstrap from the
    similarity structure the encoder already has; if two views of one image are no closer than
    two different images, there is little instance signal to bootstrap from.
    """
    from medstudy.augment import make_views, recipe_for_dataset
    from medstudy.ssl import get_method

    recipe = recipe_for_dataset(get_method(method).recipe, dataset, images.shape[1])
    gen = torch.Generator().manual_seed(seed)
    views = make_views(images, recipe, gen)
    if len(views) < 2:  # single-view recipes (SparK): two independent draws of that view
        views += make_views(images, recipe, gen)
    v0, v1 = views[:2]
    backbone.train()  # batch statistics, as during pretraining
    with torch.no_grad():
        f0, f1 = backbone(v0), backbone(v1)
    backbone.eval()
    f0 = torch.nn.functional.normalize(f0 - f0.mean(0), dim=1)
    f1 = torch.nn.functional.normalize(f1 - f1.mean(0), dim=1)
    return float(((f0 @ f1.T).argmax(1) == torch.arange(len(f0))).float().mean())


def pixel_baselines(dataset: str, args: argparse.Namespace) -> dict[str, float]:
    """The same kNN (k = 20, cosine, T = 0.07) on the same capped train set, on features that
    need no network: standardised raw pixels, and 2 colour statistics per channel (mean, std).
    They say what "beats random-init features" is worth on a 28 px dataset."""
    from medstudy.config import PretrainConfig
    from medstudy.evaluate.knn import KNN_TEMPERATURE, knn_predict
    from medstudy.pretrain import load_pretrain_data

    cfg = PretrainConfig(dataset=dataset, arm="scratch", max_train=args.max_train, seed=args.seed)
    # (the train cap depends on max_train and seed only, as in the monitor)
    data = load_pretrain_data(cfg)
    n_classes = data.train.info.n_classes
    out = {}
    for kind in ("pixels", "colour_stats"):
        feats = []
        for split in (data.train, data.val):
            x = split.images.astype(np.float32) / 255.0
            x = x if x.ndim == 4 else x[..., None]
            if kind == "pixels":
                feats.append(x.reshape(len(x), -1))
            else:
                feats.append(np.concatenate([x.mean((1, 2)), x.std((1, 2))], axis=1))
        mu, sd = feats[0].mean(0), feats[0].std(0) + 1e-8
        tr, va = ((f - mu) / sd for f in feats)
        y_tr, y_va = data.train.labels.reshape(-1), data.val.labels.reshape(-1)
        scores = knn_predict(tr, y_tr, va, n_classes, args.knn_k, KNN_TEMPERATURE)
        out[kind] = float((scores.argmax(1) == y_va).mean())
    majority = int(np.bincount(data.train.labels.reshape(-1)).argmax())
    out["majority_class"] = float((data.val.labels.reshape(-1) == majority).mean())
    return out


def _accuracy(y: np.ndarray, scores: np.ndarray) -> float:
    return float((scores.argmax(1) == y).mean())


def knn_difference(
    init: torch.nn.Module, final: torch.nn.Module, train: Any, val: Any, n_classes: int, k: int
) -> dict[str, float]:
    """Final − init kNN val accuracy, with a paired, class-stratified percentile bootstrap CI
    and p-value over the val images (:func:`medstudy.stats.paired_bootstrap`; A = final,
    B = init). The votes are the monitor's own (:func:`medstudy.evaluate.knn.knn_scores`)."""
    from medstudy.evaluate.knn import knn_scores
    from medstudy.stats import paired_bootstrap

    scores = [knn_scores(net, train, val, n_classes, k) for net in (final, init)]
    y_va = val.labels.cpu().numpy().reshape(-1)
    res = paired_bootstrap(_accuracy, y_va, *scores, n_boot=2000, method="percentile", seed=0)
    return {"diff": res.diff, "diff_lo": res.ci_low, "diff_hi": res.ci_high, "p": res.p_value}


def run_one(dataset: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    from medstudy.config import PretrainConfig
    from medstudy.data import TensorSplit
    from medstudy.models import create_backbone
    from medstudy.pretrain import load_encoder, load_pretrain_data, pretrain

    cfg = PretrainConfig(
        dataset=dataset,
        arm=f"ssl:{method}",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr_scale=args.lr_scale,
        max_train=args.max_train,
        knn_k=args.knn_k,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    result = pretrain(cfg, progress=False)
    wall = time.perf_counter() - t0
    hist = result.history
    trained = hist[hist["method"] != "init"]
    data = load_pretrain_data(cfg)  # the monitor's capped train split and val split
    train, val = TensorSplit.from_split(data.train), TensorSplit.from_split(data.val)
    encoder = load_encoder(cfg)
    spread, erank = _feature_stats(encoder, val.images)
    probe = val.images[:N_VIEW_ID]
    init = create_backbone(cfg.backbone, seed=cfg.seed)  # the init the method started from
    test = knn_difference(init, encoder, train, val, data.train.info.n_classes, cfg.knn_k)
    view_id_init = view_identification(init, probe, method, dataset, args.seed)
    view_id_final = view_identification(encoder, probe, method, dataset, args.seed)
    init, final = float(hist["knn_acc"].iloc[0]), float(hist["knn_acc"].iloc[-1])
    return {
        "dataset": dataset,
        "method": method,
        "knn_init": init,
        "knn_final": final,
        "gain": final - init,
        "knn_best": float(hist["knn_acc"].max()),
        "n_val": len(val.labels),
        "loss_first": float(trained["loss"].iloc[0]),
        "loss_last": float(trained["loss"].iloc[-1]),
        "img_per_s": float(trained["img_per_s"].median()),
        "feature_spread": spread,
        "view_id_init": view_id_init,
        "view_id_final": view_id_final,
        "view_id_chance": 1 / len(probe),
        **test,
        "effective_rank": erank,
        "knn_curve": [round(float(x), 4) for x in hist["knn_acc"]],
        "wall_s": wall,
        "cached": result.cached,
    }


def main() -> None:
    from medstudy.ssl import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="pneumoniamnist,retinamnist")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--lr-scale", type=float, default=1.0, help="times each method's recipe LR (1 = recipe)"
    )
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--knn-k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", default="", help="results dir (default: a temporary one)")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; valid: {sorted(METHODS)}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDSTUDY_RESULTS_DIR"] = str(Path(args.results or tmp).resolve())
        rows = [run_one(ds, m, args) for ds in args.datasets.split(",") if ds for m in methods]
    head = (
        f"{'dataset':<15} {'method':<12} {'kNN init':>8} {'final':>6} {'gain':>7} {'best':>6} "
        f"{'loss first→last':>18} {'img/s':>6} {'spread':>7} {'eff.rank':>8} {'view-id':>11} {'final−init [95% CI]':>24} {'p':>6}"
    )
    print(
        f"budget: {args.epochs} epochs, batch {args.batch_size}, lr_scale {args.lr_scale} (each method's optimiser recipe), "
        f"max_train {args.max_train}, seed {args.seed}, {args.threads} thread(s)"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        loss = f"{r['loss_first']:.3g}→{r['loss_last']:.3g}"
        print(
            f"{r['dataset']:<15} {r['method']:<12} {r['knn_init']:>8.3f} {r['knn_final']:>6.3f} "
            f"{r['gain']:>+7.3f} {r['knn_best']:>6.3f} {loss:>18} {r['img_per_s']:>6.0f} "
            f"{r['feature_spread']:>7.4f} {r['effective_rank']:>8.1f} "
            f"{r['view_id_init']:>5.3f}→{r['view_id_final']:.3f} "
            f"{r['diff']:>+7.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}] {r['p']:>6.3f}"
        )
    baselines = {ds: pixel_baselines(ds, args) for ds in args.datasets.split(",") if ds}
    print("\nreference kNN val accuracy without a network (same k, T, train cap):")
    for ds, b in baselines.items():
        print(
            f"{ds:<15} raw pixels {b['pixels']:.3f}   colour stats {b['colour_stats']:.3f}   "
            f"majority class {b['majority_class']:.3f}"
        )
    beats = {f"{r['dataset']}/{r['method']}": r["gain"] > 0 for r in rows}
    print(
        json.dumps(
            {
                "budget": vars(args),
                "rows": rows,
                "beats_random_init": beats,
                "all_beat": bool(np.all(list(beats.values()))),
            }
        )
    )


if __name__ == "__main__":
    main()
