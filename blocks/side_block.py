"""Side4Video's side block: temporal mixing, spatial attention with the backbone's shifted global token, MLP.

A side block reads a side stream `(B*T, N, C)` (N tokens of one frame) and, optionally, the backbone's
global token for that frame `(B*T, C)`, already projected to the side width. Every part is residual.
"""
from __future__ import annotations

import torch
from torch import nn

from mvclip.layers.reparam import detach_parameters, linear_after_batchnorm
from mvclip.blocks.side_spatial import SideSpatialAttention
from mvclip.blocks.side_temporal import SideTemporalAttention, SideTemporalConv
from mvclip.layers.tokens import batchnorm_tokens
from mvclip.registry import register_block

TEMPORAL_MIXERS = ("conv", "attention")


class SideMLP(nn.Module):
    """`x + fc2(GELU(fc1(BN(x))))`; the BatchNorm folds into fc1."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, inference_mode: bool = False) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm: nn.BatchNorm1d | None = None if inference_mode else nn.BatchNorm1d(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.normal_(self.fc1.weight, std=(2 * dim) ** -0.5)
        nn.init.normal_(self.fc2.weight, std=dim**-0.5 * 24**-0.5)  # Side4Video's residual-branch scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = batchnorm_tokens(self.norm, x)
        return x + self.fc2(self.act(self.fc1(y)))

    def reparameterize(self) -> None:
        if self.norm is not None:
            self.fc1 = linear_after_batchnorm(self.fc1, self.norm)
            self.norm = None
        detach_parameters(self)


@register_block("side_block", kind="side")
class SideBlock(nn.Module):
    """Side4Video block: temporal conv (or attention) over frames, attention with the shifted global token, MLP.

    Temporal depthwise-separable conv (`temporal: attention` for attention over frames), spatial attention whose
    keys and values include the backbone's global token shifted across frames (`token_shift`), MLP with BatchNorm."""

    def __init__(
        self,
        dim: int,
        temporal: str = "conv",
        token_shift: bool = True,
        temporal_kernel_size: int = 3,
        mlp_ratio: float = 4.0,
        head_dim: int = 64,
        num_frames: int = 8,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        if temporal not in TEMPORAL_MIXERS:
            raise ValueError(f"temporal must be one of {TEMPORAL_MIXERS}, got {temporal!r}")
        self.dim = dim
        if temporal == "conv":
            self.temporal: nn.Module = SideTemporalConv(dim, temporal_kernel_size, inference_mode)
        else:
            self.temporal = SideTemporalAttention(dim, num_frames, head_dim, inference_mode)
        self.spatial = SideSpatialAttention(dim, head_dim, token_shift)
        self.mlp = SideMLP(dim, mlp_ratio, inference_mode)

    def forward(self, x: torch.Tensor, frames: int, token: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(self.spatial(self.temporal(x, frames), frames, token))

    def reparameterize(self) -> None:
        self.temporal.reparameterize()
        self.mlp.reparameterize()
        detach_parameters(self)
