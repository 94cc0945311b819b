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


def test_even_kernels_and_ragged_batches_are_refused():
    with pytest.raises(ValueError, match="multiple of the clip length"):
        temporal_depthwise_conv(torch.randn(7, 2, 1, 1), torch.randn(2, 1, 3, 1, 1), None, 4)
    with pytest.raises(ValueError, match="must be odd"):
        temporal_depthwise_conv(torch.randn(8, 2, 1, 1), torch.randn(2, 1, 4, 1, 1), None, 4)


@pytest.mark.parametrize("frames", [1, 2, 8])
def test_fused_temporal_mixer_eager_kernel_equals_its_exported_conv3d(frames):
    """Eager runs the shifted multiply-adds, traced graphs the Conv3d: the same numbers, borders included."""
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
