"""Sample keys as numbers: torchmetrics can all-gather tensors but not strings, and a sample that
DistributedSampler repeats to pad the last batch must be recognised and counted once."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor


def stable_hash(text: str) -> int:
    """A signed int64 from blake2b of the UTF-8 text: equal on every rank and every run (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def hash_keys(keys: Sequence[str], device: torch.device | str | None = None) -> Tensor:
    """`stable_hash` of every key as an int64 tensor (tensors, unlike strings, can be all-gathered)."""
    return torch.tensor([stable_hash(k) for k in keys], dtype=torch.int64, device=device).reshape(-1)


def first_occurrence(ids: Tensor) -> Tensor:
    """Indices of the first occurrence of every distinct id, in order of appearance (order-independent metrics)."""
    if ids.numel() == 0:
        return ids.new_zeros(0)
    uniq, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((uniq.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return first.sort().values
