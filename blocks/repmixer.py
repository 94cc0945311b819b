"""RepMixer (FastViT/MobileCLIP): x + gamma * (mixer(x) - BN(x)), folded into one depthwise conv."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mvclip.blocks.conv_ffn import ConvFFN
from mvclip.blocks.mobileone import MobileOneBlock
from mvclip.layers.reparam import conv_like, detach_parameters, identity_kernel, to_tuple
from mvclip.registry import register_block


class RepMixer(nn.Module):
    """The token mixer: `x + gamma * (mixer(x) - norm(x))` with mixer = dwconv-BN + 1x1-BN + BN(x), norm = BN(x)."""

    no_decay_state: ClassVar[tuple[str, ...]] = ("layer_scale",)
    zero_init_state: ClassVar[tuple[str, ...]] = ("layer_scale",)

    def __init__(
        self,
        dim: int,
        kernel_size: int | tuple[int, int] = 3,
        layer_scale_init: float = 1e-5,
        inference_mode: bool = False,
        scale_branch: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.kernel_size = to_tuple(kernel_size, 2)
        self.reparam_conv: nn.Conv2d | None = self._fused_conv() if inference_mode else None
        if inference_mode:
            return
        common = dict(kernel_size=self.kernel_size, groups=dim, use_act=False)
        self.norm = MobileOneBlock(dim, dim, use_scale_branch=False, num_conv_branches=0, **common)
        self.mixer = MobileOneBlock(dim, dim, use_scale_branch=scale_branch, **common)
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))

    def _fused_conv(self) -> nn.Conv2d:
        """The inference form: one depthwise conv holding the identity, both branches and gamma."""
        padding = tuple(k // 2 for k in self.kernel_size)
        return nn.Conv2d(self.dim, self.dim, self.kernel_size, padding=padding, groups=self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.layer_scale * (self.mixer(x) - self.norm(x))

    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        mixer_k, mixer_b = self.mixer.fused_kernel_bias()
        norm_k, norm_b = self.norm.fused_kernel_bias()
        gamma = self.layer_scale.reshape(-1)
        kernel = identity_kernel(self.dim, 1, self.kernel_size, mixer_k) + gamma.reshape(-1, 1, 1, 1) * (mixer_k - norm_k)
        bias = gamma * (mixer_b - norm_b)
        self.reparam_conv = conv_like(self._fused_conv(), kernel, bias)
        del self.mixer, self.norm, self.layer_scale
        detach_parameters(self)


@register_block("repmixer")
class RepMixerBlock(nn.Module):
    """MCi convolutional block: RepMixer token mixing, then x + gamma * ConvFFN(x). Fuses to two convs and an MLP."""

    no_decay_state: ClassVar[tuple[str, ...]] = ("layer_scale",)
    zero_init_state: ClassVar[tuple[str, ...]] = ("layer_scale",)

    def __init__(
        self,
        dim: int,
        kernel_size: int | tuple[int, int] = 3,
        mlp_ratio: float = 3.0,
        ffn_kernel_size: int | tuple[int, int] = 7,
        layer_scale_init: float = 1e-5,
        inference_mode: bool = False,
        scale_branch: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.token_mixer = RepMixer(dim, kernel_size, layer_scale_init, inference_mode, scale_branch)
        self.convffn = ConvFFN(dim, mlp_ratio, ffn_kernel_size, inference_mode=inference_mode)
        self.layer_scale: nn.Parameter | None = None if inference_mode else nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        x = self.token_mixer(x)
        if self.layer_scale is None:
            return x + self.convffn(x)
        return x + self.layer_scale * self.convffn(x)

    def reparameterize(self) -> None:
        self.token_mixer.reparameterize()
        self.convffn.reparameterize()
        if self.layer_scale is not None:
            self.convffn.fold_output_scale(self.layer_scale.detach())
            self.layer_scale = None
        detach_parameters(self)
