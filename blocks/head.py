"""MCi image head: depthwise 3x3 MobileOne expansion C->2C with SE, global average pool, linear projection."""
from __future__ import annotations

import torch
from torch import nn

from mvclip.blocks.mobileone import MobileOneBlock
from mvclip.registry import register_block


@register_block("mci_head")
class MCiHead(nn.Module):
    """Per-frame embedding head: expansion conv, spatial mean, projection to the joint embedding space.

    `features` (expansion + mean), `norm` (none in MCi) and `proj` are split out so a side network can add
    to the pooled feature before the frozen projection, as it does to a ViT's class token."""

    def __init__(self, dim: int, out_dim: int = 512, expansion: float = 2.0, use_se: bool = True, inference_mode: bool = False) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.dim, self.out_dim = dim, out_dim
        self.conv_exp = MobileOneBlock(dim, hidden, 3, groups=dim, use_se=use_se, inference_mode=inference_mode)
        self.norm = nn.Identity()
        self.proj = nn.Parameter(torch.randn(hidden, out_dim) * hidden**-0.5)

    def features(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return self.conv_exp(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return self.norm(self.features(x, frames)) @ self.proj

    def reparameterize(self) -> None:
        self.conv_exp.reparameterize()
