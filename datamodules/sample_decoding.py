"""One raw shard sample -> a training or evaluation sample: captions checked and tokenized, frames sampled, decoded
and transformed. Whatever is wrong with a sample is a `BadSample` with a reason (:mod:`.bad_samples`), never a crash.
"""
from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import av
import numpy as np
import torch

from .decode import DecodeError, VideoReader
from .sampling import sample_indices
from .shard_format import TEACHER_EXTENSION, video_member
from .teacher_members import has_teachers, read_teachers
from .transforms import VideoTransform
from .video2dataset import captions_of
from .views import VIEWS_EXTENSION, View, decode_views


Tokenizer = Callable[[Sequence[str]], torch.Tensor]


class BadSample(Exception):
    """A sample to skip; ``reason`` is one of :data:`bad_samples.REASONS`."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Decoding one sample
# --------------------------------------------------------------------------------------------
@dataclass
class SampleDecoder:
    """Raw shard sample -> ``{"key", "video", "text", "label"?, "teacher"?, "teacher_video"?, "teacher_text"?}``, or
    :class:`BadSample`. A reinforced sample (teacher members, docs/distillation.md) is decoded in training as one of its
    stored views, picked with ``rng``, with that view's teacher embeddings and the chosen caption's."""

    transform: VideoTransform
    tokenizer: Tokenizer | None = None
    train: bool = True
    frames: int = 8
    sampling: str = "segments"
    sampling_fps: float = 2.0
    stride: int = 4
    short_side: int | None = None
    thread_count: int = 1

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer
        if tok is None:
            from mvclip.tokenizer import tokenize as tok
        return tok(texts)

    def clip(self, data: bytes, name: str, rng: random.Random | None = None, fallback_fps: float | None = None,
             view: View | None = None) -> torch.Tensor:
        """Encoded video bytes -> the model's input clip (T, 3, H, W): sample frames, decode them, transform; or,
        given a stored `view`, decode and transform exactly that view (nothing is drawn from `rng`).

        Raises `DecodeError` (or a codec error) on a broken video; `__call__` turns that into a `BadSample`.
        """
        with VideoReader(data, thread_count=self.thread_count, name=name) as reader:
            info = reader.info
            if view is not None:
                frames = reader.frames(view.frame_indices(self.frames, info.num_frames),
                                       short_side=self.short_side or self.transform.resolution)
                return self.transform.apply(frames, view.box_for(frames.shape[1], frames.shape[2]), view.flip)
            idx = sample_indices(
                info.num_frames,
                self.frames,
                self.sampling,
                train=self.train,
                video_fps=info.fps or fallback_fps,
                sampling_fps=self.sampling_fps,
                stride=self.stride,
                rng=rng,
            )
            frames = reader.frames(idx, short_side=self.short_side or self.transform.resolution)
        return self.transform(frames, rng)

    def __call__(self, raw: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        key, shard = raw["__key__"], raw["__shard__"]
        name = f"{shard}:{key}"
        if "json" not in raw:
            raise BadSample("missing_json", name)
        try:
            meta = json.loads(raw["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadSample("bad_json", f"{name}: {exc}") from exc
        if not isinstance(meta, dict):
            raise BadSample("bad_json", f"{name}: expected a JSON object, found {type(meta).__name__}")
        captions = meta.get("captions")
        if captions is None:  # video2dataset's layout: `<key>.txt` or json "caption"
            captions = captions_of(raw, meta)
        if not isinstance(captions, list):
            raise BadSample("no_captions", f"{name}: 'captions' missing or not a list")
        captions = [c for c in captions if isinstance(c, str) and c.strip()]
        if not captions:
            raise BadSample("no_captions", f"{name}: no non-empty caption")
        label = meta.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
            raise BadSample("bad_label", f"{name}: label {label!r} is not an int")

        ext = video_member(raw)
        if ext is None:
            raise BadSample("missing_video", name)
        fallback_fps = float(meta["fps"]) if isinstance(meta.get("fps"), (int, float)) else None
        view_index, views, teachers = None, None, {}
        if self.train and (VIEWS_EXTENSION in raw or has_teachers(raw)):
            try:
                if VIEWS_EXTENSION not in raw:
                    raise ValueError(f"{name}: has teacher members but no {VIEWS_EXTENSION}")
                views = decode_views(raw[VIEWS_EXTENSION], f"{name}.{VIEWS_EXTENSION}")
                teachers = read_teachers(raw, len(views), len(captions), name)
            except ValueError as exc:
                raise BadSample("bad_teacher", str(exc)) from exc
            view_index = rng.randrange(len(views))
        try:
            video = self.clip(raw[ext], name, rng, fallback_fps, None if views is None else views[view_index])
        except DecodeError as exc:
            raise BadSample(exc.reason, str(exc)) from exc
        except (av.FFmpegError, ValueError, RuntimeError, OSError) as exc:  # codec-level surprises
            raise BadSample("undecodable", f"{name}: {type(exc).__name__}: {exc}") from exc

        out: dict[str, Any] = {"key": key, "video": video}
        if self.train:
            caption = rng.randrange(len(captions))  # the same draw as rng.choice(captions)
            out["text"] = self._tokenize([captions[caption]])[0]
            if teachers:
                out["teacher_video"] = {n: torch.from_numpy(v[view_index].copy()) for n, (v, _) in teachers.items()}
                out["teacher_text"] = {n: torch.from_numpy(t[caption].copy()) for n, (_, t) in teachers.items()}
        else:
            out["text"] = self._tokenize(captions)
        if label is not None:
            out["label"] = label
        group = meta.get("group", meta.get("pair"))  # `pair`: the synthetic set's name for a twin pair
        if group is not None:
            if isinstance(group, bool) or not isinstance(group, (str, int)):
                raise BadSample("bad_json", f"{name}: group {group!r} is not a string or an int")
            out["group"] = str(group)
        teacher = raw.get(TEACHER_EXTENSION)
        if teacher is not None:
            try:
                out["teacher"] = torch.from_numpy(np.load(io.BytesIO(teacher), allow_pickle=False).copy())
            except (ValueError, OSError, EOFError) as exc:
                raise BadSample("bad_teacher", f"{name}: {exc}") from exc
        return out


def raw_group(raw: dict[str, Any]) -> str | None:
    """The `group` of a raw shard sample (read from its json; `pair` is the synthetic set's name), or None."""
    try:
        meta = json.loads(raw["json"].decode("utf-8")) if "json" in raw else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # the decoder rejects it later, as a sample of its own
    if not isinstance(meta, dict):
        return None
    group = meta.get("group", meta.get("pair"))
    return None if group is None or isinstance(group, bool) else str(group)
