"""Memory layout of a model's 2-D convolutions.

oneDNN (CPU) and cuDNN (GPU) have faster kernels for channels_last (NHWC) feature maps, above all for the
depthwise convolutions MCi is built from; a conv's output takes the layout of its weight, so converting the 2-D
conv weights moves every activation after the stem to NHWC. The temporal Conv3d weights are 5-D and stay as they
are. `bench/fuse.py` and `bench/train_speed.py` measure what it buys.

Convs that read fewer than `MIN_CHANNELS` channels (the RGB stem) stay in the default layout: in torch 2.13 on
CPU, the backward of a 1x1 stride-2 conv from 3 or 4 channels in channels_last corrupts the heap (`free(): invalid
size`, measured 2026-11-29; 1 and 8 channels are fine), and such a conv is the stem's MobileOne scale branch.
`torch.compile` (inductor) converts convs to channels_last itself unless `torch._inductor.config.layout_optimization`
is off; compiled training on CPU crashed the same way with it on (`free(): invalid next size`), not with it off.
"""
from __future__ import annotations

import torch
from torch import nn


MIN_CHANNELS = 8


def to_channels_last(model: nn.Module) -> nn.Module:
    """In place: every `nn.Conv2d` weight reading at least `MIN_CHANNELS` channels in `torch.channels_last`;
    returns `model`."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels >= MIN_CHANNELS:
            module.to(memory_format=torch.channels_last)
    return model
