"""Decode chosen frames of a video held in memory (a shard's bytes) with PyAV.

Why it is built this way (measured on this machine, see ``docs/stack-notes.md``):

* The container is demuxed once without decoding (cheap: a few ms) to index every frame's
  timestamp and which frames are keyframes. That gives an exact frame count for containers that
  report ``frames=0`` (MKV, WebM) and tells where seeking pays.
* Decoding starts at the keyframe before the first wanted frame and stops at the last wanted
  frame. Between wanted frames it seeks again only when a later keyframe lies past the decoder's
  position: with one keyframe per clip that means decoding straight through (seeking per frame was
  4x slower on a 720p clip), with short keyframe intervals it skips most of the clip.
* Frames are converted to RGB and resized in one ``reformat`` call (swscale), which is faster than
  resizing in torch, on the calling thread (``threads=1``): left to choose, swscale starts a pool of
  scaling threads for every frame, 400 of the 440 microseconds a 112 px frame took in the demo's
  loader (measured 2026-11-30: 44 microseconds with one thread, same pixels). Loader workers are the
  parallelism.
* ``thread_type="AUTO"`` with a thread count chosen so loader workers x decoder threads do not
  oversubscribe the cores.
"""

from __future__ import annotations

import bisect
import io
import os
from dataclasses import dataclass, field
from typing import Literal, Sequence

import av
import numpy as np
import torch

Layout = Literal["thwc", "tchw"]
Strategy = Literal["auto", "seek", "sequential"]

# Frames the decoder may decode rather than seek; a seek flushes the (threaded) decoder.
SEEK_MARGIN = 4


class DecodeError(Exception):
    """A clip that cannot be used; ``reason`` is one of the bad-sample reasons."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_thread_count(num_workers: int) -> int:
    """Decoder threads per loader worker so that workers x threads <= cores."""
    return max(1, available_cpus() // max(1, num_workers))


@dataclass
class VideoInfo:
    """What the demuxer says about a clip; ``num_frames`` is counted, not read from the header."""

    num_frames: int
    fps: float | None
    width: int
    height: int
    codec: str
    duration: float | None
    keyframes: list[int] = field(default_factory=list)  # presentation indices of keyframes


def _short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    if width <= height:
        return short_side, max(1, int(round(height * short_side / width)))
    return max(1, int(round(width * short_side / height))), short_side


class VideoReader:
    """One clip in memory: ``info`` after construction, ``frames(indices)`` to decode."""

    def __init__(self, data: bytes, *, thread_count: int | None = None, name: str = "<bytes>") -> None:
        if not data:
            raise DecodeError("empty_video", f"{name}: zero-byte video")
        self.name = name
        self._data = data
        try:
            self._container = av.open(io.BytesIO(data), mode="r")
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise DecodeError("undecodable", f"{name}: cannot open container ({exc})") from exc
        if not self._container.streams.video:
            self.close()
            raise DecodeError("undecodable", f"{name}: container has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._stream.codec_context.thread_count = thread_count or default_thread_count(1)
        self._index()

    # -- index -----------------------------------------------------------------------------
    def _index(self) -> None:
        """Demux (no decoding) to list frame timestamps in presentation order and keyframes."""
        pts: list[int] = []
        key_pts: list[int] = []
        missing_pts = 0
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0:
                    continue  # the flush packet at the end
                if packet.pts is None:
                    missing_pts += 1
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    key_pts.append(packet.pts)
        except av.FFmpegError as exc:
            self.close()
            raise DecodeError("truncated_video", f"{self.name}: demuxing failed after {len(pts)} frames ({exc})") from exc
        s = self._stream
        rate = s.average_rate or s.guessed_rate
        fps = float(rate) if rate else None
        duration = float(self._container.duration) / av.time_base if self._container.duration else None
        # Timestamps index frames only when every packet has one; otherwise (some AVI files)
        # frames are identified by their order of decoding.
        self._use_pts = missing_pts == 0 and len(set(pts)) == len(pts)
        self._pts = sorted(pts) if self._use_pts else []
        self._pts_index = {p: i for i, p in enumerate(self._pts)}
        num_frames = len(pts) + missing_pts
        keyframes = sorted(self._pts_index[p] for p in key_pts) if self._use_pts else [0]
        if not keyframes or keyframes[0] != 0:
            keyframes = [0] + keyframes  # decoding from the start always works
        cc = s.codec_context
        self.info = VideoInfo(
            num_frames=num_frames,
            fps=fps,
            width=cc.width,
            height=cc.height,
            codec=cc.name,
            duration=duration,
            keyframes=keyframes,
        )
        if num_frames == 0:
            self.close()
            raise DecodeError("no_frames", f"{self.name}: the video stream holds no frames")

    # -- decoding ----------------------------------------------------------------------------
    def _plan(self, wanted: Sequence[int], strategy: Strategy) -> list[tuple[int, int]]:
        """Runs of (keyframe index to seek to, last wanted index); each run costs one seek.

        ``auto`` seeks only when the keyframe before a wanted frame lies more than
        ``SEEK_MARGIN`` frames past where the decoder already is; ``seek`` whenever it lies past it.
        """
        if strategy == "sequential" or not self._use_pts:
            return [(0, wanted[-1])]
        margin = SEEK_MARGIN if strategy == "auto" else 0
        kf = self.info.keyframes
        runs: list[tuple[int, int]] = []
        pos = -1  # last frame index the decoder will have produced
        for t in wanted:
            k = kf[bisect.bisect_right(kf, t) - 1]
            if runs and k <= pos + 1 + margin:
                runs[-1] = (runs[-1][0], t)
            else:
                runs.append((k, t))
            pos = t
        return runs

    def frames(
        self,
        indices: Sequence[int],
        *,
        short_side: int | None = None,
        layout: Layout = "thwc",
        strategy: Strategy = "auto",
        interpolation: str = "BILINEAR",
    ) -> torch.Tensor:
        """Decode ``indices`` (any order, repeats allowed) to uint8 RGB (T,H,W,3) or (T,3,H,W)."""
        n = self.info.num_frames
        if not len(indices):
            raise ValueError("indices must not be empty")
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise IndexError(f"{self.name}: frame indices {bad[:5]} outside [0, {n})")
        wanted = sorted(set(int(i) for i in indices))
        size = None
        if short_side is not None:
            size = _short_side_size(self.info.width, self.info.height, short_side)
        got: dict[int, np.ndarray] = {}
        for start, last in self._plan(wanted, strategy):
            self._decode_run(start, last, set(wanted), got, size, interpolation)
        missing = [i for i in wanted if i not in got]
        if missing:
            reason = "no_frames" if not got else "truncated_video"
            raise DecodeError(reason, f"{self.name}: frames {missing[:5]} of {n} could not be decoded")
        arr = np.stack([got[i] for i in indices])
        out = torch.from_numpy(arr)
        if layout == "tchw":
            out = out.permute(0, 3, 1, 2).contiguous()
        elif layout != "thwc":
            raise ValueError(f"layout must be 'thwc' or 'tchw', got {layout!r}")
        return out

    def _decode_run(
        self,
        start: int,
        last: int,
        wanted: set[int],
        got: dict[int, np.ndarray],
        size: tuple[int, int] | None,
        interpolation: str,
    ) -> None:
        s = self._stream
        try:
            if self._use_pts:
                self._container.seek(self._pts[start], stream=s, backward=True, any_frame=False)
            else:
                self._container.seek(0)
            s.codec_context.flush_buffers()
            counter = 0
            first = True
            for packet in self._container.demux(s):
                for frame in packet.decode():
                    if self._use_pts:
                        idx = self._pts_index.get(frame.pts) if frame.pts is not None else None
                        if idx is None:
                            continue
                        if first and idx > start and start > 0:
                            # the demuxer landed after the keyframe asked for: decode from the
                            # beginning instead, which is always correct
                            self._decode_run(0, last, wanted, got, size, interpolation)
                            return
                        first = False
                    else:
                        idx = counter
                        counter += 1
                    if idx in wanted and idx not in got:
                        got[idx] = self._to_rgb(frame, size, interpolation)
                    if idx >= last:
                        return
        except av.FFmpegError as exc:
            raise DecodeError("undecodable", f"{self.name}: decoding failed ({exc})") from exc

    @staticmethod
    def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None, interpolation: str) -> np.ndarray:
        w, h = size if size is not None else (None, None)
        return frame.reformat(width=w, height=h, format="rgb24", interpolation=interpolation, threads=1).to_ndarray()

    def close(self) -> None:
        try:
            self._container.close()
        except Exception:  # closing a half-opened container must not mask the real error
            pass

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe(data: bytes, *, name: str = "<bytes>") -> VideoInfo:
    """Frame count, fps, size, codec and keyframes of an in-memory video."""
    with VideoReader(data, thread_count=1, name=name) as reader:
        return reader.info


def decode_frames(
    data: bytes,
    indices: Sequence[int],
    *,
    short_side: int | None = None,
    layout: Layout = "thwc",
    thread_count: int | None = None,
    strategy: Strategy = "auto",
    name: str = "<bytes>",
) -> torch.Tensor:
    """Decode frames ``indices`` of an in-memory video to uint8 RGB; see :class:`VideoReader`."""
    with VideoReader(data, thread_count=thread_count, name=name) as reader:
        return reader.frames(indices, short_side=short_side, layout=layout, strategy=strategy)


__all__ = [
    "DecodeError",
    "VideoInfo",
    "VideoReader",
    "decode_frames",
    "default_thread_count",
    "probe",
]
