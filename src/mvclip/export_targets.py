"""Which deployment targets an export writes beside the fused model, and the one place that dispatches to each.

| format | files | runtime that checks it here |
|---|---|---|
| `onnx` | `video.onnx`, `text.onnx` (dynamic batch and clip length) | onnxruntime |
| `executorch` | `video.pte` (+ `video_t<T>.pte` per other clip length), `text.pte`; XNNPACK delegate, batch 1 | ExecuTorch's Python runtime |
| `coreml` | `video.mlpackage` (+ `video_t<T>.mlpackage`), `text.mlpackage`; iOS 17 ML program, fp16, batch 1 | none on Linux: the converted program is inspected (docs/deploy.md) |

Each target's module is imported only when it is asked for, so the base install needs none of their packages.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mvclip.export_gate import EvalSet, Gate
from mvclip.export_verify import Check
from mvclip.extras import require
from mvclip.model import VideoTextModel

FORMATS = ("onnx", "executorch", "coreml")
_EXTRA = {"onnx": "onnx", "executorch": "executorch", "coreml": "coreml"}


@dataclass
class Quantize:
    """`--quantize int8`: the calibration inputs ({"video", "text"}), the validation set the gate evaluates on, the gate."""

    evaluation: EvalSet
    calibration: dict[str, torch.Tensor]
    gate: Gate = field(default_factory=Gate)
    mode: str = "int8"

    def __post_init__(self) -> None:
        if self.mode != "int8":
            raise ValueError(f"quantize: expected 'int8', got {self.mode!r}")


def check_formats(formats: Sequence[str], require_extras: bool = True) -> list[str]:
    """The formats, de-duplicated in order; an unknown one is a ValueError naming the choices, and (with
    `require_extras`) a missing package a one-line MissingExtraError naming the extra to install."""
    out: list[str] = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"export format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
        if fmt not in out:
            out.append(fmt)
    if require_extras:
        for fmt in out:
            require(_EXTRA[fmt], f"the {fmt} export")
    return out


def export_targets(
    fused: VideoTextModel, inputs: Mapping[str, torch.Tensor], folder: Path, formats: Sequence[str], clip_lengths: Sequence[int] | None = None,
    quantize: Quantize | None = None,
) -> tuple[list[Check], dict[str, Any]]:
    """Write and check every target in `folder`; returns all checks and, per format, what `metrics.json` records
    (with `quantize`, each target's int8 graphs and their gate report under `int8`)."""
    checks: list[Check] = []
    targets: dict[str, Any] = {}
    for fmt in formats:
        if fmt == "onnx":
            from mvclip.export_onnx import export_onnx

            found, info = export_onnx(fused, inputs, folder, clip_lengths)
        elif fmt == "executorch":
            from mvclip.export_executorch import export_executorch

            found, info = export_executorch(fused, inputs, folder, clip_lengths)
        else:
            from mvclip.export_coreml import export_coreml

            found, info = export_coreml(fused, inputs, folder, clip_lengths)
        checks += found
        targets[fmt] = {**info, "checks": [c.name for c in found]}
        if quantize is not None:
            from mvclip.export_quantize import quantize_target

            targets[fmt]["int8"] = quantize_target(fmt, fused, folder, quantize.calibration, quantize.evaluation, quantize.gate)
    return checks, targets
