"""Which frames of a clip to decode.

Three modes, chosen in the config (``sampling:``):

* ``segments``: split the clip into T equal segments and take a random frame of each when
  training, the centre frame of each when evaluating (TSN-style; covers the whole clip whatever
  its length, short clips repeat frames).
* ``fps``: T frames at a fixed rate (``sampling_fps``, e.g. 2 fps) from a window of T/fps seconds,
  placed at random when training and centred when evaluating. Apollo (arXiv 2412.10360) found that
  sampling at a fixed rate beats uniform sampling, because the model then sees motion at one
  speed whatever the clip length. Clips too short for T frames at that rate fall back to
  ``segments``.
* ``consecutive``: T frames ``stride`` apart (random start when training, centred when
  evaluating); clips shorter than the span fall back to ``segments``.

Every function returns exactly T sorted frame indices in ``[0, num_frames)``.
"""

from __future__ import annotations

import math
import random
from typing import Literal

SamplingMode = Literal["segments", "fps", "consecutive"]
SAMPLING_MODES: tuple[str, ...] = ("segments", "fps", "consecutive")


def _check(num_frames: int, num_samples: int) -> None:
    if num_frames < 1:
        raise ValueError(f"cannot sample frames from a clip with {num_frames} frames (expected >= 1)")
    if num_samples < 1:
        raise ValueError(f"number of frames to sample must be >= 1, got {num_samples}")


def segment_indices(
    num_frames: int, num_samples: int, *, train: bool, rng: random.Random | None = None
) -> list[int]:
    """T equal segments: random frame per segment when training, segment centre otherwise."""
    _check(num_frames, num_samples)
    seg = num_frames / num_samples
    out: list[int] = []
    for i in range(num_samples):
        if train:
            lo = math.floor(i * seg)
            hi = max(lo, math.ceil((i + 1) * seg) - 1)
            idx = (rng or random).randint(lo, min(hi, num_frames - 1))
        else:
            idx = math.floor((i + 0.5) * seg)
        out.append(min(idx, num_frames - 1))
    return sorted(out)


def _window_indices(
    num_frames: int, num_samples: int, step: float, *, train: bool, rng: random.Random | None
) -> list[int] | None:
    """T frames ``step`` apart inside the clip, or None when the span does not fit."""
    span = (num_samples - 1) * step + 1
    if span > num_frames:
        return None
    slack = num_frames - span
    start = (rng or random).uniform(0.0, slack) if train else slack / 2.0
    return [min(num_frames - 1, int(round(start + k * step))) for k in range(num_samples)]


def fps_indices(
    num_frames: int,
    num_samples: int,
    *,
    video_fps: float | None,
    sampling_fps: float,
    train: bool,
    rng: random.Random | None = None,
) -> list[int]:
    """T frames at ``sampling_fps`` (Apollo); ``segments`` when the clip is too short or fps unknown."""
    _check(num_frames, num_samples)
    if sampling_fps <= 0:
        raise ValueError(f"sampling_fps must be > 0, got {sampling_fps}")
    if video_fps and video_fps > 0:
        step = video_fps / sampling_fps
        idx = _window_indices(num_frames, num_samples, step, train=train, rng=rng)
        if idx is not None:
            return idx
    return segment_indices(num_frames, num_samples, train=train, rng=rng)


def consecutive_indices(
    num_frames: int, num_samples: int, *, stride: int, train: bool, rng: random.Random | None = None
) -> list[int]:
    """T frames ``stride`` apart; ``segments`` when the clip is shorter than the span."""
    _check(num_frames, num_samples)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    span = (num_samples - 1) * stride + 1
    if span > num_frames:
        return segment_indices(num_frames, num_samples, train=train, rng=rng)
    # an integer start keeps the stride exact
    start = (rng or random).randint(0, num_frames - span) if train else (num_frames - span) // 2
    return [start + k * stride for k in range(num_samples)]


def sample_indices(
    num_frames: int,
    num_samples: int = 8,
    mode: str = "segments",
    *,
    train: bool,
    video_fps: float | None = None,
    sampling_fps: float = 2.0,
    stride: int = 4,
    rng: random.Random | None = None,
) -> list[int]:
    """Frame indices for one clip; ``rng`` (a seeded ``random.Random``) makes training draws reproducible."""
    if mode == "segments":
        return segment_indices(num_frames, num_samples, train=train, rng=rng)
    if mode == "fps":
        return fps_indices(
            num_frames, num_samples, video_fps=video_fps, sampling_fps=sampling_fps, train=train, rng=rng
        )
    if mode == "consecutive":
        return consecutive_indices(num_frames, num_samples, stride=stride, train=train, rng=rng)
    raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")
