"""The temporal part of a side block (Side4Video): mixes each token's channels over neighbouring frames.

Side streams are token sequences `(B*T, N, C)`. Both mixers are residual and start with a BatchNorm,
which folds exactly into the Linear right after it (no padding, unlike a BatchNorm before a conv).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from einops import rearrange
from torch import nn

from mvclip.layers.reparam import bn_affine, detach_parameters, linear_after_batchnorm
from mvclip.blocks.token_attention import TokenAttention
from mvclip.layers.resample import resample_frames
from mvclip.layers.tokens import batchnorm_tokens


class SideTemporalConv(nn.Module):
    """`x + pw2(dwconv_t(pw1(BN(x))))`: depthwise-separable temporal conv (1x1x1 -> kx1x1 depthwise -> 1x1x1)."""

    def __init__(self, dim: int, kernel_size: int = 3, inference_mode: bool = False) -> None:
        super().__init__()
        self.norm: nn.BatchNorm1d | None = None if inference_mode else nn.BatchNorm1d(dim)
        self.pw1 = nn.Linear(dim, dim)
        self.dw = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.pw2 = nn.Linear(dim, dim)
        for layer in (self.pw1, self.pw2):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        y = self.pw1(batchnorm_tokens(self.norm, x))
        y = rearrange(y, "(b t) n c -> (b n) c t", t=frames)
        y = rearrange(self.dw(y), "(b n) c t -> (b t) n c", n=x.shape[1])
        return x + self.pw2(y)

    def reparameterize(self) -> None:
        if self.norm is not None:
            self.pw1 = linear_after_batchnorm(self.pw1, self.norm)
            self.norm = None
        detach_parameters(self)


class SideTemporalAttention(nn.Module):
    """`x + Attn_t(BN(x + TPE))`: self-attention over the T frames of each token position, the variant Side4Video
    compares against the convolution. TPE (zero-initialized, resampled to other clip lengths) gives it an order."""

    no_decay_state: ClassVar[tuple[str, ...]] = ("tpe",)
    zero_init_state: ClassVar[tuple[str, ...]] = ("tpe",)

    def __init__(self, dim: int, num_frames: int = 8, head_dim: int = 64, inference_mode: bool = False) -> None:
        super().__init__()
        self.tpe = nn.Parameter(torch.zeros(num_frames, dim))
        self.norm: nn.BatchNorm1d | None = None if inference_mode else nn.BatchNorm1d(dim)
        self.attn = TokenAttention(dim, head_dim)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        y = rearrange(x, "(b t) n c -> (b n) t c", t=frames) + resample_frames(self.tpe, frames).to(x.dtype)
        y = self.attn(batchnorm_tokens(self.norm, y))
        return x + rearrange(y, "(b n) t c -> (b t) n c", n=x.shape[1])

    def reparameterize(self) -> None:
        if self.norm is not None:
            self.attn.fold_input_affine(*bn_affine(self.norm))
            self.norm = None
        detach_parameters(self)
