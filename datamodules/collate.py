"""Batching decoded samples.

Training batches pair each video with one caption, so ``text`` is (B, 77). Evaluation keeps every
caption of every video (retrieval metrics need them all), so ``text`` is (N, 77) with
``text_video_index`` (N,) saying which video of the batch each caption belongs to.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def _optional(samples: Sequence[dict[str, Any]], name: str) -> list[Any] | None:
    """Values of ``name`` when every sample has it; None otherwise (a half-labelled batch drops it)."""
    values = [s.get(name) for s in samples]
    return None if any(v is None for v in values) else values


def collate_train(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``video`` float (B,T,3,H,W), ``text`` long (B,77), ``key`` list[str], ``label``/``teacher`` if all have them,
    ``teacher_video``/``teacher_text`` ({teacher name: (B, D)}) if all come from reinforced shards,
    ``group`` (list of str or None) if any has one."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {
        "video": torch.stack([s["video"] for s in samples]),
        "text": torch.stack([s["text"] for s in samples]).long(),
        "key": [s["key"] for s in samples],
    }
    _add_optional(batch, samples)
    return batch


def collate_eval(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``video`` (B,T,3,H,W), ``text`` (N,77) all captions, ``text_video_index`` long (N,), ``key``."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    texts = [s["text"] if s["text"].ndim == 2 else s["text"][None] for s in samples]
    index = torch.cat([torch.full((t.shape[0],), i, dtype=torch.long) for i, t in enumerate(texts)])
    batch: dict[str, Any] = {
        "video": torch.stack([s["video"] for s in samples]),
        "text": torch.cat(texts).long(),
        "text_video_index": index,
        "key": [s["key"] for s in samples],
    }
    _add_optional(batch, samples)
    return batch


def _add_optional(batch: dict[str, Any], samples: Sequence[dict[str, Any]]) -> None:
    if any(s.get("group") is not None for s in samples):
        batch["group"] = [s.get("group") for s in samples]  # None for a sample outside every group
    labels = _optional(samples, "label")
    if labels is not None:
        batch["label"] = torch.tensor(labels, dtype=torch.long)
    teachers = _optional(samples, "teacher")
    if teachers is not None and len({tuple(t.shape) for t in teachers}) == 1:
        batch["teacher"] = torch.stack(teachers)
    for name in ("teacher_video", "teacher_text"):  # reinforced shards: {teacher name: (B, D) float32}
        stacked = _stack_by_name(_optional(samples, name))
        if stacked is not None:
            batch[name] = stacked


def _stack_by_name(values: list[dict[str, torch.Tensor]] | None) -> dict[str, torch.Tensor] | None:
    """{name: (B, D)} when every sample has the same teachers with one dim each; None otherwise (mixed batches)."""
    if not values or len({tuple(sorted(v)) for v in values}) != 1:
        return None
    out = {}
    for name in sorted(values[0]):
        rows = [v[name] for v in values]
        if len({tuple(r.shape) for r in rows}) != 1:
            return None
        out[name] = torch.stack(rows).float()
    return out
