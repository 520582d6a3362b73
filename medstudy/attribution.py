"""Attribution maps (captum), mask metrics, lung-field masks and the randomisation sanity check
(claim C7).

``ATTRIBUTIONS`` maps a name to an :class:`AttributionSpec`; :func:`attribute` runs one on a
:class:`medstudy.models.Classifier` (normalised image -> logits) and returns one value per pixel,
``(N, H, W)``. The mask metrics are pure numpy functions of such maps and boolean masks of the
same shape; they score how much of a map falls on ground-truth lesions (``synth_lesions``,
split by lesion size with :func:`lesion_masks_by_size`) or, for chest X-rays, on the lung
fields (:func:`lung_field_mask`).

Data contract
-------------
- ``images``: the model input, float ``(N, 3, H, W)`` as made by
  :func:`medstudy.data.to_model_input`; a uint8 ``(N, C, H, W)`` array/tensor is put through the
  package pipeline (``to_float`` -> ``to_model_input``) first.
- ``target``: the output index explained, one int for all images or ``(N,)`` ints (the class
  for single-label tasks, the label index for multi-label ones).
- Attribution maps ``attr``: float ``(N, H, W)`` (an ``(H, W)`` map is one image); masks: bool
  ``(N, H, W)`` of the same shape. Metrics return ``(N,)`` float arrays, NaN where undefined
  (each function says when).

References
----------
- Sundararajan, Taly & Yan (2017), Integrated Gradients, ICML.
- Selvaraju et al. (2017), Grad-CAM, ICCV.
- Zeiler & Fergus (2014), occlusion, ECCV.
- Simonyan, Vedaldi & Zisserman (2014), saliency maps, ICLR workshop.
- Sturmfels, Lundberg & Lee (2020), "Visualizing the impact of feature attribution baselines",
  Distill (why a black IG baseline hides dark features).
- Zhang et al. (2018), "Top-down neural attention by excitation backprop", IJCV (pointing game).
- Wang et al. (2020), Score-CAM, CVPR workshops (energy-based pointing game).
- Adebayo et al. (2018), "Sanity checks for saliency maps", NeurIPS (cascading randomisation).
- Kokhlikyan et al. (2020), "Captum: a unified and generic model interpretability library for
  PyTorch", arXiv:2009.07896.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency
from scipy import stats as sps
from torch import nn

from medstudy.data.tensors import IMAGENET_MEAN, IMAGENET_STD, to_float, to_model_input

if TYPE_CHECKING:  # matplotlib is only needed for plotting; keep the import cheap
    pass

__all__ = [
    "ATTRIBUTIONS",
    "AttributionSpec",
    "attribute",
    "cascade_blocks",
    "cascading_randomisation",
    "gradcam_layer",
    "mean_baseline",
    "sanity_flag",
]

Baseline = str | float | torch.Tensor
Compute = Callable[[nn.Module, torch.Tensor, torch.Tensor, Mapping[str, Any]], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttributionSpec:
    """One attribution method.

    ``compute(model, x, target, options)`` takes a batch of model input ``x`` (B, 3, H, W),
    ``target`` (B,) int64 and the resolved options, and returns one value per pixel (B, H, W).
    ``options`` are the defaults; :func:`attribute` overrides them by keyword and rejects
    unknown names. ``signed``: whether maps carry a sign (IG, occlusion) or are >= 0 (saliency,
    Grad-CAM).
    """

    compute: Compute
    options: Mapping[str, Any] = field(default_factory=dict)
    signed: bool = True
    reference: str = ""


def mean_baseline(images: torch.Tensor) -> torch.Tensor:
    """Per-channel mean of ``images`` (N, 3, H, W) as a (3, 1, 1) constant image.

    Pass it as ``baseline=`` (e.g. the training split's mean) for the dataset-mean IG /
    occlusion baseline of a sensitivity analysis; it depends on the images it is computed on.
    """
    return torch.as_tensor(images).float().mean(dim=(0, 2, 3)).view(3, 1, 1)


def _baseline(x: torch.Tensor, baseline: Baseline) -> torch.Tensor | float:
    """The IG / occlusion reference input in model-input (normalised) space."""
    if isinstance(baseline, str):
        if baseline == "zeros":
            return 0.0
        if baseline == "black":
            mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device)
            std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device)
            return (-mean / std).view(1, 3, 1, 1).expand_as(x).contiguous()
        raise ValueError(f"unknown baseline {baseline!r}; valid: 'zeros', 'black' or a tensor")
    if isinstance(baseline, int | float):
        return float(baseline)
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    return torch.broadcast_to(b, x.shape).contiguous()


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The last stage of the model's backbone (``model.backbone.stages[-1]``, or
    ``model.stages[-1]``): Grad-CAM's layer, the last convolutional feature map."""
    for owner in (getattr(model, "backbone", None), model):
        stages = getattr(owner, "stages", None)
        if isinstance(stages, nn.ModuleList) and len(stages) > 0:
            return stages[-1]
    raise ValueError(
        f"{type(model).__name__} exposes no `stages` (nor `backbone.stages`); "
        "pass layer=<module> to grad_cam"
    )


def _integrated_gradients(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, o: Mapping[str, Any]
) -> torch.Tensor:
    attr = IntegratedGradients(model).attribute(
        x,
        baselines=_baseline(x, o["baseline"]),
        target=target,
        n_steps=int(o["n_steps"]),
        method=str(o["method"]),
        internal_batch_size=o["internal_batch_size"],
    )
    # Channel sum keeps IG's completeness: the map sums to f(x) - f(baseline).
    return attr.sum(dim=1)


def _grad_cam(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, o: Mapping[str, Any]
) -> torch.Tensor:
    layer = o["layer"] if o["layer"] is not None else gradcam_layer(model)
    cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    up = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode=o["upsample"])
    # ReLU again after upsampling: bicubic can overshoot below 0; bilinear cannot.
    return torch.relu(up[:, 0])


def _occlusion_window(h: int, o: Mapping[str, Any]) -> tuple[int, int]:
    # 4 px at 28 px: the window's 16 px is the largest "small" lesion, and with stride 2 any
    # 3 x 3 patch (every minute lesion, <= 6 px, that is not elongated) lies wholly inside some
    # window, so a minute lesion can be hidden completely. Cost: 13 x 13 forward passes per
    # image at 28 px.
    window = int(o["window"]) if o["window"] is not None else max(2, round(4 * h / 28))
    stride = int(o["stride"]) if o["stride"] is not None else max(1, window // 2)
    return window, stride


def _occlusion(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, o: Mapping[str, Any]
) -> torch.Tensor:
    window, stride = _occlusion_window(int(x.shape[-2]), o)
    attr = Occlusion(model).attribute(
        x,
        sliding_window_shapes=(x.shape[1], window, window),
        strides=(x.shape[1], stride, stride),
        baselines=_baseline(x, o["baseline"]),
        target=target,
        perturbations_per_eval=int(o["perturbations_per_eval"]),
    )
    # The window spans all channels, so every channel holds the same output drop: take it once.
    return attr.mean(dim=1)


def _saliency(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, o: Mapping[str, Any]
) -> torch.Tensor:
    # |d logit / d x| summed over channels (Simonyan et al. take the channel max; the sum is
    # the study's one reduction for gradient maps).
    x = x.detach().requires_grad_(True)  # captum warns when it has to switch this on itself
    return Saliency(model).attribute(x, target=target, abs=True).sum(dim=1)


ATTRIBUTIONS: dict[str, AttributionSpec] = {
    # Baseline "zeros" is 0 in *normalised* input space, i.e. the constant image of the
    # normalisation's mean colour (ImageNet mean, the centre of every arm's input), NOT black.
    # Black is avoided on purpose: IG is proportional to (x - baseline), so a black reference
    # gives no attribution to dark pixels -- the fundus background, dark-red microaneurysms and
    # haemorrhages, the dark lung fields -- which would bias claim C7 (Sturmfels et al. 2020).
    # A constant, data-independent reference also makes each map a function of (model, image)
    # alone, identical across arms, datasets, subsets and batch sizes. "black" or a tensor
    # (e.g. mean_baseline(train images)) can be passed for a sensitivity analysis.
    "integrated_gradients": AttributionSpec(
        compute=_integrated_gradients,
        options={
            "n_steps": 50,
            "baseline": "zeros",
            "method": "gausslegendre",
            "internal_batch_size": 512,
        },
        signed=True,
        reference="Sundararajan et al. 2017",
    ),
    "grad_cam": AttributionSpec(
        compute=_grad_cam,
        options={"layer": None, "upsample": "bilinear"},
        signed=False,
        reference="Selvaraju et al. 2017",
    ),
    "occlusion": AttributionSpec(
        compute=_occlusion,
        options={"window": None, "stride": None, "baseline": "zeros", "perturbations_per_eval": 64},
        signed=True,
        reference="Zeiler & Fergus 2014",
    ),
    "saliency": AttributionSpec(
        compute=_saliency, options={}, signed=False, reference="Simonyan et al. 2014"
    ),
}


def _spec(method: str | AttributionSpec) -> AttributionSpec:
    if isinstance(method, AttributionSpec):
        return method
    if method not in ATTRIBUTIONS:
        raise ValueError(f"unknown attribution method {method!r}; valid: {sorted(ATTRIBUTIONS)}")
    return ATTRIBUTIONS[method]


def _model_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return to_model_input(to_float(x))
    return x.float()


def _targets(target: int | npt.ArrayLike | torch.Tensor, n: int) -> torch.Tensor:
    t = torch.as_tensor(target, dtype=torch.int64).reshape(-1)
    if t.numel() == 1:
        return t.expand(n).clone()
    if t.numel() != n:
        raise ValueError(f"target must be one int or {n} ints, got {t.numel()}")
    return t


def attribute(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    target: int | npt.ArrayLike | torch.Tensor,
    method: str | AttributionSpec,
    batch_size: int = 64,
    seed: int = 0,
    **options: Any,
) -> np.ndarray:
    """Attribution maps ``(N, H, W)`` float32 of ``model``'s ``target`` output.

    ``method`` is a key of :data:`ATTRIBUTIONS` (or a spec); ``options`` override its defaults
    (e.g. ``n_steps=16`` for IG, ``window=6`` for occlusion) and unknown names are an error.
    Images are processed in input order, ``batch_size`` at a time, with the model in eval mode
    (BatchNorm running statistics; restored afterwards) and gradients enabled. Every
    registered method is deterministic; the computation still runs under a forked torch RNG
    seeded with ``seed`` so that a stochastic method (e.g. a noise tunnel) is reproducible
    without touching the global RNG. Same inputs and seed give identical output on CPU.
    """
    spec = _spec(method)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for this method; valid: {sorted(spec.options)}"
        )
    opts = {**spec.options, **options}
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x_all = _model_input(images)
    n = int(x_all.shape[0])
    targets = _targets(target, n)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    out: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), torch.enable_grad():
            torch.manual_seed(seed)
            for start in range(0, n, batch_size):
                x = x_all[start : start + batch_size].to(device)
                t = targets[start : start + batch_size].to(device)
                a = spec.compute(model, x, t, opts)
                if tuple(a.shape) != (x.shape[0], *x.shape[-2:]):
                    raise RuntimeError(
                        f"attribution returned shape {tuple(a.shape)}, expected "
                        f"{(x.shape[0], *x.shape[-2:])}"
                    )
                out.append(a.detach().float().cpu().numpy())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, *x_all.shape[-2:]), dtype=np.float32)
    return np.concatenate(out)


# --------------------------------------------------------------------------------------------
# Sanity check: cascading randomisation (Adebayo et al. 2018)
# --------------------------------------------------------------------------------------------
def cascade_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Blocks randomised by :func:`cascading_randomisation`, from the output down.

    A :class:`medstudy.models.Classifier`: ``head``, then the backbone's stages from last to
    first (``backbone.stage{k}``); a model with ``stages``: its stages from last to first; any
    other model: its direct children that hold parameters, last to first.
    """
    backbone = getattr(model, "backbone", None)
    stages = getattr(backbone, "stages", None)
    head = getattr(model, "head", None)
    if isinstance(stages, nn.ModuleList) and isinstance(head, nn.Module):
        blocks = [("head", head)]
        blocks += [(f"backbone.stage{i}", stages[i]) for i in reversed(range(len(stages)))]
        return blocks
    own = getattr(model, "stages", None)
    if isinstance(own, nn.ModuleList) and len(own) > 0:
        return [(f"stage{i}", own[i]) for i in reversed(range(len(own)))]
    children = [(n, c) for n, c in model.named_children() if any(True for _ in c.parameters())]
    if not children:
        raise ValueError(f"{type(model).__name__} has no parameterised blocks to randomise")
    return children[::-1]


def _randomise(block: nn.Module, seed: int) -> None:
    """Re-initialise ``block`` in place with PyTorch's default init of each layer type
    (``reset_parameters``: conv/linear weights Kaiming-uniform, BatchNorm to identity with
    running statistics reset), under a forked RNG seeded with ``seed``. Parameters of modules
    without ``reset_parameters`` are randomly permuted (their values kept, their structure
    destroyed)."""
    covered: set[int] = set()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        for module in block.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in module.parameters(recurse=False))
        for p in block.parameters():
            if id(p) not in covered:
                perm = torch.randperm(p.numel(), generator=gen).to(p.device)
                p.copy_(p.reshape(-1)[perm].reshape(p.shape))


def _rank_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each image's two maps (NaN if a map is constant)."""
    out = np.full(a.shape[0], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sps.ConstantInputWarning)
        for i in range(a.shape[0]):
            out[i] = sps.spearmanr(a[i].ravel(), b[i].ravel()).statistic
    return out


def cascading_randomisation(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    target: int | npt.ArrayLike | torch.Tensor,
    method: str | AttributionSpec,
    seed: int = 0,
    batch_size: int = 64,
    absolute: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """Cascading model-parameter randomisation test of Adebayo et al. (2018).

    On a deep copy of ``model`` (the original is untouched), the blocks of
    :func:`cascade_blocks` are re-initialised one after another from the top (``head``) down to
    the stem, cumulatively; after each step the attributions are recomputed and compared with
    those of the trained model by the Spearman rank correlation of the two maps of each image
    (``scipy.stats.spearmanr``; of the absolute values with ``absolute=True``, Adebayo et al.'s
    main variant, since randomisation may flip signs). Step ``k`` uses the seed
    ``SeedSequence([seed, k])``. Stage-level blocks are coarser than the paper's per-layer
    cascade; the endpoint (every weight random) is the same.

    Returns one row per step: ``step`` (1..K), ``randomised`` (the block re-initialised at this
    step; all blocks above it are random too), ``spearman`` (mean over images, NaN for
    constant maps excluded), ``spearman_sd`` and ``n_images`` (images with a defined value).
    A method that explains the model should decorrelate as the weights are destroyed.
    """
    trained = attribute(model, images, target, method, batch_size=batch_size, seed=seed, **options)
    if absolute:
        trained = np.abs(trained)
    randomised = copy.deepcopy(model)
    rows = []
    for step, (name, block) in enumerate(cascade_blocks(randomised), start=1):
        ss = np.random.SeedSequence([int(seed), step])
        _randomise(block, int(ss.generate_state(1, dtype=np.uint32)[0]))
        maps = attribute(
            randomised, images, target, method, batch_size=batch_size, seed=seed, **options
        )
        if absolute:
            maps = np.abs(maps)
        rho = _rank_correlations(trained, maps)
        ok = np.isfinite(rho)
        rows.append(
            {
                "step": step,
                "randomised": name,
                "spearman": float(rho[ok].mean()) if ok.any() else float("nan"),
                "spearman_sd": float(rho[ok].std(ddof=1)) if ok.sum() > 1 else float("nan"),
                "n_images": int(ok.sum()),
            }
        )
    return pd.DataFrame(rows)


def sanity_flag(correlations: pd.DataFrame | npt.ArrayLike, threshold: float = 0.5) -> bool:
    """True if a method fails the randomisation sanity check (insensitive to the weights).

    ``correlations``: the output of :func:`cascading_randomisation` (its ``spearman`` column, in
    step order) or the per-step correlations. Flagged when the maps of the *fully* randomised
    model (last step) still correlate with the trained model's at ``>= threshold``: the map
    then survives the destruction of every learned weight, so it reflects the input (edges,
    intensity) rather than what the model learned. A NaN final value is an error, not a pass.
    """
    if isinstance(correlations, pd.DataFrame):
        values = correlations.sort_values("step")["spearman"].to_numpy(dtype=np.float64)
    else:
        values = np.asarray(correlations, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no correlations given")
    final = float(values[-1])
    if not np.isfinite(final):
        raise ValueError("the final-step correlation is NaN: every randomised map was constant")
    return final >= threshold
