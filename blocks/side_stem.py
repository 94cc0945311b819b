"""The side stream's own input (Side4Video): a patch embedding of the clip's pixels with a spatial position table.

Registered as `side_stem` (kind `side_stem`): `video.side.stem` in a model YAML names it, and the side network's
builder supplies `dim` (the side width), `in_channels` and `inference_mode`.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from einops import rearrange
from torch import nn

from mvclip.layers.reparam import ConvNorm, conv_like, conv_norm, detach_parameters
from mvclip.layers.resample import resample_grid
from mvclip.registry import register_block


@register_block("side_stem", kind="side_stem")
class SideStem(nn.Module):
    """A 3 x p x p conv over the clip (stride p in space, 1 in time) + BatchNorm, then a learned spatial position
    table for a `grid` x `grid` patch grid (resampled to other grids)."""

    no_decay_state: ClassVar[tuple[str, ...]] = ("positional_embedding",)

    def __init__(self, dim: int, patch_size: int = 16, grid: int = 14, in_channels: int = 3, inference_mode: bool = False) -> None:
        super().__init__()
        self.dim, self.patch_size, self.grid = dim, patch_size, grid
        self.conv: nn.Module = conv_norm(
            in_channels, dim, (3, patch_size, patch_size), stride=(1, patch_size, patch_size), padding=(1, 0, 0),
            ndim=3, inference_mode=inference_mode,
        )
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid, dim) * 0.01)

    def forward(self, frames_nchw: torch.Tensor, frames: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B*T, 3, H, W) -> side tokens (B*T, h*w, dim) and the grid (h, w)."""
        clip = self.conv(rearrange(frames_nchw, "(b t) c h w -> b c t h w", t=frames))
        height, width = (int(size) for size in clip.shape[-2:])  # constants when traced: the grid is fixed per export
        tokens = rearrange(clip, "b c t h w -> (b t) (h w) c")
        return tokens + resample_grid(self.positional_embedding, self.grid, (height, width)).to(tokens.dtype), (height, width)

    def reparameterize(self) -> None:
        if isinstance(self.conv, ConvNorm):
            self.conv = conv_like(self.conv.conv, *self.conv.fused_kernel_bias())
        detach_parameters(self)
