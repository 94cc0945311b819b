"""An augmented view of a clip as explicit parameters, so a teacher's embedding of it can be replayed in training.

Dataset reinforcement (`python -m mvclip teacher`, docs/distillation.md) runs teachers over K random training views
of every clip once, offline, and stores the views' parameters next to the embeddings. Training then decodes one stored
view with exactly those parameters instead of drawing a fresh one, so the stored embedding describes the very clip the
student sees. A view is what the training pipeline randomises: which frames (`indices`, from :mod:`.sampling`), the
crop box shared by all frames and the flip (from :class:`.transforms.VideoTransform`). The box is in pixels of the
frames as decoded (`frame_size`: their height and width), so it stays exact when the student decodes at that size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

VIEWS_EXTENSION = "views.json"  # member `<key>.views.json`: {"version": 1, "views": [view, ...]}
VIEWS_VERSION = 1


@dataclass(frozen=True)
class View:
    """One augmented view: frame `indices` into the video, crop `box` (top, left, h, w) in pixels of frames decoded
    to `frame_size` (h, w), and whether it is flipped horizontally."""

    indices: tuple[int, ...]
    box: tuple[int, int, int, int]
    frame_size: tuple[int, int]
    flip: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"indices": list(self.indices), "box": list(self.box), "frame_size": list(self.frame_size),
                "flip": self.flip}

    @classmethod
    def from_dict(cls, data: Any, where: str = "view") -> View:
        """A view from its JSON form; ValueError naming `where` and the field for anything malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, found {type(data).__name__}")
        indices = _ints(data.get("indices"), None, f"{where}.indices")
        if not indices or min(indices) < 0:
            raise ValueError(f"{where}.indices: expected a non-empty list of frame indices >= 0, got {data.get('indices')!r}")
        box = _ints(data.get("box"), 4, f"{where}.box")
        size = _ints(data.get("frame_size"), 2, f"{where}.frame_size")
        top, left, h, w = box
        if not (h > 0 and w > 0 and top >= 0 and left >= 0 and top + h <= size[0] and left + w <= size[1]):
            raise ValueError(f"{where}.box: {box} (top, left, h, w) does not fit frames of {size[0]}x{size[1]}")
        flip = data.get("flip", False)
        if not isinstance(flip, bool):
            raise ValueError(f"{where}.flip: expected true or false, got {flip!r}")
        return cls(tuple(indices), (top, left, h, w), (size[0], size[1]), flip)

    def frame_indices(self, frames: int, num_frames: int | None = None) -> list[int]:
        """`frames` indices to decode: the stored ones when the counts agree, else evenly picked among them;
        clamped to `num_frames` (a re-encoded video may have lost a trailing frame)."""
        n = len(self.indices)
        picked = list(self.indices) if frames == n else [self.indices[min(n - 1, (2 * i + 1) * n // (2 * frames))] for i in range(frames)]
        return [min(i, num_frames - 1) for i in picked] if num_frames else picked

    def box_for(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The crop box in frames of `height` x `width`: the stored one when that is the size it was drawn at,
        else scaled (the same region, to within a pixel)."""
        if (height, width) == self.frame_size:
            return self.box
        sy, sx = height / self.frame_size[0], width / self.frame_size[1]
        top, left = min(height - 1, int(round(self.box[0] * sy))), min(width - 1, int(round(self.box[1] * sx)))
        h = max(1, min(height - top, int(round(self.box[2] * sy))))
        w = max(1, min(width - left, int(round(self.box[3] * sx))))
        return top, left, h, w


def _ints(value: Any, length: int | None, where: str) -> list[int]:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value) or (
            length is not None and len(value) != length):
        shape = f"{length} integers" if length else "a list of integers"
        raise ValueError(f"{where}: expected {shape}, got {value!r}")
    return list(value)


def encode_views(views: Sequence[View]) -> bytes:
    """The `views.json` member."""
    return json.dumps({"version": VIEWS_VERSION, "views": [v.to_dict() for v in views]}, sort_keys=True).encode("utf-8")


def decode_views(data: bytes, where: str = VIEWS_EXTENSION) -> list[View]:
    """The views of a `views.json` member; ValueError naming what is wrong."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: not UTF-8 JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("version") != VIEWS_VERSION or not isinstance(doc.get("views"), list):
        raise ValueError(f"{where}: expected {{\"version\": {VIEWS_VERSION}, \"views\": [...]}}")
    if not doc["views"]:
        raise ValueError(f"{where}: no view stored")
    return [View.from_dict(v, f"{where}: views[{i}]") for i, v in enumerate(doc["views"])]
