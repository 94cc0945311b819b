"""Text-encoder blocks: MobileCLIP's text RepMixer (kernel 11 along the sequence) and a pre-norm transformer layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvclip.blocks.repmixer import RepMixerBlock
from mvclip.registry import register_block


@register_block("text_repmixer", kind="text")
class TextRepMixerBlock(RepMixerBlock):
    """RepMixer block over the token sequence, as a (1 x k) depthwise conv on a (B, C, 1, L) map; fuses like RepMixer.

    No 1x1 branch in the mixer by default, as in MobileCLIP's MCt: Apple's MobileOneBlock adds it only when the
    kernel's first side exceeds 1, which a (1, k) kernel never does, so their S0 text weights have none."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 11,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 1e-5,
        inference_mode: bool = False,
        scale_branch: bool = False,
    ) -> None:
        super().__init__(dim, (1, kernel_size), mlp_ratio, (1, kernel_size), layer_scale_init, inference_mode, scale_branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = super().forward(x.transpose(1, 2).unsqueeze(2))
        return y.squeeze(2).transpose(1, 2)


@register_block("text_transformer", kind="text")
class TextTransformerLayer(nn.Module):
    """Standard pre-norm transformer layer (bidirectional): x + MHA(LN(x)), x + MLP(LN(x)). LayerNorm does not fold."""

    def __init__(self, dim: int, num_heads: int | None = None, mlp_ratio: float = 4.0, head_dim: int = 64) -> None:
        super().__init__()
        self.num_heads = num_heads or max(1, dim // head_dim)
        if dim % self.num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={self.num_heads}")
        hidden = int(dim * mlp_ratio)
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`attn_mask`: boolean, True where a query may attend to a key (the text encoder's `attention_mask`)."""
        batch, length, dim = x.shape
        qkv = self.qkv(self.norm_attn(x)).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).reshape(batch, length, dim)
        x = x + self.out_proj(attn)
        return x + self.ffn(self.norm_ffn(x))
