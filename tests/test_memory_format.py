"""`channels_last` training: the same numbers as the default layout, and the RGB stem kept out of it."""
import torch

from mvclip.layers.memory_format import MIN_CHANNELS, to_channels_last
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
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-3, atol=1e-5, msg=name)
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
