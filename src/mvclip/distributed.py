"""Where this process stands in a distributed run: its rank and the world size, in that order everywhere."""
from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist


def rank_and_world_size(group: Any = None, *, from_environment: bool = False) -> tuple[int, int]:
    """(rank, world size) of `group` when torch.distributed is initialized; otherwise, with `from_environment`,
    the launcher's `RANK`/`WORLD_SIZE` (data loaders split shards before the process group exists), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    if from_environment:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return 0, 1
