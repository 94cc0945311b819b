"""Blocks and models built directly in their inference form (`inference_mode`) equal fused trained ones.

An exported (fused) model is rebuilt from YAML with `inference_mode: true` and takes the fused
state dict strictly, without building the training branches first.
"""
import pytest
import torch
from torch import nn

import mvclip
from mvclip.layers.reparam import ConvNorm, conv_like, is_batchnorm
from mvclip.builder import load_config
from mvclip.errors import ConfigError
from mvclip.registry import REGISTRY
from mvclip.testing import check_inference_form, randomize_for_fusion_

BUILT_IN_REPARAM = [e.name for e in REGISTRY.entries() if e.origin == "built-in" and e.reparameterizable]


def _batchnorms(module: nn.Module) -> int:
    return sum(1 for m in module.modules() if is_batchnorm(m))


def test_every_built_in_reparameterizable_block_is_covered():
    assert {"mobileone", "mobileone_stem", "patch_embed", "repmixer", "st_repmixer", "conv_ffn", "rep_cpe", "tpe_cpe",
            "attention", "tpe_attention", "mci_head", "text_repmixer"} <= set(BUILT_IN_REPARAM)


@pytest.mark.parametrize("name", BUILT_IN_REPARAM)
def test_inference_form_takes_fused_weights_and_matches(name):
    check = check_inference_form(name, frames=3)  # 3 frames: TPE is interpolated from its 8
    torch.testing.assert_close(check.output, check.reference, atol=1e-6, rtol=0)
    assert check.batchnorms_left == 0, f"{name}: the inference form builds BatchNorm"
    assert check.same_modules, f"{name}: the inference form's modules differ from the reparameterized block's"


@pytest.mark.parametrize("name", ["repmixer", "attention", "patch_embed"])
def test_reparameterize_on_inference_form_is_a_no_op(name):
    block = mvclip.build_block({"block": name, "dim": 16, "out_dim": 32} if name == "patch_embed" else {"block": name, "dim": 16},
                               inference_mode=True).eval()
    before = {k: v.clone() for k, v in block.state_dict().items()}
    block.reparameterize()
    after = block.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _with_inference_mode(config):
    cfg, base_dir = load_config(config)
    cfg = cfg.copy()
    cfg.inference_mode = True
    return cfg, base_dir


@pytest.mark.parametrize(
    "preset, size, frames",
    [("recipes/models/tiny_cpu.yaml", 64, 3), ("recipes/models/mobileviclip_tiny.yaml", 64, 2)],  # small, to stay fast
)
def test_preset_rebuilt_in_inference_form_loads_fused_state_dict(preset, size, frames):
    torch.manual_seed(0)
    fused = mvclip.fuse(randomize_for_fusion_(mvclip.build_model(preset)))
    cfg, base_dir = _with_inference_mode(preset)
    direct = mvclip.build_model(cfg, base_dir=base_dir)
    assert not direct.training and _batchnorms(direct) == 0
    assert torch.equal(direct.logit_scale, fused.logit_scale)  # set from the YAML, as in the training form
    direct.load_state_dict(fused.state_dict(), strict=True)
    video = torch.rand(1, frames, 3, size, size)
    tokens = mvclip.tokenize(["a red square moves left", "a blue circle grows"])
    with torch.no_grad():
        torch.testing.assert_close(direct.encode_video(video), fused.encode_video(video), atol=1e-6, rtol=0)
        torch.testing.assert_close(direct.encode_text(tokens), fused.encode_text(tokens), atol=1e-6, rtol=0)


def test_plugin_without_inference_mode_is_reparameterized_at_build(isolated_registry, tiny_model_config):
    @mvclip.register_block("_plugin_fold_at_build")
    class FoldAtBuild(nn.Module):
        """Test-only: a reparameterizable block whose constructor has no `inference_mode`."""

        def __init__(self, dim: int):
            super().__init__()
            self.branch = ConvNorm(dim, dim, 3, groups=dim)
            self.fused = None

        def forward(self, x, frames=1):
            return x + (self.fused(x) if self.fused is not None else self.branch(x))

        def reparameterize(self):
            if self.fused is None:
                self.fused = conv_like(self.branch.conv, *self.branch.fused_kernel_bias())
                self.branch = None

    @mvclip.register_block("_plugin_plain")
    class Plain(nn.Module):
        """Test-only: a block with nothing to fold."""

        def __init__(self, dim: int):
            super().__init__()
            self.scale = nn.Parameter(torch.full((dim, 1, 1), 0.5))

        def forward(self, x, frames=1):
            return x * self.scale

    tiny_model_config["video"]["stages"][0]["block"] = "_plugin_fold_at_build"
    tiny_model_config["video"]["stages"].insert(1, {"block": "_plugin_plain", "dim": 16})
    torch.manual_seed(0)
    trained = randomize_for_fusion_(mvclip.build_model(tiny_model_config))
    fused = mvclip.fuse(trained)
    direct = mvclip.build_model({**tiny_model_config, "inference_mode": True})
    folded, plain = direct.video.stages[0].blocks[0], direct.video.stages[1].blocks[0]
    assert isinstance(folded, FoldAtBuild) and folded.branch is None and folded.fused is not None
    assert isinstance(plain, Plain) and _batchnorms(direct) == 0
    direct.load_state_dict(fused.state_dict(), strict=True)
    video = torch.rand(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(direct.encode_video(video), fused.encode_video(video), atol=1e-6, rtol=0)


def test_inference_mode_must_be_a_bool(tiny_model_config):
    with pytest.raises(ConfigError, match=r"model\.inference_mode"):
        mvclip.build_model({**tiny_model_config, "inference_mode": "yes"})


def test_inference_mode_false_builds_the_training_form(tiny_model_config):
    model = mvclip.build_model({**tiny_model_config, "inference_mode": False})
    assert model.training and _batchnorms(model) > 0
