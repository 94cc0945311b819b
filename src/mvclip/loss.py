"""Video-text contrastive (VTC) loss: symmetric InfoNCE, with explicit distributed gathering.

The scheme follows open_clip's ``local_loss=True, gather_with_grad=True`` default: every rank
gathers the video and text embeddings of all ranks *with gradients* and scores its LOCAL rows
against the GLOBAL batch, so the logits are ``B x (world_size * B)`` rather than
``(world_size * B)^2`` and the labels of rank ``r`` are ``arange(B) + r * B``.

Gradient bookkeeping (what the tests check): each rank's loss ``L_r`` is the mean over its own
rows of the global logits, so the single-process loss on the concatenated batch is
``mean_r L_r``. Backward through the gather is a reduce-scatter with SUM, so the gradient that
reaches rank ``r``'s local embeddings is ``d(sum_s L_s)/d(local)`` -- ``world_size`` times the
single-process gradient of those rows. DDP then *averages* parameter gradients over ranks, which
brings it back to exactly the single-process gradient. Parameters that do not pass through the
gather (the logit scale) get ``dL_r/dp`` on each rank, whose DDP average is again exact.

Logit scale: the model stores ``log(1 / temperature)`` as a parameter (init ``ln(1/0.07)``) and
passes ``exp()`` of it here; :func:`clamp_logit_scale_` caps it at ``ln(100)`` after each optimizer
step. A fixed scale (MobileViCLIP's configs hold it at 100) is just a parameter with
``requires_grad=False`` (``learn_logit_scale: false`` in a recipe).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mvclip.distributed import rank_and_world_size

__all__ = [
    "VideoTextContrastiveLoss",
    "gather_features",
    "clamp_logit_scale_",
]


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
    collective carries both tensors (concatenated along features) to halve the latency.

    ``with_grad=True``: the result is differentiable; gradients from every rank's loss flow back
    (summed) to the rank that owns the rows. ``with_grad=False``: the gathered copy is detached and
    this rank's own slice is replaced by the local tensors, so only this rank's loss reaches its
    local embeddings (cheaper backward, but an incomplete gradient under ``local_loss``).
    """
    if video.shape != text.shape:
        raise ValueError(f"video {tuple(video.shape)} and text {tuple(text.shape)} embeddings must match")
    detected_rank, detected_ws = rank_and_world_size(group)
    world_size = detected_ws if world_size is None else world_size
    rank = detected_rank if rank is None else rank
    if world_size == 1:
        return video, text
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"world_size={world_size} needs torch.distributed to be initialized")

    dim = video.shape[1]
    both = torch.cat([video, text], dim=1)
    if with_grad:
        gathered = _all_gather_rows(both, group)
    else:
        with torch.no_grad():
            gathered = _all_gather_rows(both.detach(), group)
        chunks = list(gathered.chunk(world_size, dim=0))
        chunks[rank] = both
        gathered = torch.cat(chunks, dim=0)
    return gathered[:, :dim], gathered[:, dim:]


class VideoTextContrastiveLoss(nn.Module):
    """Symmetric InfoNCE over video and text embeddings: ``(CE(v2t) + CE(t2v)) / 2``.

    ``video_emb`` and ``text_emb`` are ``(B, D)``, row ``i`` of each forming a positive pair, and are
    expected to be L2-normalized already (the model's ``encode_*(normalize=True)``); pass
    ``normalize=True`` to normalize here instead. ``logit_scale`` is the already-exponentiated
    scale (``1 / temperature``), a scalar tensor so its gradient flows.

    Distributed (torch.distributed initialized with world_size > 1, or ``world_size``/``rank``
    given): see the module docstring. ``local_loss=False`` computes the full global logits on
    every rank (same loss on every rank; more compute, same gradient after DDP averaging when
    ``gather_with_grad=True``).
    """

    def __init__(
        self,
        *,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        normalize: bool = False,
        world_size: int | None = None,
        rank: int | None = None,
        group: Any = None,
    ) -> None:
        super().__init__()
        if (world_size is None) != (rank is None):
            raise ValueError("pass both world_size and rank, or neither")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.normalize = normalize
        self.world_size = world_size
        self.rank = rank
        self.group = group

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self.world_size is not None:
            return self.rank, self.world_size  # type: ignore[return-value]
        return rank_and_world_size(self.group)

    def forward(
        self,
        video_emb: Tensor,
        text_emb: Tensor,
        logit_scale: Tensor,
        output_dict: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """Return the scalar loss, or with ``output_dict=True`` a dict for logging.

        The dict holds ``loss``, ``logits_per_video`` / ``logits_per_text`` (rows: this rank's
        samples, or all samples with ``local_loss=False``), ``labels``, and the detached top-1
        accuracies ``acc_v2t`` / ``acc_t2v``.
        """
        if video_emb.ndim != 2 or video_emb.shape != text_emb.shape:
            raise ValueError(
                f"expected matching (B, D) embeddings, got {tuple(video_emb.shape)} and {tuple(text_emb.shape)}"
            )
        if self.normalize:
            video_emb = F.normalize(video_emb, dim=-1)
            text_emb = F.normalize(text_emb, dim=-1)

        rank, world_size = self._rank_and_world_size()
        batch = video_emb.shape[0]
        if world_size > 1:
            all_video, all_text = gather_features(
                video_emb, text_emb, with_grad=self.gather_with_grad,
                world_size=world_size, rank=rank, group=self.group,
            )
            if self.local_loss:
                logits_per_video = logit_scale * video_emb @ all_text.T
                logits_per_text = logit_scale * text_emb @ all_video.T
                labels = torch.arange(batch, device=video_emb.device) + rank * batch
            else:
                logits_per_video = logit_scale * all_video @ all_text.T
                logits_per_text = logits_per_video.T
                labels = torch.arange(world_size * batch, device=video_emb.device)
        else:
            logits_per_video = logit_scale * video_emb @ text_emb.T
            logits_per_text = logits_per_video.T
            labels = torch.arange(batch, device=video_emb.device)

        loss = (F.cross_entropy(logits_per_video, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        if not output_dict:
            return loss
        with torch.no_grad():
            acc_v2t = (logits_per_video.argmax(dim=1) == labels).float().mean()
            acc_t2v = (logits_per_text.argmax(dim=1) == labels).float().mean()
        return {
            "loss": loss,
            "logits_per_video": logits_per_video,
            "logits_per_text": logits_per_text,
            "labels": labels,
            "acc_v2t": acc_v2t,
            "acc_t2v": acc_t2v,
        }


def clamp_logit_scale_(param: nn.Parameter | Tensor, max_log: float = math.log(100), min_log: float = 0.0) -> None:
    """Clamp the stored LOG scale in place to ``[min_log, max_log]`` (call after each optimizer step).

    The cap ``ln(100)`` (temperature >= 0.01) keeps the learnable scale from running away, as in
    CLIP; the floor ``0`` keeps the scale >= 1, as open_clip does.
    """
    with torch.no_grad():
        param.clamp_(min=min_log, max=max_log)
