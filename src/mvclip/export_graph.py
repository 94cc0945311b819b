"""The fused encoders as `torch.export` programs: the one graph every deployment target (ONNX, ExecuTorch, Core ML)
starts from, and the parity check each target's runtime must pass against PyTorch.

`torch.export` records the graph path of every block (`mvclip.layers.temporal_conv.eager()` is False while exporting):
the temporal conv as a (K x 1) `Conv2d`, and a clip length that stays symbolic when it is exported as dynamic.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from mvclip.export_verify import Check, ExportError
from mvclip.fusion import compare_outputs
from mvclip.model import VideoTextModel

MAX_BATCH = 64  # the upper bound of a dynamic batch axis
MAX_FRAMES = 64  # the upper bound of a dynamic clip length


class Encoder(nn.Module):
    """One encoder of a VideoTextModel as a standalone graph: input -> unit-norm embedding."""

    def __init__(self, model: VideoTextModel, kind: str) -> None:
        super().__init__()
        if kind not in ("video", "text"):
            raise ValueError(f"encoder kind must be 'video' or 'text', got {kind!r}")
        self.model, self.kind = model, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "video":
            return self.model.encode_video(x, normalize=True)
        return self.model.encode_text(x, normalize=True)


@contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the exporters' deprecation chatter (it says nothing about this graph)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
        yield


def dynamic_shapes(kind: str, batch: bool, frames: bool) -> dict[str, dict[int, Any]]:
    """`torch.export` dynamic shapes of an encoder's input: the batch axis and (video) the clip-length axis."""
    axes: dict[int, Any] = {}
    if batch:
        axes[0] = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if frames and kind == "video":
        axes[1] = torch.export.Dim("frames", min=1, max=MAX_FRAMES)
    return {"x": axes}


def export_encoder(fused: VideoTextModel, kind: str, example: torch.Tensor, *, batch: bool = True, frames: bool = False) -> torch.export.ExportedProgram:
    """The encoder as an ExportedProgram; `batch`/`frames` make those axes dynamic. A graph that cannot be exported
    is an ExportError naming it."""
    try:
        with quiet_export(), torch.no_grad():
            return torch.export.export(Encoder(fused, kind).eval(), (example,), dynamic_shapes=dynamic_shapes(kind, batch, frames))
    except Exception as error:  # torch.export raises many types; the one line names the graph and the first reason
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"{kind} encoder: torch.export failed ({type(error).__name__}: {first})") from error


def expected(fused: VideoTextModel, kind: str, x: torch.Tensor) -> torch.Tensor:
    """The PyTorch fused model's unit-norm embedding of `x` (the reference every target is checked against)."""
    with torch.no_grad():
        return Encoder(fused, kind).eval()(x)


def check_parity(graph: str, name: str, reference: torch.Tensor, got: torch.Tensor, max_abs_diff: float, min_cosine: float) -> Check:
    """A Check of one runtime's output, or an ExportError naming the graph file and the check that failed."""
    check = Check.of(name, compare_outputs(reference, got))
    if not (check.max_abs_diff <= max_abs_diff and check.min_cosine >= min_cosine):
        raise ExportError(
            f"{graph}: differs from the PyTorch fused model on {name}: max |diff| {check.max_abs_diff:.3g} (limit {max_abs_diff:g}), "
            f"min cosine {check.min_cosine:.6f} (limit {min_cosine})"
        )
    return check


def video_at_lengths(video: torch.Tensor, lengths: Iterable[int]) -> dict[int, torch.Tensor]:
    """The held-out clips at each clip length: the first T frames, or the clip repeated in time to reach T."""
    out = {}
    for length in lengths:
        if length < 1:
            raise ValueError(f"clip lengths must be positive, got {length}")
        reps = -(-length // video.shape[1])
        out[int(length)] = video.repeat(1, reps, 1, 1, 1)[:, :length].contiguous()
    return out


def run_all(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """A batch-1 runtime applied clip by clip (mobile graphs are exported at batch 1)."""
    return torch.cat([run(x[i : i + 1]) for i in range(x.shape[0])])


def encoder_kinds(fused: VideoTextModel) -> list[str]:
    return ["video", "text"] if fused.text is not None else ["video"]


def graph_cases(fused: VideoTextModel, inputs: Mapping[str, torch.Tensor], clip_lengths: Iterable[int] | None,
                suffix: str) -> Iterator[tuple[str, int | None, torch.Tensor, str]]:
    """What a fixed-shape target exports: (kind, clip length or None for text, held-out batch, file name), one video
    graph per clip length (`video<suffix>` at the held-out clips' own length when it is among them, else the first
    named; `video_t<T><suffix>` at the others) and one text graph."""
    for kind in encoder_kinds(fused):
        x = inputs_for(kind, inputs)
        if kind != "video":
            yield kind, None, x, f"{kind}{suffix}"
            continue
        lengths = list(dict.fromkeys(clip_lengths or [x.shape[1]]))
        default = x.shape[1] if x.shape[1] in lengths else lengths[0]
        for frames, batch in video_at_lengths(x, lengths).items():
            yield kind, frames, batch, f"{kind}{suffix}" if frames == default else f"{kind}_t{frames}{suffix}"


def inputs_for(kind: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if kind not in inputs or inputs[kind] is None:
        raise ValueError(f"the held-out inputs have no {kind!r} batch to check the {kind} encoder on")
    return inputs[kind].cpu()
