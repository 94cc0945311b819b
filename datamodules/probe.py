"""Probe a video with PyAV before it goes into a shard.

A broken input found while training costs a crashed or silently shortened epoch; found here it
costs one line in the manifest's `skipped` list. So every input is opened, all packets of its video
stream are demuxed (cheap: no decoding) to count frames and measure duration, and at least one
frame is decoded to prove the codec is readable.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

# Skip reasons: short codes the build summary groups by; `detail` says the rest.
MISSING = "missing"
EMPTY = "empty"
UNREADABLE = "unreadable"
AUDIO_ONLY = "audio-only"
NO_VIDEO = "no-video-stream"
ZERO_FRAMES = "zero-frames"
TRUNCATED = "truncated"
BAD_TRIM = "bad-trim"
NO_CAPTIONS = "no-captions"
DUPLICATE_KEY = "duplicate-key"
ENCODE_FAILED = "encode-failed"


@dataclass
class ProbeResult:
    """What a build needs to know about one input; `ok=False` carries `reason` and `detail`."""

    ok: bool
    reason: str | None = None
    detail: str = ""
    fps: float = 0.0
    duration: float = 0.0  # seconds, of the [start, end) range when trimmed
    frames: int = 0  # video frames in that range
    width: int = 0
    height: int = 0
    codec: str = ""
    container: str = ""
    source_duration: float = 0.0  # whole file
    source_frames: int = 0
    keyframes: int = 0  # keyframes in the whole file
    has_audio: bool = False
    start: float | None = None
    end: float | None = None  # clamped to the source duration
    origin: float = 0.0  # time of the first packet; trims are relative to it
    extra: dict = field(default_factory=dict)


def _fail(reason: str, detail: str) -> ProbeResult:
    return ProbeResult(ok=False, reason=reason, detail=detail)


def probe_video(source: str | os.PathLike[str] | bytes, *, start: float | None = None,
                end: float | None = None) -> ProbeResult:
    """Probe a file path or in-memory container bytes; never raises for a bad input."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            return _fail(EMPTY, "zero bytes")
        target: str | io.BytesIO = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.exists():
            return _fail(MISSING, f"{path} does not exist")
        if not path.is_file():
            return _fail(MISSING, f"{path} is not a regular file")
        if path.stat().st_size == 0:
            return _fail(EMPTY, f"{path} has zero bytes")
        target = str(path)
    try:
        container = av.open(target, metadata_errors="ignore")
    except Exception as err:  # PyAV raises FFmpegError subclasses, OSError, ValueError...
        return _fail(UNREADABLE, f"PyAV cannot open it: {err}")
    with container:
        return _probe_container(container, start, end)


def _probe_container(container: av.container.InputContainer, start: float | None,
                     end: float | None) -> ProbeResult:
    kinds = [s.type for s in container.streams]
    if not container.streams.video:
        if "audio" in kinds:
            return _fail(AUDIO_ONLY, "audio stream(s) but no video stream")
        return _fail(NO_VIDEO, f"no video stream (streams: {kinds or 'none'})")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    time_base = stream.time_base or Fraction(1, 1)

    pts_times: list[float] = []
    end_time = 0.0
    keyframes = 0
    decoded = False
    decode_error = ""
    try:
        for packet in container.demux(stream):
            if packet.size == 0 and packet.pts is None:  # flush packet at the end
                if not decoded:
                    decoded, decode_error = _try_decode(stream, packet, decode_error)
                continue
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is None:
                continue
            t = float(ts * time_base)
            pts_times.append(t)
            dur = float(packet.duration * time_base) if packet.duration else (1 / fps if fps else 0)
            end_time = max(end_time, t + dur)
            keyframes += int(packet.is_keyframe)
            if not decoded:
                decoded, decode_error = _try_decode(stream, packet, decode_error)
    except Exception as err:
        return _fail(TRUNCATED if pts_times else UNREADABLE,
                     f"demuxing failed after {len(pts_times)} packets: {err}")

    if not pts_times:
        return _fail(ZERO_FRAMES, "the video stream has no packets")
    if not decoded:
        return _fail(UNREADABLE, f"no frame of codec {stream.codec_context.name!r} could be "
                                 f"decoded{': ' + decode_error if decode_error else ''}")
    declared = stream.frames or 0
    if declared and len(pts_times) < declared:
        return _fail(TRUNCATED, f"the container declares {declared} frames but only "
                                f"{len(pts_times)} packets could be read")

    first = min(pts_times)
    source_duration = end_time - first
    result = ProbeResult(
        ok=True, fps=fps, width=stream.codec_context.width, height=stream.codec_context.height,
        codec=stream.codec_context.name, container=container.format.name,
        source_duration=source_duration, source_frames=len(pts_times), keyframes=keyframes,
        has_audio="audio" in kinds, frames=len(pts_times), duration=source_duration,
        origin=first)
    if start is None and end is None:
        return result

    lo = 0.0 if start is None else float(start)
    hi = source_duration if end is None else min(float(end), source_duration)
    if lo < 0 or lo >= source_duration or hi <= lo:
        return _fail(BAD_TRIM, f"trim [{start}, {end}] s does not overlap the video's "
                               f"[0, {source_duration:.3f}] s")
    inside = sum(1 for t in pts_times if lo <= t - first < hi)
    if inside == 0:
        return _fail(ZERO_FRAMES, f"no frame starts inside [{lo:.3f}, {hi:.3f}) s")
    result.start, result.end = lo, hi
    result.frames, result.duration = inside, hi - lo
    return result


def _try_decode(stream: av.video.stream.VideoStream, packet: av.Packet,
                last_error: str) -> tuple[bool, str]:
    """Decode one packet; a decoder error here is remembered, not fatal (the next packet may
    be a keyframe)."""
    try:
        return any(True for _ in stream.decode(packet)), last_error
    except Exception as err:
        return False, str(err)
