"""SSL methods (one test per registry key), SparK's masking contract and the pretraining loop:
determinism, exact kill-and-resume, curriculum resumption, caching and clear errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from medstudy import pretrain as pretrain_stage
from medstudy import runtime
from medstudy.augment import make_views
from medstudy.config import ConfigError, PretrainConfig
from medstudy.data.tensors import to_model_input
from medstudy.models import WeightsError, create_backbone, load_checkpoint
from medstudy.pretrain import module as pretrain_module
from medstudy.ssl import METHODS, get_method
from medstudy.ssl.base import StepContext
from medstudy.ssl.mocov2 import MoCoV2
from medstudy.ssl.spark import SparK, _sparse_batch_norm, sparse_mode

matplotlib.use("Agg")

# Small, always-available data: synth_lesions is generated (seeded), no file needed.
TINY: dict[str, Any] = dict(dataset="synth_lesions", max_train=64, epochs=2, batch_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _ctx(step: int = 0, max_steps: int = 30, seed: int = 0) -> StepContext:
    return StepContext(step, max_steps, 0, 1, torch.Generator().manual_seed(seed))


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _train(method: torch.nn.Module, views: list[torch.Tensor], steps: int) -> list[float]:
    opt = torch.optim.SGD(
        [p for p in method.parameters() if p.requires_grad], lr=0.06, momentum=0.9
    )
    losses = []
    for step in range(steps):
        ctx = _ctx(step, steps)
        loss = method.training_step(views, ctx)
        opt.zero_grad()
        loss.backward()
        method.on_after_backward(ctx)
        opt.step()
        method.on_step_end(ctx)
        losses.append(loss.detach().item())
    return losses


# ------------------------------------------------------------------------------ registry ----
def test_registry_covers_the_design_methods() -> None:
    assert set(METHODS) == {"simclr", "mocov2", "byol", "barlowtwins", "swav", "dino", "spark"}
    for name, spec in METHODS.items():
        assert spec.name == name and spec.reference and spec.recipe.n_views >= 1


def test_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown SSL method 'mae'.*'simclr'.*'spark'"):
        get_method("mae")
    with pytest.raises(ConfigError, match="valid"):
        PretrainConfig(arm="ssl:mae")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_builds_and_steps(name: str) -> None:
    spec = METHODS[name]
    method = spec.build(create_backbone("resnet20_cifar", seed=0))
    views = make_views(_images(4, 28), spec.recipe, torch.Generator().manual_seed(0))
    losses = _train(method, views, steps=2)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters())


# Per-method test settings: MoCo's queue must be small enough to fill with real keys within the
# 30 steps (its loss first *rises* while random initial queue entries are replaced).
LOSS_FALL_BUILD = {"mocov2": lambda b: MoCoV2(b, queue_size=128)}
LOSS_FALL_SKIP = {"mocov2": 2}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_falls_on_a_fixed_batch(name: str) -> None:
    spec = METHODS[name]
    backbone = create_backbone("resnet20_cifar", seed=0)
    method = LOSS_FALL_BUILD.get(name, spec.build)(backbone)
    # 64 images at 16 px (a quarter of the 28 px cost) and one fixed set of views.
    views = make_views(_images(64, 16), spec.recipe, torch.Generator().manual_seed(0))
    losses = _train(method, views, steps=30)[LOSS_FALL_SKIP.get(name, 0) :]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.02 * abs(first), f"{name}: {losses}"


# --------------------------------------------------------------------------------- SparK ----
@pytest.fixture
def spark() -> SparK:
    method = get_method("spark").build(create_backbone("resnet20_cifar", seed=0))
    assert isinstance(method, SparK)
    return method


def _masked_pixels(active: torch.Tensor, p: int) -> torch.Tensor:
    return ~active.repeat_interleave(p, 2).repeat_interleave(p, 3)


def test_spark_mask_grid_and_ratio(spark: SparK) -> None:
    assert spark.downsample == 4  # ResNet-20: 28 px → 7×7 patches of 4 px
    active = spark.random_mask(8, 7, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert active.shape == (8, 1, 7, 7)
    assert (active.flatten(1).sum(1) == round(49 * 0.4)).all()


def test_spark_refuses_a_grid_with_no_visible_patch(spark: SparK) -> None:
    g = torch.Generator().manual_seed(0)
    assert spark.random_mask(2, 2, g, torch.device("cpu")).sum() == 2 * 2  # round(4 * 0.4)
    with pytest.raises(ValueError, match="1x1 mask grid at mask ratio 0.6 leaves no visible"):
        spark.random_mask(2, 1, g, torch.device("cpu"))


def test_spark_encoder_ignores_masked_pixels(spark: SparK) -> None:
    x = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    active = spark.random_mask(4, 7, torch.Generator().manual_seed(1), torch.device("cpu"))
    hidden = _masked_pixels(active, 4).expand_as(x)
    x_changed = torch.where(hidden, torch.randn_like(x) * 5, x)
    spark.train()  # batch statistics: the strictest case (BN must skip masked positions)
    out = spark.encode(x, active)
    out_changed = spark.encode(x_changed, active)
    assert all(torch.equal(a, b) for a, b in zip(out, out_changed, strict=True))
    # Masked positions stay empty at every stage, and visible pixels do matter.
    for f in out:
        gone = _masked_pixels(active, f.shape[-1] // 7).expand_as(f)
        assert f[gone].abs().max() == 0
    x_visible = torch.where(hidden, x, x + 1.0)
    assert not torch.equal(spark.encode(x_visible, active)[-1], out[-1])


def test_sparse_batch_norm_equals_batch_norm_of_the_visible_positions() -> None:
    # Reference: SparK's own formulation, BatchNorm1d over the gathered visible positions.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 14, 14, generator=g) * 3 + 1
    active = torch.rand(4, 1, 7, 7, generator=g) < 0.4
    mask = active.repeat_interleave(2, 2).repeat_interleave(2, 3)
    ours, ref = torch.nn.BatchNorm2d(8), torch.nn.BatchNorm1d(8)
    with torch.no_grad():
        for bn in (ours, ref):
            bn.weight.copy_(torch.linspace(0.5, 2, 8))
            bn.bias.copy_(torch.linspace(-1, 1, 8))
    out = _sparse_batch_norm(ours, x, mask.float())
    visible = mask.expand_as(x).permute(0, 2, 3, 1)
    expected = torch.zeros_like(x.permute(0, 2, 3, 1))
    expected[visible[..., 0]] = ref(x.permute(0, 2, 3, 1)[visible[..., 0]])
    torch.testing.assert_close(out, expected.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval()
    ref.eval()
    out = _sparse_batch_norm(ours, x, mask.float())
    expected[visible[..., 0]] = ref(x.permute(0, 2, 3, 1)[visible[..., 0]])
    torch.testing.assert_close(out, expected.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)


def test_spark_sparse_mode_restores_the_backbone(spark: SparK) -> None:
    x = torch.randn(2, 3, 28, 28)
    active = spark.random_mask(2, 7, torch.Generator().manual_seed(0), torch.device("cpu"))
    spark.eval()
    dense = spark.backbone(x)
    with sparse_mode(spark.backbone, active):
        pass
    assert torch.equal(spark.backbone(x), dense)
    assert all("forward" not in vars(m) for m in spark.backbone.modules())


def test_spark_loss_ignores_visible_patches(spark: SparK) -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 3, 28, 28, generator=g), torch.randn(4, 3, 28, 28, generator=g)
    active = spark.random_mask(4, 7, torch.Generator().manual_seed(1), torch.device("cpu"))
    visible = ~_masked_pixels(active, 4).expand_as(target)
    loss = spark.reconstruction_loss(pred, target, active)
    changed_visible = torch.where(visible, torch.randn_like(target), target)
    assert torch.equal(spark.reconstruction_loss(pred, changed_visible, active), loss)
    changed_masked = torch.where(visible, target, torch.randn_like(target))
    assert not torch.equal(spark.reconstruction_loss(pred, changed_masked, active), loss)
    # Hand check: a perfect per-patch-normalised prediction has zero loss.
    tgt = spark.patchify(target)
    norm = (tgt - tgt.mean(-1, keepdim=True)) / (tgt.var(-1, keepdim=True) + 1e-6).sqrt()
    perfect = norm.reshape(4, 7, 7, 4, 4, 3).permute(0, 5, 1, 3, 2, 4).reshape(4, 3, 28, 28)
    assert spark.reconstruction_loss(perfect, target, active) < 1e-10


def test_spark_target_of_a_grey_image_is_its_one_channel(spark: SparK) -> None:
    # A grey image as the model sees it: 3 affine copies of one channel (to_model_input).
    grey = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x = to_model_input(grey)
    losses = {}
    for channels in (1, 3):
        spark.zero_grad()
        ctx = replace(_ctx(seed=2), image_channels=channels)
        losses[channels] = spark.training_step([x], ctx)
        losses[channels].backward()
        # the head's output channels 1 and 2 get a gradient only for an RGB target
        grad = spark.head.weight.grad.flatten(1).abs().sum(1)
        assert grad[0] > 0 and (bool((grad[1:] > 0).all()) == (channels == 3))
    # the grey loss is the one-channel reconstruction loss, by hand
    active = spark.random_mask(4, 7, torch.Generator().manual_seed(2), torch.device("cpu"))
    with torch.no_grad():
        pred = spark.decode(spark.encode(x, active), active)
        by_hand = spark.reconstruction_loss(pred[:, :1], grey, active)  # affine-free target
    torch.testing.assert_close(losses[1].detach(), by_hand, atol=1e-5, rtol=1e-4)


def test_ema_momentum_leaves_under_1_percent_of_the_init_at_any_budget() -> None:
    from lightly.utils.scheduler import cosine_schedule

    from medstudy.ssl.base import EMA_INIT_RESIDUE, ema_momentum_start

    assert ema_momentum_start(10**6, 0.996) == 0.996  # long runs: the paper's value
    assert ema_momentum_start(2_500, 0.996) == pytest.approx(0.996)
    assert ema_momentum_start(160, 0.996) == pytest.approx(0.9375)
    for steps in (12, 28, 160, 300, 2_500):
        start = ema_momentum_start(steps, 0.996)
        # the share of the init left in the EMA encoder after `steps` updates (lightly's schedule)
        residue = np.prod([cosine_schedule(t, steps, start, 1.0) for t in range(steps)])
        assert residue <= 1.1 * EMA_INIT_RESIDUE, (steps, start, residue)
    # the old fixed start 0.99 left 45 % after 160 steps (issue #15)
    assert np.prod([cosine_schedule(t, 160, 0.99, 1.0) for t in range(160)]) > 0.4
    with pytest.raises(ValueError, match="max_steps"):
        ema_momentum_start(0, 0.996)


@pytest.mark.parametrize("max_steps", [12, 200])
def test_dino_last_layer_is_frozen_for_the_first_steps_only(max_steps: int) -> None:
    from medstudy.ssl.base import frozen_steps
    from medstudy.ssl.dino import FREEZE_FRACTION

    method = get_method("dino").build(create_backbone("resnet20_cifar", seed=0))
    views = make_views(_images(8, 28), METHODS["dino"].recipe, torch.Generator().manual_seed(0))
    n_frozen = frozen_steps(FREEZE_FRACTION, max_steps)
    assert n_frozen == max(1, round(0.01 * max_steps))  # 1 % of the steps, at least one
    last = method.projection_head.last_layer
    for step in (0, n_frozen - 1, n_frozen, max_steps - 1):
        # epoch 0 throughout: a 1-epoch run (or a dino:1 curriculum stage) must still train it
        ctx = StepContext(step, max_steps, 0, 1, torch.Generator().manual_seed(step))
        method.zero_grad()
        method.training_step(views, ctx).backward()
        method.on_after_backward(ctx)
        grads = [p.grad for p in last.parameters() if p.requires_grad]
        if step < n_frozen:
            assert all(g is None for g in grads), step
        else:
            assert any(g is not None and g.abs().sum() > 0 for g in grads), step


@pytest.mark.parametrize("name", ["byol", "barlowtwins"])
def test_two_view_methods_normalise_each_view_on_its_own(name: str) -> None:
    method = get_method(name).build(create_backbone("resnet20_cifar", seed=0))
    sizes: list[int] = []
    bn = next(m for m in method.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.register_forward_hook(lambda _m, inp, _out: sizes.append(int(inp[0].shape[0])))
    views = make_views(_images(6, 28), METHODS[name].recipe, torch.Generator().manual_seed(0))
    method.training_step(views, _ctx())
    assert sizes == [6, 6]  # one batch-norm pass of N images per view, not one of 2N


# ---------------------------------------------------------------------------- the loop ------
class _Kill(L.Callback):
    """Raise after the n-th epoch end of the run (after the loop's own checkpoint)."""

    def __init__(self, after: int) -> None:
        self.after, self.seen = after, 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen += 1
        if self.seen == self.after:
            raise RuntimeError("simulated kill")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _in(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(root))


@pytest.mark.slow
def test_same_seed_gives_the_same_loss_sequence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = PretrainConfig(arm="ssl:simclr", **TINY)
    _in(tmp_path / "a", monkeypatch)
    a = pretrain_stage.pretrain(cfg, progress=False)
    _in(tmp_path / "b", monkeypatch)
    b = pretrain_stage.pretrain(cfg, progress=False)
    assert not a.cached and not b.cached
    assert a.history["loss"].tolist()[1:] == b.history["loss"].tolist()[1:]
    assert a.history["knn_acc"].tolist() == b.history["knn_acc"].tolist()
    assert _same_weights(a.checkpoint, b.checkpoint)
    _in(tmp_path / "c", monkeypatch)
    c = pretrain_stage.pretrain(
        PretrainConfig(arm="ssl:simclr", **{**TINY, "seed": 1}), progress=False
    )
    assert c.history["loss"].tolist()[1:] != a.history["loss"].tolist()[1:]
    # a job with replicates makes the same runs, with the same ids, as one job per seed
    _in(tmp_path / "d", monkeypatch)
    job = replace(cfg, replicates=(0, 1))
    both = [pretrain_stage.pretrain(r, progress=False) for r in job.runs()]
    assert [r.run_id for r in both] == [a.run_id, c.run_id]
    assert _same_weights(both[0].checkpoint, a.checkpoint)
    assert _same_weights(both[1].checkpoint, c.checkpoint)
    with pytest.raises(ValueError, match=r"cfg\.runs\(\)"):
        pretrain_stage.pretrain(job, progress=False)


@pytest.mark.parametrize(("dataset", "channels"), [("pneumoniamnist", 1), ("synth_lesions", 3)])
def test_the_loop_tells_methods_the_images_channels(
    dataset: str,
    channels: int,
    results_tmp: Path,
    real_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[int] = []
    step = SparK.training_step

    def spy(self: SparK, views: list[torch.Tensor], ctx: StepContext) -> torch.Tensor:
        seen.append(ctx.image_channels)
        return step(self, views, ctx)

    monkeypatch.setattr(SparK, "training_step", spy)
    cfg = PretrainConfig(arm="ssl:spark", **{**TINY, "dataset": dataset, "epochs": 1})
    pretrain_stage.pretrain(cfg, progress=False)
    assert seen and set(seen) == {channels}


@pytest.mark.slow
def test_knn_every_skips_monitoring_but_not_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = PretrainConfig(arm="ssl:simclr", **{**TINY, "epochs": 3})
    _in(tmp_path / "every", monkeypatch)
    every = pretrain_stage.pretrain(cfg, progress=False)
    _in(tmp_path / "sparse", monkeypatch)
    sparse = pretrain_stage.pretrain(
        PretrainConfig(arm="ssl:simclr", **{**TINY, "epochs": 3, "knn_every": 2}), progress=False
    )
    assert sparse.run_id == every.run_id  # display-only: the same computation
    assert _same_weights(every.checkpoint, sparse.checkpoint)
    assert sparse.history["loss"].tolist()[1:] == every.history["loss"].tolist()[1:]
    knn = sparse.history.set_index("epoch")["knn_acc"]
    assert np.isnan(knn[1]) and not np.isnan(knn[[0, 2, 3]]).any()  # init, every 2nd, last
    assert knn[3] == every.history.set_index("epoch")["knn_acc"][3]


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_identical_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MoCo v2: its memory queue (a non-persistent buffer) must survive the resume too.
    cfg = PretrainConfig(arm="ssl:mocov2", **TINY)
    _in(tmp_path / "straight", monkeypatch)
    straight = pretrain_stage.pretrain(cfg, progress=False)
    _in(tmp_path / "resumed", monkeypatch)
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain_stage.pretrain(cfg, progress=False, callbacks=[_Kill(after=1)])
    run_dir = tmp_path / "resumed" / "pretrain" / straight.run_id
    assert not (run_dir / "DONE").exists()
    assert (run_dir / "lightning" / "stage0_mocov2" / "last.ckpt").exists()
    resumed = pretrain_stage.pretrain(cfg, progress=False)
    assert _same_weights(straight.checkpoint, resumed.checkpoint)
    assert resumed.history["loss"].tolist()[1:] == straight.history["loss"].tolist()[1:]
    assert resumed.history["epoch"].tolist() == [0, 1, 2]
    assert not (run_dir / "lightning").exists()  # resume points are removed once DONE


@pytest.mark.slow
def test_curriculum_resumes_at_its_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = PretrainConfig(arm="curriculum", curriculum=("simclr:1", "spark:1"), **TINY)
    _in(tmp_path / "straight", monkeypatch)
    straight = pretrain_stage.pretrain(cfg, progress=False)
    assert straight.history["method"].tolist() == ["init", "simclr", "spark"]

    _in(tmp_path / "resumed", monkeypatch)
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain_stage.pretrain(
            cfg, progress=False, callbacks=[_Kill(after=2)]
        )  # in the spark stage
    run_dir = tmp_path / "resumed" / "pretrain" / straight.run_id
    assert (run_dir / "stage0_simclr.pt").exists() and not (run_dir / "stage1_spark.pt").exists()

    fitted: list[str] = []
    real_fit = pretrain_stage._fit_stage

    def spy(backbone: Any, stage: Any, *args: Any, **kwargs: Any) -> Any:
        fitted.append(stage.method)
        return real_fit(backbone, stage, *args, **kwargs)

    monkeypatch.setattr(pretrain_stage, "_fit_stage", spy)
    resumed = pretrain_stage.pretrain(cfg, progress=False)
    assert fitted == ["spark"]  # the finished simclr stage is loaded, not retrained
    assert _same_weights(straight.checkpoint, resumed.checkpoint)
    assert resumed.history["method"].tolist() == ["init", "simclr", "spark"]


@pytest.mark.slow
def test_cached_result_metrics_and_load_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _in(tmp_path, monkeypatch)
    cfg = PretrainConfig(arm="ssl:spark", **{**TINY, "epochs": 1})
    with pytest.raises(WeightsError, match=r"no finished pretrain run for synth_lesions/ssl:spark"):
        pretrain_stage.load_encoder(cfg)
    first = pretrain_stage.pretrain(cfg, progress=False)
    again = pretrain_stage.pretrain(cfg, progress=False)
    assert again.cached and again.metrics == pytest.approx(first.metrics)
    assert set(first.metrics) == {"knn_acc", "loss"}
    metrics = pd.read_csv(first.run_dir / "metrics.csv")
    rows = {(r.protocol, r.split, r.metric) for r in metrics.itertuples()}
    assert rows == {("knn_monitor", "val", "knn_acc"), ("pretrain", "train", "loss")}
    history = pd.read_csv(first.run_dir / "history.csv")
    assert list(history.columns) == list(pretrain_stage.HISTORY_COLUMNS)
    encoder = pretrain_stage.load_encoder(cfg)
    reference = create_backbone("resnet20_cifar")
    load_checkpoint(reference, first.checkpoint)
    assert all(
        torch.equal(a, b)
        for a, b in zip(encoder.state_dict().values(), reference.state_dict().values(), strict=True)
    )


@pytest.mark.slow
def test_scratch_arm_saves_its_seeded_init_and_its_knn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _in(tmp_path, monkeypatch)
    cfg = PretrainConfig(arm="scratch", **TINY)
    result = pretrain_stage.pretrain(cfg, progress=False)
    assert result.history["method"].tolist() == ["init"] and set(result.metrics) == {"knn_acc"}
    init = create_backbone("resnet20_cifar", seed=cfg.seed)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            _weights(result.checkpoint).values(), init.state_dict().values(), strict=True
        )
    )
    loaded = pretrain_stage.load_encoder(cfg)  # needs no run
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), init.state_dict().values(), strict=True)
    )


def test_natural_ssl_offline_and_missing_gpu_fail_clearly() -> None:
    cfg = PretrainConfig(arm="natural_ssl", backbone="timm:resnet50", dataset="synth_lesions")
    with pytest.raises(WeightsError, match=r"dino_resnet50_pretrain\.pth.*natural_ssl_file"):
        pretrain_stage.pretrain(cfg, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            pretrain_stage.pretrain(PretrainConfig(arm="scratch", device="cuda", **TINY))


@pytest.mark.parametrize(("arm", "mult"), [("natural_sup+ssl:simclr", 0.1), ("ssl:simclr", 1.0)])
def test_natural_lr_mult_slows_only_a_natural_backbone(arm: str, mult: float) -> None:
    # SimCLR's recipe: SGD 0.06 at batch 128 -> 0.12 at 256, x lr_scale 2.5 = 0.3; wd 5e-4
    cfg = PretrainConfig(arm=arm, batch_size=256, lr_scale=2.5, natural_lr_mult=0.1)
    method = METHODS["simclr"].build(create_backbone("resnet20_cifar"))
    groups = pretrain_stage.param_groups(method, METHODS["simclr"], cfg)
    backbone = {id(p) for p in method.backbone.parameters()}
    head = {id(p) for p in method.projection_head.parameters()}
    for g in groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= backbone or ids <= head  # a group never mixes backbone and head
        assert g["lr"] == pytest.approx(0.3 * mult if ids <= backbone else 0.3)
        assert g["weight_decay"] in (0.0, 5e-4)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(backbone | head)  # every trainable parameter, once
    biases = {id(p) for n, p in method.named_parameters() if n.endswith("bias")}
    assert all(g["weight_decay"] == 0.0 for g in groups if {id(p) for p in g["params"]} & biases)


def test_seeds_are_stable_and_distinct() -> None:
    assert runtime.derive_seed(0, "augment", 0, 1) == runtime.derive_seed(0, "augment", 0, 1)
    assert runtime.derive_seed(0, "augment", 0, 1) != runtime.derive_seed(0, "augment", 0, 2)
    state = torch.random.get_rng_state()
    with runtime.seeded(3):
        torch.rand(3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched


def test_plots_return_figures() -> None:
    from matplotlib.figure import Figure

    fig = pretrain_stage.plot_views("synth_lesions", "dino", n=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * (1 + METHODS["dino"].n_views)
    history = pd.DataFrame(
        [
            dict(stage=-1, method="init", epoch=0, loss=float("nan"), knn_acc=0.5),
            dict(stage=0, method="simclr", epoch=1, loss=4.0, knn_acc=0.6),
            dict(stage=1, method="spark", epoch=2, loss=0.9, knn_acc=0.62),
        ]
    )
    assert isinstance(pretrain_stage.plot_history(history), Figure)


# ------------------------------------------------------------------ optimiser recipes (#15) --
def test_optim_recipe_scales_lr_linearly_and_rejects_bad_input() -> None:
    from medstudy.ssl.base import OptimRecipe

    r = OptimRecipe("sgd", 0.06, 128, 5e-4, "lightly")
    assert r.lr(128) == pytest.approx(0.06)
    assert r.lr(256) == pytest.approx(0.12)  # lightly: 6e-2 * batch/128
    assert r.lr(64) == pytest.approx(0.03)
    with pytest.raises(
        ValueError, match=r"unknown optimizer 'lars'; valid: \['sgd', 'adam', 'lamb'\]"
    ):
        OptimRecipe("lars", 0.06, 128, 5e-4, "x")
    with pytest.raises(ValueError, match="base_lr > 0"):
        OptimRecipe("sgd", 0.0, 128, 5e-4, "x")
    with pytest.raises(ValueError, match="cite its source"):
        OptimRecipe("sgd", 0.06, 128, 5e-4, "")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_trains_with_its_own_optimiser_recipe(name: str) -> None:
    """The optimiser the loop builds is the method's recipe: its class, its LR at the run's
    batch size (linear rule) times lr_scale, its momentum/betas and weight decay (not on
    biases and norms). Sources: lightly's CIFAR-10 benchmark; SparK's arg_util.py."""
    import timm.optim

    spec = METHODS[name]
    expected = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "lamb": timm.optim.Lamb,
    }[spec.optim.name]
    cfg = PretrainConfig(arm=f"ssl:{name}", batch_size=64, lr_scale=0.5)
    method = spec.build(create_backbone("resnet20_cifar"))
    groups = pretrain_stage.param_groups(method, spec, cfg)
    opt = pretrain_module.OPTIMIZERS[spec.optim.name](groups, spec.optim)
    assert type(opt) is expected
    lr = spec.optim.base_lr * 64 / spec.optim.base_batch * 0.5
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr] * len(opt.param_groups))
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, spec.optim.weight_decay}
    if spec.optim.name == "sgd":
        assert all(g["momentum"] == spec.optim.momentum for g in opt.param_groups)
    else:
        assert all(tuple(g["betas"]) == spec.optim.betas for g in opt.param_groups)
    assert spec.optim.source


def test_recipes_follow_their_sources() -> None:
    """Pinned against the cited code: lightly's CIFAR-10 benchmark (SGD 6e-2 x batch/128, wd
    5e-4; SwAV Adam 1e-3 x batch/128, wd 1e-6) and SparK's arg_util.py (LAMB 2e-4 x bs/256,
    wd 0.04, betas (0.9, 0.95))."""
    from medstudy.ssl.spark import SPARK_LAMB

    for name in ("simclr", "mocov2", "byol", "barlowtwins", "dino"):
        o = METHODS[name].optim
        assert (o.name, o.base_lr, o.base_batch, o.weight_decay, o.momentum) == (
            "sgd",
            0.06,
            128,
            5e-4,
            0.9,
        )
    o = METHODS["swav"].optim
    assert (o.name, o.base_lr, o.base_batch, o.weight_decay) == ("adam", 1e-3, 128, 1e-6)
    assert (SPARK_LAMB.name, SPARK_LAMB.base_lr, SPARK_LAMB.base_batch) == ("lamb", 2e-4, 256)
    assert (SPARK_LAMB.weight_decay, SPARK_LAMB.betas) == (0.04, (0.9, 0.95))
    # chosen on val: SparK's LAMB at its ImageNet LR (3.2e-3) as the LR at batch 128
    o = METHODS["spark"].optim
    assert (o.name, o.base_lr, o.base_batch, o.weight_decay, o.betas) == (
        "lamb",
        3.2e-3,
        128,
        0.04,
        (0.9, 0.95),
    )


def test_curriculum_stages_use_their_own_method_lr() -> None:
    cfg = PretrainConfig(arm="curriculum", batch_size=256, curriculum=("simclr:1", "swav:1"))
    assert pretrain_stage.method_lr(METHODS["simclr"], cfg) == pytest.approx(0.12)
    assert pretrain_stage.method_lr(METHODS["swav"], cfg) == pytest.approx(2e-3)
