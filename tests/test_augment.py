"""Batched augmentation: shapes, determinism, per-sample randomness, exact identities."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torchvision.transforms.functional import rgb_to_grayscale

from medstudy.augment import (
    BLUR_SIGMA,
    IDENTITY,
    RECIPES,
    ROTATION_INVARIANT_DATASETS,
    AugmentRecipe,
    ViewTransform,
    _grey,
    _hue_matrices,
    augment_batch,
    make_views,
    recipe_for_dataset,
)
from medstudy.data.tensors import IMAGENET_MEAN, IMAGENET_STD


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(n: int = 8, c: int = 3, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), generator=_gen(seed), dtype=torch.uint8)


@pytest.mark.parametrize("name", sorted(RECIPES))
@pytest.mark.parametrize("channels", [1, 3])
def test_views_have_the_recipe_shapes(name: str, channels: int) -> None:
    recipe = RECIPES[name].for_modality(channels)
    views = make_views(_batch(c=channels), recipe, _gen())
    assert len(views) == recipe.n_views
    for view, transform in zip(views, recipe.views, strict=True):
        side = transform.output_size or 28
        assert view.shape == (8, 3, side, side)  # model input: always 3 channels
        assert view.dtype == torch.float32 and torch.isfinite(view).all()


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_augment_stays_in_unit_range(name: str) -> None:
    x = _batch().float() / 255
    for view in RECIPES[name].views:
        out = augment_batch(x, view, _gen())
        assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_same_generator_state_gives_same_views(name: str) -> None:
    a = make_views(_batch(), RECIPES[name], _gen(7))
    b = make_views(_batch(), RECIPES[name], _gen(7))
    c = make_views(_batch(), RECIPES[name], _gen(8))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))


def test_parameters_are_drawn_per_sample() -> None:
    # Eight copies of one image: a per-batch draw would give eight identical outputs.
    x = (_batch(n=1).float() / 255).expand(8, -1, -1, -1).contiguous()
    out = augment_batch(x, RECIPES["simclr"].views[0], _gen())
    flat = out.flatten(1)
    distinct = {tuple(row.tolist()) for row in flat}
    assert len(distinct) == 8


def test_all_probabilities_zero_is_the_identity() -> None:
    x = _batch().float() / 255
    assert torch.equal(augment_batch(x, IDENTITY, _gen()), x)
    grey = _batch(c=1).float() / 255
    assert torch.equal(augment_batch(grey, IDENTITY, _gen()), grey)


def test_flip_and_rotation_are_exact_resamplings() -> None:
    x = _batch().float() / 255
    flip = replace(IDENTITY, hflip_prob=1.0)
    torch.testing.assert_close(augment_batch(x, flip, _gen()), x.flip(-1), atol=1e-5, rtol=0)
    vflip = replace(IDENTITY, vflip_prob=1.0)
    torch.testing.assert_close(augment_batch(x, vflip, _gen()), x.flip(-2), atol=1e-5, rtol=0)
    rot = augment_batch(x, replace(IDENTITY, rot90_prob=1.0), _gen())
    for i in range(x.shape[0]):
        errors = [(rot[i] - torch.rot90(x[i], k, (1, 2))).abs().max() for k in (1, 2, 3)]
        assert min(errors) < 1e-5


def test_grey_stays_grey() -> None:
    recipe = RECIPES["simclr"].for_modality(1)
    x = _batch(c=1).float() / 255
    for view in recipe.views:
        assert view.saturation == 0 and view.hue == 0 and view.grayscale_prob == 0
        assert augment_batch(x, view, _gen()).shape[1] == 1
    # Model input replicates the grey view into 3 identical (then normalised) channels.
    (view,) = make_views(_batch(c=1), replace(recipe, views=recipe.views[:1]), _gen())
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = view * std + mean
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2], atol=1e-5, rtol=0)
    # Un-normalised views keep one channel, so a grey image is never coloured.
    raw = make_views(_batch(c=1), recipe, _gen(), model_input=False)
    assert all(v.shape[1] == 1 for v in raw)


def test_modality_adjustments() -> None:
    simclr = RECIPES["simclr"]
    histology = recipe_for_dataset(simclr, "pcam28_subset", 3)
    assert "pcam28_subset" in ROTATION_INVARIANT_DATASETS
    assert all(v.vflip_prob > 0 and v.rot90_prob > 0 for v in histology.views)
    cxr = recipe_for_dataset(simclr, "pneumoniamnist", 1)
    assert all(v.vflip_prob == 0 and v.rot90_prob == 0 for v in cxr.views)
    with pytest.raises(ValueError, match="channels"):
        simclr.for_modality(2)


def test_multicrop_recipes_have_two_global_crops_at_28_px() -> None:
    # lightly's CIFAR-10 benchmark: DINO without local views, SwAV 2 crops at min scale 0.14
    for name in ("dino", "swav"):
        views = RECIPES[name].views
        assert [v.output_size for v in views] == [None, None]
        assert all(v.crop_scale == (0.14, 1.0) for v in views)


@pytest.mark.parametrize("side", [28, 224])
def test_blur_has_the_papers_strength_relative_to_the_image_side(side: int) -> None:
    # The papers draw sigma in [0.1, 2.0] px on 224 px crops. Measured on an impulse: the
    # blurred image's spatial variance along x is the kernel's, <= sigma_max^2 (the sampled and
    # truncated Gaussian has slightly less than sigma^2).
    assert BLUR_SIGMA == (0.1 / 224, 2.0 / 224)
    x = torch.zeros(1, 1, side, side)
    x[0, 0, side // 2, side // 2] = 1.0
    strongest = replace(IDENTITY, blur_prob=1.0, blur_sigma=(BLUR_SIGMA[1], BLUR_SIGMA[1]))
    out = augment_batch(x, strongest, _gen())[0, 0]
    t = torch.arange(side, dtype=torch.float32) - side // 2
    var_x = float((out.sum(0) * t**2).sum() / out.sum())
    sigma_px = BLUR_SIGMA[1] * side
    assert var_x <= sigma_px**2 + 1e-6
    if side == 224:  # 2 px: a real blur
        assert var_x >= (0.9 * sigma_px) ** 2
    else:  # at most 0.25 px at 28 px: the impulse keeps > 90 % of its mass
        assert float(out[side // 2, side // 2]) > 0.9


def test_grey_luma_matches_torchvision() -> None:
    x = _batch().float() / 255
    torch.testing.assert_close(_grey(x), rgb_to_grayscale(x), atol=1e-6, rtol=0)


def test_hue_rotation_keeps_grey_pixels_and_zero_is_identity() -> None:
    eye = _hue_matrices(torch.zeros(1))[0]
    torch.testing.assert_close(eye, torch.eye(3), atol=1e-5, rtol=0)
    grey = torch.full((1, 3, 1, 1), 0.4)
    m = _hue_matrices(torch.tensor([0.3]))
    torch.testing.assert_close(torch.einsum("nij,njhw->nihw", m, grey), grey, atol=1e-5, rtol=0)


def test_blur_keeps_a_constant_image_constant() -> None:
    x = torch.full((4, 3, 28, 28), 0.3)
    out = augment_batch(x, replace(IDENTITY, blur_prob=1.0, blur_sigma=(0.02, 0.05)), _gen())
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)
    img = _batch(n=4).float() / 255
    blurred = augment_batch(img, replace(IDENTITY, blur_prob=1.0, blur_sigma=(0.04, 0.04)), _gen())
    assert blurred.std() < img.std()  # blur removes high frequencies


def test_bad_parameters_and_devices_fail_clearly() -> None:
    with pytest.raises(ValueError, match="hflip_prob"):
        ViewTransform(hflip_prob=1.5)
    with pytest.raises(ValueError, match="crop_scale"):
        ViewTransform(crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"\(N, 1\|3, H, W\)"):
        augment_batch(torch.zeros(2, 2, 8, 8), IDENTITY, _gen())
    assert isinstance(RECIPES["byol"], AugmentRecipe)
