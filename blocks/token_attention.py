"""Multi-head attention over token sequences `(N, L, C)`, where the keys/values may be a longer sequence
than the queries (a side block attends from its patch tokens to `[global token; patch tokens]`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvclip.layers.reparam import linear_after_affine


class TokenAttention(nn.Module):
    """`proj(softmax(q k^T / sqrt(d)) v)` with one qkv Linear shared by queries and keys/values, so a BatchNorm
    in front of it folds into that Linear."""

    def __init__(self, dim: int, head_dim: int = 64, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = max(1, dim // head_dim)
        if dim % self.num_heads:
            raise ValueError(f"dim={dim} must be divisible into {self.num_heads} heads")
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Queries from `x` (N, L, C); keys and values from `[prefix; x]` when `prefix` (N, P, C) is given."""
        n, length, dim = x.shape
        source = x if prefix is None else torch.cat([prefix, x], dim=1)
        qkv = self.qkv(source).reshape(n, source.shape[1], 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q = q[:, :, source.shape[1] - length :]
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, dim)
        return self.proj(out)

    def fold_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Absorb a per-channel affine map (an eval-mode BatchNorm) applied to every input token."""
        self.qkv = linear_after_affine(self.qkv, scale, shift)
