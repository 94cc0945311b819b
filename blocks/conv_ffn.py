"""ConvFFN: the MCi feed-forward with a depthwise conv in front (dwconv7x7 -> BN -> 1x1 -> GELU -> 1x1)."""
from __future__ import annotations

import torch
from torch import nn

from mvclip.layers.reparam import ConvNorm, conv_like, conv_norm, detach_parameters, to_tuple
from mvclip.registry import register_block


@register_block("conv_ffn")
class ConvFFN(nn.Module):
    """Depthwise kxk conv + BN, then a 1x1 expansion MLP; BN folds into the depthwise conv."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 3.0,
        kernel_size: int | tuple[int, int] = 7,
        out_dim: int | None = None,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        out_dim = out_dim or dim
        hidden = int(dim * mlp_ratio)
        self.dim, self.out_dim = dim, out_dim
        self.conv: nn.Module = conv_norm(dim, out_dim, to_tuple(kernel_size, 2), groups=dim, inference_mode=inference_mode)
        self.fc1 = nn.Conv2d(out_dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, out_dim, 1)
        for conv in (getattr(self.conv, "conv", self.conv), self.fc1, self.fc2):
            nn.init.trunc_normal_(conv.weight, std=0.02)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))

    def fold_output_scale(self, scale: torch.Tensor) -> None:
        """Absorb a per-channel layer scale applied to this FFN's output into fc2 (exact)."""
        scale = scale.reshape(-1)
        self.fc2.weight.data.mul_(scale.reshape(-1, 1, 1, 1))
        self.fc2.bias.data.mul_(scale)

    def reparameterize(self) -> None:
        if isinstance(self.conv, ConvNorm):
            self.conv = conv_like(self.conv.conv, *self.conv.fused_kernel_bias())
            detach_parameters(self)
