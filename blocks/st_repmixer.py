"""Spatiotemporal RepMixer (MobileViCLIP): a depthwise temporal conv branch before the spatial RepMixer."""
from __future__ import annotations

from typing import ClassVar

import torch
from einops import rearrange
from torch import nn

from mvclip.blocks.reparam import conv_like, conv_norm, detach_parameters, identity_kernel
from mvclip.blocks.repmixer import RepMixerBlock
from mvclip.registry import register_block


class TemporalMixer(nn.Module):
    """`x + BN(dwconv_t(x))` over frames (k x 1 x 1, zero padding). Conv before BN keeps the fold exact
    at the first and last frame; BN's weight starts at 0 so the branch starts as exactly zero.

    `temporal_state` names this module's state an image checkpoint never has ("" = all of it), so
    `mvclip.load_pretrained` reports it as newly initialized rather than missing."""

    temporal_state: ClassVar[tuple[str, ...]] = ("",)

    def __init__(self, dim: int, kernel_size: int = 3, inference_mode: bool = False) -> None:
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        conv = conv_norm(dim, dim, (kernel_size, 1, 1), groups=dim, ndim=3, inference_mode=inference_mode)
        self.branch: nn.Module | None = None if inference_mode else conv
        self.reparam_conv: nn.Conv3d | None = conv if inference_mode else None
        if self.branch is not None:
            nn.init.zeros_(self.branch.bn.weight)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        clip = rearrange(x, "(b t) c h w -> b c t h w", t=frames)
        clip = self.reparam_conv(clip) if self.reparam_conv is not None else clip + self.branch(clip)
        return rearrange(clip, "b c t h w -> (b t) c h w")

    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        kernel, bias = self.branch.fused_kernel_bias()
        kernel = kernel + identity_kernel(self.dim, 1, (self.kernel_size, 1, 1), kernel)
        self.reparam_conv = conv_like(self.branch.conv, kernel, bias)
        self.branch = None
        detach_parameters(self)


@register_block("st_repmixer")
class STRepMixerBlock(RepMixerBlock):
    """RepMixer block with a temporal depthwise conv first: x + BN(dwconv_t(x)), RepMixer, ConvFFN."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        mlp_ratio: float = 3.0,
        ffn_kernel_size: int = 7,
        layer_scale_init: float = 1e-5,
        temporal_kernel_size: int = 3,
        inference_mode: bool = False,
    ) -> None:
        super().__init__(dim, kernel_size, mlp_ratio, ffn_kernel_size, layer_scale_init, inference_mode)
        self.temporal_mixer = TemporalMixer(dim, temporal_kernel_size, inference_mode)

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return super().forward(self.temporal_mixer(x, frames), frames)

    def reparameterize(self) -> None:
        self.temporal_mixer.reparameterize()
        super().reparameterize()
