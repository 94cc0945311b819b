"""MobileOne block: parallel kxk, 1x1 and BatchNorm-identity branches that fold into one conv."""
from __future__ import annotations

import torch
from torch import nn

from mvclip.layers.reparam import ConvNorm, conv_like, detach_parameters, fold_bn, identity_kernel, pad_kernel, to_tuple
from mvclip.blocks.squeeze_excite import SqueezeExcite
from mvclip.registry import register_block


@register_block("mobileone")
class MobileOneBlock(nn.Module):
    """MobileOne conv: sum of kxk conv-BN branches, a 1x1 conv-BN and a BN skip, then SE and GELU; fuses to one conv."""

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        groups: int = 1,
        num_conv_branches: int = 1,
        use_scale_branch: bool = True,
        use_act: bool = True,
        use_se: bool = False,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        out_dim = out_dim or dim
        self.dim, self.out_dim = dim, out_dim
        self.kernel_size = to_tuple(kernel_size, 2)
        self.padding = to_tuple(padding, 2) if padding is not None else tuple(k // 2 for k in self.kernel_size)
        self.stride, self.groups = stride, groups
        train = not inference_mode  # inference_mode: build only what reparameterize() leaves
        self.rbr_skip = nn.BatchNorm2d(dim) if train and out_dim == dim and stride == 1 else None
        self.rbr_conv = nn.ModuleList(
            ConvNorm(dim, out_dim, self.kernel_size, stride, self.padding, groups) for _ in range(num_conv_branches if train else 0)
        )
        has_scale = train and use_scale_branch and max(self.kernel_size) > 1
        self.rbr_scale = ConvNorm(dim, out_dim, 1, stride, 0, groups) if has_scale else None
        self.se = SqueezeExcite(out_dim) if use_se else nn.Identity()
        self.activation = nn.GELU() if use_act else nn.Identity()
        self.reparam_conv: nn.Conv2d | None = None if train else self._fused_conv()

    def _fused_conv(self) -> nn.Conv2d:
        """The single conv of the inference form (its weights are set by reparameterize or a state dict)."""
        return nn.Conv2d(self.dim, self.out_dim, self.kernel_size, self.stride, self.padding, groups=self.groups)

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.activation(self.se(self.reparam_conv(x)))
        out = 0
        if self.rbr_skip is not None:
            out = out + self.rbr_skip(x)
        if self.rbr_scale is not None:
            out = out + self.rbr_scale(x)
        for branch in self.rbr_conv:
            out = out + branch(x)
        return self.activation(self.se(out))

    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single (kernel, bias) equal to the sum of all branches (before SE/activation)."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        ref = next(self.parameters())
        kernel = torch.zeros((self.out_dim, self.dim // self.groups, *self.kernel_size), dtype=ref.dtype, device=ref.device)
        bias = torch.zeros(self.out_dim, dtype=ref.dtype, device=ref.device)
        for branch in self.rbr_conv:
            k, b = branch.fused_kernel_bias()
            kernel, bias = kernel + k, bias + b
        if self.rbr_scale is not None:
            k, b = self.rbr_scale.fused_kernel_bias()
            kernel, bias = kernel + pad_kernel(k, self.kernel_size), bias + b
        if self.rbr_skip is not None:
            k, b = fold_bn(identity_kernel(self.dim, self.dim // self.groups, self.kernel_size, ref), None, self.rbr_skip)
            kernel, bias = kernel + k, bias + b
        return kernel, bias

    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        kernel, bias = self.fused_kernel_bias()
        self.reparam_conv = conv_like(self._fused_conv(), kernel, bias)
        self.rbr_conv = nn.ModuleList()
        self.rbr_skip = None
        self.rbr_scale = None
        detach_parameters(self)
