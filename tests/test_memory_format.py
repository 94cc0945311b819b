"""`channels_last` training: the same numbers as the default layout, and the RGB stem kept out of it."""
import torch

from mvclip.layers.memory_format import MIN_CHANNELS, memory_format_of, to_channels_last
from mvclip.lightning_module import VideoTextModule
from mvclip.tokenizer import tokenize


def _loss_and_grads(module, video, text):
    module.train()
    loss = module.loss(module.model.encode_video(video, normalize=True), module.model.encode_text(text, normalize=True),
                       module.model.logit_scale.exp())
    module.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}


def test_channels_last_training_step_equals_the_default_layout(tiny_model_config):
    torch.manual_seed(0)
    video, text = torch.rand(4, 4, 3, 64, 64), tokenize(["a red circle moves to the left"] * 2 + ["a blue square grows"] * 2)
    results = []
    for channels_last in (False, True):
        torch.manual_seed(1)
        module = VideoTextModule(model=tiny_model_config, freeze=[], channels_last=channels_last)
        results.append(_loss_and_grads(module, video, text))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:  # elementwise, or within 1e-5 of the tensor's largest entry: the layouts' conv kernels sum
        # in different orders, and a gradient that cancels to near zero (the stem's 1x1 scale branch, just before a
        # BatchNorm) differs there by a few 1e-6 of its scale
        scale = grads_a[name].abs().max().item()
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-3, atol=1e-5 * max(scale, 1.0), msg=name)
    convs = [m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        expected = torch.channels_last if conv.in_channels >= MIN_CHANNELS else torch.contiguous_format
        assert conv.weight.is_contiguous(memory_format=expected)
    assert any(c.in_channels < MIN_CHANNELS for c in convs)  # the stem's RGB convs were really skipped


def test_to_channels_last_leaves_3d_kernels_alone():
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3), torch.nn.Conv3d(8, 8, (3, 1, 1)))
    to_channels_last(model)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model[1].weight.is_contiguous()


def test_the_rgb_stem_sees_one_layout_forward_and_backward(tiny_model_config):
    """The stem's RGB block stays NCHW; its output goes on in channels_last and its gradient comes back NCHW, so its
    BatchNorms never take PyTorch's mixed-layout path (0.69 -> 0.56 s per demo training step)."""
    module = VideoTextModule(model=tiny_model_config, freeze=[], channels_last=True).train()
    rgb_block = module.model.video.stem.blocks[0]
    seen = {}
    norm = next(m for m in rgb_block.modules() if isinstance(m, torch.nn.BatchNorm2d))
    norm.register_full_backward_hook(lambda m, grad_in, grad_out: seen.update(grad=grad_out[0]))
    video = torch.rand(2, 4, 3, 64, 64)
    module.model.encode_video(video, normalize=True).sum().backward()
    hooked = [m for m in module.model.modules() if getattr(m, "_channels_last_boundary", False)]
    assert hooked == [rgb_block]
    assert seen["grad"].is_contiguous() and not seen["grad"].is_contiguous(memory_format=torch.channels_last)
    after = rgb_block(video.flatten(0, 1))
    assert after.is_contiguous(memory_format=torch.channels_last) and not after.is_contiguous()


def test_forward_only_turns_the_rgb_stem_too_and_keeps_the_values(tiny_model_config):
    """A model only run forward takes every conv, the RGB stem's too, into channels_last: the same embeddings."""
    import mvclip

    torch.manual_seed(0)
    module = VideoTextModule(model=tiny_model_config, freeze=[])
    fused = mvclip.fuse(module.model)
    video = torch.rand(2, 4, 3, 64, 64)
    with torch.no_grad():
        reference = fused.encode_video(video)
        to_channels_last(fused, forward_only=True)
        got = fused.encode_video(video)
    convs = [m for m in fused.modules() if isinstance(m, torch.nn.Conv2d)]
    assert any(c.in_channels < MIN_CHANNELS for c in convs)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not any(getattr(m, "_channels_last_boundary", False) for m in fused.modules())
    assert memory_format_of(fused) == "channels_last, RGB stem too"
    assert memory_format_of(module.model) == "contiguous"  # the model fuse() copied was left as it was
    trained = VideoTextModule(model=tiny_model_config, freeze=[], channels_last=True).model
    assert memory_format_of(mvclip.fuse(trained)) == memory_format_of(trained) == "channels_last, RGB stem contiguous"
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)


def test_exported_graphs_leave_the_layout_boundary_out(tiny_model_config):
    """torch.export traces no layout copy from the boundary: an exported graph picks its own layouts."""
    module = VideoTextModule(model=tiny_model_config, freeze=[], channels_last=True).eval()
    rgb_block = module.model.video.stem.blocks[0]
    x = torch.rand(2, 3, 32, 32)
    program = torch.export.export(rgb_block, (x,))
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert not any("clone" in op or "contiguous" in op or "_to_copy" in op for op in ops), ops
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), rgb_block(x))
