"""Probe block for `bench/temporal_levers.py --plugin` (not a built-in block): TPE + CPE with a fixed 2-D sine-cosine spatial position added first.

Tests the hypothesis that joint attention over frame-wise features cannot read direction because those
features carry little absolute position: give the tokens explicit position and see if order appears."""
from __future__ import annotations

import math

import torch

from mvclip.blocks.temporal_position import TemporalPositionalCPE
from mvclip.registry import register_block


def sincos_2d(c: int, h: int, w: int, scale: float) -> torch.Tensor:
    quarter = c // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter) / max(quarter, 1)))
    ys = torch.arange(h, dtype=torch.float32)[:, None] * freq[None] * math.pi / 2
    xs = torch.arange(w, dtype=torch.float32)[:, None] * freq[None] * math.pi / 2
    table = torch.zeros(c, h, w)
    table[:quarter] = ys.sin().T[:, :, None]
    table[quarter:2 * quarter] = ys.cos().T[:, :, None]
    table[2 * quarter:3 * quarter] = xs.sin().T[:, None, :]
    table[3 * quarter:4 * quarter] = xs.cos().T[:, None, :]
    return table * scale


@register_block("tpe_spe_cpe")
class SpatialTPECPE(TemporalPositionalCPE):
    def __init__(self, dim: int, num_frames: int = 8, kernel_size: int = 7, inference_mode: bool = False,
                 tpe_init_std: float = 0.0, spe_scale: float = 1.0) -> None:
        super().__init__(dim, num_frames, kernel_size, inference_mode, tpe_init_std)
        self.spe_scale = spe_scale

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        _, c, h, w = x.shape
        return super().forward(x + sincos_2d(c, h, w, self.spe_scale).to(x), frames)
