"""ONNX graphs of the fused encoders (`video.onnx`, `text.onnx`) through the current exporter
(`torch.onnx.export(..., dynamo=True)`), each checked in onnxruntime against PyTorch.

The batch axis is dynamic, and so is the clip length where the model allows it (`frames` in the graph's input shape):
the video graph is checked at every clip length the caller names. A model whose graph pins the clip length (the
exporter specializes it) is exported at the held-out batch's length and says so in `metrics.json`; naming other
lengths for it is an ExportError. Needs the `onnx` extra (`pip install "mvclip[onnx]"`: onnx, onnxscript,
onnxruntime); without it exports skip the graphs with a note.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mvclip.export_graph import Encoder, check_parity, dynamic_shapes, encoder_kinds, expected, inputs_for, quiet_export, video_at_lengths
from mvclip.export_verify import Check, ExportError
from mvclip.model import VideoTextModel

ONNX_MAX_ABS_DIFF = 1e-4
ONNX_MIN_COSINE = 0.99999
ONNX_OPSET = 18  # the dynamo exporter's lowest supported opset

_Encoder = Encoder  # the name this wrapper had before it moved to mvclip.export_graph


def _name_output(program: Any, name: str) -> None:
    """Call the graph output `name`; an intermediate value already called so (the text encoder's `embedding` lookup)
    is renamed first, since ONNX names must be unique."""
    graph = program.model.graph
    for node in graph:
        for value in node.outputs:
            if value.name == name and value not in graph.outputs:
                value.name = f"{name}_inner"
    graph.outputs[0].name = name


def write_onnx(fused: VideoTextModel, kind: str, example: torch.Tensor, path: Path, dynamic_frames: bool) -> None:
    """One encoder through `torch.export` and the dynamo ONNX exporter, input named `kind`, output `embedding`."""
    try:
        with quiet_export(), torch.no_grad():
            onnx_program = torch.onnx.export(
                Encoder(fused, kind).eval(), (example,), input_names=[kind], dynamic_shapes=dynamic_shapes(kind, True, dynamic_frames),
                dynamo=True, opset_version=ONNX_OPSET, verbose=False,
            )
        _name_output(onnx_program, "embedding")
        onnx_program.save(str(path))
    except Exception as error:
        raise ExportError(f"{path.name}: torch.onnx.export(dynamo=True) failed ({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''})") from error


def export_onnx(
    fused: VideoTextModel, inputs: Mapping[str, torch.Tensor], folder: Path, clip_lengths: Sequence[int] | None = None,
) -> tuple[list[Check], dict[str, Any]]:
    """`video.onnx` / `text.onnx` with a dynamic batch axis (and clip length), each run in onnxruntime on the held-out
    batch, on a batch of another size and (video) at every length of `clip_lengths` (default: the held-out one).

    Returns the checks and a description of the graphs' input shapes for `metrics.json`."""
    import onnxruntime as ort

    checks: list[Check] = []
    shapes: dict[str, Any] = {}
    clip_length = "dynamic"
    for kind in encoder_kinds(fused):
        x = inputs_for(kind, inputs)
        path = folder / f"{kind}.onnx"
        lengths = list(clip_lengths or [x.shape[1]]) if kind == "video" else []
        dynamic_frames = kind == "video"
        try:
            write_onnx(fused, kind, x, path, dynamic_frames)
        except ExportError:
            if not dynamic_frames:
                raise
            dynamic_frames, clip_length = False, "fixed"  # this model pins its clip length: export it at the held-out one
            write_onnx(fused, kind, x, path, dynamic_frames)
            if set(lengths) - {x.shape[1]}:
                raise ExportError(f"{path.name}: this model's graph fixes the clip length at {x.shape[1]} frames; cannot check lengths {sorted(set(lengths) - {x.shape[1]})}")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        shapes[path.name] = [d if isinstance(d, (int, str)) else str(d) for d in session.get_inputs()[0].shape]
        cases = {f"onnx/{kind}": x, f"onnx/{kind}/batch{x.shape[0] + 1}": torch.cat([x, x[:1]])}
        for length, clip in video_at_lengths(x, lengths).items() if kind == "video" else ():
            cases.setdefault(f"onnx/{kind}/frames{length}", clip)
        for name, batch in cases.items():
            got = torch.from_numpy(session.run(None, {kind: batch.numpy()})[0])
            checks.append(check_parity(path.name, name, expected(fused, kind, batch), got, ONNX_MAX_ABS_DIFF, ONNX_MIN_COSINE))
    checked = {int(inputs["video"].shape[1])} | {int(c.name.rsplit("frames", 1)[1]) for c in checks if "/frames" in c.name}
    return checks, {"exporter": "torch.onnx.export(dynamo=True)", "opset": ONNX_OPSET, "inputs": shapes, "clip_length": clip_length,
                    "clip_lengths_checked": sorted(checked)}
