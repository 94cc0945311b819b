"""Memory layout of a model's 2-D convolutions.

oneDNN (CPU) and cuDNN (GPU) have faster kernels for channels_last (NHWC) feature maps, above all for the
depthwise convolutions MCi is built from; a conv's output takes the layout of its weight, so converting the 2-D
conv weights moves every activation after the stem to NHWC. The temporal Conv3d weights are 5-D and stay as they
are. `bench/fuse.py` and `bench/train_speed.py` measure what it buys.

Convs that read fewer than `MIN_CHANNELS` channels (the RGB stem) stay in the default layout: in torch 2.13 on
CPU, the backward of a 1x1 stride-2 conv from 3 or 4 channels in channels_last corrupts the heap (`free(): invalid
size`, measured 2026-11-29; 1 and 8 channels are fine), and such a conv is the stem's MobileOne scale branch.
The block they form hands its output on in channels_last and takes its gradient back in the default layout
(`channels_last_boundary`), so each side of the boundary sees one layout both ways.
`torch.compile` (inductor) converts convs to channels_last itself unless `torch._inductor.config.layout_optimization`
is off; compiled training on CPU crashed the same way with it on (`free(): invalid next size`), not with it off.
"""
from __future__ import annotations

import torch
from torch import nn

from mvclip.layers.temporal_conv import eager


MIN_CHANNELS = 8


def to_channels_last(model: nn.Module, forward_only: bool = False) -> nn.Module:
    """In place: every `nn.Conv2d` weight reading at least `MIN_CHANNELS` channels in `torch.channels_last`, and a
    layout boundary (`channels_last_boundary`) after each largest module whose 2-D convs all stay in the default
    layout while its parent's others do not (the stem's RGB block); returns `model`.

    `forward_only=True`, for a model that is only run forward (a fused model serving embeddings): every 2-D conv,
    the RGB stem's included, since the heap corruption is in the backward. The stem's first map is then written
    NHWC instead of transposed afterwards (8 x 64 x 128 x 128 for Tiny at 256 px: 7.5 ms of a 160 ms clip)."""
    kept = {id(m) for m in model.modules()
            if isinstance(m, nn.Conv2d) and m.in_channels < MIN_CHANNELS and not forward_only}
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and id(module) not in kept:
            module.to(memory_format=torch.channels_last)

    def convs(module: nn.Module) -> list[nn.Module]:
        return [m for m in module.modules() if isinstance(m, nn.Conv2d)]

    for parent in model.modules():
        if not any(id(c) not in kept for c in convs(parent)):
            continue
        for child in parent.children():
            inner = convs(child)
            if inner and all(id(c) in kept for c in inner) and not getattr(child, "_channels_last_boundary", False):
                child.register_forward_hook(channels_last_boundary)
                child._channels_last_boundary = True
    model._mvclip_memory_format = "channels_last" + (", RGB stem too" if forward_only else ", RGB stem contiguous")
    return model


def memory_format_of(model: nn.Module) -> str:
    """What `to_channels_last` made of `model` or of a module inside it (copies keep it); "contiguous" if it never ran."""
    return next((m._mvclip_memory_format for m in model.modules() if hasattr(m, "_mvclip_memory_format")), "contiguous")


class _ToChannelsLast(torch.autograd.Function):
    """channels_last going forward, the default layout for the gradient going back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def channels_last_boundary(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the output of a default-layout module in channels_last, its gradient back in the default layout.

    Without it the NHWC convs after the stem send an NHWC gradient into the stem's NCHW BatchNorms and convs, which
    then take PyTorch's mixed-layout paths: one BatchNorm backward on the demo's 256 x 32 x 32 x 32 stem map took 34 ms
    (profiled 2026-11-30), and the demo's training step went from 0.69 to 0.56 s with the boundary in place."""
    if not isinstance(output, torch.Tensor) or output.dim() != 4 or not eager():
        return output  # traced, exported and compiled graphs choose their own layouts
    if torch.is_grad_enabled() and output.requires_grad:
        return _ToChannelsLast.apply(output)
    return output.contiguous(memory_format=torch.channels_last)
