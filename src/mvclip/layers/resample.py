"""Learned position tables at sizes other than the one they were trained for (clip lengths, patch grids)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resample_frames(table: torch.Tensor, frames: int) -> torch.Tensor:
    """A (T, C) per-frame table at another clip length, by linear interpolation (itself when T == frames).

    A symbolic clip length (a graph exported with a dynamic T) always interpolates: comparing it with T would pin the
    graph to T frames, and linear interpolation to the same length is exactly the identity."""
    if not isinstance(frames, torch.SymInt) and frames == table.shape[0]:
        return table
    resampled = F.interpolate(table.t().unsqueeze(0), size=frames, mode="linear", align_corners=False)
    return resampled[0].t()


def resample_grid(table: torch.Tensor, grid: int, size: tuple[int, int]) -> torch.Tensor:
    """A (grid*grid, C) table of per-position embeddings at another (height, width), bicubically."""
    if size == (grid, grid):
        return table
    maps = table.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    maps = F.interpolate(maps, size=size, mode="bicubic", align_corners=False)
    return maps.permute(0, 2, 3, 1).reshape(size[0] * size[1], -1)


def token_grid(tokens: int) -> int:
    """Side length of the square patch grid behind `tokens` patch tokens (class token excluded)."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} patch tokens do not form a square grid")
    return side
