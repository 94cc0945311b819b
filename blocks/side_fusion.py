"""How a backbone feature enters the side stream (Side4Video's `Down(Norm(Z_l))`).

Registered as `side_fusion` (kind `side_fusion`): `video.side.fusion_block` in a model YAML names it; the builder
makes one per fused backbone output with `in_dim` (the backbone's channels there) and `dim` (the side width).
"""
from __future__ import annotations

import torch
from torch import nn

from mvclip.registry import register_block


@register_block("side_fusion", kind="side_fusion")
class FusionLayer(nn.Module):
    """`Down(Norm(Z_l))`: a LayerNorm over the backbone's channels (not foldable: per-token statistics) and a
    Linear down to the side width, shared by the patch tokens and the global token.

    The LayerNorm has no affine parameters: a scale and shift before a Linear are redundant with its weight
    and bias, and without them the LayerNorm of a (gradient-free) backbone feature is not recorded by autograd,
    so training does not keep a normalized copy of every fused feature for the backward pass."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(in_dim, elementwise_affine=False)
        self.down = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.norm(x))
