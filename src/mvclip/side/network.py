"""The side stream's wiring: its stem, then at each fusion point a backbone feature mixed in and side blocks.

The parts are registered blocks the model YAML names (`side_stem`, `side_fusion`, `side_block`, in `mvclip.blocks`);
this module only connects them, so another stem, fusion or side block is a YAML change.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mvclip.checkpointing import run_checkpointed
from mvclip.layers.resample import token_grid

FUSION_LAYERS = ("all", "interval", "top")  # Side4Video's three choices of fused backbone layers
FUSION_POINTS = ("blocks", "stages")  # a plain backbone fuses block outputs; a hierarchical one, stage outputs


def fusion_indices(points: int, layers: str = "all", every: int = 2) -> list[int]:
    """Which of `points` backbone outputs feed the side network: all; every `every`-th ending with the last
    (Side4Video's `interval`: layers 1, 3, ..., 11 of 12); or the upper half (`top`)."""
    if layers == "all":
        return list(range(points))
    if layers == "interval":
        return list(range(every - 1, points, every))
    if layers == "top":
        return list(range(points // 2, points))
    raise ValueError(f"fusion layers must be one of {FUSION_LAYERS}, got {layers!r}")


def split_feature(feature: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A backbone feature -> (patch tokens on the side grid (B*T, h*w, C), global token (B*T, C)).

    Token sequences `(B*T, 1 + N, C)` (a plain ViT) carry the class token first; feature maps `(B*T, C, H, W)`
    (a hierarchical backbone's stage output) use their spatial mean as the global token. A map whose size is a
    multiple of the side grid is average-pooled to it; any other is interpolated bilinearly.
    """
    if feature.dim() == 3:
        token, patches = feature[:, 0], feature[:, 1:]
        side = token_grid(patches.shape[1])
        maps = rearrange(patches, "n (h w) c -> n c h w", h=side, w=side)
    elif feature.dim() == 4:
        token, maps = feature.mean(dim=(2, 3)), feature
    else:
        raise ValueError(f"a backbone feature must be (B*T, 1+N, C) tokens or a (B*T, C, H, W) map, got {tuple(feature.shape)}")
    height, width = (int(size) for size in maps.shape[-2:])
    if (height, width) != grid:
        if height % grid[0] == 0 and width % grid[1] == 0:
            maps = F.avg_pool2d(maps, (height // grid[0], width // grid[1]))
        else:
            maps = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)
    return maps.flatten(2).transpose(1, 2), token


class SideNetwork(nn.Module):
    """Stem, then per fusion point: `s <- 0.5 s + 0.5 Down(Norm(Z_l))` and `depth` side blocks, each of which
    also sees that point's global token `Down(Norm(g_l))`."""

    temporal_state: ClassVar[tuple[str, ...]] = ("",)  # all new beside a pretrained backbone

    def __init__(self, stem: nn.Module, fusions: Sequence[nn.Module], blocks: Sequence[Sequence[nn.Module]]) -> None:
        super().__init__()
        if len(fusions) != len(blocks):
            raise ValueError(f"{len(fusions)} fusion layers but {len(blocks)} groups of side blocks")
        self.stem = stem
        self.fusions = nn.ModuleList(fusions)
        self.blocks = nn.ModuleList(nn.ModuleList(group) for group in blocks)
        # set by mvclip.checkpointing (`model.checkpointing: side`): while training with gradients, each fusion point's
        # activations are recomputed in the backward instead of stored
        self.grad_checkpoint = False

    def start(self, frames_nchw: torch.Tensor, frames: int) -> tuple[torch.Tensor, tuple[int, int]]:
        return self.stem(frames_nchw, frames)

    def fuse_step(self, index: int, side: torch.Tensor, feature: torch.Tensor, grid: tuple[int, int], frames: int) -> torch.Tensor:
        """Fusion point `index`: mix the backbone feature into the stream, then run that point's side blocks."""
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            step = functools.partial(self._fuse_step, index, grid=grid, frames=frames)
            # only this point's norms: restoring others' buffers would bump versions autograd saved elsewhere
            return run_checkpointed(step, side, feature, norms=nn.ModuleList([self.fusions[index], self.blocks[index]]))
        return self._fuse_step(index, side, feature, grid=grid, frames=frames)

    def _fuse_step(self, index: int, side: torch.Tensor, feature: torch.Tensor, *, grid: tuple[int, int], frames: int) -> torch.Tensor:
        patches, token = split_feature(feature, grid)
        fusion = self.fusions[index]
        side = 0.5 * side + 0.5 * fusion(patches)
        token = fusion(token)
        for block in self.blocks[index]:
            side = block(side, frames, token)
        return side
