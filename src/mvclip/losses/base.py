"""The contract every training loss keeps, so a recipe can swap one for another with one YAML line.

A training loss is an ``nn.Module`` subclassing :class:`TrainingLoss`. The LightningModule encodes the batch once and
calls ``loss(outputs, batch)``:

- ``outputs`` (:class:`ModelOutputs`): the student's L2-normalised ``video`` and ``text`` embeddings ``(B, D)`` of
  this rank's batch (row ``i`` of each is a positive pair) and the exponentiated ``logit_scale`` (a scalar tensor
  carrying the model's gradient).
- ``batch``: the whole batch exactly as the data loader gave it (``video``, ``text``, ``key``, and whatever the
  shards add, e.g. ``teacher_video`` / ``teacher_text`` for distillation; docs/losses.md lists them).

It returns a ``dict[str, Tensor]`` of scalars: ``"loss"`` is the total that is back-propagated, every other entry a
named part (``"vtc"``, ``"kd"``, ...) that the module logs as ``train/loss/<name>``. Parts are for reading the
curves; only ``"loss"`` trains.

Parameters a loss owns (SigLIP's bias) are trained with the model: the module adds them to AdamW's parameter groups.
Like blocks, a loss names the parameters AdamW must not decay in ``no_decay_state``; any parameter of fewer than two
dimensions is never decayed anyway (``mvclip.contracts.no_decay_names``).

Distributed runs: every loss here scores this rank's rows against the gathered global batch so that, after DDP
averages the gradients, a run on N ranks trains exactly as one process on the concatenated batch would
(``mvclip.losses.gather`` explains the bookkeeping).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

__all__ = ["ModelOutputs", "TrainingLoss"]


@dataclass(frozen=True)
class ModelOutputs:
    """What the model produced for this rank's batch: unit-norm ``(B, D)`` embeddings and ``exp(log scale)``."""

    video: Tensor
    text: Tensor
    logit_scale: Tensor


class TrainingLoss(nn.Module):
    """Base class of the losses a recipe chooses with ``model.loss: {class_path: ..., init_args: {...}}``.

    Subclasses implement ``forward(outputs: ModelOutputs, batch: Mapping[str, Any]) -> dict[str, Tensor]`` returning
    ``{"loss": total, "<part>": value, ...}`` (scalars; see the module docstring), and raise ``ValueError`` from
    ``__init__`` for a bad argument: the builder reports it as a one-line error under ``model.loss.init_args``.
    """

    # parameter names (relative to the loss) AdamW must not decay, as blocks declare them (mvclip.contracts)
    no_decay_state: ClassVar[tuple[str, ...]] = ()

    def forward(self, outputs: ModelOutputs, batch: Mapping[str, Any]) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must implement forward(outputs, batch) -> dict")
