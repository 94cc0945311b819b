"""The block contract (`mvclip.contracts`): a third-party block gets weight decay, learning-rate groups and fusion
checks from its own declarations, and the built-in declarations reproduce the optimizer groups exactly."""
import glob
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

import mvclip
from mvclip.contracts import BlockDeclarations, block_traits, declared_keys, no_decay_names
from mvclip.lightning_module import VideoTextModule
from mvclip.registry import REGISTRY
from mvclip.testing import check_block_fusion, randomize_for_fusion_

from helpers import ROOT

# The parameter names the LightningModule hard-coded before blocks declared them: the built-in presets must
# get exactly the same no-decay set from the declarations.
LEGACY_NO_DECAY = ("layer_scale", "logit_scale", "tpe", "positional_embedding")


class _Gate(nn.Module):
    """Test-only third-party block: a temporal gate `x * (1 + g)` and a scaled depthwise conv, none named like mvclip's."""

    temporal_state: ClassVar[tuple[str, ...]] = ("gate",)
    no_decay_state: ClassVar[tuple[str, ...]] = ("gate", "amplitude")
    zero_init_state: ClassVar[tuple[str, ...]] = ("amplitude",)

    def __init__(self, dim: int, num_frames: int = 4):
        super().__init__()
        self.dim = dim
        self.gate = nn.Parameter(torch.zeros(num_frames, dim, 1, 1))
        self.amplitude = nn.Parameter(torch.zeros(dim, 1, 1))
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x, frames=1):
        n, c, h, w = x.shape
        gate = self.gate[:frames] if frames <= self.gate.shape[0] else self.gate[-1:].expand(frames, -1, -1, -1)
        x = (x.reshape(n // frames, frames, c, h, w) * (1 + gate)).reshape(n, c, h, w)
        y = self.conv(self.norm(x))
        return x + (y if self.amplitude is None else self.amplitude * y)

    def reparameterize(self):
        """`amplitude` folds into the conv exactly (the BatchNorm before a zero-padded conv does not, so it stays)."""
        if self.amplitude is not None:
            scale = self.amplitude.detach().reshape(-1)
            self.conv.weight.data.mul_(scale.reshape(-1, 1, 1, 1))
            self.conv.bias.data.mul_(scale)
            self.amplitude = None


@pytest.fixture
def third_party_block():
    name = "_third_party_gate_for_test"
    mvclip.register_block(name)(_Gate)
    yield name
    REGISTRY._entries.pop(name)


def _model_with(block: str, config: dict) -> dict:
    config = dict(config)
    video = dict(config["video"])
    video["stages"] = [dict(video["stages"][0], block=block), *video["stages"][1:]]
    config["video"] = video
    return config


def test_third_party_block_declares_its_own_decay_and_temporal_groups(third_party_block, tiny_model_config):
    module = VideoTextModule(model=_model_with(third_party_block, tiny_model_config), weight_decay=0.1, lr=1e-3, temporal_lr_mult=5.0)
    by_id = {id(p): n for n, p in module.model.named_parameters()}
    groups = {g["name"]: {by_id[id(p)] for p in g["params"]} for g in module.parameter_groups()}
    settings = {g["name"]: (g["weight_decay"], g["lr"]) for g in module.parameter_groups()}
    block = "video.stages.0.blocks.0"
    # the gate is temporal and undecayed; the amplitude undecayed but not temporal; the conv weight decays normally
    assert f"{block}.gate" in groups["new/temporal/no_decay"]
    assert settings["new/temporal/no_decay"] == (0.0, pytest.approx(5e-3))
    assert f"{block}.amplitude" in groups["new/no_decay"] and settings["new/no_decay"] == (0.0, pytest.approx(1e-3))
    assert f"{block}.conv.weight" in groups["new/decay"] and settings["new/decay"] == (0.1, pytest.approx(1e-3))
    decayed = set().union(*(names for name, names in groups.items() if settings[name][0] > 0))
    assert not {f"{block}.gate", f"{block}.amplitude", f"{block}.conv.bias", f"{block}.norm.weight"} & decayed
    # the built-in temporal additions keep their group beside the plugin's
    assert "video.stages.2.pos_embed.tpe" in groups["new/temporal/no_decay"]


def test_third_party_block_gets_its_zero_init_state_randomized_for_fusion_checks(third_party_block):
    block = mvclip.build_block({"block": third_party_block, "dim": 8})
    randomize_for_fusion_(block, seed=1)
    assert block.amplitude.abs().min() >= 0.2  # moved off zero, so a wrong fold of it would show
    assert torch.equal(block.gate, torch.zeros_like(block.gate))  # not declared zero-init: left alone
    check = check_block_fusion(third_party_block, frames=3)
    assert check.report.max_rel_diff <= 1e-5 and check.idempotent


def test_undeclared_parameter_names_carry_no_meaning():
    """A plugin parameter called `layer_scale` decays unless its block declares it: names are not a contract."""

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer_scale = nn.Parameter(torch.ones(4, 4))

    assert no_decay_names(Plain()) == set()

    class Declared(Plain):
        no_decay_state: ClassVar[tuple[str, ...]] = ("layer_scale",)

    assert no_decay_names(Declared()) == {"layer_scale"}


@pytest.mark.parametrize("preset", sorted(Path(p).name for p in glob.glob(str(ROOT / "recipes/models/*.yaml"))))
def test_declarations_reproduce_the_former_no_decay_names(preset):
    torch.manual_seed(0)
    model = mvclip.build_model(ROOT / "recipes/models" / preset)
    legacy = {n for n, p in model.named_parameters() if p.ndim < 2 or any(key in n for key in LEGACY_NO_DECAY)}
    assert no_decay_names(model) == legacy


def test_side_attention_tpe_is_declared_undecayed_and_temporal():
    from mvclip.builder import apply_overrides, load_config

    torch.manual_seed(0)
    cfg, base = load_config(ROOT / "recipes/models/tiny_cpu_side.yaml")
    cfg = apply_overrides(cfg, {"video.side.block": {"block": "side_block", "temporal": "attention"}})
    model = mvclip.build_model(cfg, base_dir=base)
    tpes = {n for n, _ in model.named_parameters() if n.endswith(".temporal.tpe")}
    assert tpes and tpes <= no_decay_names(model) and tpes <= declared_keys(model, "temporal_state")


def test_block_traits_defaults_and_errors():
    class Tokens(nn.Module):
        input_layout = "tokens"
        allow_even_kernels = True

        def reparameterize(self):
            pass

    traits = block_traits(Tokens)
    assert (traits.kind, traits.input_layout, traits.allow_even_kernels, traits.reparameterizable, traits.has_features) == (
        "video", "tokens", True, True, False)
    assert block_traits(BlockDeclarations).input_layout == "map"

    class Wrong(nn.Module):
        input_layout = "grid"

    with pytest.raises(TypeError, match=r"Wrong.input_layout: expected one of \('map', 'tokens'\), got 'grid'"):
        block_traits(Wrong)
    with pytest.raises(ValueError, match="unknown state declaration 'tempral_state'"):
        declared_keys(nn.Linear(2, 2), "tempral_state")


def test_temporal_learning_rate_groups_land_in_the_optimizer(tiny_model_config):
    """The groups reach AdamW and its schedule: after warm-up every temporal parameter steps at 4x the base rate."""
    from types import SimpleNamespace

    config = {**tiny_model_config, "video": {**tiny_model_config["video"], "stages": [
        {"block": "st_repmixer", "dim": 16, "temporal_init": "mirror"}, *tiny_model_config["video"]["stages"][1:]]}}
    module = VideoTextModule(model=config, lr=1e-3, warmup_steps=2, temporal_lr_mult=4.0)
    module._trainer = SimpleNamespace(estimated_stepping_batches=100)
    setup = module.configure_optimizers()
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    for _ in range(2):
        optimizer.step()
        schedule.step()
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(module.model.named_parameters())
    temporal = {n for n in names if ".temporal_mixer." in n or n.endswith(".tpe")}
    assert temporal and "video.stages.0.blocks.0.temporal_mixer.mirror.conv.weight" in temporal
    factor = schedule.lr_lambdas[0](2)
    assert 0.9 < factor <= 1.0  # warm-up done, cosine barely started
    assert all(lr_of[id(p)] == pytest.approx(1e-3 * factor) for n, p in names.items() if n not in temporal)
    assert all(lr_of[id(names[n])] == pytest.approx(4e-3 * factor) for n in temporal)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(names)  # nothing dropped or duplicated


def test_lr_mult_by_prefix_longest_wins_and_a_prefix_matching_nothing_is_an_error(tiny_model_config):
    module = VideoTextModule(model=tiny_model_config, lr=1e-3, lr_mult={"text": 0.1, "text.token_embedding": 0.0, "video.head": 2.0})
    lr_of = {id(p): g["lr"] for g in module.parameter_groups() for p in g["params"]}
    params = dict(module.model.named_parameters())
    assert lr_of[id(params["text.token_embedding.weight"])] == 0.0
    assert lr_of[id(params["text.positional_embedding"])] == pytest.approx(1e-4)
    head = [n for n in params if n.startswith("video.head.")]
    assert head and all(lr_of[id(params[n])] == pytest.approx(2e-3) for n in head)
    assert lr_of[id(params["logit_scale"])] == pytest.approx(1e-3)
    with pytest.raises(mvclip.ConfigError, match=r"model.lr_mult.txt: matches no parameter"):
        VideoTextModule(model=tiny_model_config, lr_mult={"txt": 0.1})
    for bad in (-1, float("nan"), float("inf"), "abc"):
        with pytest.raises(mvclip.ConfigError, match=r"model.lr_mult.text: expected a finite number >= 0"):
            VideoTextModule(model=tiny_model_config, lr_mult={"text": bad})
