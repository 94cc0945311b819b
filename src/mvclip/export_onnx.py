"""ONNX graphs of the fused encoders (`video.onnx`, `text.onnx`), each checked in onnxruntime against PyTorch.

Needs the `onnx` extra (`pip install "mvclip[onnx]"`); without it exports skip the graphs with a note.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mvclip.export_verify import Check, ExportError, encoders
from mvclip.fusion import compare_outputs
from mvclip.model import VideoTextModel


ONNX_MAX_ABS_DIFF = 1e-4
ONNX_OPSET = 17


class _Encoder(nn.Module):
    """One encoder of a VideoTextModel as a standalone graph: input -> unit-norm embedding."""

    def __init__(self, model: VideoTextModel, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "video":
            return self.model.encode_video(x, normalize=True)
        return self.model.encode_text(x, normalize=True)


def export_onnx(fused: VideoTextModel, inputs: Mapping[str, torch.Tensor], folder: Path) -> list[Check]:
    """`video.onnx` / `text.onnx` with a dynamic batch axis, each run in onnxruntime on the held-out batch."""
    import onnxruntime as ort

    checks = []
    for kind in encoders(fused):
        x = inputs[kind].cpu()
        path = folder / f"{kind}.onnx"
        with warnings.catch_warnings():
            # The traced graph is specialised to this clip length and token context (the tracer warns about
            # those Python branches); only the batch axis is dynamic, and it is checked below.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(
                _Encoder(fused, kind).eval(), (x,), str(path), input_names=[kind], output_names=["embedding"],
                dynamic_axes={kind: {0: "batch"}, "embedding": {0: "batch"}}, opset_version=ONNX_OPSET, dynamo=False,
            )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        # the held-out batch, and a batch of another size: the batch axis must really be dynamic
        for name, batch in ((f"onnx/{kind}", x), (f"onnx/{kind}/batch{x.shape[0] + 1}", torch.cat([x, x[:1]]))):
            with torch.no_grad():
                expected = _Encoder(fused, kind)(batch)
            got = torch.from_numpy(session.run(None, {kind: batch.numpy()})[0])
            check = Check.of(name, compare_outputs(expected, got))
            if check.max_abs_diff > ONNX_MAX_ABS_DIFF:
                raise ExportError(f"{path.name}: onnxruntime differs from PyTorch by {check.max_abs_diff:.3g} (limit {ONNX_MAX_ABS_DIFF:g}) on {name}")
            checks.append(check)
    return checks
