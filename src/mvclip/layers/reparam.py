"""Folding arithmetic shared by every reparameterizable block (MobileOne / RepVGG style).

Everything here is dimension-agnostic: the same code folds Conv1d/2d/3d kernels, because a
BatchNorm after a convolution is a per-output-channel affine map whatever the kernel's rank.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with which an eval-mode BatchNorm maps x to scale * x + shift."""
    std = torch.sqrt(bn.running_var + bn.eps)
    weight = bn.weight if bn.affine else torch.ones_like(std)
    bias = bn.bias if bn.affine else torch.zeros_like(std)
    scale = weight / std
    return scale, bias - bn.running_mean * scale


def fold_bn(kernel: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm):
    """Fold `bn(conv(x))` into one kernel and bias: W' = W * g/sqrt(v+eps), b' = beta + (b-m)*g/sqrt(v+eps)."""
    scale, shift = bn_affine(bn)
    shape = (-1,) + (1,) * (kernel.dim() - 1)
    new_bias = shift if bias is None else shift + bias * scale
    return kernel * scale.reshape(shape), new_bias


def identity_kernel(channels: int, in_per_group: int, kernel_size: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A kernel whose convolution is the identity: 1 at the centre of each channel's own input."""
    kernel = torch.zeros((channels, in_per_group, *kernel_size), dtype=like.dtype, device=like.device)
    centre = tuple(k // 2 for k in kernel_size)
    for c in range(channels):
        kernel[(c, c % in_per_group, *centre)] = 1.0
    return kernel


def pad_kernel(kernel: torch.Tensor, kernel_size: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad a smaller (centred) kernel to `kernel_size` so parallel branches can be summed."""
    pads: list[int] = []
    for have, want in zip(reversed(kernel.shape[2:]), reversed(kernel_size)):
        extra = want - have
        if extra < 0 or extra % 2:
            raise ValueError(f"cannot centre a kernel of size {have} inside one of size {want}")
        pads += [extra // 2, extra // 2]
    return F.pad(kernel, pads)


def conv_like(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A new convolution with `conv`'s geometry, the given weight and a bias (the fused form)."""
    if not isinstance(conv, _CONV_TYPES):
        raise TypeError(f"expected a convolution, got {type(conv).__name__}")
    fused = type(conv)(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=weight.device, dtype=weight.dtype)
    fused.weight.data.copy_(weight.detach())
    fused.bias.data.copy_(bias.detach())
    return fused


class ConvNorm(nn.Module):
    """A bias-free convolution followed by BatchNorm: the unit every branch is built from.

    `ndim` picks Conv1d/2d/3d, so temporal (3x1x1) and text (1xk) branches fold with the same code.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | None = None,
        groups: int = 1,
        ndim: int = 2,
    ) -> None:
        super().__init__()
        self.conv = make_conv(in_channels, out_channels, kernel_size, stride, padding, groups, ndim, bias=False)
        self.bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[ndim](out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        return fold_bn(self.conv.weight, self.conv.bias, self.bn)


def make_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | None = None,
    groups: int = 1,
    ndim: int = 2,
    bias: bool = True,
) -> nn.Module:
    """Conv1d/2d/3d with "same" padding by default. With `bias=True` it is the fused form of a ConvNorm."""
    ks = to_tuple(kernel_size, ndim)
    if padding is None:
        padding = tuple(k // 2 for k in ks)
    conv_type = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[ndim]
    return conv_type(in_channels, out_channels, ks, stride=stride, padding=padding, groups=groups, bias=bias)


def conv_norm(*args, inference_mode: bool = False, **kwargs) -> nn.Module:
    """A ConvNorm, or with `inference_mode` the biased conv its fold produces (what `conv_like(cn.conv, ...)` builds)."""
    return make_conv(*args, **kwargs) if inference_mode else ConvNorm(*args, **kwargs)


def to_tuple(value: int | tuple[int, ...] | list[int], ndim: int) -> tuple[int, ...]:
    """`3 -> (3, 3)`; a sequence is checked for length. Shared by blocks that accept either."""
    if isinstance(value, int):
        return (value,) * ndim
    value = tuple(value)
    if len(value) != ndim:
        raise ValueError(f"expected {ndim} kernel sizes, got {value}")
    return value


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, _BN_TYPES)


def detach_parameters(module: nn.Module) -> None:
    """After folding, parameters of the inference form must not keep autograd history."""
    for p in module.parameters():
        p.detach_()


def linear_after_affine(linear: nn.Linear, scale: torch.Tensor, shift: torch.Tensor) -> nn.Linear:
    """A biased Linear equal to `linear(scale * x + shift)`: how a BatchNorm before a Linear folds (exact,
    since a Linear has no padding)."""
    weight = linear.weight.detach()
    bias = weight @ shift + (linear.bias.detach() if linear.bias is not None else 0.0)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=True).to(weight)
    fused.weight.data.copy_(weight * scale.reshape(1, -1))
    fused.bias.data.copy_(bias)
    return fused


def linear_after_batchnorm(linear: nn.Linear, bn: nn.modules.batchnorm._BatchNorm) -> nn.Linear:
    """A biased Linear equal to `linear(bn(x))` for an eval-mode BatchNorm over the Linear's input features."""
    return linear_after_affine(linear, *bn_affine(bn))
