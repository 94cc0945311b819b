"""Gradient (activation) checkpointing of video stages: trade compute for memory during training.

A checkpointed stage keeps only each block's input for the backward pass and runs the block's forward a second time
there to get what the backward needs, so a stage's activations are never all held at once (larger batches on the
same GPU, at roughly one extra forward of those stages). It applies only while training with gradients enabled;
evaluation, `torch.no_grad` and exports run the blocks as usual.

BatchNorm in training mode updates its running statistics on every forward, so the recomputation would move them
a second time (twice the momentum step, `num_batches_tracked` counted twice). The recomputation therefore runs
inside `keep_norm_statistics`, which puts them back as they were before it: a checkpointed run ends with the same
running statistics as an uncheckpointed one (tests/test_checkpointing.py asserts both this and equal gradients).

Chosen per video stage by the training recipe, not the model YAML, since it changes how a model trains and not
what it is: `model.checkpointing: [2, 3]` (stage indices) or `model.checkpointing: all`. A model with a side network
takes `model.checkpointing: side` instead: its frozen backbone keeps nothing for the backward, so what there is to
save is the side network's own activations, recomputed one fusion point (fusion layer and side blocks) at a time.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mvclip.errors import ConfigError

if TYPE_CHECKING:
    from mvclip.model import VideoEncoder

ALL_STAGES = "all"
SIDE_NETWORK = "side"


@contextlib.contextmanager
def keep_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Running statistics of every norm layer under `module` (BatchNorm's mean, var, batch count) as they were on
    entry, whatever the body's forwards do to them."""
    buffers = [b for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
               for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


def run_checkpointed(block: nn.Module | Callable[..., torch.Tensor], *args: Any, norms: nn.Module | None = None) -> torch.Tensor:
    """`block(*args)` with its activations recomputed in the backward instead of stored; the recomputation leaves
    the norm statistics of `norms` (default: `block`, which must then be a module) alone."""
    owner = block if norms is None else norms

    def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), keep_norm_statistics(owner)

    return checkpoint(block, *args, use_reentrant=False, context_fn=contexts)


def checkpoint_stages(encoder: VideoEncoder, stages: Sequence[int] | str | None, path: str = "model.checkpointing") -> list[int]:
    """Mark the listed video stages (indices into `video.stages`, or `all`) for checkpointing; returns the indices.

    A bad index or value is a `ConfigError` naming `path`."""
    if stages is None:
        return []
    side = getattr(encoder, "side", None)
    if stages == SIDE_NETWORK:
        if side is None:
            raise ConfigError(f"{path}: {SIDE_NETWORK!r} checkpoints a side network and this model has none; list video "
                              f"stage indices such as [2, 3], or {ALL_STAGES!r}")
        side.grad_checkpoint = True
        return []
    count = len(encoder.stages)
    if stages == ALL_STAGES:
        indices = list(range(count))
    elif isinstance(stages, Sequence) and not isinstance(stages, str):
        indices = []
        for i, index in enumerate(stages):
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
                raise ConfigError(f"{path}[{i}]: {index!r} is not a video stage index; this model has {count} stages "
                                  f"(0-{count - 1}), e.g. `{path}: [{count - 2}, {count - 1}]`")
            if index not in indices:
                indices.append(index)
    else:
        raise ConfigError(f"{path}: expected a list of video stage indices such as [2, 3], {ALL_STAGES!r}, or "
                          f"{SIDE_NETWORK!r} for a side network, got {stages!r}")
    if indices and side is not None:
        raise ConfigError(f"{path}: this model's video backbone is frozen under a side network and runs without gradients, "
                          f"so checkpointing its stages saves nothing; `{path}: {SIDE_NETWORK}` checkpoints the side network")
    for index in indices:
        encoder.stages[index].grad_checkpoint = True
    return sorted(indices)
