"""SparK: masked image modelling for convolutional networks (Tian et al. 2023, ICLR,
"Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked Modeling",
arXiv:2301.03580; reference code github.com/keyu-tian/SparK). Written from the paper; no code
is copied.

1. **Mask.** The image is cut into patches whose side is the backbone's total downsampling (4 px
   for ResNet-20: 28 px → a 7×7 grid); ``mask_ratio`` (60 %) of them are dropped per image.
2. **Sparse encoding, dense equivalent.** SparK runs the CNN as a submanifold sparse CNN: only
   visible positions exist. Densely, that is: zero the masked positions of the input, of every
   convolution output and of every stage output, and let BatchNorm compute its statistics over
   visible positions only (the paper's sparse BN). Then a masked pixel cannot reach any feature,
   and the "holes" do not shift the normalisation statistics (the two failure modes of naive
   dense masking the paper identifies). Implemented with temporary forward hooks, so any
   backbone made of ``Conv2d``/``BatchNorm2d`` stages works unchanged.
3. **Densify + decode.** At each resolution of the hierarchy the (sparse-BN-normalised) feature
   map's empty positions are filled with a learned per-scale mask token and projected to the
   decoder width; a light UNet decoder (transposed-conv upsampling + two 3×3 convs per level,
   widths halving) adds them from the coarsest to the finest level and predicts pixels. The
   width is SparK's 768 capped at the encoder's deepest width (:func:`spark_decoder_width`:
   768 for ResNet-50, 64 for ResNet-20).
4. **Loss.** MSE to per-patch-normalised pixels, on masked patches only; for a grey image
   (``StepContext.image_channels == 1``) on its one channel.

Mask grid: the mask is at the backbone's total stride, as in SparK; a grid under 4×4 (64 px
at ResNet-50's stride 32 is 2×2: 2 of 4 patches masked) trains but warns once
(:func:`small_grid_message`).

Deviation from the paper at 28 px: the full-resolution level (ResNet-20's stem and first stage
keep 28 px) also gets a skip connection, because there the hierarchy starts at stride 1 rather
than 4.

Optimiser: SparK's LAMB (betas 0.9/0.95, weight decay 0.04, gradient norm clipped at 5), at its
ImageNet LR as the LR of batch 128 (:data:`SPARK_LAMB_AT_IMAGENET_LR`, chosen on val); SparK's
own batch rule (:data:`SPARK_LAMB`) gives 1e-4 at batch 128, too small for a few hundred steps.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import replace

import torch
from torch import nn

from medstudy.augment import SPARK as SPARK_RECIPE
from medstudy.models import Backbone
from medstudy.ssl.base import MethodSpec, OptimRecipe, SSLMethod, StepContext
from medstudy.ssl.distributed import all_reduce_sum

#: SparK's own optimiser (keyu-tian/SparK, ``pretrain/utils/arg_util.py``): LAMB at
#: ``base_lr 2e-4 x batch/256``, betas (0.9, 0.95) for ResNets, gradient norm clipped at 5.
#: Its weight decay runs on a cosine from 0.04 to 0.2 over 1 600 epochs; here it stays 0.04.
SPARK_LAMB = OptimRecipe(
    "lamb",
    2e-4,
    256,
    0.04,
    "SparK arg_util.py: LAMB 2e-4 x batch/256, wd 0.04, betas (0.9, 0.95), clip 5",
    betas=(0.9, 0.95),
)
#: What SparK trains with here: its LAMB at its ImageNet LR (2e-4 x 4096/256 = 3.2e-3) taken as
#: the LR at batch 128, scaled linearly from there. Chosen on val (benchmarks/choose_ssl_on_val.py,
#: PneumoniaMNIST, 300 steps at batch 128, seed 0): kNN / linear-probe val AUC 0.955 / 0.970,
#: vs 0.918 / 0.937 at SparK's own rule (1e-4 at batch 128: a step size for 1 600 epochs, below
#: the random init after 300 steps) and 0.948 / 0.961 with lightly's SGD 0.06 x batch/128; paired
#: DeLong vs SparK's rule +0.037 [+0.015, +0.059] (kNN), +0.033 [+0.016, +0.050] (linear).
SPARK_LAMB_AT_IMAGENET_LR = replace(
    SPARK_LAMB,
    base_lr=3.2e-3,
    base_batch=128,
    source="SparK's LAMB (arg_util.py) at its ImageNet LR 2e-4 x 4096/256 = 3.2e-3, taken as "
    "the LR at batch 128: chosen on val (benchmarks/choose_ssl_on_val.py)",
)

PROBE_SIZE = 32  # input side used once, at build time, to read the stage strides and widths

#: SparK's decoder width: ``LightDecoder(up_sample_ratio, width=768)`` (keyu-tian/SparK,
#: ``pretrain/decoder.py``; ``pretrain/main.py`` never overrides it), for every backbone it
#: pretrains: ResNet-50/101/152/200 (2048 channels at stride 32) and ConvNeXt-S/B/L (768-1536),
#: halving at every ×2 upsampling. SparK has no rule for narrower nets.
SPARK_DECODER_WIDTH = 768
#: Below this grid side SparK's masking is coarse (SparK itself masks a 7×7 grid: 224 px at
#: stride 32); a smaller grid gets a one-time warning (:meth:`SparK.training_step`).
MIN_MASK_GRID = 4


def spark_decoder_width(encoder_channels: int) -> int:
    """The decoder width for an encoder whose deepest stage has ``encoder_channels`` channels:
    SparK's 768 (:data:`SPARK_DECODER_WIDTH`), capped at the encoder's own width, so that the
    decoder of a narrow net is not wider than the net (our cap; SparK only trains wide nets).

    ``timm:resnet50`` (2048) → 768, as SparK; ConvNeXt-S (768) → 768, where SparK's coarsest
    densify projection is the identity. ``resnet20_cifar`` (64) → 64, the width every existing
    ResNet-20 SparK run was trained with (so its runs and results are unchanged).
    """
    return min(SPARK_DECODER_WIDTH, encoder_channels)


def _expand(active: torch.Tensor, size: int) -> torch.Tensor:
    """A (N,1,g,g) patch mask at a feature map of side ``size`` (nearest upsampling)."""
    g = active.shape[-1]
    if size % g:
        raise ValueError(f"feature map of {size} px is not a multiple of the {g}×{g} mask grid")
    r = size // g
    return active.repeat_interleave(r, 2).repeat_interleave(r, 3) if r > 1 else active


def _sparse_batch_norm(
    bn: nn.BatchNorm2d | nn.SyncBatchNorm, x: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """BatchNorm over the visible positions only (SparK's sparse BN); masked outputs are 0.

    ``mask`` is a float (N,1,H,W) 0/1 map. Statistics come from masked sums, E[x] and E[x²]
    (the inputs are conv outputs of moderate scale, so the one-pass variance is accurate in
    fp32); normalisation and affine fold into one per-channel ``x·a + b``. This costs ~5 passes
    over the tensor instead of ~10 for the textbook masked formula (SparK is CPU-bound here).

    Precision: the statistics and the normalisation are computed in float32 whatever the input
    dtype, and the output is cast back to it. Under bf16 autocast (GPU) the conv outputs arrive
    as bf16, whose 8-bit mantissa makes E[x²] − E[x]² cancel catastrophically for channels with
    a large mean and a small spread (tests/test_gpu_paths.py shows it). SparK itself normalises
    the gathered visible features with ``nn.BatchNorm1d`` (keyu-tian/SparK
    ``pretrain/encoder.py``, ``sp_bn_forward``), whose kernels accumulate in float32, and
    pretrains in fp32 (``pretrain/main.py`` has no autocast). An fp32 input takes exactly the
    operations it took before this rule (CPU results unchanged).
    A ``SyncBatchNorm`` (``sync_batchnorm`` under DDP) sums the statistics over all ranks
    (differentiably, as torch's SyncBatchNorm); a plain BatchNorm uses the local batch.
    """
    dtype = x.dtype
    if dtype != torch.float32:
        x, mask = x.float(), mask.float()
    x = x * mask
    if bn.training:
        count = mask.sum()  # visible positions, per channel
        s1, s2 = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        if isinstance(bn, nn.SyncBatchNorm):  # sync_batchnorm under DDP: all ranks' positions
            c = s1.shape[0]
            sums = all_reduce_sum(torch.cat([s1, s2, count.view(1)]))
            s1, s2, count = sums[:c], sums[c : 2 * c], sums[2 * c]
        mean = s1 / count
        # clamp: the one-pass form can round a near-zero variance to a tiny negative value
        var = (s2 / count - mean * mean).clamp_min(0.0)
        with torch.no_grad():
            momentum = 0.1 if bn.momentum is None else bn.momentum
            unbiased = var * count / (count - 1).clamp(min=1)
            bn.running_mean.mul_(1 - momentum).add_(momentum * mean)
            bn.running_var.mul_(1 - momentum).add_(momentum * unbiased)
            bn.num_batches_tracked.add_(1)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = -mean * scale + (bn.bias if bn.affine else 0.0)
    out = (x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)) * mask
    return out if dtype == torch.float32 else out.to(dtype)


@contextlib.contextmanager
def sparse_mode(module: nn.Module, active: torch.Tensor) -> Iterator[None]:
    """Inside this block ``module`` behaves as a sparse CNN on the visible patches ``active``
    (N,1,g,g): conv/pool outputs are zeroed at masked positions, BatchNorm uses visible
    positions only. Restores the module on exit."""
    handles = []
    patched: list[nn.BatchNorm2d | nn.SyncBatchNorm] = []
    masks: dict[tuple[int, torch.dtype], torch.Tensor] = {}  # one expanded mask per size

    def mask_for(x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[-1], x.dtype)
        if key not in masks:
            masks[key] = _expand(active, x.shape[-1]).to(x.dtype)
        return masks[key]

    def zero_masked(_m: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        return out * mask_for(out)

    try:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                handles.append(m.register_forward_hook(zero_masked))
            elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):  # Sync: DDP's conversion
                m.forward = (  # type: ignore[method-assign]
                    lambda x, bn=m: _sparse_batch_norm(bn, x, mask_for(x))
                )
                patched.append(m)
        yield
    finally:
        for h in handles:
            h.remove()
        for m in patched:
            del m.forward  # back to the class's forward


def small_grid_message(side: int, stride: int, mask_ratio: float) -> str:
    """Why a mask grid under :data:`MIN_MASK_GRID` per side is coarse, and what to do."""
    grid = side // stride
    keep = round(grid * grid * (1 - mask_ratio))
    return (
        f"SparK: {side} px at the backbone's stride {stride} is a {grid}x{grid} mask grid: "
        f"{grid * grid - keep} of {grid * grid} patches masked (ratio "
        f"{1 - keep / (grid * grid):.2f}, not {mask_ratio}), each {stride} px. SparK masks at "
        "the encoder's total stride (a finer mask would put visible and masked pixels under one "
        "deepest-level position, which its sparse encoding excludes) and trains at 224 px "
        f"(7x7); use image_size >= {MIN_MASK_GRID * stride} for a "
        f"{MIN_MASK_GRID}x{MIN_MASK_GRID} grid, or a backbone with a smaller stride"
    )


class _UpBlock(nn.Module):
    """×2 upsampling (transposed conv) + two 3×3 convs, as SparK's ``UNetBlock``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin, kernel_size=4, stride=2, padding=1)
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU6(inplace=True),
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class SparK(SSLMethod):
    """Sparse masked modelling on ``backbone`` (see the module docstring)."""

    def __init__(
        self, backbone: Backbone, mask_ratio: float = 0.6, decoder_width: int | None = None
    ):
        super().__init__(backbone)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if decoder_width is not None and decoder_width < 1:
            raise ValueError(
                f"decoder_width must be >= 1 or None (SparK's rule), got {decoder_width}"
            )
        self.mask_ratio = mask_ratio
        self._warned_grid = False
        with torch.no_grad():
            was_training = backbone.training
            backbone.eval()
            outs = backbone.forward_stages(torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
            backbone.train(was_training)
        if decoder_width is None:
            decoder_width = spark_decoder_width(int(outs[-1].shape[1]))
        self.decoder_width = decoder_width
        strides = [PROBE_SIZE // o.shape[-1] for o in outs]
        self.downsample = strides[-1]
        if self.downsample & (self.downsample - 1):
            raise ValueError(f"SparK needs a power-of-two total stride, got {self.downsample}")
        # The deepest stage of every resolution feeds the decoder: {stride: stage index}.
        self.level_stage = {s: i for i, s in enumerate(strides)}
        n_up = int(math.log2(self.downsample))
        level_strides = [self.downsample >> k for k in range(n_up + 1)]  # coarse → fine
        widths = [max(decoder_width >> k, 8) for k in range(n_up + 1)]
        self.level_strides = level_strides
        self.mask_tokens = nn.ParameterList()
        self.densify_norms = nn.ModuleList()
        self.densify_projs = nn.ModuleList()
        self.has_skip: list[bool] = []
        for k, (stride, width) in enumerate(zip(level_strides, widths, strict=True)):
            stage = self.level_stage.get(stride)
            self.has_skip.append(stage is not None)
            channels = int(outs[stage].shape[1]) if stage is not None else 1
            token = nn.Parameter(torch.zeros(1, channels, 1, 1))
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
            self.mask_tokens.append(token)
            self.densify_norms.append(nn.BatchNorm2d(channels))
            kernel = 1 if k == 0 else 3  # SparK: 1×1 at the coarsest level, 3×3 elsewhere
            self.densify_projs.append(nn.Conv2d(channels, width, kernel, padding=kernel // 2))
        self.decoder = nn.ModuleList(_UpBlock(widths[k], widths[k + 1]) for k in range(n_up))
        self.head = nn.Conv2d(widths[-1], 3, kernel_size=1)

    # -------------------------------------------------------------------------- pieces --
    def random_mask(
        self, n: int, grid: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """(N,1,g,g) bool, True = visible; exactly ``round(g²·(1-ratio))`` visible per image."""
        keep = round(grid * grid * (1 - self.mask_ratio))
        if keep < 1:  # everything masked: no visible patch to encode, NaN gradients
            raise ValueError(
                f"SparK: a {grid}x{grid} mask grid at mask ratio {self.mask_ratio} leaves no "
                "visible patch; use images of at least 2x the backbone's stride per side"
            )
        noise = torch.rand(n, grid * grid, generator=generator, device=generator.device)
        idx = noise.argsort(dim=1)[:, :keep].to(device)
        active = torch.zeros(n, grid * grid, dtype=torch.bool, device=device)
        return active.scatter_(1, idx, True).view(n, 1, grid, grid)

    def encode(self, x: torch.Tensor, active: torch.Tensor) -> list[torch.Tensor]:
        """Sparse forward: stage outputs with masked positions zero (and unaffected by the
        masked pixels, whatever they are)."""
        h = x * _expand(active, x.shape[-1]).to(x.dtype)
        outs = []
        with sparse_mode(self.backbone, active):
            for stage in self.backbone.stages:
                h = stage(h)
                h = h * _expand(active, h.shape[-1]).to(h.dtype)  # re-mask after every stage
                outs.append(h)
        return outs

    def decode(self, feats: list[torch.Tensor], active: torch.Tensor) -> torch.Tensor:
        """Densify each level (mask tokens at empty positions) and run the UNet decoder."""
        x: torch.Tensor | None = None
        for k, stride in enumerate(self.level_strides):
            if self.has_skip[k]:
                f = feats[self.level_stage[stride]]
                act = _expand(active, f.shape[-1])
                with sparse_mode(self.densify_norms[k], active):
                    f = self.densify_norms[k](f)
                f = torch.where(act, f, self.mask_tokens[k].to(f.dtype).expand_as(f))
                f = self.densify_projs[k](f)
                x = f if x is None else x + f
            if x is None:
                raise ValueError("the coarsest level of the backbone has no feature map")
            if k < len(self.decoder):
                x = self.decoder[k](x)
        return self.head(x)  # type: ignore[arg-type]

    def patchify(self, img: torch.Tensor) -> torch.Tensor:
        """(N,C,H,W) → (N, L, p·p·C) with L = (H/p)², p = the backbone's total stride."""
        n, c, h, w = img.shape
        p = self.downsample
        img = img.reshape(n, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", img).reshape(n, (h // p) * (w // p), p * p * c)

    def reconstruction_loss(
        self, pred: torch.Tensor, target: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        """Mean over masked patches of the MSE to per-patch-normalised target pixels."""
        tgt = self.patchify(target)
        mean = tgt.mean(dim=-1, keepdim=True)
        std = (tgt.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        tgt = (tgt - mean) / std
        per_patch = ((self.patchify(pred) - tgt) ** 2).mean(dim=-1)  # (N, L)
        masked = (~active).flatten(1).to(per_patch.dtype)
        return (per_patch * masked).sum() / masked.sum().clamp(min=1)

    # ---------------------------------------------------------------------- the step --
    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> torch.Tensor:
        x = views[0]
        if x.shape[-1] % self.downsample or x.shape[-2] != x.shape[-1]:
            raise ValueError(
                f"SparK needs square inputs whose side is a multiple of the backbone stride "
                f"{self.downsample}, got {tuple(x.shape[-2:])}"
            )
        grid = x.shape[-1] // self.downsample
        if grid < MIN_MASK_GRID and not self._warned_grid:
            self._warned_grid = True
            warnings.warn(
                small_grid_message(x.shape[-1], self.downsample, self.mask_ratio), stacklevel=2
            )
        active = self.random_mask(x.shape[0], grid, ctx.generator, x.device)
        pred = self.decode(self.encode(x, active), active)
        if ctx.image_channels == 1:
            # A grey image reaches the model as 3 affine copies of one channel (to_model_input:
            # a different ImageNet mean/std per channel), so the 3-channel target's per-patch
            # normalisation would carry a fixed, trivial channel pattern. The target is the one
            # channel (per-patch normalisation removes the affine map) and so is the prediction.
            return self.reconstruction_loss(pred[:, :1], x[:, :1], active)
        return self.reconstruction_loss(pred, x, active)


SPEC = MethodSpec(
    name="spark",
    build=SparK,
    recipe=SPARK_RECIPE,
    optim=SPARK_LAMB_AT_IMAGENET_LR,
    reference="Tian et al. 2023, Designing BERT for Convolutional Networks: Sparse and "
    "Hierarchical Masked Modeling, ICLR",
    family="masked",
)
