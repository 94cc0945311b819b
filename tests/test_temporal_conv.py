"""The temporal conv on the per-frame layout equals the depthwise Conv3d: values and gradients, at the clip borders
and for clips shorter than the kernel."""
import pytest
import torch
from einops import rearrange

from mvclip.layers.temporal_conv import temporal_depthwise_conv


def _as_clip(x, frames):
    return rearrange(x, "(b t) c h w -> b c t h w", t=frames)


def _as_frames(clip):
    return rearrange(clip, "b c t h w -> (b t) c h w")


@pytest.mark.parametrize("frames", [1, 2, 3, 8, 16])
@pytest.mark.parametrize("kernel", [3, 5])
def test_shifted_multiply_adds_equal_the_depthwise_conv3d_forward_and_backward(frames, kernel):
    torch.manual_seed(frames * 10 + kernel)
    conv = torch.nn.Conv3d(6, 6, (kernel, 1, 1), padding=(kernel // 2, 0, 0), groups=6, bias=True)
    x = torch.randn(2 * frames, 6, 3, 4, requires_grad=True)
    grad = torch.randn(2 * frames, 6, 3, 4)
    ours = temporal_depthwise_conv(x, conv.weight, conv.bias, frames)
    (ours * grad).sum().backward()
    ours_grads = [t.grad.clone() for t in (x, conv.weight, conv.bias)]
    for t in (x, conv.weight, conv.bias):
        t.grad = None
    reference = _as_frames(conv(_as_clip(x, frames)))
    (reference * grad).sum().backward()
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
    for got, want in zip(ours_grads, (x.grad, conv.weight.grad, conv.bias.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frames", [1, 3, 8, 16])
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_channels_last_and_strided_inputs_give_the_conv3d_values(frames, layout, with_bias):
    """channels_last maps are read in place and stay channels_last; any other layout is copied first. Same values."""
    torch.manual_seed(frames)
    conv = torch.nn.Conv3d(8, 8, (3, 1, 1), padding=(1, 0, 0), groups=8, bias=with_bias)
    x = torch.randn(2 * frames, 8, 5, 6)
    if layout == "channels_last":
        x_in = x.to(memory_format=torch.channels_last)
    else:  # a transposed view: neither layout
        x_in = x.transpose(2, 3).contiguous().transpose(2, 3)
    with torch.no_grad():
        ours = temporal_depthwise_conv(x_in, conv.weight, conv.bias, frames)
        reference = _as_frames(conv(_as_clip(x, frames)))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    if layout == "channels_last":
        assert ours.is_contiguous(memory_format=torch.channels_last)


def test_even_kernels_and_ragged_batches_are_refused():
    with pytest.raises(ValueError, match="multiple of the clip length"):
        temporal_depthwise_conv(torch.randn(7, 2, 1, 1), torch.randn(2, 1, 3, 1, 1), None, 4)
    with pytest.raises(ValueError, match="must be odd"):
        temporal_depthwise_conv(torch.randn(8, 2, 1, 1), torch.randn(2, 1, 4, 1, 1), None, 4)


@pytest.mark.parametrize("frames", [1, 2, 8])
def test_fused_temporal_mixer_eager_kernel_equals_its_traced_conv(frames):
    """Eager runs the shifted multiply-adds, traced graphs the (K x 1) Conv2d form: the same numbers, borders included."""
    from mvclip.blocks.st_repmixer import TemporalMixer
    from mvclip.testing import randomize_for_fusion_

    mixer = randomize_for_fusion_(TemporalMixer(8, 3, init="active"), seed=frames).eval()
    x = torch.randn(3 * frames, 8, 5, 5)
    unfused = mixer(x, frames)
    mixer.reparameterize()
    eager = mixer(x, frames)
    traced = torch.jit.trace(lambda inp: mixer(inp, frames), (x,), check_trace=False)(x)
    torch.testing.assert_close(eager, traced, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(eager, unfused, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frames", [1, 3, 8])
def test_torch_export_takes_the_conv_path_and_matches_eager_at_every_clip_length(frames):
    """torch.export (what the ONNX, ExecuTorch and Core ML targets start from) must not record the eager kernel's
    in-place slice updates: its graph holds one convolution and matches eager (a symbolic clip length is checked on
    the whole model, tests/test_export_targets.py)."""
    from mvclip.blocks.st_repmixer import TemporalMixer
    from mvclip.layers import temporal_conv
    from mvclip.testing import randomize_for_fusion_

    mixer = randomize_for_fusion_(TemporalMixer(8, 3, init="active"), seed=frames).eval()
    mixer.reparameterize()
    seen = []

    class Clip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = mixer

        def forward(self, clip):  # (B, T, C, H, W), the clip length read from the shape as the video encoder does
            b, t = clip.shape[:2]
            seen.append(temporal_conv.eager())
            return self.mixer(clip.flatten(0, 1), t).unflatten(0, (b, t))

    x = torch.randn(2, frames, 8, 5, 5)
    program = torch.export.export(Clip(), (x,))
    assert seen == [False], "eager() must be False while torch.export traces"
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert sum("convolution" in op or "conv2d" in op for op in ops) == 1
    assert not any("copy_" in op or "slice_scatter" in op or "addcmul" in op for op in ops), ops
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), Clip()(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("frames", [1, 3, 8, 16])
@pytest.mark.parametrize("init", ["active", "mirror"])
def test_temporal_mixer_trains_the_same_in_channels_last(frames, init):
    """Training in channels_last runs the branch as a Conv2d on a free view (and BatchNorm3d on canonical strides):
    output, input and parameter gradients and running statistics as the default layout's, computed in float64 as the
    reference, 1-frame clips included (where torch 2.13's BatchNorm3d backward miscomputes non-canonical strides).
    The BatchNorm backward amplifies rounding (both float32 layouts land ~2e-6 of a gradient's scale from float64)."""
    import copy

    from mvclip.blocks.st_repmixer import TemporalMixer
    from mvclip.testing import randomize_for_fusion_

    torch.manual_seed(frames)
    mixer = randomize_for_fusion_(TemporalMixer(16, 3, init=init), seed=frames).train()
    reference = copy.deepcopy(mixer).double()
    x = torch.randn(2 * frames, 16, 5, 6)
    grad = torch.randn(2 * frames, 16, 5, 6)
    exact = x.double().requires_grad_()
    last = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    out_exact, out_last = reference(exact, frames), mixer(last, frames)
    (out_exact * grad.double()).sum().backward()
    (out_last * grad).sum().backward()
    assert out_last.is_contiguous(memory_format=torch.channels_last)

    def close(got, want):
        want = want.to(got.dtype)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(want.abs().max().item(), 1.0))

    close(out_last, out_exact)
    close(last.grad, exact.grad)
    for p, q in zip(reference.parameters(), mixer.parameters()):
        close(q.grad, p.grad)
    for a, b in zip(reference.buffers(), mixer.buffers()):
        close(b, a)
