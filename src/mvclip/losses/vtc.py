"""Video-text contrastive (VTC) loss: symmetric InfoNCE, with explicit distributed gathering.

Each rank scores its local rows against the gathered global batch (``mvclip.losses.gather`` shows
why that trains exactly like one process on the concatenated batch).

Logit scale: the model stores ``log(1 / temperature)`` as a parameter (init ``ln(1/0.07)``) and
passes ``exp()`` of it here; :func:`clamp_logit_scale_` caps it at ``ln(100)`` after each optimizer
step. A fixed scale (MobileViCLIP's configs hold it at 100) is just a parameter with
``requires_grad=False`` (``learn_logit_scale: false`` in a recipe).

Text uniformity (``text_uniformity: w``, off by default): adds ``w`` times the mean over this rank's captions of
``log mean_{j != i} exp(-t * |text_i - text_j|^2)`` over the global batch (Wang & Isola's uniformity, one row at a
time so it splits over ranks exactly as the contrastive term does). It pushes every caption away from its nearest
other captions. Why it exists: while the video tower is still blind to frame order, VTC's optimum for a clip and its
time-reversed twin is to map their two captions to one embedding, and a text tower learning from scratch follows
(twin-caption cosine 0.985 measured); the term keeps captions that differ apart. Measured: it does (0.996 -> 0.70 at
weight 1) and TPE attention still learned no order at the ablation budget (docs/blocks.md), so it is a lever to test,
not a default. Identical captions (equal embeddings) contribute a constant with zero gradient.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvclip.config_checks import is_finite_real
from mvclip.losses.base import ModelOutputs, TrainingLoss
from mvclip.losses.gather import gather_features, gather_rows, resolve_rank

__all__ = ["VideoTextContrastiveLoss", "clamp_logit_scale_"]


class VideoTextContrastiveLoss(TrainingLoss):
    """Symmetric InfoNCE over video and text embeddings: ``(CE(v2t) + CE(t2v)) / 2``.

    ``video_emb`` and ``text_emb`` are ``(B, D)``, row ``i`` of each forming a positive pair, and are
    expected to be L2-normalized already (the model's ``encode_*(normalize=True)``); pass
    ``normalize=True`` to normalize here instead. ``logit_scale`` is the already-exponentiated
    scale (``1 / temperature``), a scalar tensor so its gradient flows.

    Called as every training loss, ``loss(outputs, batch) -> {"loss": vtc, "vtc": vtc}``
    (``mvclip.losses.base``); the tensor form ``loss(video_emb, text_emb, logit_scale,
    output_dict=False)`` (:meth:`contrastive`) stays for direct use.

    Distributed (torch.distributed initialized with world_size > 1, or ``world_size``/``rank``
    given): see ``mvclip.losses.gather``. ``local_loss=False`` computes the full global logits on
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
        text_uniformity: float = 0.0,
        uniformity_t: float = 2.0,
    ) -> None:
        super().__init__()
        if (world_size is None) != (rank is None):
            raise ValueError("pass both world_size and rank, or neither")
        if not (is_finite_real(text_uniformity) and is_finite_real(uniformity_t)) or not text_uniformity >= 0.0 or not uniformity_t > 0.0:
            raise ValueError(f"expected text_uniformity >= 0 and uniformity_t > 0 (finite numbers), got {text_uniformity!r} and {uniformity_t!r}")
        self.text_uniformity = float(text_uniformity)
        self.uniformity_t = float(uniformity_t)
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.normalize = normalize
        self.world_size = world_size
        self.rank = rank
        self.group = group

    def _rank_and_world_size(self) -> tuple[int, int]:
        return resolve_rank(self.world_size, self.rank, self.group)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``loss(outputs, batch)`` -> ``{"loss", "vtc"}``; ``loss(video_emb, text_emb, logit_scale, ...)`` -> :meth:`contrastive`."""
        if args and isinstance(args[0], ModelOutputs):
            return self.terms(*args, **kwargs)
        return self.contrastive(*args, **kwargs)

    def terms(self, outputs: ModelOutputs, batch: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
        """The training-loss form: the batch is not needed beyond the embeddings."""
        vtc = self.contrastive(outputs.video, outputs.text, outputs.logit_scale)
        if self.text_uniformity == 0.0:
            return {"loss": vtc, "vtc": vtc}
        uniformity = self.uniformity(outputs.text)
        return {"loss": vtc + self.text_uniformity * uniformity, "vtc": vtc, "text_uniformity": uniformity}

    def uniformity(self, text_emb: Tensor) -> Tensor:
        """Mean over this rank's rows ``i`` of ``log mean_{j != i} exp(-t |text_i - text_j|^2)``, ``j`` over the global batch.

        Rows are unit vectors (``normalize=True`` makes them so first), so ``|a - b|^2 = 2 - 2 a.b``.
        """
        if self.normalize:
            text_emb = F.normalize(text_emb, dim=-1)
        rank, world_size = self._rank_and_world_size()
        batch = text_emb.shape[0]
        all_text = text_emb
        if world_size > 1:
            all_text = gather_rows(text_emb, with_grad=self.gather_with_grad, world_size=world_size, rank=rank,
                                   group=self.group)
        if all_text.shape[0] < 2:
            raise ValueError("text uniformity needs at least two captions in the global batch")
        squared = (2.0 - 2.0 * text_emb @ all_text.T).clamp_min(0.0)
        own = torch.arange(batch, device=text_emb.device) + rank * batch
        scores = (-self.uniformity_t * squared).index_put((torch.arange(batch, device=text_emb.device), own),
                                                          torch.tensor(float("-inf"), device=text_emb.device))
        return (torch.logsumexp(scores, dim=1) - math.log(all_text.shape[0] - 1)).mean()

    def contrastive(
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
