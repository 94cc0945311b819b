"""Helpers for the loader tests: tiny self-encoded clips and hand-made shards.

Good shards go through the real writer (``shard_writer.write_shards``); shards holding broken
samples are written by hand here, since the writer (rightly) refuses broken inputs.
"""

from __future__ import annotations

import io
import json
import tarfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import av
import numpy as np
import torch

REAL_VIDEOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "videos"


def real_videos() -> list[Path]:
    return sorted(REAL_VIDEOS.glob("*.mp4")) if REAL_VIDEOS.is_dir() else []


def pattern_frame(i: int, width: int, height: int) -> np.ndarray:
    """A frame whose content encodes its index (a moving bar plus a brightness ramp)."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = (x * 4 + i * 9) % 256
    img[..., 1] = (y * 4) % 256
    img[..., 2] = (i * 23) % 256
    bar = (i * 5) % width
    img[:, bar : bar + 6, :] = 255
    return img


def encode_clip(
    codec: str = "libx264",
    container: str = "mp4",
    *,
    frames: int = 24,
    width: int = 96,
    height: int = 64,
    fps: int = 12,
    gop: int | None = None,
) -> bytes:
    """Encode ``frames`` pattern frames with PyAV; returns the container bytes."""
    buf = io.BytesIO()
    fmt = {"mkv": "matroska", "mp4": "mp4", "webm": "webm", "avi": "avi"}[container]
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        opts = {}
        if codec == "libx264":
            opts = {"preset": "ultrafast"}
            if gop:
                opts["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        elif codec == "libx265":
            opts = {"preset": "ultrafast", "x265-params": "log-level=none" + (f":keyint={gop}:min-keyint={gop}" if gop else "")}
        elif codec == "libvpx-vp9":
            opts = {"deadline": "realtime", "cpu-used": "8"}
        stream.options = opts
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def write_tar_shards(
    out_dir: Path,
    samples: Sequence[dict[str, Any]],
    *,
    per_shard: int,
    prefix: str = "shard",
) -> Path:
    """Write samples (``{"__key__": str, ext: bytes|str|dict}``) into tars plus a manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for s0 in range(0, len(samples), per_shard):
        name = f"{prefix}-{s0 // per_shard:06d}.tar"
        chunk = samples[s0 : s0 + per_shard]
        with tarfile.open(out_dir / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in chunk:
                for ext, value in sample.items():
                    if ext == "__key__":
                        continue
                    if isinstance(value, dict):
                        value = json.dumps(value).encode()
                    elif isinstance(value, str):
                        value = value.encode()
                    info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                    info.size = len(value)
                    tar.addfile(info, io.BytesIO(value))
        shards.append({"name": name, "samples": len(chunk), "bytes": (out_dir / name).stat().st_size})
    manifest = {"version": 1, "shards": shards, "total_samples": len(samples), "options": {}, "skipped": []}
    (out_dir / "manifest.json").write_text(json.dumps(manifest))
    return out_dir


def meta(captions: list[str], frames: int = 24, fps: float = 12.0, **extra: Any) -> dict[str, Any]:
    return {"captions": captions, "source": "test", "fps": fps, "duration": frames / fps, "frames": frames, **extra}


def stub_tokenize(texts: Sequence[str]) -> torch.Tensor:
    """Deterministic stand-in for mvclip's tokenizer: (N, 77), first id is the text's length."""
    out = torch.zeros(len(texts), 77, dtype=torch.long)
    for i, t in enumerate(texts):
        out[i, 0] = len(t)
        out[i, 1 : 1 + min(len(t), 76)] = torch.tensor([ord(c) % 1000 for c in t[:76]])
    return out
