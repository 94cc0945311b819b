"""Spatiotemporal RepMixer (MobileViCLIP): a depthwise temporal conv branch before the spatial RepMixer."""
from __future__ import annotations

import copy
from typing import ClassVar

import torch
from einops import rearrange
from torch import nn

from mvclip.layers.reparam import conv_like, conv_norm, detach_parameters, identity_kernel
from mvclip.layers.temporal_conv import (
    channels_last_clip, conv_over_frames, eager, frames_of_channels_last_clip, is_channels_last, temporal_conv_graph,
    temporal_depthwise_conv,
)
from mvclip.blocks.repmixer import RepMixerBlock
from mvclip.registry import register_block


TEMPORAL_INITS = ("zero", "mirror", "active")


class TemporalMixer(nn.Module):
    """`x + branch(x)`, a depthwise conv over frames (k x 1 x 1, zero padding) then BatchNorm. Conv before BN keeps
    the fold exact at the first and last frame.

    `init` decides how the branch starts (docs/blocks.md, "Starting the temporal branch", has the measurements):
    - `zero`: BN weight 0. Exactly the identity, but the conv gets no gradient until the BN weight has grown, and
      under contrastive training it barely grows.
    - `mirror`: `branch(x) = BN_a(conv_a(x)) - BN_b(conv_b(x))` with b a copy of a and BN weights 1. Exactly the
      identity too (two identical computations cancel bit for bit), and both convs and both BN weights get their full
      gradient from the first step; the difference folds into the same single conv.
    - `active`: BN weight 1. Random temporal mixing at full strength from the start: not the identity, so only for
      models trained from scratch.

    `temporal_state` names this module's state an image checkpoint never has ("" = all of it), so
    `mvclip.load_pretrained` reports it as newly initialized rather than missing."""

    temporal_state: ClassVar[tuple[str, ...]] = ("",)

    def __init__(self, dim: int, kernel_size: int = 3, inference_mode: bool = False, init: str = "zero") -> None:
        super().__init__()
        if init not in TEMPORAL_INITS:
            raise ValueError(f"temporal_init must be one of {TEMPORAL_INITS}, got {init!r}")
        self.dim, self.kernel_size, self.init = dim, kernel_size, init
        conv = conv_norm(dim, dim, (kernel_size, 1, 1), groups=dim, ndim=3, inference_mode=inference_mode)
        self.branch: nn.Module | None = None if inference_mode else conv
        self.reparam_conv: nn.Conv3d | None = conv if inference_mode else None
        self.mirror: nn.Module | None = None
        if self.branch is not None and init == "zero":
            nn.init.zeros_(self.branch.bn.weight)
        if self.branch is not None and init == "mirror":
            self.mirror = copy.deepcopy(self.branch)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        if self.reparam_conv is not None and eager():
            # the fused form on the per-frame layout: no (b t) <-> (b c t) copies (docs/benchmarks.md)
            return temporal_depthwise_conv(x, self.reparam_conv.weight, self.reparam_conv.bias, frames)
        if self.reparam_conv is not None:  # traced and exported graphs: a (K x 1) Conv2d, which every runtime lowers
            return temporal_conv_graph(x, self.reparam_conv.weight, self.reparam_conv.bias, frames)
        if is_channels_last(x):  # training in channels_last: the branches on the free (B, C, T, H*W) view
            clip = channels_last_clip(x, frames)
            return frames_of_channels_last_clip(clip + self._branches(clip, _branch_on_view), *x.shape[2:])
        clip = rearrange(x, "(b t) c h w -> b c t h w", t=frames)
        clip = clip + self._branches(clip, lambda branch, inputs: branch(inputs))
        return rearrange(clip, "b c t h w -> (b t) c h w")

    def _branches(self, clip: torch.Tensor, run) -> torch.Tensor:
        if self.mirror is not None:
            return run(self.branch, clip) - run(self.mirror, clip)
        return run(self.branch, clip)

    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        kernel, bias = self.branch.fused_kernel_bias()
        if self.mirror is not None:
            mirror_kernel, mirror_bias = self.mirror.fused_kernel_bias()
            kernel, bias = kernel - mirror_kernel, bias - mirror_bias
        kernel = kernel + identity_kernel(self.dim, 1, (self.kernel_size, 1, 1), kernel)
        self.reparam_conv = conv_like(self.branch.conv, kernel, bias)
        self.branch = self.mirror = None
        detach_parameters(self)


def _branch_on_view(branch: nn.Module, clip: torch.Tensor) -> torch.Tensor:
    """A (K x 1 x 1) Conv3d + BatchNorm3d branch on a (B, C, T, H*W) channels_last view: the conv as the Conv2d it
    equals there (oneDNN's depthwise Conv3d took 2.9-4x as long, forward and backward, measured on the demo's maps),
    the BatchNorm3d itself on a 5-D view, so its statistics and running buffers are the module's own.

    The 5-D view gets the canonical channels_last_3d strides, size-1 axes included: torch 2.13's CPU BatchNorm3d
    backward returns wrong input gradients for a channels_last_3d input whose size-1 axis carries another stride
    (found on 1-frame clips: errors of 5.8 on unit-scale gradients; what `rearrange` gave the Conv3d path here)."""
    out = conv_over_frames(clip, branch.conv.weight, branch.conv.bias).contiguous(memory_format=torch.channels_last)
    batch, channels, frames, pixels = out.shape
    five_d = out.as_strided((batch, channels, frames, pixels, 1),
                            (frames * pixels * channels, 1, pixels * channels, channels, channels))
    return branch.bn(five_d).squeeze(-1)


@register_block("st_repmixer")
class STRepMixerBlock(RepMixerBlock):
    """RepMixer block with a temporal depthwise conv first: x + BN(dwconv_t(x)), RepMixer, ConvFFN."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        mlp_ratio: float = 3.0,
        ffn_kernel_size: int = 7,
        layer_scale_init: float = 1e-5,
        temporal_kernel_size: int = 3,
        temporal_init: str = "zero",
        inference_mode: bool = False,
    ) -> None:
        super().__init__(dim, kernel_size, mlp_ratio, ffn_kernel_size, layer_scale_init, inference_mode)
        self.temporal_mixer = TemporalMixer(dim, temporal_kernel_size, inference_mode, temporal_init)

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return super().forward(self.temporal_mixer(x, frames), frames)

    def reparameterize(self) -> None:
        self.temporal_mixer.reparameterize()
        super().reparameterize()
