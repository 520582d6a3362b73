"""Attribution registry, mask metrics, lung masks and the randomisation sanity check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from torch import nn

from medstudy.attribution import (
    ATTRIBUTIONS,
    AttributionSpec,
    attribute,
    cascade_blocks,
    cascading_randomisation,
    gradcam_layer,
    mean_baseline,
    sanity_flag,
)
from medstudy.data.synth import generate_synth_lesions
from medstudy.data.tensors import IMAGENET_MEAN, IMAGENET_STD, to_float, to_model_input
from medstudy.masks import (
    energy_pointing_game,
    lesion_masks_by_size,
    lung_field_mask,
    mass_in_mask,
    metrics_by_size,
    otsu_threshold,
    pixel_auc,
    plot_lung_masks,
    pointing_game,
)
from medstudy.models import Backbone, Classifier, create_backbone


# ------------------------------------------------------------------------- fixtures ----
class TinyBackbone(Backbone):
    """Two conv stages with the Backbone interface (``stages``), for fast attribution tests."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "tiny"
        self.feature_dim = 8
        self.stages = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
                nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU()),
            ]
        )


def tiny_model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(TinyBackbone(), nn.Linear(8, 2))


@pytest.fixture(scope="module")
def fundus_input() -> torch.Tensor:
    data = generate_synth_lesions(6, size=28, seed=0)
    u8 = torch.from_numpy(np.ascontiguousarray(data.images.transpose(0, 3, 1, 2)))
    return to_model_input(to_float(u8))


FAST = {"integrated_gradients": {"n_steps": 8}}


# ----------------------------------------------------------------------- mask metrics ----
def test_mass_in_mask_all_none_half() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2] = True  # top half
    inside = np.where(mask, 1.0, 0.0)
    outside = np.where(mask, 0.0, 2.0)
    half = np.ones((4, 4))
    with_negative = np.where(mask, 1.0, -5.0)  # negative evidence outside is not mass
    attr = np.stack([inside, outside, half, with_negative])
    masks = np.broadcast_to(mask, attr.shape)
    np.testing.assert_array_equal(mass_in_mask(attr, masks), [1.0, 0.0, 0.5, 1.0])
    # No positive mass, or an empty mask: undefined.
    assert np.isnan(mass_in_mask(-np.ones((4, 4)), mask)).all()
    assert np.isnan(mass_in_mask(np.ones((4, 4)), np.zeros((4, 4), bool))).all()
    # Score-CAM's energy pointing game on a non-negative map is the same quantity.
    assert energy_pointing_game is mass_in_mask
    with pytest.raises(ValueError, match="same shape"):
        mass_in_mask(attr, mask[None])


def test_pointing_game_hit_miss_and_tolerance() -> None:
    attr = np.zeros((5, 5))
    attr[2, 2] = 3.0
    hit = np.zeros((5, 5), dtype=bool)
    hit[1:4, 1:4] = True
    side = np.zeros((5, 5), dtype=bool)
    side[2, 3] = True  # edge-adjacent to the top pixel: distance 1
    diagonal = np.zeros((5, 5), dtype=bool)
    diagonal[3, 3] = True  # distance sqrt(2)
    assert pointing_game(attr, hit)[0] == 1.0
    assert pointing_game(attr, side)[0] == 0.0
    assert pointing_game(attr, side, tolerance=1)[0] == 1.0
    assert pointing_game(attr, diagonal, tolerance=1)[0] == 0.0  # Euclidean disc
    assert pointing_game(attr, diagonal, tolerance=1.5)[0] == 1.0
    assert np.isnan(pointing_game(np.ones((5, 5)), hit)[0])  # constant map: no top pixel
    assert np.isnan(pointing_game(attr, np.zeros((5, 5), bool))[0])


def test_pixel_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    attr = np.round(rng.normal(size=(5, 8, 8)), 1)  # rounding creates ties
    mask = rng.random((5, 8, 8)) < 0.2
    mask[:, 0, 0] = True
    expected = [roc_auc_score(m.ravel(), a.ravel()) for a, m in zip(attr, mask, strict=True)]
    np.testing.assert_allclose(pixel_auc(attr, mask), expected, rtol=1e-12)
    perfect = np.where(mask[0], 1.0, 0.0)
    assert pixel_auc(perfect, mask[0])[0] == 1.0
    assert np.isnan(pixel_auc(attr[0], np.ones((8, 8), bool))[0])


def test_metrics_by_size_tidy_table() -> None:
    attr = np.zeros((2, 4, 4))
    attr[0, 0, 0] = 1.0  # image 0: all mass on its minute lesion
    attr[1, 3, 3] = 1.0  # image 1: all mass on its large lesion
    minute = np.zeros((2, 4, 4), bool)
    minute[0, 0, 0] = True
    large = np.zeros((2, 4, 4), bool)
    large[:, 2:, 2:] = True
    table = metrics_by_size(attr, {"minute": minute, "large": large}, sample_ids=["a", "b"])
    assert list(table.columns) == ["sample_id", "size_class", "metric", "value"]
    got = table.set_index(["sample_id", "size_class", "metric"])["value"]
    assert got["a", "minute", "mass_in_mask"] == 1.0
    assert got["a", "minute", "pointing_game"] == 1.0
    assert got["a", "minute", "area_fraction"] == 1 / 16
    assert got["a", "large", "mass_in_mask"] == 0.0
    assert got["b", "large", "pointing_game"] == 1.0
    assert ("b", "minute", "mass_in_mask") not in got.index  # no minute lesion in image b
    assert len(table) == 3 * 4


def test_lesion_masks_by_size_partition_synth_masks() -> None:
    data = generate_synth_lesions(40, size=28, seed=3)
    by_size = lesion_masks_by_size(data)
    assert list(by_size) == ["minute", "small", "large"]
    stacked = np.stack(list(by_size.values()))
    assert (stacked.sum(axis=0) <= 1).all()  # disjoint
    np.testing.assert_array_equal(stacked.any(axis=0), data.masks > 0)  # cover all lesions
    area = data.lesions.groupby("size_class")["area_px"].sum()
    for name, mask in by_size.items():
        assert int(mask.sum()) == int(area.get(name, 0))


# --------------------------------------------------------------------------- lung mask ----
def ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def two_lobe_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = (28, 28)
    left = ellipse(shape, 14, 8.5, 8, 3.5)
    right = ellipse(shape, 14, 19.5, 8, 3.5)
    img = np.full(shape, 0.05)
    img[ellipse(shape, 14, 14, 13, 12.5)] = 0.8
    img[left | right] = 0.25
    img += np.random.default_rng(seed).normal(0, 0.02, shape)
    return img, left, right


def test_lung_field_mask_finds_two_lobes() -> None:
    img, left, right = two_lobe_image()
    mask = lung_field_mask(img)
    labels, k = ndimage.label(mask)
    assert k == 2
    for lobe in (left, right):
        comp = labels == np.bincount(labels[lobe]).argmax()  # the component on this lobe
        iou = (comp & lobe).sum() / (comp | lobe).sum()
        assert iou > 0.8
    # Batched input (uint8 too) gives the same per-image masks.
    u8 = np.clip(img * 255, 0, 255).astype(np.uint8)
    batch = lung_field_mask(np.stack([u8, u8]))
    assert batch.shape == (2, 28, 28) and batch.dtype == bool
    assert np.array_equal(batch[0], batch[1])
    # A flat image has no lungs.
    assert not lung_field_mask(np.full((28, 28), 0.5)).any()


def test_plot_lung_masks_grid_for_32_images() -> None:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    imgs = np.stack([two_lobe_image(s)[0] for s in range(32)])
    fig = plot_lung_masks(imgs, lung_field_mask(imgs))
    assert isinstance(fig, Figure)
    assert sum(ax.has_data() for ax in fig.axes) == 32
    plt.close(fig)


def test_otsu_threshold_matches_skimage() -> None:
    filters = pytest.importorskip("skimage.filters")
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0.2, 0.05, 500), rng.normal(0.7, 0.1, 300)])
    assert otsu_threshold(v) == pytest.approx(filters.threshold_otsu(v), rel=1e-12)


# ------------------------------------------------------------------------ attribution ----
@pytest.mark.parametrize("method", sorted(ATTRIBUTIONS))
def test_every_method_runs_and_is_deterministic(method: str, fundus_input: torch.Tensor) -> None:
    model = tiny_model()
    model.train()
    x = fundus_input[:3]
    maps = attribute(
        model, x, target=[0, 1, 1], method=method, batch_size=2, **FAST.get(method, {})
    )
    assert maps.shape == (3, 28, 28) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and np.abs(maps).sum() > 0
    again = attribute(model, x, [0, 1, 1], method, batch_size=2, seed=0, **FAST.get(method, {}))
    assert np.array_equal(maps, again)
    assert model.training  # mode restored
    if not ATTRIBUTIONS[method].signed:
        assert (maps >= 0).all()


def test_unknown_method_and_option_are_errors(fundus_input: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="valid: .*grad_cam.*integrated_gradients"):
        attribute(tiny_model(), fundus_input[:1], 0, "lime")
    with pytest.raises(ValueError, match="n_step"):
        attribute(tiny_model(), fundus_input[:1], 0, "integrated_gradients", n_step=3)


def test_integrated_gradients_completeness_and_baselines(fundus_input: torch.Tensor) -> None:
    model = tiny_model().eval()
    x = fundus_input[:2]
    maps = attribute(model, x, 1, "integrated_gradients", n_steps=64)
    black = ((0.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).view(1, 3, 1, 1)
    with torch.no_grad():
        f_x = model(x)[:, 1]
        f_zero = model(torch.zeros_like(x))[:, 1]  # default: 0 in normalised space
        f_black = model(black.expand_as(x))[:, 1]
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), (f_x - f_zero).numpy(), atol=2e-3)
    black_maps = attribute(model, x, 1, "integrated_gradients", n_steps=64, baseline="black")
    np.testing.assert_allclose(black_maps.sum(axis=(1, 2)), (f_x - f_black).numpy(), atol=2e-3)
    mean_maps = attribute(
        model, x, 1, "integrated_gradients", n_steps=4, baseline=mean_baseline(fundus_input)
    )
    assert mean_maps.shape == (2, 28, 28)


def test_grad_cam_on_resnet20_uses_last_stage() -> None:
    backbone = create_backbone("resnet20_cifar", seed=0)
    model = Classifier(backbone, nn.Linear(64, 3))
    assert gradcam_layer(model) is backbone.stages[-1]
    u8 = torch.randint(
        0, 256, (2, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    maps = attribute(model, u8, [0, 2], "grad_cam")
    assert maps.shape == (2, 28, 28) and (maps >= 0).all() and np.isfinite(maps).all()
    with pytest.raises(ValueError, match="stages"):
        gradcam_layer(nn.Sequential(nn.Conv2d(3, 2, 3)))


# -------------------------------------------------------------------- sanity check ----
def test_cascading_randomisation_flags_weight_independent_maps(
    fundus_input: torch.Tensor,
) -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    echo = AttributionSpec(compute=lambda m, x, t, o: x.sum(dim=1), reference="the input itself")
    table = cascading_randomisation(model, fundus_input, 1, echo, seed=0)
    assert isinstance(table, pd.DataFrame)
    assert list(table["randomised"]) == ["head", "backbone.stage1", "backbone.stage0"]
    assert list(table.columns) == ["step", "randomised", "spearman", "spearman_sd", "n_images"]
    np.testing.assert_allclose(table["spearman"], 1.0)
    assert sanity_flag(table)
    # The model itself is untouched (the cascade runs on a deep copy).
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("method", ["saliency", "grad_cam"])
def test_cascading_randomisation_passes_gradient_methods(
    method: str, fundus_input: torch.Tensor
) -> None:
    table = cascading_randomisation(tiny_model(), fundus_input, 1, method, seed=0)
    assert len(table) == 3 and table["n_images"].iloc[-1] > 0
    assert not sanity_flag(table)
    again = cascading_randomisation(tiny_model(), fundus_input, 1, method, seed=0)
    pd.testing.assert_frame_equal(table, again)


def test_sanity_flag_rule() -> None:
    assert sanity_flag([0.9, 0.8, 0.6])
    assert not sanity_flag([0.9, 0.4, 0.1])
    assert not sanity_flag([0.9, 0.6, 0.49], threshold=0.5)
    with pytest.raises(ValueError, match="NaN"):
        sanity_flag([0.5, float("nan")])


def test_cascade_blocks_order() -> None:
    model = Classifier(create_backbone("resnet20_cifar", seed=0), nn.Linear(64, 2))
    names = [n for n, _ in cascade_blocks(model)]
    assert names == [
        "head",
        "backbone.stage3",
        "backbone.stage2",
        "backbone.stage1",
        "backbone.stage0",
    ]
