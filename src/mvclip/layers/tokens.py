"""Normalization of token sequences `(..., C)` with BatchNorm, which (unlike LayerNorm) folds into the next linear map."""
from __future__ import annotations

import torch
from torch import nn


def batchnorm_tokens(norm: nn.BatchNorm1d | None, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the channels of `(..., C)` tokens: the statistics of Side4Video's BatchNorm3d.
    `norm` None (folded into the next linear map) passes `x` through."""
    return x if norm is None else norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)
