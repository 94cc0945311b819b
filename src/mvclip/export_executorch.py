"""ExecuTorch programs of the fused encoders (`video.pte`, `text.pte`) with the XNNPACK delegate, for Android (and
any CPU ExecuTorch runs on), each run here through ExecuTorch's Python runtime and checked against PyTorch.

Graphs are exported at batch 1 (what a phone runs; memory is planned ahead of time for fixed shapes) and at each clip
length the caller names: `video.pte` at the first, `video_t<T>.pte` at the others. The path is the one ExecuTorch
documents: `torch.export` -> constant propagation (so weights reshaped in the graph, like the temporal conv's, are
constants XNNPACK can take) -> `to_edge_transform_and_lower(..., XnnpackPartitioner())` -> `.pte`. `metrics.json`
records which operators stayed outside the delegate (they run on ExecuTorch's portable kernels).

Threads: the runtime's XNNPACK threadpool starts with one thread per core it detects (2 on the machine the numbers
in docs/deploy.md come from); `set_threads` resets it (ExecuTorch's `_unsafe_reset_threadpool`).
Needs `pip install "mvclip[executorch]"`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mvclip.export_graph import check_parity, expected, export_encoder, graph_cases, quiet_export, run_all
from mvclip.export_verify import Check, ExportError
from mvclip.model import VideoTextModel

ET_MAX_ABS_DIFF = 1e-4
ET_MIN_COSINE = 0.99999


def thread_count() -> int:
    """Threads of ExecuTorch's XNNPACK threadpool in this process."""
    from executorch.extension.pybindings import portable_lib

    return int(portable_lib._threadpool_get_thread_count())


def set_threads(threads: int) -> None:
    """Resize ExecuTorch's threadpool (for latency measurements matched to PyTorch's thread count)."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(int(threads))


def lower(program: torch.export.ExportedProgram) -> tuple[bytes, dict[str, int]]:
    """An ExportedProgram -> `.pte` bytes with the XNNPACK delegate, and the operators left outside it."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    with quiet_export():
        lowered = to_edge_transform_and_lower(constant_prop_pass(program), partitioner=[XnnpackPartitioner()])
        left = Counter(
            str(node.target).split(":")[0].replace("<EdgeOpOverload: ", "").rstrip(">")
            for node in lowered.exported_program().graph.nodes
            if node.op == "call_function" and "delegate" not in str(node.target) and "getitem" not in str(node.target)
        )
        return lowered.to_executorch().buffer, dict(sorted(left.items()))


def load(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A `.pte` file's `forward` as a function of one input tensor, through ExecuTorch's Python runtime."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    if method is None:
        raise ExportError(f"{path.name}: ExecuTorch finds no `forward` method in it")
    return lambda x: method.execute([x.contiguous()])[0]


def write_pte(program: torch.export.ExportedProgram, path: Path) -> dict[str, int]:
    """Lower and write one program; a failure is an ExportError naming the graph."""
    try:
        buffer, left = lower(program)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ExportError(f"{path.name}: lowering to ExecuTorch with XNNPACK failed ({type(error).__name__}: {first})") from error
    path.write_bytes(buffer)
    return left


def check_pte(fused: VideoTextModel, kind: str, path: Path, x: torch.Tensor, name: str, max_abs_diff: float = ET_MAX_ABS_DIFF,
              min_cosine: float = ET_MIN_COSINE) -> Check:
    """Run a `.pte` clip by clip in ExecuTorch and compare with the PyTorch fused model."""
    try:
        run = load(path)
        got = run_all(run, x)
    except ExportError:
        raise
    except Exception as error:
        raise ExportError(f"{path.name}: ExecuTorch cannot run it ({type(error).__name__}: {error})") from error
    return check_parity(path.name, name, expected(fused, kind, x), got, max_abs_diff, min_cosine)


def export_executorch(
    fused: VideoTextModel, inputs: Mapping[str, torch.Tensor], folder: Path, clip_lengths: Sequence[int] | None = None,
) -> tuple[list[Check], dict[str, Any]]:
    """`video.pte` (+ one per other clip length) and `text.pte`, each checked in ExecuTorch on the held-out batch."""
    checks: list[Check] = []
    graphs: dict[str, Any] = {}
    for kind, frames, batch, file_name in graph_cases(fused, inputs, clip_lengths, ".pte"):
        path = folder / file_name
        left = write_pte(export_encoder(fused, kind, batch[:1], batch=False), path)
        name = f"executorch/{kind}" + (f"/frames{frames}" if frames is not None else "")
        checks.append(check_pte(fused, kind, path, batch, name))
        graphs[path.name] = {"input": list(batch[:1].shape), "dtype": str(batch.dtype).replace("torch.", ""), "not_delegated": left}
    return checks, {
        "exporter": "torch.export + to_edge_transform_and_lower(XnnpackPartitioner)",
        "executorch": _version(),
        "runtime_threads": thread_count(),
        "graphs": graphs,
    }


def _version() -> str:
    from importlib.metadata import version

    return version("executorch")
