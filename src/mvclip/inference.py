"""Embedding videos and texts with an exported (fused) model, without the training stack.

`ExportedModel(folder)` reads an export folder (see `mvclip.export`): the fused model built in its
inference form from `model.yaml` + `model.safetensors`, or, with `backend="onnx"`, the ONNX graphs
run by onnxruntime; and `preprocess.json`, so videos are sampled, resized and normalized exactly as
at evaluation time. `embed_readable_videos` skips (and reports) videos that cannot be read instead of
failing the batch; an empty caption is an error naming it, since it would embed as noise.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import av
import torch
from omegaconf import OmegaConf

from mvclip.extras import installed
from mvclip.datamodules.decode import DecodeError
from mvclip.export import load_export
from mvclip.input_spec import InputSpec
from mvclip.preprocess import clip_decoder
from mvclip.tokenizer import tokenize


# what reading one video can raise when the file is missing, not a video, or broken
UNREADABLE_VIDEO_ERRORS = (OSError, ValueError, DecodeError, av.error.FFmpegError)


class VideoEmbeddings(NamedTuple):
    """Embeddings of the videos that could be read, those videos in order, and (video, why) for the others."""

    embeddings: torch.Tensor
    videos: list[Path]
    skipped: list[tuple[Path, str]]


class ExportedModel:
    """A fused export ready to embed: `embed_videos(paths)` and `embed_texts(texts)` give unit-norm rows."""

    def __init__(self, folder: str | os.PathLike[str], backend: Literal["torch", "onnx"] = "torch") -> None:
        self.folder = Path(folder)
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        self.backend = backend
        preprocess_path = self.folder / "preprocess.json"
        self.preprocess = json.loads(preprocess_path.read_text()) if preprocess_path.is_file() else {}
        if backend == "torch":
            self.model = load_export(self.folder)
        else:
            if not installed("onnx"):
                raise FileNotFoundError(f"{self.folder}: backend 'onnx' needs onnxruntime (pip install \"mvclip[onnx]\")")
            import onnxruntime as ort

            self.sessions = {}
            for kind in ("video", "text"):
                path = self.folder / f"{kind}.onnx"
                if path.is_file():
                    self.sessions[kind] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            if "video" not in self.sessions:
                raise FileNotFoundError(f"{self.folder}: no video.onnx (export without --no_onnx to use backend='onnx')")
        # the model's input description: preprocess.json (a checkpoint's record), else the exported model config's
        known = {k: v for k, v in self.preprocess.items() if k not in ("resize", "pixels")}
        if known:
            self.input_spec = InputSpec.from_mapping(known, str(preprocess_path))
        else:
            self.input_spec = InputSpec.from_model_config(OmegaConf.load(self.folder / "model.yaml"), str(self.folder / "model.yaml"))
        self.decoder = clip_decoder(self.input_spec)

    def load_clip(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """A video file -> its (T, 3, H, W) clip, sampled and transformed as at evaluation time."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"video not found: {path}")
        return self.decoder.clip(path.read_bytes(), str(path))

    def _run(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "onnx":
            if kind not in self.sessions:
                raise FileNotFoundError(f"{self.folder}: no {kind}.onnx")
            return torch.from_numpy(self.sessions[kind].run(None, {kind: x.numpy()})[0])
        with torch.no_grad():
            encode = self.model.encode_video if kind == "video" else self.model.encode_text
            return encode(x, normalize=True)

    def embed_videos(self, paths: Sequence[str | os.PathLike[str]], batch_size: int = 8) -> torch.Tensor:
        rows = []
        for start in range(0, len(paths), batch_size):
            clips = torch.stack([self.load_clip(p) for p in paths[start : start + batch_size]])
            rows.append(self._run("video", clips))
        return torch.cat(rows) if rows else torch.zeros(0)

    def embed_readable_videos(self, paths: Sequence[str | os.PathLike[str]], batch_size: int = 8) -> VideoEmbeddings:
        """Like `embed_videos`, but a video that cannot be read is left out and reported, not fatal to the rest."""
        clips, kept, skipped = [], [], []
        for path in map(Path, paths):
            try:
                clips.append(self.load_clip(path))
                kept.append(path)
            except UNREADABLE_VIDEO_ERRORS as error:
                skipped.append((path, f"{type(error).__name__}: {error}"))
        rows = [self._run("video", torch.stack(clips[i : i + batch_size])) for i in range(0, len(clips), batch_size)]
        return VideoEmbeddings(torch.cat(rows) if rows else torch.zeros(0), kept, skipped)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Unit-norm caption embeddings; an empty (or blank) caption is an error naming its position."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"caption {i} ({text!r}) is empty; every caption needs some text to embed")
        rows = [self._run("text", tokenize(list(texts[i : i + batch_size]))) for i in range(0, len(texts), batch_size)]
        return torch.cat(rows) if rows else torch.zeros(0)
