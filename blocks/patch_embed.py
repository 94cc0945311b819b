"""Downsampling patch embedding: reparameterizable large-kernel conv (7x7 + 3x3, stride 2), SE, GELU, 1x1."""
from __future__ import annotations

import torch
from torch import nn

from mvclip.blocks.mobileone import MobileOneBlock
from mvclip.layers.reparam import ConvNorm, conv_like, conv_norm, detach_parameters, pad_kernel
from mvclip.blocks.squeeze_excite import SqueezeExcite
from mvclip.registry import register_block


class ReparamLargeKernelConv(nn.Module):
    """Grouped large-kernel conv-BN with a parallel small-kernel conv-BN (RepLKNet); fuses to one conv."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        kernel_size: int = 7,
        stride: int = 2,
        small_kernel: int = 3,
        use_se: bool = False,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        large = conv_norm(dim, out_dim, kernel_size, stride, groups=dim, inference_mode=inference_mode)
        self.lkb_origin: nn.Module | None = None if inference_mode else large
        has_small = small_kernel and not inference_mode
        self.small_conv: nn.Module | None = ConvNorm(dim, out_dim, small_kernel, stride, groups=dim) if has_small else None
        # MCi's downsampling SE reduces 4x (timm's default), unlike MobileOne's 16x in the head.
        self.se = SqueezeExcite(out_dim, rd_ratio=0.25) if use_se else nn.Identity()
        self.activation = nn.GELU()
        self.lkb_reparam: nn.Conv2d | None = large if inference_mode else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lkb_reparam is not None:
            out = self.lkb_reparam(x)
        else:
            out = self.lkb_origin(x)
            if self.small_conv is not None:
                out = out + self.small_conv(x)
        return self.activation(self.se(out))

    def reparameterize(self) -> None:
        if self.lkb_reparam is not None:
            return
        kernel, bias = self.lkb_origin.fused_kernel_bias()
        if self.small_conv is not None:
            k, b = self.small_conv.fused_kernel_bias()
            kernel, bias = kernel + pad_kernel(k, kernel.shape[2:]), bias + b
        self.lkb_reparam = conv_like(self.lkb_origin.conv, kernel, bias)
        self.lkb_origin = None
        self.small_conv = None
        detach_parameters(self)


@register_block("patch_embed")
class PatchEmbed(nn.Module):
    """MCi downsampling between stages: large-kernel stride-2 conv (optionally with SE), then a 1x1 MobileOne block."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        kernel_size: int = 7,
        stride: int = 2,
        small_kernel: int = 3,
        use_se: bool = False,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.out_dim = dim, out_dim
        self.proj = nn.Sequential(
            ReparamLargeKernelConv(dim, out_dim, kernel_size, stride, small_kernel, use_se, inference_mode),
            MobileOneBlock(out_dim, out_dim, 1, inference_mode=inference_mode),
        )

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return self.proj(x)

    def reparameterize(self) -> None:
        for layer in self.proj:
            layer.reparameterize()
