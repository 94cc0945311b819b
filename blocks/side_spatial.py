"""The spatial part of a side block (Side4Video): attention over a frame's side tokens whose keys and values
also hold the frozen backbone's global token, shifted across neighbouring frames."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvclip.blocks.token_attention import TokenAttention


def shift_global_token(token: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*T, C) -> (B*T, C): frame t gets the first half of the channels from frame t+1 and the second half
    from frame t-1 (zeros past the clip's ends), so a frame's attention sees its neighbours' global context."""
    clip = token.reshape(-1, frames, token.shape[-1])
    half = clip.shape[-1] // 2
    from_next = F.pad(clip[:, 1:, :half], (0, 0, 0, 1))  # pads the time axis: zeros after the last frame
    from_previous = F.pad(clip[:, :-1, half:], (0, 0, 1, 0))  # zeros before the first frame
    return torch.cat([from_next, from_previous], dim=-1).reshape(token.shape)


class SideSpatialAttention(nn.Module):
    """`x + Attn(q = LN(x), kv = LN([g; x]))` per frame, g the (shifted) global token. LayerNorm normalizes each
    token by its own statistics, so unlike the side block's BatchNorms it cannot fold away."""

    def __init__(self, dim: int, head_dim: int = 64, token_shift: bool = True) -> None:
        super().__init__()
        self.token_shift = token_shift
        self.norm = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, head_dim)

    def forward(self, x: torch.Tensor, frames: int, token: torch.Tensor | None = None) -> torch.Tensor:
        prefix = None
        if token is not None:
            token = shift_global_token(token, frames) if self.token_shift else token
            prefix = self.norm(token).unsqueeze(1)
        return x + self.attn(self.norm(x), prefix)
