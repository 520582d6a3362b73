"""DVME: Dynamic Visual Meta-Embedding (Truong et al. 2021, ML4H, "How transferable are
self-supervised features in medical image classification tasks?", PMLR 158).

DVME fuses frozen embeddings of several pretrained encoders. Each embedding gets its own linear
projection to a common width ``d``; self-attention (a ViT-style block) then mixes the projected
components, followed by LayerNorm, an MLP and the task head, all trained end to end on cached
features (the encoders stay frozen). Token layouts:

- ``tokens="encoders"``: one token per encoder (E tokens of width d): attention weighs whole
  embeddings against each other, the reading of the paper's figure;
- ``tokens="dims"``: one token per dimension of the concatenated projections (E·d tokens),
  the layout attributed to the authors' released code (not re-checked against it here: the
  code was not reachable offline). A scalar token is lifted to a small width
  ``token_dim`` by a shared linear map plus a learned position embedding (so attention can
  tell the dimensions apart), and mapped back to a scalar after attention;
- ``tokens="concat"``: the ablation without attention: concatenated projections → MLP.

Deviations from the paper, for 64-d ResNet-20 features at 28 px on a CPU: projection width
``d = 64`` (paper: 512), MLP width 128, scalar tokens lifted to ``token_dim = 8``, no dropout on
the attention weights; the optimiser is AdamW with early stopping on the val primary metric,
via the study's one supervised loop (:func:`fit_supervised`).

Data contract: ``features`` is a sequence of E float arrays (N, D_e) for the same N samples in
the same order (one per encoder); labels/scores as in :mod:`medstudy.evaluate.linear`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medstudy.data.info import DatasetInfo
from medstudy.evaluate.finetune import (
    FitResult,
    TrainSettings,
    fit_supervised,
    predict_scores,
)
from medstudy.evaluate.linear import standardiser
from medstudy.runtime import seeded_build

TOKEN_MODES: tuple[str, ...] = ("encoders", "dims", "concat")

#: Defaults of the DVME probe training (cached features: cheap epochs, so many of them; small
#: batches so that a 1 % label fraction still gets several steps per epoch).
DVME_SETTINGS = TrainSettings(
    max_epochs=100,
    patience=10,
    batch_size=64,
    optimizer="adam",
    lr=1e-3,
    weight_decay=1e-4,
)


class DVME(nn.Module):
    """Meta-embedding classifier over E frozen embeddings (see the module docstring).

    ``forward(*features)`` takes E tensors (B, D_e) and returns logits (B, n_outputs).
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        n_outputs: int,
        tokens: str = "encoders",
        width: int = 64,
        n_heads: int = 4,
        token_dim: int = 8,
        hidden: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if tokens not in TOKEN_MODES:
            raise ValueError(f"unknown DVME token mode {tokens!r}; valid: {list(TOKEN_MODES)}")
        if len(in_dims) < 2:
            raise ValueError(f"DVME fuses >= 2 embeddings, got {len(in_dims)}")
        self.tokens, self.width, self.n_enc = tokens, width, len(in_dims)
        self.proj = nn.ModuleList(nn.Linear(int(d), width) for d in in_dims)
        fused = self.n_enc * width
        # No attention dropout (ViT's default); ``dropout`` acts in the MLP. On E·d scalar
        # tokens, dropout on the (B, T, T) weights would dominate the CPU cost.
        if tokens == "encoders":
            self.pos = nn.Parameter(0.02 * torch.randn(1, self.n_enc, width))
            self.attn: nn.MultiheadAttention | None = nn.MultiheadAttention(
                width, n_heads, batch_first=True
            )
            self.attn_norm: nn.Module = nn.LayerNorm(width)
        elif tokens == "dims":
            self.lift = nn.Linear(1, token_dim)
            self.pos = nn.Parameter(0.02 * torch.randn(1, fused, token_dim))
            self.attn = nn.MultiheadAttention(token_dim, 1, batch_first=True)
            self.attn_norm = nn.LayerNorm(token_dim)
            self.lower = nn.Linear(token_dim, 1)
        else:
            self.attn = None
            self.attn_norm = nn.Identity()
        self.norm = nn.LayerNorm(fused)
        self.mlp = nn.Sequential(
            nn.Linear(fused, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_outputs)
        )

    def project(self, *features: torch.Tensor) -> torch.Tensor:
        """(B, E, d): every embedding linearly projected to the common width."""
        if len(features) != self.n_enc:
            raise ValueError(f"DVME built for {self.n_enc} embeddings, got {len(features)}")
        return torch.stack([p(f) for p, f in zip(self.proj, features, strict=True)], dim=1)

    def tokens_of(self, projected: torch.Tensor) -> torch.Tensor:
        """The attention's input tokens: (B, E, d) or (B, E·d, token_dim)."""
        if self.tokens == "dims":
            return self.lift(projected.flatten(1).unsqueeze(-1)) + self.pos
        return projected + self.pos

    def fuse(self, *features: torch.Tensor) -> torch.Tensor:
        """The fused, normalised meta-embedding (B, E·d) fed to the MLP."""
        z = self.project(*features)
        if self.attn is None:
            return self.norm(z.flatten(1))
        t = self.tokens_of(z)
        # Pre-norm residual block, as in ViT (Dosovitskiy et al. 2021) which DVME follows.
        q = self.attn_norm(t)
        t = t + self.attn(q, q, q, need_weights=False)[0]
        fused = self.lower(t).squeeze(-1) if self.tokens == "dims" else t.flatten(1)
        return self.norm(fused)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.fuse(*features))

    @torch.no_grad()
    def attention(self, *features: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention weights (B, T, T) between tokens (not for ``concat``)."""
        if self.attn is None:
            raise ValueError("the 'concat' ablation has no attention")
        q = self.attn_norm(self.tokens_of(self.project(*features)))
        return self.attn(q, q, q, need_weights=True, average_attn_weights=True)[1]


@dataclass
class DVMEProbe:
    """A trained DVME with the per-encoder standardisation fitted on train."""

    model: DVME
    means: list[np.ndarray]
    scales: list[np.ndarray]
    fit: FitResult
    info: DatasetInfo

    def inputs(self, features: Sequence[np.ndarray]) -> tuple[torch.Tensor, ...]:
        device = next(self.model.parameters()).device
        return _standardised(features, self.means, self.scales, device)

    def predict_scores(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """E arrays (N, D_e) → (N, K) probabilities."""
        return predict_scores(self.model, self.inputs(features), self.info)


def _standardised(
    features: Sequence[np.ndarray],
    means: Sequence[np.ndarray],
    scales: Sequence[np.ndarray],
    device: torch.device | str,
) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.from_numpy(((np.asarray(f, np.float64) - m) / s).astype(np.float32)).to(device)
        for f, m, s in zip(features, means, scales, strict=True)
    )


def train_dvme(
    train_features: Sequence[np.ndarray],
    train_labels: np.ndarray,
    val_features: Sequence[np.ndarray],
    val_labels: np.ndarray,
    info: DatasetInfo,
    tokens: str,
    seed: int,
    settings: TrainSettings = DVME_SETTINGS,
    device: torch.device | str = "cpu",
    **model_kwargs: int | float,
) -> DVMEProbe:
    """Standardise each embedding (train statistics), then fit :class:`DVME` with early stopping.

    ``seed`` fixes the initialisation, the batch order and dropout (through the seeded loop).
    ``model_kwargs`` go to :class:`DVME` (``width``, ``n_heads``, ``token_dim``, ``hidden``,
    ``dropout``).
    """
    if len(train_features) != len(val_features):
        raise ValueError("train and val need the same encoders")
    stats = [standardiser(f) for f in train_features]
    means, scales = [m for m, _ in stats], [s for _, s in stats]
    dims = [int(np.asarray(f).shape[1]) for f in train_features]
    model = seeded_build(lambda: DVME(dims, info.n_outputs, tokens, **model_kwargs), seed)
    model = model.to(device)  # type: ignore[assignment]
    y_dtype = torch.float32 if info.is_multilabel else torch.int64
    fit = fit_supervised(
        model,
        _standardised(train_features, means, scales, device),
        torch.as_tensor(np.asarray(train_labels), dtype=y_dtype).to(device),
        _standardised(val_features, means, scales, device),
        torch.as_tensor(np.asarray(val_labels), dtype=y_dtype).to(device),
        info,
        settings,
        seed,
        device,
    )
    return DVMEProbe(model, means, scales, fit, info)  # type: ignore[arg-type]
