"""Checks for reparameterizable blocks, public so plugin authors can test their own blocks the same way.

`check_block_fusion` builds a block from the registry, randomizes everything that makes its
branches matter (BatchNorm statistics and affine parameters, and the parameters blocks declare as starting at
zero: layer scales, temporal encodings),
and compares the fused block with the unfused one. `check_inference_form` checks that a block
built with `inference_mode=True` takes a reparameterized block's state dict and computes the same.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from mvclip.layers.reparam import is_batchnorm
from mvclip.contracts import block_width, declared_keys
from mvclip.fusion import VerifyReport, compare_outputs, reparameterize_model
from mvclip.registry import REGISTRY, BlockEntry
from mvclip.summary import count_params


@torch.no_grad()
def randomize_for_fusion_(module: nn.Module, seed: int = 0) -> nn.Module:
    """In place: non-trivial BatchNorm statistics/affine and every declared `zero_init_state` (layer scales, TPE),
    so every branch contributes."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape: torch.Size, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen)

    for sub in module.modules():
        if is_batchnorm(sub):
            sub.running_mean.copy_(torch.randn(sub.running_mean.shape, generator=gen) * 0.5)
            sub.running_var.copy_(uniform(sub.running_var.shape, 0.5, 2.0))
            if sub.affine:
                sub.weight.copy_(uniform(sub.weight.shape, 0.5, 1.5))
                sub.bias.copy_(torch.randn(sub.bias.shape, generator=gen) * 0.3)
    zero_init = declared_keys(module, "zero_init_state")  # would hide a wrong fold if left at zero
    for name, param in module.named_parameters():
        if name in zero_init:
            param.copy_(uniform(param.shape, 0.2, 1.0) * torch.sign(torch.randn(param.shape, generator=gen)))
    return module


def random_checkpoint(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the given names and shapes and values a trained network could have, every tensor distinct.

    For testing weight loaders without the real files (tests/fixtures/pretrained_formats/*.json hold the shapes):
    BatchNorm statistics and affine near their trained ranges, layer scales well away from their 1e-5 start,
    weights scaled by fan-in, `logit_scale` ln(100); `num_batches_tracked` counts 1, 2, 3, ... so even those differ.
    """
    gen = torch.Generator().manual_seed(seed)
    keys = list(shapes)
    batchnorms = {k.rsplit(".", 1)[0] for k in keys if k.endswith("running_var")}
    state: dict[str, torch.Tensor] = {}
    for index, key in enumerate(keys):
        shape = torch.Size(shapes[key])
        owner, leaf = key.rsplit(".", 1) if "." in key else ("", key)
        normal = torch.randn(shape, generator=gen)
        if leaf == "num_batches_tracked":
            value = torch.tensor(index + 1, dtype=torch.long)
        elif leaf == "running_var":
            value = 0.5 + 1.5 * torch.rand(shape, generator=gen)
        elif owner in batchnorms and leaf == "weight":
            value = 0.5 + torch.rand(shape, generator=gen)
        elif leaf in {"running_mean", "bias"} or owner in batchnorms:
            value = 0.1 * normal
        elif "layer_scale" in key:
            value = (0.05 + 0.1 * torch.rand(shape, generator=gen)) * normal.sign()
        elif key == "logit_scale":
            value = torch.tensor(4.6052 + 1e-3 * index)
        elif len(shape) >= 2 and "embedding" not in key and leaf != "pos_embed":
            value = normal * shape[1:].numel() ** -0.5
        else:
            value = 0.02 * normal
        state[key] = value
    return state


@dataclass(frozen=True)
class FusionCheck:
    """Outcome of one fused-vs-unfused comparison of a block."""

    block: str
    frames: int
    report: VerifyReport
    params_unfused: int
    params_fused: int
    batchnorms_left: int
    idempotent: bool


class ExampleBackboneHead(nn.Module):
    """The part of a backbone head a side head reads (`norm`, `proj`; `mvclip.contracts.FeatureHead`), for examples."""

    def __init__(self, feature_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.proj = nn.Parameter(torch.randn(feature_dim, embed_dim) * feature_dim**-0.5)

    def features(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return x


def example_block(entry: BlockEntry, dim: int = 32, **overrides) -> nn.Module:
    """Build a block with small example widths (`dim`, and `out_dim` when it is required), plus `overrides`; a side
    network's parts also get what their builder would hand them (`in_dim`, `backbone_head`, `num_classes`)."""
    accepted = {p.name: p for p in entry.parameters()}
    kwargs = dict(overrides)
    if "dim" in accepted:
        kwargs["dim"] = dim
    if "out_dim" in accepted and accepted["out_dim"].default is accepted["out_dim"].empty:
        kwargs["out_dim"] = 2 * dim  # a multiple of dim, so grouped (depthwise-style) blocks accept it
    side_context = {"in_dim": 2 * dim, "backbone_head": ExampleBackboneHead(2 * dim, dim), "num_classes": 5}
    kwargs.update({k: v for k, v in side_context.items() if k in accepted and k not in kwargs})
    return REGISTRY.instantiate(entry, kwargs, path=f"example {entry.name}")


def example_input(entry: BlockEntry, dim: int, frames: int, batch: int = 2, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs in the layout the block's kind takes (`mvclip.contracts`): text `(B, L, C)`; side `(B*T, N, C)`
    plus a global token `(B*T, C)`; video `(B*T, C, H, W)`, or `(B*T, 1 + N, C)` for blocks with
    `input_layout = "tokens"`; a side stem RGB frames `(B*T, 3, 2*size, 2*size)`; a side fusion backbone tokens
    `(B*T, N, 2*dim)`; a side head side tokens and a backbone feature `(B*T, 2*dim)`."""
    gen = torch.Generator().manual_seed(seed)
    if entry.kind == "text":
        return (torch.randn(batch, 12, dim, generator=gen),)
    if entry.kind == "side":
        return torch.randn(batch * frames, size, dim, generator=gen), torch.randn(batch * frames, dim, generator=gen)
    if entry.kind == "side_stem":
        return (torch.rand(batch * frames, 3, 2 * size, 2 * size, generator=gen),)
    if entry.kind == "side_fusion":
        return (torch.randn(batch * frames, size, 2 * dim, generator=gen),)
    if entry.kind == "side_head":
        return torch.randn(batch * frames, size, dim, generator=gen), torch.randn(batch * frames, 2 * dim, generator=gen)
    if entry.traits.input_layout == "tokens":
        return (torch.randn(batch * frames, 1 + size, dim, generator=gen),)
    return (torch.randn(batch * frames, dim, size, size, generator=gen),)


def _call(entry: BlockEntry, block: nn.Module, inputs: tuple[torch.Tensor, ...], frames: int) -> torch.Tensor:
    """Call a block as its kind is called; a side stem's output is compared by its tokens."""
    if entry.kind in ("text", "side_fusion"):
        return block(*inputs)
    if entry.kind == "side_stem":
        return block(*inputs, frames)[0]
    if entry.kind == "side_head":
        return block(*inputs, frames)
    x, *extra = inputs
    return block(x, frames, *extra)


@torch.no_grad()
def check_block_fusion(name: str, frames: int = 4, dim: int = 32, seed: int = 0) -> FusionCheck:
    """Build `name`, randomize it, fuse a copy, and compare on random input with `frames` frames per clip."""
    entry = REGISTRY.get(name)
    torch.manual_seed(seed)
    block = randomize_for_fusion_(example_block(entry, dim), seed).eval()
    x = example_input(entry, block_width(block, dim), frames, seed=seed)
    reference = _call(entry, block, x, frames)
    fused = reparameterize_model(copy.deepcopy(block))
    out = _call(entry, fused, x, frames)
    state = {k: v.clone() for k, v in fused.state_dict().items()}
    reparameterize_model(fused)  # a second call must change nothing
    again = fused.state_dict()
    idempotent = state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    idempotent = idempotent and torch.equal(out, _call(entry, fused, x, frames))
    return FusionCheck(
        block=name,
        frames=frames,
        report=compare_outputs(reference, out),
        params_unfused=count_params(block),
        params_fused=count_params(fused),
        batchnorms_left=sum(1 for m in fused.modules() if is_batchnorm(m)),
        idempotent=idempotent,
    )


@dataclass(frozen=True)
class InferenceFormCheck:
    """A block built with `inference_mode=True`, loaded with a reparameterized block's weights, vs that block."""

    block: str
    reference: torch.Tensor  # the reparameterized block's output
    output: torch.Tensor  # the directly built inference form's output
    batchnorms_left: int  # BatchNorm modules in the inference form
    same_modules: bool  # same module names and types as the reparameterized block

    @property
    def report(self) -> VerifyReport:
        return compare_outputs(self.reference, self.output)


@torch.no_grad()
def check_inference_form(name: str, frames: int = 4, dim: int = 32, seed: int = 0) -> InferenceFormCheck:
    """Randomize and reparameterize `name`, build it again with `inference_mode=True`, load the state dict
    strictly (a missing, unexpected or mis-shaped entry raises) and compare outputs on the same input."""
    entry = REGISTRY.get(name)
    torch.manual_seed(seed)
    fused = reparameterize_model(randomize_for_fusion_(example_block(entry, dim), seed).eval())
    direct = example_block(entry, dim, inference_mode=True).eval()
    direct.load_state_dict(fused.state_dict(), strict=True)
    x = example_input(entry, block_width(fused, dim), frames, seed=seed)
    return InferenceFormCheck(
        block=name,
        reference=_call(entry, fused, x, frames),
        output=_call(entry, direct, x, frames),
        batchnorms_left=sum(1 for m in direct.modules() if is_batchnorm(m)),
        same_modules=_module_types(fused) == _module_types(direct),
    )


def _module_types(module: nn.Module) -> dict[str, type]:
    return {name: type(sub) for name, sub in module.named_modules()}
