"""Gradient checkpointing of video stages: the same loss, gradients and BatchNorm statistics as without it."""
import pytest
import torch
from torch import nn

from mvclip.errors import ConfigError
from mvclip.lightning_module import VideoTextModule
from mvclip.tokenizer import tokenize


def _module(cfg, checkpointing):
    cfg["video"]["stages"][0]["depth"] = 2  # two blocks in a stage: the second reads the first's checkpointed output
    torch.manual_seed(1)
    return VideoTextModule(model=cfg, input={"resolution": 32, "frames": 2}, freeze=[], checkpointing=checkpointing)


def _train_step(module, video, text):
    module.train()
    loss = module.loss(module.model.encode_video(video, normalize=True), module.model.encode_text(text, normalize=True),
                       module.model.logit_scale.exp())
    module.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    stats = {n: b.clone() for n, b in module.model.named_buffers() if n.rsplit(".", 1)[-1] in
             ("running_mean", "running_var", "num_batches_tracked")}
    return loss.detach(), grads, stats


def _batch():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(4, 2, 3, 32, 32, generator=generator), tokenize(["a red circle moves left", "a blue square grows"] * 2)


def test_checkpointed_step_equals_the_plain_one(tiny_model_config):
    video, text = _batch()
    loss_a, grads_a, stats_a = _train_step(_module(tiny_model_config, None), video, text)
    module = _module(tiny_model_config, "all")
    assert module.checkpointed_stages == [0, 1, 2]
    loss_b, grads_b, stats_b = _train_step(module, video, text)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-7)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 20
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, msg=name)
    # BatchNorm inside the checkpointed blocks: updated once (not again by the recomputation), to the same values
    block_stats = [n for n in stats_a if ".blocks." in n]
    assert len(block_stats) >= 9
    for name in stats_a:
        torch.testing.assert_close(stats_b[name], stats_a[name], rtol=0, atol=0, msg=name)
    assert all(int(stats_b[n]) == 1 for n in block_stats if n.endswith("num_batches_tracked"))
    moved = [n for n in block_stats if n.endswith("running_mean") and stats_b[n].abs().max() > 1e-4]
    assert moved  # the statistics really changed in this step, so their equality means something


def _count_block_calls(module):
    calls: dict[str, int] = {}
    for i, stage in enumerate(module.model.video.stages):
        for j, block in enumerate(stage.blocks):
            name = f"{i}.{j}"
            calls[name] = 0
            block.register_forward_pre_hook(lambda m, a, name=name: calls.__setitem__(name, calls[name] + 1))
    return calls


def test_only_listed_stages_are_recomputed_and_only_in_training(tiny_model_config):
    video, text = _batch()
    module = _module(tiny_model_config, [1])
    calls = _count_block_calls(module)
    _train_step(module, video, text)
    assert calls == {"0.0": 1, "0.1": 1, "1.0": 2, "2.0": 1}  # stage 1's block ran again in the backward
    calls.update(dict.fromkeys(calls, 0))
    module.eval()
    with torch.no_grad():
        module.model.encode_video(video)
    module.train()
    with torch.no_grad():
        module.model.encode_video(video)
    assert calls == {"0.0": 2, "0.1": 2, "1.0": 2, "2.0": 2}  # once per forward: nothing to recompute


def test_checkpointing_stores_fewer_activations(tiny_model_config):
    """Bytes kept for the backward of the video tower: what autograd saves (counted by a saved-tensors hook) plus,
    when checkpointed, the block inputs the checkpoints hold to recompute from."""
    video, _ = _batch()
    kept = []
    for checkpointing in (None, "all"):
        module = _module(tiny_model_config, checkpointing).train()
        total = [0]

        def count(t: torch.Tensor) -> torch.Tensor:
            total[0] += t.numel() * t.element_size()
            return t

        def count_input(block: nn.Module, args: tuple) -> None:
            count(args[0])

        if checkpointing:
            for stage in module.model.video.stages:
                for block in stage.blocks:
                    block.register_forward_pre_hook(count_input)
        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            out = module.model.encode_video(video).sum()
        kept.append(total[0])
        out.backward()
    plain, checkpointed = kept
    assert 0 < checkpointed < 0.7 * plain, kept


@pytest.mark.parametrize(("value", "message"), [
    ([1, 3], r"model\.checkpointing\[1\]: 3 is not a video stage index; this model has 3 stages \(0-2\)"),
    ([True], r"model\.checkpointing\[0\]: True is not a video stage index"),
    ("some", r"model\.checkpointing: expected a list of video stage indices such as \[2, 3\], 'all', or 'side' for a "
             r"side network, got 'some'"),
    ("side", r"model\.checkpointing: 'side' checkpoints a side network and this model has none"),
])
def test_bad_stage_index_names_the_config_path(tiny_model_config, value, message):
    with pytest.raises(ConfigError, match=message):
        _module(tiny_model_config, value)


def test_keep_norm_statistics_restores_every_buffer():
    from mvclip.checkpointing import keep_norm_statistics

    norm = nn.BatchNorm2d(3).train()
    norm(torch.ones(2, 3, 4, 4))  # running_mean 0.1 (momentum 0.1 of a mean of 1), one batch counted
    with keep_norm_statistics(norm):
        norm(torch.full((2, 3, 4, 4), 5.0))
        assert norm.running_mean[0].item() == pytest.approx(0.59)  # moved inside the block
    torch.testing.assert_close(norm.running_mean, torch.full((3,), 0.1))
    assert int(norm.num_batches_tracked) == 1


def _side_module(checkpointing):
    torch.manual_seed(1)
    return VideoTextModule(model="recipes/models/tiny_cpu_side.yaml", input={"resolution": 32, "frames": 2},
                           checkpointing=checkpointing)


def test_checkpointed_side_network_step_equals_the_plain_one():
    """`model.checkpointing: side` recomputes each fusion point in the backward: the same loss, gradients and side
    BatchNorm statistics, with fewer tensors kept for the backward."""
    video, text = _batch()
    plain, checkpointed = _side_module(None), _side_module("side")
    assert checkpointed.model.video.side.grad_checkpoint and not plain.model.video.side.grad_checkpoint
    loss_a, grads_a, stats_a = _train_step(plain, video, text)
    loss_b, grads_b, stats_b = _train_step(checkpointed, video, text)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-7)
    side_grads = [n for n in grads_a if ".side." in n]
    assert grads_a.keys() == grads_b.keys() and len(side_grads) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, msg=name)
    for name in stats_a:
        torch.testing.assert_close(stats_b[name], stats_a[name], rtol=0, atol=0, msg=name)
    kept = []
    for module in (plain, checkpointed):
        total = [0]

        def count(t: torch.Tensor) -> torch.Tensor:
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            module.model.encode_video(video).sum().backward()
        kept.append(total[0])
    assert 0 < kept[1] < 0.5 * kept[0], kept

