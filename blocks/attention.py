"""MCi attention block (stage 3) and its spatiotemporal form with joint space-time attention."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mvclip.blocks.conv_ffn import ConvFFN
from mvclip.layers.reparam import bn_affine, detach_parameters, linear_after_affine
from mvclip.registry import register_block

ATTENTION_MODES = ("frame", "joint")


class MHSA(nn.Module):
    """Multi-head self-attention over a feature map's tokens: per frame, or jointly over a clip's T*H*W tokens."""

    def __init__(self, dim: int, head_dim: int = 32, qkv_bias: bool = False) -> None:
        super().__init__()
        if dim % head_dim and dim > head_dim:
            raise ValueError(f"dim={dim} must be a multiple of head_dim={head_dim}")
        self.num_heads = max(1, dim // head_dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, frames: int = 1, joint: bool = False) -> torch.Tensor:
        _, _, h, w = x.shape
        pattern = "(b t) c h w -> b (t h w) c" if joint else "n c h w -> n (h w) c"
        tokens = rearrange(x, pattern, t=frames) if joint else rearrange(x, pattern)
        batch, length, channels = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, length, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(batch, length, channels))
        if joint:
            return rearrange(out, "b (t h w) c -> (b t) c h w", t=frames, h=h, w=w)
        return rearrange(out, "n (h w) c -> n c h w", h=h, w=w)

    def fold_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """qkv(scale*x + shift) = (W*scale) x + (W shift + b): absorbs a BatchNorm before the attention."""
        self.qkv = linear_after_affine(self.qkv, scale, shift)

    def fold_output_scale(self, scale: torch.Tensor) -> None:
        scale = scale.reshape(-1)
        self.proj.weight.data.mul_(scale.reshape(-1, 1))
        self.proj.bias.data.mul_(scale)


@register_block("attention")
class AttentionBlock(nn.Module):
    """MCi attention block: x + g1*MHSA(BN(x)), x + g2*ConvFFN(x); per-frame attention (the image model)."""

    no_decay_state: ClassVar[tuple[str, ...]] = ("layer_scale_1", "layer_scale_2")
    zero_init_state: ClassVar[tuple[str, ...]] = ("layer_scale_1", "layer_scale_2")

    stage_pos_embed = "rep_cpe"  # MCi puts one conditional positional encoding before an attention stage
    default_mode = "frame"

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 3.0,
        head_dim: int = 32,
        attention_mode: str | None = None,
        layer_scale_init: float = 1e-5,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        mode = attention_mode or self.default_mode
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode must be one of {ATTENTION_MODES}, got {mode!r}")
        self.dim, self.attention_mode = dim, mode
        train = not inference_mode  # inference form: BN folded into qkv (which gains a bias), layer scales folded
        self.norm: nn.Module | None = nn.BatchNorm2d(dim) if train else None
        self.token_mixer = MHSA(dim, head_dim, qkv_bias=inference_mode)
        self.convffn = ConvFFN(dim, mlp_ratio, inference_mode=inference_mode)
        self.layer_scale_1: nn.Parameter | None = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init)) if train else None
        self.layer_scale_2: nn.Parameter | None = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init)) if train else None

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        joint = self.attention_mode == "joint"
        y = self.token_mixer(self.norm(x) if self.norm is not None else x, frames, joint)
        x = x + (y if self.layer_scale_1 is None else self.layer_scale_1 * y)
        y = self.convffn(x)
        return x + (y if self.layer_scale_2 is None else self.layer_scale_2 * y)

    def reparameterize(self) -> None:
        """Fold the pre-norm BN into qkv and both layer scales into the output projections."""
        if self.norm is not None:
            self.token_mixer.fold_input_affine(*bn_affine(self.norm))
            self.norm = None
        if self.layer_scale_1 is not None:
            self.token_mixer.fold_output_scale(self.layer_scale_1.detach())
            self.layer_scale_1 = None
        self.convffn.reparameterize()
        if self.layer_scale_2 is not None:
            self.convffn.fold_output_scale(self.layer_scale_2.detach())
            self.layer_scale_2 = None
        detach_parameters(self)


@register_block("tpe_attention")
class TPEAttentionBlock(AttentionBlock):
    """MobileViCLIP spatiotemporal attention: joint attention over a clip's T*H*W tokens, TPE+CPE before the stage."""

    stage_pos_embed = "tpe_cpe"
    default_mode = "joint"
