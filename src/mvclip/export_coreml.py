"""Core ML packages of the fused encoders (`video.mlpackage`, `text.mlpackage`) for iOS: ML programs with fp16
weights and compute, iOS 17, batch 1, one package per clip length (`video_t<T>.mlpackage` for the others).

Static shapes are deliberate: the Neural Engine runs fixed shapes, and a shape the compiler must keep open tends to
push work back to the GPU or CPU. coremltools converts on Linux, but Core ML predicts only on Apple platforms, so here
the checks are what can be verified without running it (docs/deploy.md says what was and was not run):
- the graph Core ML converts (the `torch.export` program) reproduces the PyTorch fused model (`coreml/<kind>/graph`);
- the package's inputs and outputs have the expected names, types and shapes;
- every weight is fp16 (`fp32_weights` lists any that are not) and the ops are listed by type.
Needs `pip install "mvclip[coreml]"`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvclip.export_graph import check_parity, expected, export_encoder, graph_cases, quiet_export
from mvclip.export_verify import Check, ExportError
from mvclip.model import VideoTextModel

COREML_GRAPH_MAX_ABS_DIFF = 1e-5
COREML_GRAPH_MIN_COSINE = 0.99999
DEPLOYMENT_TARGET = "iOS17"


def convert(program: torch.export.ExportedProgram, kind: str, shape: tuple[int, ...]) -> Any:
    """An ExportedProgram -> an fp16 iOS 17 ML program; input `kind` (float32 clip or int32 token ids), output `embedding`."""
    import coremltools as ct

    dtype = np.float32 if kind == "video" else np.int32
    with quiet_export():
        return ct.convert(
            program.run_decompositions({}), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
            compute_precision=ct.precision.FLOAT16, inputs=[ct.TensorType(name=kind, shape=shape, dtype=dtype)],
            outputs=[ct.TensorType(name="embedding", dtype=np.float32)],
        )


def inspect(model: Any) -> dict[str, Any]:
    """What the converted program is: inputs, outputs, op counts, weights by dtype."""
    spec = model.get_spec()
    types = {65568: "float32", 65552: "float16", 131104: "int32"}

    def describe(features: Any) -> dict[str, Any]:
        return {f.name: {"shape": [int(d) for d in f.type.multiArrayType.shape], "dtype": types.get(f.type.multiArrayType.dataType, str(f.type.multiArrayType.dataType))}
                for f in features}

    ops: Counter[str] = Counter()
    weights: Counter[str] = Counter()
    fp32: list[str] = []
    for op in model._mil_program.functions["main"].operations:
        ops[op.op_type] += 1
        if op.op_type == "const" and op.outputs[0].val is not None:
            value = np.asarray(op.outputs[0].val)
            if value.dtype.kind == "f" and value.size > 1:
                weights[str(value.dtype)] += int(value.size)
                if value.dtype != np.float16:
                    fp32.append(op.name)
    return {"inputs": describe(spec.description.input), "outputs": describe(spec.description.output), "ops": dict(sorted(ops.items())),
            "weight_values": dict(weights), "fp32_weights": fp32, "spec_version": int(spec.specificationVersion)}


def export_coreml(
    fused: VideoTextModel, inputs: Mapping[str, torch.Tensor], folder: Path, clip_lengths: Sequence[int] | None = None,
) -> tuple[list[Check], dict[str, Any]]:
    """`video.mlpackage` (+ one per other clip length) and `text.mlpackage`, inspected; see the module docstring."""
    import coremltools as ct

    checks: list[Check] = []
    packages: dict[str, Any] = {}
    for kind, frames, batch, name in graph_cases(fused, inputs, clip_lengths, ".mlpackage"):
        example = batch[:1]
        program = export_encoder(fused, kind, example, batch=False)
        label = f"coreml/{kind}/graph" + (f"/frames{frames}" if frames is not None else "")
        with torch.no_grad():
            got = torch.cat([program.module()(batch[i : i + 1]) for i in range(batch.shape[0])])
        checks.append(check_parity(name, label, expected(fused, kind, batch), got, COREML_GRAPH_MAX_ABS_DIFF, COREML_GRAPH_MIN_COSINE))
        try:
            model = convert(program, kind, tuple(example.shape))
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ExportError(f"{name}: coremltools cannot convert it ({type(error).__name__}: {first})") from error
        info = inspect(model)
        want_in = {kind: {"shape": list(example.shape), "dtype": "float32" if kind == "video" else "int32"}}
        want_out = {"embedding": {"shape": [1, int(expected(fused, kind, example).shape[-1])], "dtype": "float32"}}
        if info["inputs"] != want_in or info["outputs"] != want_out:
            raise ExportError(f"{name}: the converted program has inputs {info['inputs']} and outputs {info['outputs']}; expected {want_in} and {want_out}")
        if info["fp32_weights"]:
            raise ExportError(f"{name}: {len(info['fp32_weights'])} weights stayed fp32 (first: {info['fp32_weights'][0]}); expected fp16 weights")
        model.save(str(folder / name))
        packages[name] = info
    return checks, {
        "converter": f"coremltools {ct.__version__}: torch.export -> ML program",
        "deployment_target": DEPLOYMENT_TARGET,
        "compute_precision": "float16",
        "predicted_here": False,
        "note": "Core ML prediction needs macOS/iOS; checked here: the converted graph's parity in PyTorch, inputs/outputs, fp16 weights, ops",
        "packages": packages,
    }
