"""A model's preprocessing as one callable: a video (path, encoded bytes or decoded frames) -> its input clip.

`Preprocess(spec)` runs the data module's own evaluation path (`SampleDecoder` with the evaluation transform) on the
model's input description (`mvclip.input_spec`), so a clip prepared for inference is the clip validation saw, bit for
bit. `create_model` returns one beside the model; `ExportedModel` and `VideoIndex` read videos through it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mvclip.datamodules.pipeline import SampleDecoder
from mvclip.datamodules.sampling import sample_indices
from mvclip.datamodules.transforms import VideoTransform
from mvclip.input_spec import InputSpec

VideoInput = str | os.PathLike[str] | bytes | torch.Tensor | np.ndarray


def clip_decoder(spec: InputSpec) -> SampleDecoder:
    """The evaluation-time decoder the data module builds for `spec` (centre crop, segment centres)."""
    transform = VideoTransform(spec.resolution, False, mean=spec.mean, std=spec.std, value_range=spec.value_range)
    return SampleDecoder(transform=transform, train=False, frames=spec.frames, sampling=spec.sampling,
                         sampling_fps=spec.sampling_fps, stride=spec.stride, short_side=spec.short_side)


class Preprocess:
    """`preprocess(video) -> (T, 3, S, S)` float clip for `model.encode_video(clip[None])`.

    `video` is a file path, the file's bytes, or decoded frames `(N, H, W, 3)` uint8 (all frames of a video; `fps`
    is needed for `fps` sampling). Paths and bytes take exactly the data module's evaluation path; decoded frames are
    sampled the same way but resized from full size, so they can differ from it by rounding."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.decoder = clip_decoder(spec)

    def __call__(self, video: VideoInput, fps: float | None = None) -> torch.Tensor:
        if isinstance(video, (str, os.PathLike)):
            path = Path(video)
            if not path.is_file():
                raise FileNotFoundError(f"video not found: {path}")
            return self.decoder.clip(path.read_bytes(), str(path))
        if isinstance(video, bytes):
            return self.decoder.clip(video, "<bytes>")
        frames = torch.as_tensor(video)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"decoded frames must be uint8 (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        spec = self.spec
        idx = sample_indices(frames.shape[0], spec.frames, spec.sampling, train=False, video_fps=fps,
                             sampling_fps=spec.sampling_fps, stride=spec.stride)
        return self.decoder.transform(frames[torch.as_tensor(idx)])

    def __repr__(self) -> str:
        return f"Preprocess({self.spec})"
