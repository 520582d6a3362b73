"""Tests of medstudy.evaluate: linear probe, kNN, DVME, fine-tuning and the transfer runner.

Everything runs on tiny inputs (synthetic features or a few dozen synth_lesions images) so the
file stays well under the 3-minute budget on a 2-core CPU.
"""

from __future__ import annotations

import importlib
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from medstudy import paths
from medstudy import transfer as transfer_stage
from medstudy.config import TransferConfig
from medstudy.data import TensorSplit, load_split
from medstudy.data.info import DatasetInfo
from medstudy.evaluate import (
    DVME,
    TrainSettings,
    finetune,
    fit_linear_probe,
    predict_split,
    train_dvme,
)
from medstudy.evaluate.dvme import DVME_SETTINGS
from medstudy.evaluate.finetune import fit_supervised
from medstudy.figures import label_efficiency_table, plot_label_efficiency, plot_transfer
from medstudy.metrics import compute_metrics
from medstudy.models import RESNET20_FILE, Classifier, build_head, create_backbone
from medstudy.runtime import resolve_device
from medstudy.stats import area_under_label_curve
from medstudy.transfer import load_unit_classifier, plan_units, run_transfer
from medstudy.transfer import units as transfer_units

# the module (medstudy.evaluate re-exports its function under the same name)
finetune_mod = importlib.import_module("medstudy.evaluate.finetune")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> object:
    """One intra-op thread for this module: on a small shared CPU, oversubscribed OpenMP/BLAS
    threads make these tiny fits 10x slower, and results must not depend on the core count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(n)


def toy_info(task: str = "multi-class", k: int = 3) -> DatasetInfo:
    return DatasetInfo(
        name="toy",
        task=task,
        n_channels=1,
        labels={str(i): f"c{i}" for i in range(k)},
        n_samples={},
    )


def planted(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features with a planted linear signal: y = argmax(x @ W), W fixed by seed 0."""
    w = np.random.default_rng(0).normal(size=(d, k))
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x, np.argmax(x @ w, axis=1).astype(np.int64), w


# ------------------------------------------------------------------------- linear probe -------
def test_linear_probe_recovers_planted_signal() -> None:
    info = toy_info()
    x, y, _ = planted(600, 8, 3, seed=1)
    xv, yv, _ = planted(300, 8, 3, seed=2)
    xt, yt, _ = planted(300, 8, 3, seed=3)
    probe = fit_linear_probe(x, y, xv, yv, info)
    acc = compute_metrics(info.task, yt, probe.predict_scores(xt), 3)["accuracy"]
    assert acc > 0.93
    assert probe.l2 in probe.val_by_l2 and len(probe.val_by_l2) == 8
    # Independent reference: sklearn's multinomial logistic regression with the same penalty
    # (ours: mean CE + l2/2 ||W||^2  ⇔  sklearn: sum CE + 1/(2C) ||W||^2 with C = 1/(n·l2)).
    z = (x - probe.mean) / probe.scale
    ref = LogisticRegression(C=1.0 / (len(x) * probe.l2), tol=1e-10, max_iter=10_000).fit(z, y)
    ours = probe.predict_scores(xt)
    theirs = ref.predict_proba((xt - probe.mean) / probe.scale)
    np.testing.assert_allclose(ours, theirs, atol=2e-4)


def test_linear_probe_multilabel_and_determinism() -> None:
    info = toy_info("multi-label, binary-class", 2)
    x, _, w = planted(400, 6, 2, seed=4)
    y = (x @ w > 0).astype(np.int64)
    xv = np.random.default_rng(5).normal(size=(200, 6))
    yv = (xv @ w > 0).astype(np.int64)
    a = fit_linear_probe(x, y, xv, yv, info)
    b = fit_linear_probe(x, y, xv, yv, info)
    scores = a.predict_scores(xv)
    assert scores.shape == (200, 2) and np.all((scores >= 0) & (scores <= 1))
    assert compute_metrics(info.task, yv, scores, 2)["auc"] > 0.97
    np.testing.assert_array_equal(scores, b.predict_scores(xv))


# ---------------------------------------------------------------------------------- kNN -------
def test_knn_on_identical_train_and_test_is_perfect() -> None:
    info = toy_info(k=4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 16)).astype(np.float32)
    y = rng.integers(0, 4, size=120)
    scores = transfer_units._knn_scores(x, y, x, info)
    assert scores.shape == (120, 4)
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
    assert compute_metrics(info.task, y, scores, 4)["accuracy"] == 1.0


# --------------------------------------------------------------------------------- DVME -------
@pytest.mark.parametrize("tokens", ["encoders", "dims", "concat"])
def test_dvme_output_shapes(tokens: str) -> None:
    model = DVME([64, 32, 16], n_outputs=5, tokens=tokens, width=8, token_dim=4, n_heads=2)
    feats = [torch.randn(7, d) for d in (64, 32, 16)]
    assert model(*feats).shape == (7, 5)
    assert model.fuse(*feats).shape == (7, 3 * 8)
    if tokens == "concat":
        with pytest.raises(ValueError, match="no attention"):
            model.attention(*feats)
    else:
        n_tokens = 3 if tokens == "encoders" else 3 * 8
        assert model.attention(*feats).shape == (7, n_tokens, n_tokens)


def test_dvme_rejects_bad_modes_and_single_encoder() -> None:
    with pytest.raises(ValueError, match="valid"):
        DVME([8, 8], 2, tokens="patches")
    with pytest.raises(ValueError, match=">= 2"):
        DVME([8], 2)


@pytest.mark.parametrize("tokens", ["encoders", "dims", "concat"])
def test_dvme_trains(tokens: str) -> None:
    info = toy_info()
    x, y, _ = planted(300, 12, 3, seed=6)
    xv, yv, _ = planted(150, 12, 3, seed=7)
    # Two "encoders", each seeing half of the planted signal's inputs.
    split = [x[:, :6], x[:, 6:]]
    split_v = [xv[:, :6], xv[:, 6:]]
    settings = replace(DVME_SETTINGS, max_epochs=10, patience=10, batch_size=32)
    probe = train_dvme(split, y, split_v, yv, info, tokens, seed=0, settings=settings, width=16)
    hist = probe.fit.history
    assert hist["train_loss"].iloc[-1] < 0.6 * hist["train_loss"].iloc[0]
    auc = compute_metrics(info.task, yv, probe.predict_scores(split_v), 3)["auc"]
    assert auc > 0.9


# --------------------------------------------------------------------------- fine-tuning ------
@pytest.fixture(scope="module")
def tiny_synth() -> dict[str, TensorSplit]:
    out = {}
    for split, n in (("train", 96), ("val", 48), ("test", 48)):
        s = load_split("synth_lesions", split)
        out[split] = TensorSplit.from_split(s.subset(np.arange(n)))
    out["info"] = s.info  # type: ignore[assignment]
    return out


def _finetune(tiny: dict, settings: TrainSettings, seed: int = 0, run_dir=None):  # noqa: ANN001, ANN202
    backbone = create_backbone("resnet20_cifar", "scratch", seed=0)
    return finetune(
        backbone, tiny["train"], tiny["val"], tiny["info"], settings, seed=seed, run_dir=run_dir
    )


def _kill_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """A fit "killed" right after epoch ``epoch``'s history and checkpoint are written."""
    real = finetune_mod._FitEpochEnd.on_train_epoch_end

    def kill(self, trainer, module) -> None:  # noqa: ANN001
        real(self, trainer, module)
        if trainer.current_epoch == epoch:
            raise RuntimeError("simulated kill")

    monkeypatch.setattr(finetune_mod._FitEpochEnd, "on_train_epoch_end", kill)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_killed_finetune_resumes_after_its_last_epoch_and_ends_identical(
    tiny_synth: dict, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = TrainSettings(max_epochs=4, patience=4, batch_size=32, lr=0.05, augment=True)
    straight = _finetune(tiny_synth, settings, run_dir=tmp_path / "straight")
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 1)
        with pytest.raises(RuntimeError, match="simulated kill"):
            _finetune(tiny_synth, settings, run_dir=run_dir)
    before = pd.read_csv(run_dir / "history.csv")
    assert before["epoch"].tolist() == [0, 1] and (run_dir / finetune_mod.RESUME_FILE).exists()
    resumed = _finetune(tiny_synth, settings, run_dir=run_dir)
    after = pd.read_csv(run_dir / "history.csv")
    assert after["epoch"].tolist() == [0, 1, 2, 3]
    # epochs 0 and 1 were not trained again: their rows, wall-clock seconds included, are the
    # killed fit's
    pd.testing.assert_frame_equal(after.iloc[:2], before)
    # and the resumed fit ends where the uninterrupted one did
    pd.testing.assert_frame_equal(
        resumed.history.drop(columns="seconds"), straight.history.drop(columns="seconds")
    )
    assert (resumed.best_epoch, resumed.best_value) == (straight.best_epoch, straight.best_value)
    assert _same_state(resumed.model, straight.model)
    np.testing.assert_array_equal(resumed.val_scores, straight.val_scores)


def test_a_fit_killed_after_its_early_stop_does_not_train_on(
    tiny_synth: dict, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = TrainSettings(max_epochs=10, patience=2, batch_size=48, lr=1e-12, backbone_lr_mult=0)
    straight = _finetune(tiny_synth, settings)
    assert straight.epochs_run == 3  # stopped after epoch 2 (as test_finetune_early_stops)
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 2)
        with pytest.raises(RuntimeError, match="simulated kill"):
            _finetune(tiny_synth, settings, run_dir=tmp_path)
    resumed = _finetune(tiny_synth, settings, run_dir=tmp_path)
    assert resumed.epochs_run == 3 and resumed.best_epoch == 0
    assert _same_state(resumed.model, straight.model)


def test_a_non_finite_loss_stops_naming_the_epoch_and_keeps_the_last_good_checkpoint(
    tiny_synth: dict, tmp_path
) -> None:
    info, train, val = tiny_synth["info"], tiny_synth["train"], tiny_synth["val"]
    settings = TrainSettings(max_epochs=3, patience=3, batch_size=32)
    steps_per_epoch = -(-len(train.labels) // settings.batch_size)
    base = finetune_mod.image_transform(False)
    calls = {"train": 0}

    def poisoned(inputs, train_mode, generator):  # noqa: ANN001, ANN202
        (x,) = base(inputs, train_mode, generator)
        if train_mode:
            calls["train"] += 1
            if calls["train"] > steps_per_epoch:  # from the second epoch on
                x = x * float("nan")
        return (x,)

    model = Classifier(create_backbone("resnet20_cifar", "scratch", seed=0), build_head(info, 64))
    with pytest.raises(FloatingPointError, match=r"non-finite training loss nan at epoch 1"):
        fit_supervised(
            model, (train.images,), train.labels, (val.images,), val.labels, info, settings,
            seed=0, transform=poisoned, run_dir=tmp_path,
        )  # fmt: skip
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [0]
    ckpt = torch.load(tmp_path / finetune_mod.RESUME_FILE, weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["medstudy_fit"]["best_epoch"] == 0
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_finetune_runs_keeps_best_val_and_is_reproducible(tiny_synth: dict) -> None:
    settings = TrainSettings(max_epochs=3, patience=3, batch_size=32, lr=0.05, augment=True)
    a = _finetune(tiny_synth, settings)
    b = _finetune(tiny_synth, settings)
    info = tiny_synth["info"]
    metric = a.metric
    assert metric == "qwk"  # synth_lesions is ordinal → selected by quadratic kappa
    hist = a.history
    assert list(hist["epoch"]) == [0, 1, 2]
    # The returned weights are the best-val epoch's, and evaluating them reproduces its value.
    assert a.best_epoch == int(hist[f"val_{metric}"].idxmax())
    val_scores = predict_split(a.model, tiny_synth["val"], info)
    # The fit's best-epoch val scores are exactly the returned model's (transfer units reuse
    # them instead of predicting val again).
    assert a.val_scores is not None and a.val_scores.dtype == np.float64
    np.testing.assert_array_equal(a.val_scores, val_scores)
    val_value = compute_metrics(info.task, tiny_synth["val"].labels.numpy(), val_scores, 5)[metric]
    assert val_value == pytest.approx(a.best_value, abs=1e-12)
    # Same seed → identical history and predictions.
    pd.testing.assert_frame_equal(
        hist.drop(columns="seconds"), b.history.drop(columns="seconds"), check_exact=True
    )
    np.testing.assert_array_equal(
        predict_split(a.model, tiny_synth["test"], info),
        predict_split(b.model, tiny_synth["test"], info),
    )


def test_finetune_early_stops(tiny_synth: dict) -> None:
    # Frozen backbone (BatchNorm statistics included) and a vanishing head LR: the val kappa
    # cannot improve after the first epoch → stop after `patience` more epochs.
    settings = TrainSettings(max_epochs=10, patience=2, batch_size=48, lr=1e-12, backbone_lr_mult=0)
    fit = _finetune(tiny_synth, settings)
    assert fit.best_epoch == 0
    assert fit.epochs_run == 3


@pytest.mark.parametrize("mult, warmup", [(0.0, 0), (0.1, 1)])
def test_finetune_frozen_backbone_is_untouched(tiny_synth: dict, mult: float, warmup: int) -> None:
    # backbone_lr_mult=0 freezes throughout; a frozen warm-up epoch freezes epoch 0 only.
    settings = TrainSettings(
        max_epochs=1, patience=1, batch_size=48, backbone_lr_mult=mult, warmup_frozen_epochs=warmup
    )
    backbone = create_backbone("resnet20_cifar", "scratch", seed=0)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    fit = finetune(
        backbone, tiny_synth["train"], tiny_synth["val"], tiny_synth["info"], settings, 0
    )
    after = fit.model.backbone.state_dict()
    for k, v in before.items():  # weights *and* BatchNorm statistics (kept in eval mode)
        assert torch.equal(v, after[k]), k
    assert bool(fit.history["frozen"].all())


def test_tensor_batches_min_batches_repeats_reshuffled_passes() -> None:
    from medstudy.evaluate.finetune import TensorBatches

    x, y = torch.arange(20).float()[:, None], torch.arange(20)
    plain = TensorBatches([x], y, 8, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(plain) == len(list(plain)) == 3  # one pass: 8 + 8 + 4
    rep = TensorBatches(
        [x], y, 8, shuffle=True, generator=torch.Generator().manual_seed(0), min_batches=7
    )
    batches = list(rep)
    assert len(rep) == len(batches) == 9  # 3 passes of 3 batches: the first count >= 7
    passes = [torch.cat([b[1] for b in batches[i : i + 3]]) for i in (0, 3, 6)]
    for p in passes:  # every pass is a full permutation of the data …
        assert sorted(p.tolist()) == list(range(20))
    assert not torch.equal(passes[0], passes[1])  # … drawn afresh
    big = TensorBatches([x], y, 2, shuffle=True, generator=torch.Generator(), min_batches=4)
    assert len(big) == 10  # already >= min_batches in one pass: unchanged
    with pytest.raises(ValueError, match="only makes sense shuffled"):
        TensorBatches([x], y, 8, min_batches=2)
    with pytest.raises(ValueError, match="min_steps_per_epoch must be >= 1"):
        TrainSettings(min_steps_per_epoch=0)


def test_finetune_min_steps_per_epoch_takes_more_steps(tiny_synth: dict) -> None:
    base = TrainSettings(max_epochs=1, patience=1, batch_size=96, lr=0.05)
    one = _finetune(tiny_synth, base)
    many = _finetune(tiny_synth, replace(base, min_steps_per_epoch=4))
    assert one.history["steps"].iloc[0] == 1 and many.history["steps"].iloc[0] == 4


def test_resolve_device_never_falls_back() -> None:
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="valid"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            resolve_device("cuda")


# --------------------------------------------------------------------------- run_transfer -----
def _tiny_cfg(**over: object) -> TransferConfig:
    params: dict[str, object] = dict(
        dataset="synth_lesions",
        arms=["scratch"],
        protocols=["linear", "knn", "finetune"],
        fractions=[0.1, 1.0],
        seeds=[0],
        finetune_fractions=[1.0],
        finetune_epochs=1,
        batch_size=64,
        max_train=200,
    )
    params.update(over)
    return TransferConfig.from_params(**params)


def test_plan_units_respects_finetune_subsets() -> None:
    units = plan_units(_tiny_cfg(seeds=[0, 1]))
    keys = {(u.protocol, u.fraction, u.seed) for u in units}
    assert ("finetune", 0.1, 0) not in keys and ("finetune", 1.0, 1) in keys
    assert len(units) == 2 * (2 * 2 + 1)


def test_run_transfer_writes_units_and_skips_on_rerun(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(tmp_path))
    cfg = _tiny_cfg()
    metrics = run_transfer(cfg)
    val = load_split("synth_lesions", "val")
    test = load_split("synth_lesions", "test")
    units = metrics[["protocol", "fraction", "run_id"]].drop_duplicates()
    assert len(units) == 5  # linear+knn at 0.1 and 1.0, finetune at 1.0
    assert set(metrics["split"]) == {"val", "test"}
    assert {"auc", "qwk", "accuracy"} <= set(metrics["metric"])
    for rid in units["run_id"]:
        run_dir = paths.run_dir("transfer", rid)
        preds = pd.read_parquet(run_dir / "predictions.parquet")
        # val and test are never subsampled: every sample id, once per split.
        assert preds.loc[preds["split"] == "val", "sample_id"].tolist() == val.ids.tolist()
        assert preds.loc[preds["split"] == "test", "sample_id"].tolist() == test.ids.tolist()
        assert (run_dir / "DONE").exists()
    details = pd.read_json(
        paths.run_dir("transfer", units["run_id"].iloc[0]) / "details.json", typ="series"
    )
    assert details["n_train_pool"] <= 200
    # Train subsets are nested and fraction-sized.
    n_train = {
        f: pd.read_json(paths.run_dir("transfer", r) / "details.json", typ="series")["n_train"]
        for f, r in units[units["protocol"] == "linear"][["fraction", "run_id"]].values
    }
    assert n_train[0.1] < n_train[1.0] == details["n_train_pool"]
    files = {r: (paths.run_dir("transfer", r) / "metrics.csv").read_bytes() for r in units.run_id}

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished unit was recomputed")

    monkeypatch.setattr(transfer_stage, "evaluate_unit", boom)
    again = run_transfer(cfg)
    pd.testing.assert_frame_equal(metrics, again)
    for r, content in files.items():
        assert (paths.run_dir("transfer", r) / "metrics.csv").read_bytes() == content
    # Linear and fine-tuned units reload as one network that reproduces their saved scores.
    test_t = TensorSplit.from_split(test)
    for protocol in ("linear", "finetune"):
        rid = units.loc[(units["protocol"] == protocol) & (units["fraction"] == 1.0), "run_id"]
        clf = load_unit_classifier("transfer", rid.iloc[0])
        preds = pd.read_parquet(paths.run_dir("transfer", rid.iloc[0]) / "predictions.parquet")
        saved = preds.loc[preds["split"] == "test", [f"score_{k}" for k in range(5)]].to_numpy()
        np.testing.assert_allclose(predict_split(clf, test_t, test.info), saved, atol=1e-4)
    # Tables and figures come from the saved results.
    table = label_efficiency_table(metrics, "qwk")
    lin = metrics.query("protocol == 'linear' and split == 'test' and metric == 'qwk'")
    lin = lin.sort_values("fraction")
    assert table.loc[("synth_lesions", "qwk", "linear", "scratch"), "aulc"] == pytest.approx(
        area_under_label_curve(lin["fraction"], lin["value"])
    )
    # one fraction: no curve
    assert np.isnan(table.loc[("synth_lesions", "qwk", "finetune", "scratch"), "aulc"])
    assert isinstance(plot_transfer(metrics, "auc", n_boot=20), Figure)
    assert isinstance(plot_label_efficiency(metrics, "qwk"), Figure)
    # Notebook 03 (another stage) reuses the identical finished units instead of recomputing.
    copied = run_transfer(cfg, stage="label_efficiency")
    assert set(copied["stage"]) == {"label_efficiency"}
    pd.testing.assert_frame_equal(copied.drop(columns="stage"), metrics.drop(columns="stage"))


@pytest.mark.slow
def test_recomputed_transfer_reproduces_metrics_csv_exactly(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two independent computations (fresh results roots, nothing cached) of the same config and
    # seed: every unit's metrics.csv and predictions are identical, byte for byte / bit for bit.
    cfg = _tiny_cfg(fractions=[0.1], finetune_fractions=[0.1], finetune_min_steps=3, seeds=[1])
    out = {}
    for name in ("a", "b"):
        monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(tmp_path / name))
        metrics = run_transfer(cfg)
        out[name] = {
            rid: (
                (paths.run_dir("transfer", rid) / "metrics.csv").read_bytes(),
                pd.read_parquet(paths.run_dir("transfer", rid) / "predictions.parquet"),
            )
            for rid in metrics["run_id"].unique()
        }
    assert set(out["a"]) == set(out["b"]) and len(out["a"]) == 3  # linear, knn, finetune
    for rid, (csv, preds) in out["a"].items():
        assert out["b"][rid][0] == csv, rid
        pd.testing.assert_frame_equal(out["b"][rid][1], preds, check_exact=True)


def test_run_transfer_dvme_units(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (paths.data_dir() / RESNET20_FILE).exists():
        pytest.skip(f"{RESNET20_FILE} not in MEDSTUDY_DATA_DIR (natural_sup weights)")
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(transfer_units, "DVME_SETTINGS", replace(DVME_SETTINGS, max_epochs=2))
    cfg = _tiny_cfg(
        arms=["scratch", "natural_sup"],
        protocols=["knn"],
        fractions=[1.0],
        fusion_arms=["scratch", "natural_sup"],
        max_train=150,
    )
    metrics = run_transfer(cfg)
    fusion = metrics[metrics["arm"] == "fusion"]
    assert set(fusion["protocol"]) == {"dvme_encoders", "dvme_dims", "dvme_concat"}
    assert len(list((tmp_path / "features").glob("*.npz"))) == 2 * 3  # 2 encoders × 3 splits


def test_max_val_units_select_on_the_capped_val_and_get_their_own_run_ids(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(tmp_path))
    base = dict(protocols=["linear", "finetune"], fractions=[1.0], max_train=100)
    whole = run_transfer(_tiny_cfg(**base))
    capped = run_transfer(_tiny_cfg(**base, max_val=60))
    # a capped val split is another selection set: new units, none confused with the old ones
    assert set(whole["run_id"]).isdisjoint(capped["run_id"])
    val, test = load_split("synth_lesions", "val"), load_split("synth_lesions", "test")
    for rid in capped["run_id"].unique():
        run_dir = paths.run_dir("transfer", rid)
        preds = pd.read_parquet(run_dir / "predictions.parquet")
        val_ids = preds.loc[preds["split"] == "val", "sample_id"]
        assert len(val_ids) == pytest.approx(60, abs=5) and set(val_ids) < set(val.ids)
        assert preds.loc[preds["split"] == "test", "sample_id"].tolist() == test.ids.tolist()
        details = pd.read_json(run_dir / "details.json", typ="series")
        assert details["n_val"] == len(val_ids)
    # the fine-tuned unit's saved val scores are its model's (kept from the best epoch)
    rid = capped.loc[capped["protocol"] == "finetune", "run_id"].iloc[0]
    preds = pd.read_parquet(paths.run_dir("transfer", rid) / "predictions.parquet")
    rows = preds[preds["split"] == "val"]
    clf = load_unit_classifier("transfer", rid)
    ids = pd.Index(val.ids)
    sub = val.subset(ids.get_indexer(rows["sample_id"]))
    saved = rows[[f"score_{k}" for k in range(5)]].to_numpy()
    np.testing.assert_allclose(
        predict_split(clf, TensorSplit.from_split(sub), val.info), saved, atol=1e-6
    )
