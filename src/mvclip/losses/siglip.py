"""SigLIP's pairwise sigmoid loss: every video-text pair of the global batch is its own binary decision.

With unit-norm embeddings ``v_i``, ``t_j``, scale ``s`` (the model's ``exp(logit_scale)``, shared with
VTC) and a learnable bias ``b`` (initialised at -10, as in the paper, so the many negatives start
near probability 0):

    z_ij = s * <v_i, t_j> + b,   y_ij = +1 if i == j else -1
    loss = -(1 / N) * sum_i sum_j log sigmoid(y_ij * z_ij)

summed over all ``N x N`` pairs of the global batch and divided by the batch size ``N`` (not by
``N^2``), as the paper writes it.

Distributed: each rank gathers the TEXT embeddings with gradients and scores its local videos
(rows) against all texts (columns), which covers every pair once over the ranks; rank ``r``'s loss
is ``-(1/B) * sum`` over its rows, so ``mean_r L_r`` is the single-process loss and the gradient
bookkeeping of ``mvclip.losses.gather`` applies unchanged (the bias, like the scale, is outside the
gather: its DDP average is exact). The paper's ring exchange of text chunks saves memory at large
batches; gathering all texts is the simplest scheme that is exactly right.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvclip.config_checks import is_finite_real
from mvclip.losses.base import ModelOutputs, TrainingLoss
from mvclip.losses.gather import gather_rows, resolve_rank

__all__ = ["SigLIPLoss"]


class SigLIPLoss(TrainingLoss):
    """Sigmoid loss over all video-text pairs with a learnable bias (``bias_init``, trained unless ``learn_bias`` is
    false). Returns ``{"loss": siglip, "siglip": siglip}``; the bias is not weight-decayed."""

    no_decay_state: ClassVar[tuple[str, ...]] = ("bias",)

    def __init__(
        self,
        *,
        bias_init: float = -10.0,
        learn_bias: bool = True,
        world_size: int | None = None,
        rank: int | None = None,
        group: Any = None,
    ) -> None:
        super().__init__()
        if not is_finite_real(bias_init):
            raise ValueError(f"bias_init: expected a finite number, got {bias_init!r}")
        if (world_size is None) != (rank is None):
            raise ValueError("pass both world_size and rank, or neither")
        self.bias = nn.Parameter(torch.tensor(float(bias_init)), requires_grad=bool(learn_bias))
        self.world_size = world_size
        self.rank = rank
        self.group = group

    def forward(self, outputs: ModelOutputs, batch: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
        video, text = outputs.video, outputs.text
        if video.ndim != 2 or video.shape != text.shape:
            raise ValueError(f"expected matching (B, D) embeddings, got {tuple(video.shape)} and {tuple(text.shape)}")
        rank, world_size = resolve_rank(self.world_size, self.rank, self.group)
        all_text = gather_rows(text, with_grad=True, world_size=world_size, rank=rank, group=self.group)
        logits = outputs.logit_scale * video @ all_text.T + self.bias
        local = video.shape[0]
        signs = -torch.ones_like(logits)
        rows = torch.arange(local, device=logits.device)
        signs[rows, rows + rank * local] = 1.0
        loss = -F.logsigmoid(signs * logits).sum() / local
        return {"loss": loss, "siglip": loss}
