"""Does a model see time? Two measures next to retrieval, both DDP-safe like `RetrievalMetric`.

* **Twin accuracy** (`twin_acc`), for datasets whose samples declare a `group` (the synthetic set's
  time-reversed twins; any real set may declare groups of hard negatives, see docs/data.md): for every
  ordered pair (clip i, other member j of its group), is clip i closer to its own captions than to j's?
  Closeness to a caption set is the mean cosine to its captions. Ties count as wrong, and pairs whose
  caption sets are identical are skipped (no model can order them). A model blind to frame order
  scores about 50 % on time-reversed twins.
* **Twin caption cosine** (`twin_text_cos`), same pairs: the cosine between the two members' mean caption
  embeddings, a property of the text tower alone. Near 1 the text tower has merged a clip's captions with its
  partner's, and no video tower can reach a high twin accuracy against it; this is how a text tower learning
  from scratch beside an order-blind video tower fails (docs/blocks.md).
* **Order sensitivity** (`reverse`, `shuffle`), for any dataset: how far a clip's embedding moves when its
  frames are played backwards (or in a fixed shuffled order), as a percentage of how far apart the
  embeddings of different clips are: `100 * mean_i d(v_i, v'_i) / mean_{i != j} d(v_i, v_j)` with
  `d(a, b) = 1 - cos(a, b)`. 0 means the model ignores frame order (a frame-mean model, by construction);
  100 means reversing a clip moves it as far as swapping it for another clip. A frame-mean model's two
  embeddings differ only by the order of a float32 sum (about 1e-9 of the inter-clip distance), so ratios
  below `RESOLUTION` are reported as exactly 0.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mvclip.sample_keys import first_occurrence, hash_keys

__all__ = ["TemporalMetric", "RESOLUTION", "order_sensitivity", "twin_accuracy", "twin_caption_cosine", "shuffle_order"]

RESOLUTION = 1e-7  # order sensitivity (a ratio) below this is float32 summation noise


def shuffle_order(frames: int) -> list[int]:
    """A fixed frame order for the shuffle test: a derangement (no frame stays put) that is not the reversal."""
    if frames < 3:
        return list(reversed(range(frames)))
    gen = torch.Generator().manual_seed(frames)
    while True:
        order = torch.randperm(frames, generator=gen).tolist()
        if all(o != i for i, o in enumerate(order)) and order != list(reversed(range(frames))):
            return order


def order_sensitivity(video: Tensor, changed: Tensor) -> float:
    """Percent: mean distance from each clip to its re-ordered self over the mean distance between different clips."""
    video = torch.nn.functional.normalize(video.to(torch.float64), dim=-1)
    changed = torch.nn.functional.normalize(changed.to(torch.float64), dim=-1)
    n = video.shape[0]
    if n < 2:
        raise ValueError("order sensitivity needs at least two clips (it is relative to the distance between clips)")
    moved = (1.0 - (video * changed).sum(-1)).clamp_min(0.0).mean()
    gram = video @ video.T
    between = (n * n - gram.sum()) / (n * (n - 1))  # mean of 1 - cos over i != j (the diagonal is 1 - 1 = 0)
    if between <= 0:
        return 0.0
    ratio = float(moved / between)
    return 0.0 if ratio < RESOLUTION else 100.0 * ratio


def _partner_pairs(groups: Tensor, caption_sets: Tensor):
    """Per group of two or more clips: its members and the mask of ordered pairs whose caption sets differ."""
    for group in torch.unique(groups[groups >= 0]):
        members = torch.nonzero(groups == group).flatten()
        if members.numel() >= 2:
            yield members, caption_sets[members][:, None] != caption_sets[members][None, :]


def twin_accuracy(video: Tensor, caption_mean: Tensor, groups: Tensor, caption_sets: Tensor) -> tuple[float, int]:
    """(percent right, pairs scored) over ordered pairs of distinct group members; `groups` < 0 means no group.

    `caption_mean[i]` is the mean of clip i's unit-norm caption embeddings, so `video[i] @ caption_mean[j]` is
    the mean cosine of clip i to clip j's captions. Pairs with equal `caption_sets` hashes are skipped."""
    video = torch.nn.functional.normalize(video.to(torch.float64), dim=-1)
    caption_mean = caption_mean.to(torch.float64)
    right = total = 0
    for members, distinct in _partner_pairs(groups, caption_sets):
        scores = video[members] @ caption_mean[members].T  # row i: clip i against every member's captions
        own = scores.diagonal()
        right += int(((own[:, None] > scores) & distinct).sum())
        total += int(distinct.sum())
    return (100.0 * right / total if total else float("nan")), total


def twin_caption_cosine(caption_mean: Tensor, groups: Tensor, caption_sets: Tensor) -> float:
    """Mean cosine between the mean caption embeddings of the pairs `twin_accuracy` scores (nan without pairs)."""
    caption_mean = torch.nn.functional.normalize(caption_mean.to(torch.float64), dim=-1)
    cosines = [(caption_mean[members] @ caption_mean[members].T)[distinct] for members, distinct in _partner_pairs(groups, caption_sets)]
    cosines = torch.cat(cosines) if cosines else torch.zeros(0, dtype=torch.float64)
    return float(cosines.mean()) if cosines.numel() else float("nan")


class TemporalMetric(Metric):
    """Accumulates per-clip embeddings (plain, reversed, shuffled) and caption means; computes the measures above.

    update(video, keys, text, text_video_index, groups=None, reversed_video=None, shuffled_video=None):
    `text` are the batch's caption embeddings, `text_video_index` names each caption's clip in the batch (as
    evaluation batches carry them), `groups` a group id string (or None) per clip. Clips seen twice (DDP
    padding) count once. `compute()` returns `twin_acc` (with `twin_pairs` and `twin_text_cos`) when any group
    has two members with different captions present, and `reverse` / `shuffle` when those embeddings were given.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("video", "caption_mean", "key_ids", "group_ids", "caption_sets", "reversed", "shuffled"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        video: Tensor,
        keys: Sequence[str],
        text: Tensor,
        text_video_index: Tensor,
        groups: Sequence[str | None] | None = None,
        reversed_video: Tensor | None = None,
        shuffled_video: Tensor | None = None,
        captions: Sequence[str] | None = None,
    ) -> None:
        """One evaluation batch; `captions` (the caption strings, in `text` order) let identical caption sets be skipped."""
        n = video.shape[0]
        if len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} clips")
        index = text_video_index.to(video.device).long()
        text = torch.nn.functional.normalize(text.detach().to(video.device, torch.float32), dim=-1)
        sums = torch.zeros(n, text.shape[1], device=video.device).index_add_(0, index, text)
        counts = torch.bincount(index, minlength=n).clamp_min(1).to(sums.dtype)
        self.caption_mean.append(sums / counts[:, None])
        self.video.append(video.detach().float())
        self.key_ids.append(hash_keys(keys, video.device))
        groups = list(groups) if groups is not None else [None] * n
        gid = hash_keys([g or "" for g in groups], video.device).abs()  # non-negative ids; -1 marks "no group"
        self.group_ids.append(torch.where(torch.tensor([g is not None for g in groups], device=video.device), gid, -1))
        if captions is not None:
            per_clip = ["\x1e".join(sorted(c for c, i in zip(captions, index.tolist()) if i == k)) for k in range(n)]
        else:
            per_clip = keys  # unknown captions: every clip's set counts as distinct
        self.caption_sets.append(hash_keys(per_clip, video.device))
        for state, value in (("reversed", reversed_video), ("shuffled", shuffled_video)):
            if value is not None:
                getattr(self, state).append(value.detach().float())

    def compute(self) -> dict[str, float]:
        if isinstance(self.video, list) and not self.video:
            raise ValueError("TemporalMetric.compute() called before any update()")
        key_ids = dim_zero_cat(self.key_ids).long()
        keep = first_occurrence(key_ids)
        video = dim_zero_cat(self.video)[keep]
        out: dict[str, float] = {}
        groups = dim_zero_cat(self.group_ids).long()[keep]
        caption_mean, caption_sets = dim_zero_cat(self.caption_mean)[keep], dim_zero_cat(self.caption_sets).long()[keep]
        accuracy, pairs = twin_accuracy(video, caption_mean, groups, caption_sets)
        if pairs:
            out["twin_acc"], out["twin_pairs"] = accuracy, float(pairs)
            out["twin_text_cos"] = twin_caption_cosine(caption_mean, groups, caption_sets)
        for state, name in (("reversed", "reverse"), ("shuffled", "shuffle")):
            values = getattr(self, state)
            if isinstance(values, list) and not values:
                continue
            changed = dim_zero_cat(values)
            if changed.shape[0] != key_ids.shape[0]:
                raise ValueError(f"TemporalMetric: {name} embeddings were given for some batches only")
            out[name] = order_sensitivity(video, changed[keep])
        return out
