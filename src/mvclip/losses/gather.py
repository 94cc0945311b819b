"""Gathering embeddings across ranks, and why a gathered local loss trains exactly like one process.

The scheme follows open_clip's ``local_loss=True, gather_with_grad=True`` default: every rank
gathers the embeddings of all ranks *with gradients* and scores its LOCAL rows against the GLOBAL
batch, so the logits are ``B x (world_size * B)`` rather than ``(world_size * B)^2`` and the
positives of rank ``r`` sit in columns ``arange(B) + r * B``.

Gradient bookkeeping (what the tests check): each rank's loss ``L_r`` is the mean over its own
rows, so the single-process loss on the concatenated batch is ``mean_r L_r``. Backward through the
gather is a reduce-scatter with SUM, so the gradient that reaches rank ``r``'s local embeddings is
``d(sum_s L_s)/d(local)`` -- ``world_size`` times the single-process gradient of those rows. DDP
then *averages* parameter gradients over ranks, which brings it back to exactly the single-process
gradient. Parameters that do not pass through the gather (the logit scale, SigLIP's bias) get
``dL_r/dp`` on each rank, whose DDP average is again exact.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mvclip.distributed import rank_and_world_size

__all__ = ["gather_rows", "gather_features", "resolve_rank"]


def resolve_rank(world_size: int | None, rank: int | None, group: Any = None) -> tuple[int, int]:
    """(rank, world size): the given ones (tests, explicit setups) or else the process group's, (0, 1) without one."""
    detected_rank, detected_ws = rank_and_world_size(group)
    return (detected_rank if rank is None else rank), (detected_ws if world_size is None else world_size)


def _all_gather_rows(x: Tensor, group: Any) -> Tensor:
    """Concatenate ``x`` (same shape on every rank) from all ranks along dim 0, differentiably.

    ``all_gather_single_autograd`` is torch 2.13's non-deprecated differentiable gather (its
    backward is a reduce-scatter with sum); ``torch.distributed.nn.functional.all_gather`` and
    ``all_gather_tensor_autograd`` both warn as deprecated.
    """
    from torch.distributed import _functional_collectives as fc

    pg = group if group is not None else dist.group.WORLD
    out = fc.all_gather_single_autograd(x.contiguous(), 0, pg)
    # The result may be an AsyncCollectiveTensor (waits lazily on first use); wait_tensor keeps the
    # autograd graph, unlike AsyncCollectiveTensor.wait().
    return fc.wait_tensor(out) if isinstance(out, fc.AsyncCollectiveTensor) else out


def gather_rows(
    x: Tensor,
    *,
    with_grad: bool,
    world_size: int | None = None,
    rank: int | None = None,
    group: Any = None,
) -> Tensor:
    """``(B, ...)`` rows of every rank concatenated into ``(world_size * B, ...)``, in rank order.

    ``with_grad=True``: differentiable; every rank's loss reaches the rows it used (summed on their
    owner). ``with_grad=False``: the gathered copy is detached except this rank's own slice, which
    is ``x`` itself, so only this rank's loss reaches its rows (cheaper backward, an incomplete
    gradient under a local loss). Teachers' embeddings need no gradient at all: either works.
    """
    rank, world_size = resolve_rank(world_size, rank, group)
    if world_size == 1:
        return x
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"world_size={world_size} needs torch.distributed to be initialized")
    if with_grad:
        return _all_gather_rows(x, group)
    with torch.no_grad():
        gathered = _all_gather_rows(x.detach(), group)
    chunks = list(gathered.chunk(world_size, dim=0))
    chunks[rank] = x
    return torch.cat(chunks, dim=0)


def gather_features(
    video: Tensor,
    text: Tensor,
    *,
    with_grad: bool,
    world_size: int | None = None,
    rank: int | None = None,
    group: Any = None,
) -> tuple[Tensor, Tensor]:
    """Gather ``(B, D)`` video and text embeddings of all ranks into ``(world_size * B, D)``.

    Every rank must pass the same local batch size (use ``drop_last`` in the loader). One
    collective carries both tensors (concatenated along features) to halve the latency; see
    :func:`gather_rows` for ``with_grad``.
    """
    if video.shape != text.shape:
        raise ValueError(f"video {tuple(video.shape)} and text {tuple(text.shape)} embeddings must match")
    rank, world_size = resolve_rank(world_size, rank, group)
    if world_size == 1:
        return video, text  # one process: the tensors themselves, untouched
    dim = video.shape[1]
    gathered = gather_rows(torch.cat([video, text], dim=1), with_grad=with_grad, world_size=world_size, rank=rank, group=group)
    return gathered[:, :dim], gathered[:, dim:]
