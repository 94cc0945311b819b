"""TPE + CPE: a learnable per-frame offset added before MCi's conditional positional encoding."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mvclip.blocks.rep_cpe import RepCPE
from mvclip.layers.resample import resample_frames
from mvclip.registry import register_block


@register_block("tpe_cpe")
class TemporalPositionalCPE(RepCPE):
    """`Y = CPE(X + TPE)` with TPE of shape (T, C), linearly interpolated to other clip lengths.

    A subclass of RepCPE so image checkpoints load into it unchanged (only `tpe` is new). TPE starts at zero, so an
    inflated image model is exact; `tpe_init_std > 0` draws it instead (truncated at 2 std) for models trained from
    scratch. Measured: at 0.5, the scale of the normalized stage-3 features it is added to, `tpe_attention` still
    learns no order in the ablation's budget (docs/blocks.md, "Starting the temporal branch").
    """

    temporal_state: ClassVar[tuple[str, ...]] = ("tpe",)
    no_decay_state: ClassVar[tuple[str, ...]] = ("tpe",)
    zero_init_state: ClassVar[tuple[str, ...]] = ("tpe",)

    def __init__(self, dim: int, num_frames: int = 8, kernel_size: int = 7, inference_mode: bool = False,
                 tpe_init_std: float = 0.0) -> None:
        super().__init__(dim, kernel_size, inference_mode)
        if isinstance(tpe_init_std, bool) or not isinstance(tpe_init_std, (int, float)) or not tpe_init_std >= 0:
            raise ValueError(f"tpe_init_std must be a number >= 0, got {tpe_init_std!r}")
        self.num_frames = num_frames
        self.tpe = nn.Parameter(torch.zeros(num_frames, dim))
        if tpe_init_std > 0 and not inference_mode:
            nn.init.trunc_normal_(self.tpe, std=tpe_init_std, a=-2 * tpe_init_std, b=2 * tpe_init_std)

    def temporal_embedding(self, frames: int) -> torch.Tensor:
        """(frames, C): the learned table, resampled linearly when the clip length differs."""
        return resample_frames(self.tpe, frames)

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        n, c, h, w = x.shape
        offset = self.temporal_embedding(frames).to(x.dtype)
        x = (x.reshape(n // frames, frames, c, h, w) + offset[None, :, :, None, None]).reshape(n, c, h, w)
        return super().forward(x, frames)

    # reparameterize() is RepCPE's: only the CPE folds. X + TPE cannot move into a zero-padded
    # conv's bias exactly at the borders, so the fused form is `CPE_fused(X + TPE)`.
