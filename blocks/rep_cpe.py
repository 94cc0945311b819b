"""RepCPE: conditional positional encoding x + dwconv7x7(x), folded into one conv (MCi stage 3)."""
from __future__ import annotations

import torch
from torch import nn

from mvclip.layers.reparam import conv_like, detach_parameters, identity_kernel, to_tuple
from mvclip.registry import register_block


@register_block("rep_cpe")
class RepCPE(nn.Module):
    """Conditional positional encoding `x + dwconv(x)`; fused: the identity moves into the kernel centre."""

    def __init__(self, dim: int, kernel_size: int = 7, inference_mode: bool = False) -> None:
        super().__init__()
        self.dim = dim
        ks = to_tuple(kernel_size, 2)
        conv = nn.Conv2d(dim, dim, ks, padding=tuple(k // 2 for k in ks), groups=dim, bias=True)
        self.pe: nn.Conv2d | None = None if inference_mode else conv
        self.reparam_conv: nn.Conv2d | None = conv if inference_mode else None  # the fused conv has pe's geometry

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.pe(x)

    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        kernel = self.pe.weight + identity_kernel(self.dim, 1, self.pe.kernel_size, self.pe.weight)
        self.reparam_conv = conv_like(self.pe, kernel, self.pe.bias)
        self.pe = None
        detach_parameters(self)
