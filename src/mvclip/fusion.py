"""Whole-model structural reparameterization: `fuse` makes the inference form, `verify` measures it."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from mvclip.contracts import is_reparameterizable


def reparameterize_model(module: nn.Module) -> nn.Module:
    """In place: call `reparameterize()` on every outermost block that has one (it handles its own children)."""
    if module.training:
        raise RuntimeError("reparameterize needs eval mode: BatchNorm running statistics are folded; call .eval() first")
    _reparameterize(module)
    return module


def _reparameterize(module: nn.Module) -> None:
    if is_reparameterizable(module):
        module.reparameterize()
        return
    for child in list(module.children()):
        _reparameterize(child)


def fuse(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every block reparameterized; the original is left untouched."""
    fused = copy.deepcopy(model).eval()
    reparameterize_model(fused)
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused


@dataclass(frozen=True)
class VerifyReport:
    """How far a fused model's outputs are from the unfused one's on the same inputs."""

    max_abs_diff: float
    max_rel_diff: float  # max |fused - unfused| / max |unfused|
    min_cosine: float

    def ok(self, rel_tol: float = 1e-5) -> bool:
        return self.max_rel_diff <= rel_tol


@torch.no_grad()
def compare_outputs(reference: torch.Tensor, candidate: torch.Tensor) -> VerifyReport:
    reference, candidate = reference.double(), candidate.double()
    diff = (reference - candidate).abs().max().item()
    scale = reference.abs().max().item() or 1.0
    cos = torch.nn.functional.cosine_similarity(reference.flatten(1), candidate.flatten(1), dim=-1).min().item()
    return VerifyReport(diff, diff / scale, cos)


@torch.no_grad()
def verify(model: nn.Module, *inputs: torch.Tensor, fused: nn.Module | None = None, forward: Callable[..., torch.Tensor] | None = None) -> VerifyReport:
    """Run unfused (in eval mode) and fused on the same inputs and report the largest difference.

    `forward(module, *inputs)` picks what to compare (default: `module(*inputs)`); for a
    VideoTextModel pass e.g. `lambda m, v: m.encode_video(v)`.
    """
    fused = fuse(model) if fused is None else fused
    call = forward or (lambda m, *xs: m(*xs))
    was_training = model.training
    model.eval()
    try:
        reference = call(model, *inputs)
    finally:
        model.train(was_training)
    return compare_outputs(reference, call(fused, *inputs))
