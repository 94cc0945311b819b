"""TPE + CPE: a learnable per-frame offset added before MCi's conditional positional encoding."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mvclip.blocks.rep_cpe import RepCPE
from mvclip.blocks.st_repmixer import TEMPORAL_INITS
from mvclip.layers.resample import resample_frames
from mvclip.registry import register_block


@register_block("tpe_cpe")
class TemporalPositionalCPE(RepCPE):
    """`Y = CPE(X + TPE)` with TPE of shape (T, C), linearly interpolated to other clip lengths.

    A subclass of RepCPE so image checkpoints load into it unchanged (only `tpe` is new). `temporal_init` (the
    video's `temporal_init`) decides how TPE starts: `zero` and `mirror` keep the inflated image model exact
    (TPE = 0); `active` draws it at the scale of the normalized features it is added to (std `ACTIVE_STD`),
    for models trained from scratch. A zero TPE behind MCi's 1e-5 layer scales is a product of two near-zero
    factors, so its order signal barely grows (docs/blocks.md, "Starting the temporal branch").
    """

    ACTIVE_STD: ClassVar[float] = 0.5

    temporal_state: ClassVar[tuple[str, ...]] = ("tpe",)
    no_decay_state: ClassVar[tuple[str, ...]] = ("tpe",)
    zero_init_state: ClassVar[tuple[str, ...]] = ("tpe",)

    def __init__(self, dim: int, num_frames: int = 8, kernel_size: int = 7, inference_mode: bool = False,
                 temporal_init: str = "zero") -> None:
        super().__init__(dim, kernel_size, inference_mode)
        if temporal_init not in TEMPORAL_INITS:
            raise ValueError(f"temporal_init must be one of {TEMPORAL_INITS}, got {temporal_init!r}")
        self.num_frames = num_frames
        self.tpe = nn.Parameter(torch.zeros(num_frames, dim))
        if temporal_init == "active" and not inference_mode:
            nn.init.trunc_normal_(self.tpe, std=self.ACTIVE_STD, a=-2 * self.ACTIVE_STD, b=2 * self.ACTIVE_STD)

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
