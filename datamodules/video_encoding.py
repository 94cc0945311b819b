"""Re-encoding clips to H.264 for shards: a fixed GOP (no scene-cut keyframes) so a loader seeks to any frame by
decoding at most `keyframe_interval` frames, even sides for yuv420p, and one x264 thread so the bytes are the same on
any machine. Used by the shard writer (`transcode`) and by generated data (`encode_frames_h264`).
"""
from __future__ import annotations

import io
import os
from fractions import Fraction
from typing import Iterable

import av
import numpy as np

from . import probe as probe_mod


DEFAULT_KEYFRAME_INTERVAL = 8
DEFAULT_CRF = 23
# x264's output depends on its thread count, and "auto" follows the CPUs this process may use: a fixed count makes a
# re-encoded clip the same bytes on any machine, resumed or not. Builds run in parallel over clips (`workers`) instead.
REENCODE_THREADS = 1


def even_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Output size for H.264/yuv420p, which needs even sides: scaled down to `short_side` if
    given (never up: that would only spend bytes)."""
    if short_side and min(width, height) > short_side:
        scale = short_side / min(width, height)
        width, height = round(width * scale), round(height * scale)
    return max(2, width - width % 2), max(2, height - height % 2)


def open_h264_stream(container: av.container.OutputContainer, rate: Fraction, width: int,
                     height: int, keyframe_interval: int, crf: int = DEFAULT_CRF,
                     threads: int | None = None) -> av.video.stream.VideoStream:
    """An H.264 yuv420p stream with a fixed GOP (no scene-cut keyframes), so a loader can seek to
    any frame by decoding at most `keyframe_interval` frames."""
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.gop_size = keyframe_interval
    k = keyframe_interval
    stream.options = {"crf": str(crf), "preset": "veryfast",
                      "x264-params": f"keyint={k}:min-keyint={k}:scenecut=0:bframes=0"}
    if threads is not None:
        stream.codec_context.thread_count = threads
    return stream


def encode_frames_h264(frames: Iterable[np.ndarray], fps: float | Fraction, *,
                       keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL, crf: int = DEFAULT_CRF,
                       threads: int | None = None) -> bytes:
    """Encode RGB uint8 frames (H, W, 3; even sides) into mp4 bytes."""
    buffer = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(buffer, "w", format="mp4") as out:
        stream = None
        for i, array in enumerate(frames):
            if stream is None:
                h, w = array.shape[:2]
                stream = open_h264_stream(out, rate, w, h, keyframe_interval, crf, threads)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                out.mux(packet)
        if stream is None:
            raise ValueError("encode_frames_h264: no frames given")
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def transcode(path: str | os.PathLike[str], info: probe_mod.ProbeResult, *,
              short_side: int | None, keyframe_interval: int, crf: int = DEFAULT_CRF) -> bytes:
    """Re-encode [info.start, info.end) of `path` to H.264 mp4 at a constant frame rate."""
    lo = info.start if info.start is not None else 0.0
    hi = info.end if info.end is not None else float("inf")
    width, height = even_size(info.width, info.height, short_side)
    buffer = io.BytesIO()
    with av.open(str(path)) as src, av.open(buffer, "w", format="mp4") as out:
        vstream = src.streams.video[0]
        vstream.thread_type = "AUTO"
        rate = vstream.average_rate or vstream.guessed_rate or Fraction(25)
        rate = Fraction(rate).limit_denominator(1001)
        tb = vstream.time_base
        if lo > 0:
            src.seek(int((lo + info.origin) / tb), stream=vstream, backward=True)
        ostream = open_h264_stream(out, rate, width, height, keyframe_interval, crf, threads=REENCODE_THREADS)
        n = 0
        for frame in src.decode(vstream):
            t = (float(frame.pts * tb) - info.origin) if frame.pts is not None else lo + n / rate
            if t < lo - 1e-6:
                continue
            if t >= hi - 1e-6:
                break
            # BICUBIC rather than AREA: PyAV's AREA is slow in swscale for small downscales
            image = frame.reformat(width=width, height=height, format="yuv420p",
                                   interpolation="BICUBIC")
            image.pts, image.time_base = n, 1 / rate
            n += 1
            for packet in ostream.encode(image):
                out.mux(packet)
        for packet in ostream.encode():
            out.mux(packet)
    if n == 0:
        raise ValueError(f"{path}: no frame decoded inside [{lo}, {hi}) s")
    return buffer.getvalue()
