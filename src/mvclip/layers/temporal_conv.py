"""A depthwise convolution over frames, computed on the per-frame layout the rest of the network uses.

The video encoder keeps clips as (B*T, C, H, W). A `Conv3d` with a (K, 1, 1) depthwise kernel needs
(B, C, T, H, W), and the two rearranges around it copy the whole feature map twice. A kernel that is
1 x 1 in space is a weighted sum of time-shifted copies of the same map, so it can run on the free
(B, T, C, H, W) view as K shifted multiply-adds, with zero padding at the clip borders exactly as the
`Conv3d` definition has it (`tests/test_temporal_conv.py` checks borders and T = 1..16).

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

    Contiguous and channels_last inputs are read in place (splitting the batch axis into clips is a view in both) and
    the output keeps the input's layout. The centre tap and the bias are one `addcmul`; every other tap is an in-place
    `addcmul_` on the frames it reaches, so the map is written once and updated K - 1 times, with no temporaries."""
    n, channels, height, width = x.shape
    if n % frames:
        raise ValueError(f"{n} frames in the batch is not a multiple of the clip length {frames}")
    taps = weight.reshape(channels, -1)
    size = taps.shape[1]
    if size % 2 == 0:
        raise ValueError(f"temporal kernel size must be odd, got {size}")
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    clip = x.view(n // frames, frames, channels, height, width)
    centre = size // 2
    centre_tap = taps[:, centre].view(1, 1, channels, 1, 1)
    out = clip * centre_tap if bias is None else torch.addcmul(bias.view(1, 1, channels, 1, 1), clip, centre_tap)
    for k in range(size):
        shift = k - centre
        if shift == 0 or abs(shift) >= frames:
            continue
        tap = taps[:, k].view(1, 1, channels, 1, 1)
        if shift > 0:  # frame t reads frame t + shift; the last `shift` frames read zero padding
            out[:, : frames - shift].addcmul_(clip[:, shift:], tap)
        else:
            out[:, -shift:].addcmul_(clip[:, : frames + shift], tap)
    return out.view(n, channels, height, width)


def temporal_conv_graph(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, frames: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B*T, C, H, W), the same numbers as `temporal_depthwise_conv`, as one depthwise (K x 1)
    `Conv2d` over (B, C, T, H*W): the form exported graphs keep (any clip length, symbolic ones included)."""
    n, channels, height, width = x.shape
    taps = weight.reshape(channels, 1, -1, 1)
    clip = x.reshape(n // frames, frames, channels, height * width).permute(0, 2, 1, 3)
    out = torch.nn.functional.conv2d(clip, taps, bias, padding=(taps.shape[2] // 2, 0), groups=channels)
    return out.permute(0, 2, 1, 3).reshape(n, channels, height, width)
