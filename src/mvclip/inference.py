"""Embedding videos and texts with an exported (fused) model, without the training stack.

`ExportedModel(folder)` reads an export folder (see `mvclip.export`): the fused model built in its
inference form from `model.yaml` + `model.safetensors`, or, with `backend="onnx"`, the ONNX graphs
run by onnxruntime; and `preprocess.json`, so videos are sampled, resized and normalized exactly as
at evaluation time.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from mvclip.datamodules.pipeline import SampleDecoder
from mvclip.datamodules.transforms import VideoTransform
from mvclip.export import load_export
from mvclip.tokenizer import tokenize


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
            import onnxruntime as ort

            self.sessions = {}
            for kind in ("video", "text"):
                path = self.folder / f"{kind}.onnx"
                if path.is_file():
                    self.sessions[kind] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            if "video" not in self.sessions:
                raise FileNotFoundError(f"{self.folder}: no video.onnx (export without --no-onnx to use backend='onnx')")
        p = self.preprocess
        mean, std = p.get("mean"), p.get("std")
        self.decoder = SampleDecoder(
            transform=VideoTransform(int(p.get("resolution", 256)), False, mean=tuple(mean) if mean else None, std=tuple(std) if std else None),
            train=False,
            frames=int(p.get("frames", 8)),
            sampling=p.get("sampling", "segments"),
            sampling_fps=float(p.get("sampling_fps", 2.0)),
            stride=int(p.get("stride", 4)),
            short_side=p.get("short_side"),
        )

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

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        rows = [self._run("text", tokenize(list(texts[i : i + batch_size]))) for i in range(0, len(texts), batch_size)]
        return torch.cat(rows) if rows else torch.zeros(0)
