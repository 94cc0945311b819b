"""A plain ViT from registry blocks (CLIP ViT-B/16 shapes), the backbone Side4Video was designed for.

Between blocks a frame is a token sequence `(B*T, 1 + N, C)` with the class token first, not a
feature map: the patch embedding makes it, the transformer blocks keep it, the head reads the
class token. Nothing here is reparameterizable except the optional temporal mixer (LayerNorm has
no fixed statistics to fold).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mvclip.blocks.st_repmixer import TemporalMixer
from mvclip.blocks.text_blocks import TextTransformerLayer
from mvclip.layers.resample import resample_grid
from mvclip.registry import register_block


@register_block("vit_patch_embed")
class ViTPatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens, a class token in front, learned positions, LayerNorm (CLIP's ln_pre).

    The position table is for `image_size`; other sizes resample it bicubically (the class position stays).
    """

    no_decay_state: ClassVar[tuple[str, ...]] = ("positional_embedding",)

    def __init__(self, dim: int = 3, out_dim: int = 768, patch_size: int = 16, image_size: int = 224) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        self.patch_size, self.grid = patch_size, image_size // patch_size
        self.proj = nn.Conv2d(dim, out_dim, patch_size, stride=patch_size, bias=False)
        scale = out_dim**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(out_dim))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1 + self.grid**2, out_dim))
        self.norm = nn.LayerNorm(out_dim)

    def positions(self, height: int, width: int) -> torch.Tensor:
        """(1 + height*width, C): the table, resampled when the patch grid is not the trained one."""
        table = self.positional_embedding
        return torch.cat([table[:1], resample_grid(table[1:], self.grid, (height, width))])

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        x = self.proj(x)
        height, width = x.shape[-2:]
        tokens = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.positions(height, width).to(tokens.dtype)
        return self.norm(tokens)


@register_block("vit_block")
class ViTBlock(nn.Module):
    """Pre-norm transformer layer over one frame's tokens, optionally after a temporal depthwise conv.

    With `temporal_kernel_size` the ST-RepMixer's temporal conv (zero-initialized) runs first, over frames, per
    token: the temporal blocks of parameter-efficient tuning."""

    input_layout = "tokens"

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        head_dim: int = 64,
        temporal_kernel_size: int | None = None,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.temporal_mixer = TemporalMixer(dim, temporal_kernel_size, inference_mode) if temporal_kernel_size else None
        self.layer = TextTransformerLayer(dim, num_heads, mlp_ratio, head_dim)

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        if self.temporal_mixer is not None:  # tokens as a (N, C, L, 1) map, so the mixer's 3x1x1 conv runs per token
            x = self.temporal_mixer(x.transpose(1, 2).unsqueeze(-1), frames).squeeze(-1).transpose(1, 2)
        return self.layer(x)

    def reparameterize(self) -> None:
        if self.temporal_mixer is not None:
            self.temporal_mixer.reparameterize()


@register_block("vit_head")
class ViTHead(nn.Module):
    """Class token -> LayerNorm (CLIP's ln_post) -> projection to the embedding.

    `features`/`norm`/`proj` are split out so a side network can add to the class token before the frozen
    norm and projection."""

    input_layout = "tokens"

    def __init__(self, dim: int, out_dim: int = 512) -> None:
        super().__init__()
        self.dim, self.out_dim = dim, out_dim
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Parameter(torch.randn(dim, out_dim) * dim**-0.5)

    def features(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return x[:, 0]

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return self.norm(self.features(x, frames)) @ self.proj


