"""Does the fused model compute what the unfused one does? Parity checks of an export, and where a fold went wrong.

An export is written only when every check passes (`MAX_ABS_DIFF`, `MIN_COSINE` on unit-norm embeddings); otherwise
`ExportError` names the first reparameterized block whose fused form disagrees.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mvclip.contracts import is_reparameterizable
from mvclip.fusion import VerifyReport, compare_outputs
from mvclip.layers.reparam import is_batchnorm
from mvclip.model import VideoTextModel


MAX_ABS_DIFF = 1e-4  # on unit-norm float32 embeddings
MIN_COSINE = 0.99999


class ExportError(RuntimeError):
    """The fused model (or its ONNX graph) does not reproduce the unfused model; nothing was written."""


@dataclass(frozen=True)
class Check:
    """One parity check of the export: which output, against what, how far apart."""

    name: str
    max_abs_diff: float
    min_cosine: float

    @classmethod
    def of(cls, name: str, report: VerifyReport) -> Check:
        return cls(name, report.max_abs_diff, report.min_cosine)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= MAX_ABS_DIFF and self.min_cosine >= MIN_COSINE


def encoders(model: VideoTextModel) -> dict[str, Callable[[VideoTextModel, torch.Tensor], torch.Tensor]]:
    out: dict[str, Callable[[VideoTextModel, torch.Tensor], torch.Tensor]] = {"video": lambda m, x: m.encode_video(x, normalize=True)}
    if model.text is not None:
        out["text"] = lambda m, x: m.encode_text(x, normalize=True)
    return out


@torch.no_grad()
def verify_fused(model: VideoTextModel, fused: VideoTextModel, inputs: Mapping[str, torch.Tensor]) -> list[Check]:
    """Unit-norm embeddings of the unfused (eval) and fused models on the same held-out inputs."""
    checks = []
    for name, encode in encoders(model).items():
        report = compare_outputs(encode(model, inputs[name]), encode(fused, inputs[name]))
        check = Check.of(name, report)
        if not check.ok:
            culprit = locate_fusion_failure(model, fused, lambda m, x=inputs[name], e=encode: e(m, x))
            raise ExportError(
                f"fused {name} encoder does not match the unfused one: max |diff| {check.max_abs_diff:.3g} "
                f"(limit {MAX_ABS_DIFF:g}), min cosine {check.min_cosine:.7f} (limit {MIN_COSINE}); {culprit}"
            )
        checks.append(check)
    return checks


def _reparameterizable(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost modules with `reparameterize()`, by qualified name (what `fuse` calls)."""
    found: dict[str, nn.Module] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        if is_reparameterizable(module):
            found[prefix] = module
            return
        for name, child in module.named_children():
            walk(child, f"{prefix}.{name}" if prefix else name)

    walk(model, "")
    return found


@torch.no_grad()
def locate_fusion_failure(model: nn.Module, fused: nn.Module, run: Callable[[nn.Module], Any], rel_tol: float = 1e-4) -> str:
    """Feed every fused block the exact input its unfused twin saw, and name the first that disagrees."""
    blocks = _reparameterizable(model)
    fused_modules = dict(fused.named_modules())
    records: list[tuple[str, tuple, torch.Tensor]] = []
    hooks = [
        module.register_forward_hook(lambda m, args, out, name=name: records.append((name, args, out)))
        for name, module in blocks.items()
    ]
    try:
        run(model)
    finally:
        for hook in hooks:
            hook.remove()
    for name, args, expected in records:
        got = fused_modules[name](*args)
        report = compare_outputs(expected.flatten(1), got.flatten(1))
        if report.max_rel_diff > rel_tol:
            return f"first mismatching block: {name} ({type(blocks[name]).__name__}), relative difference {report.max_rel_diff:.3g}"
    return "every block matches on its own; the mismatch comes from how they are combined"


def unfolded_layers(fused: nn.Module) -> dict[str, Any]:
    """What reparameterization left in place: normalization layers by type (LayerNorm normalizes each token by
    its own statistics and cannot fold; a BatchNorm left here is one no block folded) and where the BatchNorms are."""
    norms: dict[str, int] = {}
    batchnorms = []
    for name, module in fused.named_modules():
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or is_batchnorm(module):
            norms[type(module).__name__] = norms.get(type(module).__name__, 0) + 1
            if is_batchnorm(module):
                batchnorms.append(name)
    return {"norms": norms, "batchnorms": batchnorms}
