"""MobileOne convolutional stem: 3x3 s2 conv -> 3x3 depthwise s2 -> 1x1, each a MobileOne block."""
from __future__ import annotations

import torch
from torch import nn

from mvclip.blocks.mobileone import MobileOneBlock
from mvclip.registry import register_block


@register_block("mobileone_stem")
class MobileOneStem(nn.Module):
    """Stride-4 stem of MCi: three MobileOne blocks (full 3x3 s2, depthwise 3x3 s2, pointwise)."""

    def __init__(self, dim: int = 3, out_dim: int = 64, inference_mode: bool = False) -> None:
        super().__init__()
        self.dim, self.out_dim = dim, out_dim
        self.blocks = nn.Sequential(
            MobileOneBlock(dim, out_dim, 3, stride=2, inference_mode=inference_mode),
            MobileOneBlock(out_dim, out_dim, 3, stride=2, groups=out_dim, inference_mode=inference_mode),
            MobileOneBlock(out_dim, out_dim, 1, inference_mode=inference_mode),
        )

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return self.blocks(x)

    def reparameterize(self) -> None:
        for block in self.blocks:
            block.reparameterize()
