"""Text-video retrieval metrics that stay correct under DDP (docs/design.md §6).

`RetrievalMetric` accumulates embeddings plus stable key hashes in list states that torchmetrics
concatenates across ranks; `compute()` then drops duplicated samples (DistributedSampler pads the
last batch by repeating samples) before ranking, so a padded run reports the same numbers as a
single-process one. Ranks are pessimistic (ties count against the ground truth) and computed in
float64, so a collapsed model cannot score R@1 = 100 by having every similarity equal.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mvclip.sample_keys import first_occurrence, hash_keys

__all__ = ["RetrievalMetric", "rank_stats"]

_RECALL_KS = (1, 5, 10)


def rank_stats(ranks: Tensor, prefix: str) -> dict[str, float]:
    """R@1/5/10 (percent), MdR = floor(median of 0-based ranks) + 1 and MnR (mean 1-based rank).

    `ranks` are 1-based. The median of an even count is the mean of the two middle values, as
    NumPy computes it, before the floor.
    """
    r = ranks.to(torch.float64).flatten()
    if r.numel() == 0:
        raise ValueError(f"{prefix}: no queries to rank")
    out = {f"{prefix}/R@{k}": float((r <= k).to(torch.float64).mean() * 100.0) for k in _RECALL_KS}
    s = (r - 1.0).sort().values
    n = s.numel()
    median0 = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0
    out[f"{prefix}/MdR"] = float(torch.floor(median0) + 1.0)
    out[f"{prefix}/MnR"] = float(r.mean())
    return out


class RetrievalMetric(Metric):
    """Text-to-video and video-to-text retrieval over the whole evaluation set.

    update(video_emb (V,D), video_keys, text_emb (N,D), text_video_keys[, caption_ids]): each text
    row names the key of the video it describes. Captions are identified by (video key, index of
    the caption among that video's captions in this update call) unless `caption_ids` (e.g. the
    caption text) are given; so without `caption_ids` every caption's video must be in the same
    call, which is how `collate_eval` batches. Duplicated videos / captions (same id) count once;
    the first occurrence is kept. A video without captions is a T2V distractor but not a V2T query.

    Tie rule (pessimistic; equivalent to a stable sort that puts tied distractors first):
      * T2V, caption c with ground-truth video g:
        rank(c) = 1 + #{videos v != g : s(c, v) >= s(c, g)}.
      * V2T, video v with ground-truth captions G(v):
        rank(v) = min_{c in G(v)} (1 + #{captions c' not in G(v) : s(c', v) >= s(c, v)})
                = 1 + #{c' not in G(v) : s(c', v) >= max_{c in G(v)} s(c, v)}.
        Other ground-truth captions of the same video never count against it.
    Here s is the cosine similarity in float64 (or its DSL rescoring for the `*_dsl` keys). The rule
    does not depend on sample order, so results are identical across ranks and world sizes.

    dual_softmax: also report `t2v_dsl/*` and `v2t_dsl/*`, where each similarity is multiplied by a
    softmax prior over the *other* queries (t2v: over captions for a video; v2t: over videos for a
    caption) with inverse temperature `dsl_scale`. It looks at the whole test set, so it is a
    transductive number and is reported only under its own labels.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        dual_softmax: bool = False,
        dsl_scale: float = 100.0,
        chunk_size: int = 1024,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.dual_softmax = dual_softmax
        self.dsl_scale = float(dsl_scale)
        self.chunk_size = int(chunk_size)
        for name in ("video_emb", "video_ids", "text_emb", "text_video_ids", "text_ids"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        video_emb: Tensor,
        video_keys: Sequence[str],
        text_emb: Tensor,
        text_video_keys: Sequence[str],
        caption_ids: Sequence[str] | None = None,
    ) -> None:
        """Store one batch; see the class docstring for how captions are identified."""
        if video_emb.ndim != 2 or text_emb.ndim != 2:
            raise ValueError(f"embeddings must be 2-D, got video {tuple(video_emb.shape)}, text {tuple(text_emb.shape)}")
        if video_emb.shape[1] != text_emb.shape[1]:
            raise ValueError(f"embedding widths differ: video {video_emb.shape[1]}, text {text_emb.shape[1]}")
        if len(video_keys) != video_emb.shape[0]:
            raise ValueError(f"{len(video_keys)} video keys for {video_emb.shape[0]} video embeddings")
        if len(text_video_keys) != text_emb.shape[0]:
            raise ValueError(f"{len(text_video_keys)} text_video_keys for {text_emb.shape[0]} text embeddings")
        if caption_ids is None:
            present = set(video_keys)
            missing = [k for k in text_video_keys if k not in present]
            if missing:
                raise ValueError(
                    f"captions refer to videos not in this batch ({missing[:3]}...); keep a video's captions "
                    "with it or pass caption_ids so captions can be identified across batches"
                )
            seen: dict[str, int] = {}
            caption_ids = []
            for k in text_video_keys:
                caption_ids.append(str(seen.get(k, 0)))
                seen[k] = seen.get(k, 0) + 1
        elif len(caption_ids) != len(text_video_keys):
            raise ValueError(f"{len(caption_ids)} caption_ids for {len(text_video_keys)} captions")
        device = video_emb.device
        self.video_emb.append(video_emb.detach())
        self.video_ids.append(hash_keys(video_keys, device))
        self.text_emb.append(text_emb.detach().to(device))
        self.text_video_ids.append(hash_keys(text_video_keys, device))
        # \x1f (unit separator) cannot appear in a sensible key, so (key, id) pairs cannot collide by concatenation
        self.text_ids.append(hash_keys([f"{k}\x1f{c}" for k, c in zip(text_video_keys, caption_ids)], device))

    def _gathered(self) -> tuple[Tensor, Tensor, Tensor]:
        """De-duplicated, L2-normalized float64 (video, text) embeddings and each caption's video index."""
        if isinstance(self.video_emb, list) and not self.video_emb:
            raise ValueError("RetrievalMetric.compute() called before any update()")
        video = dim_zero_cat(self.video_emb)
        video_ids = dim_zero_cat(self.video_ids).long()
        text = dim_zero_cat(self.text_emb)
        text_video_ids = dim_zero_cat(self.text_video_ids).long()
        text_ids = dim_zero_cat(self.text_ids).long()

        keep_v = first_occurrence(video_ids)
        video, video_ids = video[keep_v], video_ids[keep_v]
        keep_t = first_occurrence(text_ids)
        text, text_video_ids = text[keep_t], text_video_ids[keep_t]
        if text.shape[0] == 0:
            raise ValueError("RetrievalMetric: no captions were given")

        # map each caption's video hash to a row of `video` (video_ids are unique now)
        order = video_ids.argsort()
        sorted_ids = video_ids[order]
        pos = torch.searchsorted(sorted_ids, text_video_ids).clamp(max=sorted_ids.numel() - 1)
        if not bool((sorted_ids[pos] == text_video_ids).all()):
            raise ValueError("RetrievalMetric: some captions refer to videos that were never given")
        text_gt = order[pos]

        video = torch.nn.functional.normalize(video.to(torch.float64), dim=-1)
        text = torch.nn.functional.normalize(text.to(torch.float64), dim=-1)
        if not (torch.isfinite(video).all() and torch.isfinite(text).all()):
            raise ValueError("RetrievalMetric: embeddings contain NaN or Inf")
        return video, text, text_gt

    def compute(self) -> dict[str, float]:
        """Rank everything and return `{t2v,v2t}[_dsl]/{R@1,R@5,R@10,MdR,MnR}`, `num_videos`, `num_texts`."""
        video, text, text_gt = self._gathered()
        out: dict[str, float] = {}
        out.update(rank_stats(self._t2v_ranks(video, text, text_gt), "t2v"))
        out.update(rank_stats(self._v2t_ranks(video, text, text_gt), "v2t"))
        if self.dual_softmax:
            col_lse, row_lse = self._dsl_normalizers(video, text)
            t2v_rescore = lambda s: s * torch.exp(self.dsl_scale * s - col_lse[None, :])  # noqa: E731
            # v2t chunk is (videos, captions): the prior is a softmax over videos for each caption
            v2t_rescore = lambda s: s * torch.exp(self.dsl_scale * s - row_lse[None, :])  # noqa: E731
            out.update(rank_stats(self._t2v_ranks(video, text, text_gt, t2v_rescore), "t2v_dsl"))
            out.update(rank_stats(self._v2t_ranks(video, text, text_gt, v2t_rescore), "v2t_dsl"))
        out["num_videos"] = float(video.shape[0])
        out["num_texts"] = float(text.shape[0])
        return out

    def _t2v_ranks(
        self, video: Tensor, text: Tensor, text_gt: Tensor, rescore: Callable[[Tensor], Tensor] | None = None
    ) -> Tensor:
        """1-based pessimistic rank of each caption's video among all videos."""
        ranks = []
        for start in range(0, text.shape[0], self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            s = text[rows] @ video.T
            if rescore is not None:
                s = rescore(s)
            gt = s.gather(1, text_gt[rows, None])
            # the ground truth itself satisfies >=, so the count is already 1 + #other candidates
            ranks.append((s >= gt).sum(1))
        return torch.cat(ranks)

    def _v2t_ranks(
        self, video: Tensor, text: Tensor, text_gt: Tensor, rescore: Callable[[Tensor], Tensor] | None = None
    ) -> Tensor:
        """1-based pessimistic rank of each captioned video's best caption among all captions."""
        has_caption = torch.zeros(video.shape[0], dtype=torch.bool, device=video.device)
        has_caption[text_gt] = True
        ranks = []
        for start in range(0, video.shape[0], self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            s = video[rows] @ text.T
            if rescore is not None:
                s = rescore(s)
            idx = torch.arange(start, start + s.shape[0], device=video.device)
            is_gt = text_gt[None, :] == idx[:, None]
            best = s.masked_fill(~is_gt, float("-inf")).amax(1, keepdim=True)
            rank = 1 + ((s >= best) & ~is_gt).sum(1)
            ranks.append(rank[has_caption[rows]])
        return torch.cat(ranks)

    def _dsl_normalizers(self, video: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """Log-sum-exp of scaled similarities over captions (per video) and over videos (per caption)."""
        col_lse = torch.full((video.shape[0],), float("-inf"), dtype=video.dtype, device=video.device)
        row_lse = []
        for start in range(0, text.shape[0], self.chunk_size):
            z = self.dsl_scale * (text[start : start + self.chunk_size] @ video.T)
            col_lse = torch.logaddexp(col_lse, torch.logsumexp(z, dim=0))
            row_lse.append(torch.logsumexp(z, dim=1))
        return col_lse, torch.cat(row_lse)
