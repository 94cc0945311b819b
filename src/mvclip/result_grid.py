"""Text-to-video results as pictures: the pieces `mvclip.callbacks.ResultGrid` logs to TensorBoard.

Recall numbers say how often the right clip comes first; a grid of a few queries with their top clips shows what the
model confuses (the twin that moves the other way, the same shape in another colour). These helpers are pure
functions over tensors and arrays, so they are tested without a trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mvclip.tokenizer import EOT, SOT, _shared_tokenizer

CORRECT = (40, 200, 60)  # border of a clip the query describes
OTHER = (70, 70, 70)  # border of any other clip
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


@dataclass
class Hit:
    """One ranked clip of a query: its score, its position in validation order (ties go to the earlier clip), its
    key, its frame strip (uint8, HWC) and whether the query is one of its captions."""

    score: float
    order: int
    key: str
    strip: np.ndarray
    correct: bool


@dataclass
class QueryResult:
    """A query's caption, its top clips, and the rank of its best-ranked correct clip (None: no correct clip was seen)."""

    caption: str
    hits: list[Hit]
    correct_rank: int | None


def caption_text(tokens: torch.Tensor | Sequence[int]) -> str:
    """The caption a row of token ids spells (start, end and padding dropped): eval batches carry only the tokens."""
    ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
    if ids and ids[0] == SOT:
        ids = ids[1:]
    if EOT in ids:
        ids = ids[: ids.index(EOT)]
    return _shared_tokenizer().decode(ids).strip()


def to_unit_range(video: torch.Tensor, spec: Any = None) -> torch.Tensor:
    """Undo the model's input normalization (`mvclip.input_spec.InputSpec`: mean/std, value range) so pixels are
    [0, 1] RGB again; without a spec the clip is taken to be [0, 1] already."""
    x = video.detach().float()
    if spec is not None and getattr(spec, "mean", None) is not None and getattr(spec, "std", None) is not None:
        shape = [1] * (x.ndim - 3) + [3, 1, 1]
        x = x * torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(shape)
        x = x + torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(shape)
    low, high = tuple(getattr(spec, "value_range", (0.0, 1.0))) if spec is not None else (0.0, 1.0)
    if (low, high) != (0.0, 1.0):
        x = (x - low) / (high - low)
    return x.clamp(0.0, 1.0)


def frame_strip(clip: torch.Tensor, frames: int, size: int, spec: Any = None) -> np.ndarray:
    """`frames` evenly spaced frames of one clip `(T, 3, H, W)`, each `size` px high, side by side: uint8 `(size, W', 3)`.

    A few small frames tell direction and growth apart and cost a few kilobytes, so a clip's strip can be kept
    long after its full-resolution frames are gone."""
    if clip.ndim != 4 or clip.shape[1] != 3:
        raise ValueError(f"frame_strip: expected a clip (T, 3, H, W), got {tuple(clip.shape)}")
    picked = torch.linspace(0, clip.shape[0] - 1, max(1, min(frames, clip.shape[0]))).round().long()
    x = to_unit_range(clip[picked.to(clip.device)], spec).cpu()
    width = max(1, round(size * x.shape[-1] / x.shape[-2]))
    x = F.interpolate(x, size=(size, width), mode="bilinear", align_corners=False, antialias=True)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)  # (F, 3, size, width)
    return x.permute(2, 0, 3, 1).reshape(size, -1, 3).numpy()  # frames side by side


def top_hits(current: list[Hit], scores: torch.Tensor, orders: Sequence[int], keys: Sequence[str], correct: Sequence[bool],
             strip_of: Any, k: int) -> list[Hit]:
    """Merge one batch's clips into a query's top `k` (higher score first; equal scores keep validation order).

    `strip_of(i)` makes the strip of the batch's clip `i`; it is called only for clips that enter the top `k`, so a
    clip that never ranks costs no pixels."""
    ranked = [(h.score, h.order, None, h) for h in current]
    ranked += [(float(s), int(o), i, None) for i, (s, o) in enumerate(zip(scores.tolist(), orders))]
    ranked.sort(key=lambda r: (-r[0], r[1]))
    out = []
    for score, order, i, hit in ranked[:k]:
        out.append(hit if hit is not None else Hit(score, order, keys[i], strip_of(i), bool(correct[i])))
    return out


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def draw_grid(results: Sequence[QueryResult], k: int, border: int = 3, gap: int = 6, label_px: int = 14) -> np.ndarray:
    """One row per query: its caption (and the correct clip's rank), then its top `k` frame strips left to right, the
    correct ones framed in green, the others in grey, each with its score below. uint8 `(H, W, 3)`."""
    from PIL import Image, ImageDraw

    strips = [h.strip for r in results for h in r.hits]
    if not strips:
        raise ValueError("draw_grid: no ranked clips to draw")
    strip_h = max(s.shape[0] for s in strips)
    strip_w = max(s.shape[1] for s in strips)
    tile_w, tile_h = strip_w + 2 * border, strip_h + 2 * border
    row_h = label_px + 4 + tile_h + label_px + gap
    font = _font(label_px - 2)
    labels = [f'"{r.caption}"  (' + ("no correct clip among those seen" if r.correct_rank is None
                                     else f"correct clip at rank {r.correct_rank}") + ")" for r in results]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max([gap + k * (tile_w + gap)] + [2 * gap + int(measure.textlength(label, font=font)) for label in labels])
    image = Image.new("RGB", (width, gap + len(results) * row_h), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for row, (result, label) in enumerate(zip(results, labels)):
        top = gap + row * row_h
        draw.text((gap, top), label, fill=TEXT, font=font)
        y = top + label_px + 4
        for col, hit in enumerate(result.hits):
            x = gap + col * (tile_w + gap)
            draw.rectangle([x, y, x + tile_w - 1, y + tile_h - 1], fill=CORRECT if hit.correct else OTHER)
            image.paste(Image.fromarray(hit.strip), (x + border, y + border))
            draw.text((x, y + tile_h + 1), f"{col + 1}. {hit.score:.3f} {hit.key}"[: max(8, tile_w // 6)], fill=TEXT, font=font)
    return np.asarray(image, dtype=np.uint8).copy()


def results_table(results: Sequence[QueryResult]) -> str:
    """The grid as a Markdown table (TensorBoard's text tab): full keys and scores, the correct clips marked ✓."""
    k = max((len(r.hits) for r in results), default=0)
    lines = ["| query | correct at | " + " | ".join(f"top {i + 1}" for i in range(k)) + " |", "|---|---|" + "---|" * k]
    for r in results:
        cells = [f"{'✓ ' if h.correct else ''}{h.key} ({h.score:.3f})" for h in r.hits] + [""] * (k - len(r.hits))
        lines.append(f"| {r.caption} | {r.correct_rank if r.correct_rank is not None else '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
