"""`--quantize int8`: post-training int8 graphs beside the float ones, calibrated on validation clips and kept only
when the retrieval gate (`mvclip.export_gate`) passes.

Each target gets the quantizer its runtime is built for:
- ONNX: onnxruntime's `quantize_static`, QDQ format, per-channel symmetric int8 weights, symmetric int8 activations (uint8 activations measured worse: mean video cosine 0.96-0.98 vs 0.99-0.997 on the tiny test model), MinMax
  calibration -> `video.int8.onnx`, `text.int8.onnx`, run in onnxruntime.
- ExecuTorch: the PT2E flow with XNNPACK's quantizer (per-channel symmetric int8 weights, int8 activations) ->
  `video.int8.pte`, `text.int8.pte`, lowered to XNNPACK and run in ExecuTorch's runtime.
Core ML keeps fp16 weights (its export is already fp16); int8 is not applied there.

Calibration runs the float graph over `calibration` ({"video": clips, "text": token ids}); the gate then embeds the
whole evaluation set with the quantized graphs and compares with the PyTorch fused model.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvclip.export_gate import EvalSet, Gate, gate_report
from mvclip.export_graph import Encoder, encoder_kinds, export_encoder, quiet_export, run_all
from mvclip.export_verify import ExportError
from mvclip.model import VideoTextModel

QUANTIZE_MODES = ("int8",)
QUANTIZABLE = ("onnx", "executorch")
EVAL_BATCH = 16


def _in_batches(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int = EVAL_BATCH) -> torch.Tensor:
    return torch.cat([run(x[i : i + size]) for i in range(0, x.shape[0], size)])


def float_embeddings(fused: VideoTextModel, data: EvalSet) -> dict[str, torch.Tensor]:
    """The PyTorch fused model's unit-norm embeddings of the evaluation set: what the gate compares against."""
    with torch.no_grad():
        return {kind: _in_batches(Encoder(fused, kind).eval(), getattr(data, kind)) for kind in encoder_kinds(fused)}


def _onnx_int8(src: Path, dst: Path, kind: str, samples: torch.Tensor) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([samples[i : i + EVAL_BATCH].numpy() for i in range(0, samples.shape[0], EVAL_BATCH)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {kind: batch}

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def quantize_onnx(fused: VideoTextModel, folder: Path, calibration: Mapping[str, torch.Tensor], data: EvalSet, gate: Gate) -> dict[str, Any]:
    """`<kind>.int8.onnx` from the float `<kind>.onnx` in `folder`, gated on `data`."""
    import onnxruntime as ort

    quantized: dict[str, torch.Tensor] = {}
    files = []
    for kind in encoder_kinds(fused):
        src, dst = folder / f"{kind}.onnx", folder / f"{kind}.int8.onnx"
        try:
            with quiet_export():
                _onnx_int8(src, dst, kind, calibration[kind])
            session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
        except Exception as error:
            raise ExportError(f"{dst.name}: onnxruntime int8 quantization failed ({type(error).__name__}: {error})") from error
        quantized[kind] = _in_batches(lambda x, s=session, k=kind: torch.from_numpy(s.run(None, {k: x.numpy()})[0]), getattr(data, kind))
        files.append(dst.name)
    report = gate_report(" + ".join(files), float_embeddings(fused, data), quantized, data, gate)
    return {"files": files, "quantizer": "onnxruntime quantize_static: QDQ, per-channel symmetric int8 weights, symmetric int8 activations, MinMax",
            "calibration": {k: int(v.shape[0]) for k, v in calibration.items()}, **report}


def _executorch_int8(fused: VideoTextModel, kind: str, example: torch.Tensor, samples: torch.Tensor) -> torch.export.ExportedProgram:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with quiet_export():
        prepared = prepare_pt2e(export_encoder(fused, kind, example, batch=False).module(), quantizer)
        with torch.no_grad():
            for i in range(samples.shape[0]):
                prepared(samples[i : i + 1])
        converted = convert_pt2e(prepared)
        return torch.export.export(converted, (example,))


def quantize_executorch(fused: VideoTextModel, folder: Path, calibration: Mapping[str, torch.Tensor], data: EvalSet, gate: Gate) -> dict[str, Any]:
    """`<kind>.int8.pte` through XNNPACK's PT2E quantizer, run in ExecuTorch on `data` and gated."""
    from mvclip.export_executorch import load, write_pte

    quantized: dict[str, torch.Tensor] = {}
    files = []
    for kind in encoder_kinds(fused):
        path = folder / f"{kind}.int8.pte"
        x = getattr(data, kind)
        try:
            program = _executorch_int8(fused, kind, x[:1], calibration[kind])
        except Exception as error:
            raise ExportError(f"{path.name}: XNNPACK int8 quantization failed ({type(error).__name__}: {error})") from error
        write_pte(program, path)
        quantized[kind] = run_all(load(path), x)
        files.append(path.name)
    report = gate_report(" + ".join(files), float_embeddings(fused, data), quantized, data, gate)
    return {"files": files, "quantizer": "PT2E XNNPACKQuantizer: per-channel symmetric int8 weights, int8 activations",
            "calibration": {k: int(v.shape[0]) for k, v in calibration.items()}, **report}


def quantize_target(fmt: str, fused: VideoTextModel, folder: Path, calibration: Mapping[str, torch.Tensor], data: EvalSet, gate: Gate) -> dict[str, Any]:
    """The int8 graphs of one target (`QUANTIZABLE`), with their gate report."""
    if fmt == "onnx":
        return quantize_onnx(fused, folder, calibration, data, gate)
    if fmt == "executorch":
        return quantize_executorch(fused, folder, calibration, data, gate)
    return {"files": [], "note": "int8 is not applied to this target; its weights are fp16"}


def default_calibration(data: EvalSet, clips: int) -> dict[str, torch.Tensor]:
    """The first `clips` clips of the evaluation set and the captions that describe them."""
    keep = data.text_video_index < clips
    return {"video": data.video[:clips], "text": data.text[keep] if keep.any() else data.text[:clips]}
