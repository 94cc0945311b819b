"""A depthwise convolution over frames, computed on the per-frame layout the rest of the network uses.

The video encoder keeps clips as (B*T, C, H, W). A `Conv3d` with a (K, 1, 1) depthwise kernel needs
(B, C, T, H, W), and the two rearranges around it copy the whole feature map twice. A kernel that is
1 x 1 in space is a weighted sum of time-shifted copies of the same map, so it can run on the free
(B, T, C, H, W) view as K shifted multiply-adds, with zero padding at the clip borders exactly as the
`Conv3d` definition has it (`tests/test_temporal_conv.py` checks borders and T = 1..16). In channels_last the same
memory is a channels_last (B, C, T, H*W) map, and the op is a (K x 1) depthwise `Conv2d` on that free view.

Exported graphs (tracing, `torch.export`, `torch.onnx.export`, `torch.compile`) take `temporal_conv_graph` instead: the
same kernel as a (K x 1) depthwise `Conv2d` over (B, C, T, H*W). In-place slice updates export poorly, and a 3-D
convolution is not something every runtime has: ExecuTorch's XNNPACK delegate takes no Conv3d and its portable
kernels refuse 5-D inputs (measured, docs/deploy.md), while a 2-D depthwise conv runs everywhere.
"""
from __future__ import annotations

import torch


def eager() -> bool:
    """True outside tracing, `torch.export`, ONNX export and `torch.compile`: where the shifted multiply-adds are the
    faster kernel, while exported graphs take the `Conv2d` form that ONNX, ExecuTorch and Core ML all lower."""
    exporting = torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
    return not (exporting or torch.jit.is_tracing() or torch.compiler.is_compiling())


def temporal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, frames: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B*T, C, H, W): `y[b, t, c] = bias[c] + sum_k weight[c, k] * x[b, t + k - K//2, c]`, zero outside
    the clip; `weight` is a depthwise Conv3d kernel (C, 1, K, 1, 1) or any (C, K) reshape of it, K odd.

    Both layouts are read in place and the output keeps the input's layout; each takes the faster kernel measured for
    it (2026-11-30, K = 3 on Tiny's 8 x 64 x 64 x 64 stage-0 map, 2 threads):
    - channels_last: the memory (B, T, H, W, C) already is a channels_last (B, C, T, H*W) map, so the op is one
      depthwise (K x 1) `Conv2d` on a free view: 0.25 ms, against 1.54 ms for the multiply-adds below on NHWC;
    - contiguous: the centre tap is one `mul`, every other tap an in-place `addcmul_` on the frames it reaches, and
      the bias one in-place `add_`: 0.33 ms. (The centre tap and bias as one three-way broadcast
      `addcmul(bias, x, tap)`, the kernel before, took 0.46 ms alone: 0.67 ms in all.)"""
    n, channels, height, width = x.shape
    if n % frames:
        raise ValueError(f"{n} frames in the batch is not a multiple of the clip length {frames}")
    taps = weight.reshape(channels, -1)
    size = taps.shape[1]
    if size % 2 == 0:
        raise ValueError(f"temporal kernel size must be odd, got {size}")
    if is_channels_last(x):
        return _channels_last_conv(x, taps, bias, frames)
    x = x.contiguous()
    clip = x.view(n // frames, frames, channels, height, width)
    centre = size // 2
    out = clip * taps[:, centre].view(1, 1, channels, 1, 1)
    for k in range(size):
        shift = k - centre
        if shift == 0 or abs(shift) >= frames:
            continue
        tap = taps[:, k].view(1, 1, channels, 1, 1)
        if shift > 0:  # frame t reads frame t + shift; the last `shift` frames read zero padding
            out[:, : frames - shift].addcmul_(clip[:, shift:], tap)
        else:
            out[:, -shift:].addcmul_(clip[:, : frames + shift], tap)
    if bias is not None:
        out.add_(bias.view(1, 1, channels, 1, 1))
    return out.view(n, channels, height, width)


def _channels_last_conv(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None, frames: int) -> torch.Tensor:
    """The temporal conv of a channels_last (B*T, C, H, W) map as a (K x 1) depthwise Conv2d over its free
    (B, C, T, H*W) channels_last view; the result is viewed back the same way (no copies either side)."""
    return frames_of_channels_last_clip(conv_over_frames(channels_last_clip(x, frames), taps, bias), *x.shape[2:])


def conv_over_frames(clip: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(B, C, T, P) -> (B, C, T, P): the depthwise temporal conv (zero padding at the clip borders) as a (K x 1)
    `Conv2d`; `weight` is a depthwise Conv3d kernel (C, 1, K, 1, 1) or any (C, K) reshape of it, K odd."""
    kernel = weight.reshape(weight.shape[0], 1, -1, 1)
    return torch.nn.functional.conv2d(clip, kernel, bias, padding=(kernel.shape[2] // 2, 0), groups=kernel.shape[0])


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D map stored NHWC (and not also NCHW, as maps with one channel or one pixel are)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def channels_last_clip(x: torch.Tensor, frames: int) -> torch.Tensor:
    """A channels_last (B*T, C, H, W) map's memory, (B, T, H, W, C), seen as the channels_last (B, C, T, H*W) map it
    also is: a free view on which a temporal (K x 1) Conv2d runs."""
    n, channels, height, width = x.shape
    return x.permute(0, 2, 3, 1).view(n // frames, frames, height * width, channels).permute(0, 3, 1, 2)


def frames_of_channels_last_clip(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse view of `channels_last_clip`: (B, C, T, H*W) channels_last -> (B*T, C, H, W) channels_last.
    oneDNN keeps a channels_last input's layout in its output; anything else is made so first."""
    clip = clip.contiguous(memory_format=torch.channels_last)
    batch, channels, frames, _ = clip.shape
    return clip.permute(0, 2, 3, 1).reshape(batch * frames, height, width, channels).permute(0, 3, 1, 2)


def temporal_conv_graph(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, frames: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B*T, C, H, W), the same numbers as `temporal_depthwise_conv`, as one depthwise (K x 1)
    `Conv2d` over (B, C, T, H*W): the form exported graphs keep (any clip length, symbolic ones included)."""
    n, channels, height, width = x.shape
    clip = x.reshape(n // frames, frames, channels, height * width).permute(0, 2, 1, 3)
    return conv_over_frames(clip, weight, bias).permute(0, 2, 1, 3).reshape(n, channels, height, width)
