"""Fixtures for the data tests: the real clips, and small clips encoded here with PyAV in every
codec/container the shard builder must handle, plus broken inputs it must skip."""
from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import numpy as np
import pytest

# ../shared/data/videos from the repo root (this file is tests/data/conftest.py)
REAL_VIDEOS = Path(__file__).parents[2] / ".." / "shared" / "data" / "videos"
# Facts about the real clips (docs/stack-notes.md measured them; the tests re-check them).
REAL_CLIPS = {"bigbuckbunny.mp4": (132, 25.0, 1280, 720), "bikes.mp4": (250, 25.0, 640, 272),
              "carphone_pristine.mp4": (120, 29.97, 176, 144)}


def level(i: int) -> int:
    """Grey level that encodes a frame's index, so trimmed clips can be checked by content."""
    return (16 + 9 * i) % 240


def make_frames(n: int, width: int, height: int) -> list[np.ndarray]:
    frames = []
    for i in range(n):
        frame = np.full((height, width, 3), level(i), np.uint8)
        frame[: height // 4, : width // 4] = (200, 40, 40)  # a little structure
        frames.append(frame)
    return frames


def encode(path: Path, codec: str, *, fmt: str | None = None, width: int = 64, height: int = 48,
           frames: int = 12, fps: int = 10, pix_fmt: str = "yuv420p",
           options: dict[str, str] | None = None) -> Path:
    """Write `frames` frames of `codec` into `path` (container from the extension or `fmt`)."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if options:
            stream.options = options
        out.start_encoding()
        for i, array in enumerate(make_frames(frames, width, height)):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def encode_audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@dataclass
class ClipSet:
    """A folder of generated inputs; `good` maps file name -> (frames, width, height),
    `bad` maps file name -> the skip reason the builder must give."""

    folder: Path
    good: dict[str, tuple[int, int, int]]
    bad: dict[str, str]


@pytest.fixture(scope="session")
def clip_set(tmp_path_factory: pytest.TempPathFactory) -> ClipSet:
    folder = tmp_path_factory.mktemp("clips")
    x265 = {"x265-params": "log-level=error"}
    encode(folder / "h264.mp4", "libx264", frames=12)
    encode(folder / "mpeg4.mp4", "mpeg4", width=97, height=61, frames=10)  # odd sides
    encode(folder / "mpeg4.avi", "mpeg4", width=97, height=61, frames=9)
    encode(folder / "vp9.webm", "libvpx-vp9", width=97, height=61, frames=8)
    # libx265 with yuv420p refuses odd sides: the closest even size
    encode(folder / "hevc.mkv", "libx265", width=98, height=62, frames=8, options=x265)
    encode(folder / "one_frame.mp4", "libx264", frames=1)
    good = {"h264.mp4": (12, 64, 48), "mpeg4.mp4": (10, 97, 61), "mpeg4.avi": (9, 97, 61),
            "vp9.webm": (8, 97, 61), "hevc.mkv": (8, 98, 62), "one_frame.mp4": (1, 64, 48)}
    encode_audio_only(folder / "audio_only.m4a")
    (folder / "zero_bytes.mp4").write_bytes(b"")
    whole = (folder / "h264.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    encode(folder / "zero_frames.avi", "mpeg4", frames=0)
    (folder / "not_a_video.mp4").write_bytes(b"this is text, not a video\n" * 20)
    bad = {"audio_only.m4a": "audio-only", "zero_bytes.mp4": "empty",
           "truncated.mp4": "unreadable", "zero_frames.avi": "zero-frames",
           "not_a_video.mp4": "unreadable", "missing.mp4": "missing"}
    return ClipSet(folder, good, bad)


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s at 10 fps (frame i has grey level `level(i)`), keyframe every 10 frames."""
    folder = tmp_path_factory.mktemp("long")
    return encode(folder / "yt_long.mp4", "libx264", frames=100, fps=10,
                  options={"x264-params": "keyint=10:min-keyint=10:scenecut=0", "crf": "10"})


@pytest.fixture(scope="session")
def real_videos() -> Path:
    if not REAL_VIDEOS.is_dir() or not all((REAL_VIDEOS / n).is_file() for n in REAL_CLIPS):
        pytest.skip(f"real test clips not found in {REAL_VIDEOS.resolve()} "
                    f"(expected {sorted(REAL_CLIPS)})")
    return REAL_VIDEOS


@pytest.fixture()
def real_copy(real_videos: Path, tmp_path: Path) -> Path:
    """The real clips copied under stable names (video0.mp4, ...) for annotation tests."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for i, name in enumerate(sorted(REAL_CLIPS)):
        shutil.copyfile(real_videos / name, folder / f"video{i}.mp4")
    return folder


def decode_all(data: bytes | Path) -> np.ndarray:
    """Every frame of a video as (T, H, W, 3) uint8."""
    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with av.open(source) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# Helpers handed to tests as fixtures (test modules do not import conftest by name).
@pytest.fixture(scope="session")
def decode() -> Callable[[bytes | Path], np.ndarray]:
    return decode_all


@pytest.fixture(scope="session")
def frame_level() -> Callable[[int], int]:
    return level


@pytest.fixture(scope="session")
def real_clip_facts() -> dict[str, tuple[int, float, int, int]]:
    """file name -> (frames, fps, width, height) of the real clips."""
    return dict(REAL_CLIPS)
