"""Side networks (Side4Video): frozen backbone without autograd, exact start, fusion, heads, config errors."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import mvclip
from mvclip.layers.reparam import is_batchnorm
from mvclip.blocks.side_spatial import shift_global_token
from mvclip.builder import build_model
from mvclip.errors import ConfigError
from mvclip.export import unfolded_layers
from mvclip.fusion import compare_outputs, fuse
from mvclip.side import SideVideoEncoder, fusion_indices
from mvclip.testing import randomize_for_fusion_

REL_TOL = 1e-5  # float32 fused vs unfused, relative to the largest output magnitude
FRAMES = 4

VIT_SIDE = {
    "embed_dim": 32,
    "video": {
        "num_frames": FRAMES,
        "stem": {"block": "vit_patch_embed", "patch_size": 8, "image_size": 32},
        "stages": [{"block": "vit_block", "depth": 4, "dim": 48, "num_heads": 2}],
        "head": {"block": "vit_head"},
        "side": {"width": 32, "patch_size": 8, "grid": 4, "block": {"block": "side_block", "head_dim": 16}},
    },
    "text": {"width": 32, "stages": [{"block": "text_transformer", "depth": 1, "num_heads": 2}]},
}


def mci_side() -> dict:
    """recipes/models/tiny_cpu_side.yaml (the MCi-style hierarchical backbone), narrowed."""
    cfg = OmegaConf.to_container(OmegaConf.load("recipes/models/tiny_cpu_side.yaml"))
    cfg["video"]["num_frames"] = FRAMES
    cfg["video"]["side"].update(width=32, block={"block": "side_block", "head_dim": 16})
    return cfg


CONFIGS = {"vit": (lambda: copy.deepcopy(VIT_SIDE), 32), "mci": (mci_side, 64)}


def make(kind: str, **side) -> tuple[mvclip.VideoTextModel, torch.Tensor]:
    factory, resolution = CONFIGS[kind]
    cfg = factory()
    cfg["video"]["side"].update(side)
    torch.manual_seed(0)
    return build_model(cfg), torch.rand(2, FRAMES, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))


def activate_side(model: mvclip.VideoTextModel, seed: int = 0) -> mvclip.VideoTextModel:
    """Non-trivial BatchNorm statistics and a non-zero Up, so that every side branch reaches the output."""
    randomize_for_fusion_(model.video.side, seed)
    randomize_for_fusion_(model.video.side_head, seed + 1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head = model.video.side_head
        weight = getattr(head, "up", None) or head.classifier
        weight.weight.copy_(torch.randn(weight.weight.shape, generator=gen) * 0.2)
    return model


@pytest.mark.parametrize("kind", ["vit", "mci"])
def test_training_starts_at_the_frozen_backbone_embedding(kind):
    model, video = make(kind)
    model.train()
    assert isinstance(model.video, SideVideoEncoder)
    assert not any(m.training for part in model.video.backbone_modules() for m in part.modules())
    start = model.encode_video(video)
    frozen = model.video.backbone_embedding(video)
    assert torch.allclose(start, frozen, rtol=0, atol=1e-6), (start - frozen).abs().max()
    activate_side(model)  # the check can fail: once Up is not zero, the side network moves the embedding
    assert (model.encode_video(video) - frozen).abs().max() > 1e-3


def _graph_leaves(root: torch.Tensor) -> tuple[set[int], int]:
    """ids of the leaf tensors (AccumulateGrad variables) in `root`'s autograd graph, and the number of nodes."""
    leaves, seen, stack = set(), set(), [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.add(id(node.variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves, len(seen)


@pytest.mark.parametrize("kind", ["vit", "mci"])
def test_no_gradient_and_no_autograd_graph_in_the_backbone(kind):
    model, video = make(kind)
    model = activate_side(model).train()
    encoder = model.video
    backbone = {id(p) for p in encoder.backbone_parameters()}
    side = {id(p) for p in [*encoder.side.parameters(), *encoder.side_head.parameters()] if p.requires_grad}

    calls = []  # (module, grad mode, output has autograd history) for every backbone module call
    handles = [
        m.register_forward_hook(lambda m, i, o: calls.append((type(m).__name__, torch.is_grad_enabled(), o.requires_grad)))
        for part in encoder.backbone_modules()
        for m in part.modules()
    ]
    saved_pointers = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved_pointers.append(t.data_ptr()) or t, lambda t: t):
        out = model.encode_video(video)
    for h in handles:
        h.remove()
    assert calls and not any(grad or requires for _, grad, requires in calls), [c for c in calls if c[1] or c[2]][:3]
    leaves, _ = _graph_leaves(out)
    assert leaves and leaves <= side, "only side-network parameters may be leaves of the graph"
    assert not leaves & backbone
    backbone_pointers = {p.data_ptr() for p in encoder.backbone_parameters()}
    assert not backbone_pointers & set(saved_pointers), "a backbone weight was saved for the backward pass"

    out.square().sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in encoder.backbone_parameters())
    assert encoder.side_head.up.weight.grad.abs().sum() > 0 and encoder.side.stem.conv.conv.weight.grad.abs().sum() > 0

    # the same graph walk does see the backbone of an ordinary encoder: the check above can fail
    plain = build_model({k: v for k, v in CONFIGS[kind][0]().items()} | {"video": {k: v for k, v in CONFIGS[kind][0]()["video"].items() if k != "side"}})
    plain_leaves, _ = _graph_leaves(plain.encode_video(video))
    assert plain_leaves & {id(p) for p in plain.video.parameters()}


@pytest.mark.parametrize(
    "kind,side",
    [
        ("vit", {}),
        ("vit", {"fusion": "interval", "depth": 2, "block": {"block": "side_block", "temporal": "attention", "head_dim": 16}}),
        ("mci", {}),
        ("mci", {"fusion": "top", "block": {"block": "side_block", "token_shift": False, "head_dim": 16}}),
        ("mci", {"head": "classification", "num_classes": 5}),
    ],
)
def test_fused_side_model_matches_unfused(kind, side):
    model, video = make(kind, **side)
    model = activate_side(model).eval()
    fused = fuse(model)
    report = compare_outputs(model.encode_video(video), fused.encode_video(video))
    assert report.max_rel_diff <= REL_TOL, report
    assert not any(is_batchnorm(m) for m in fused.video.side.modules()), "a side BatchNorm did not fold"
    assert not any(is_batchnorm(m) for m in fused.video.side_head.modules())
    # what cannot fold is reported: the fusion LayerNorms and each side block's pre-attention LayerNorm
    left = unfolded_layers(fused.video.side)
    blocks = sum(len(group) for group in fused.video.side.blocks)
    assert left["norms"] == {"LayerNorm": len(fused.video.side.fusions) + blocks} and left["batchnorms"] == []


@pytest.mark.parametrize("kind", ["vit", "mci"])
def test_inference_mode_build_takes_the_fused_weights(kind):
    model, video = make(kind)
    fused = fuse(activate_side(model).eval())
    cfg = CONFIGS[kind][0]() | {"inference_mode": True}
    direct = build_model(cfg)
    direct.load_state_dict(fused.state_dict(), strict=True)
    report = compare_outputs(fused.encode_video(video), direct.encode_video(video))
    assert report.max_abs_diff == 0.0


def test_a_backbone_checkpoint_loads_and_the_head_copies_follow_it():
    """An image / frame-mean checkpoint has no side keys: they stay new, and the retrieval head's copies of the
    backbone's norm and projection are taken from the loaded backbone, so the side model starts at *its* embedding."""
    plain_cfg = copy.deepcopy(VIT_SIDE)
    del plain_cfg["video"]["side"]
    torch.manual_seed(5)
    plain = build_model(plain_cfg).eval()
    model, video = make("vit")
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert result.missing_keys and all(".side." in f".{k}" or ".side_head." in f".{k}" for k in result.missing_keys)
    assert not any(k.endswith("side_head.proj") or "side_head.norm." in k for k in result.missing_keys)
    assert torch.equal(model.video.side_head.proj, plain.video.head.proj)
    model.eval()
    assert torch.allclose(model.encode_video(video), plain.encode_video(video), rtol=0, atol=1e-6)


def test_side_network_sees_frame_order_the_frozen_backbone_does_not():
    model, video = make("mci")
    model = activate_side(model).eval()
    reversed_video = video.flip(1)
    assert torch.allclose(model.video.backbone_embedding(video), model.video.backbone_embedding(reversed_video), atol=1e-5)
    assert (model.encode_video(video) - model.encode_video(reversed_video)).abs().max() > 1e-3


def test_fusion_layer_choices_match_side4video():
    assert fusion_indices(12, "all") == list(range(12))
    assert fusion_indices(12, "interval") == [1, 3, 5, 7, 9, 11]
    assert fusion_indices(12, "interval", every=3) == [2, 5, 8, 11]
    assert fusion_indices(12, "top") == [6, 7, 8, 9, 10, 11]
    assert fusion_indices(4, "top") == [2, 3]


def test_global_token_shift_takes_half_the_channels_from_each_neighbour():
    token = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2 * 3, 4)  # 2 clips x 3 frames, 4 channels
    shifted = shift_global_token(token, frames=3).reshape(2, 3, 4)
    clip = token.reshape(2, 3, 4)
    assert torch.equal(shifted[:, :2, :2], clip[:, 1:, :2])  # first half from the next frame
    assert torch.equal(shifted[:, 1:, 2:], clip[:, :2, 2:])  # second half from the previous frame
    assert torch.equal(shifted[:, 2, :2], torch.zeros(2, 2)) and torch.equal(shifted[:, 0, 2:], torch.zeros(2, 2))


def test_token_shift_switch_changes_what_attention_sees():
    on, video = make("mci")
    off, _ = make("mci", block={"block": "side_block", "token_shift": False, "head_dim": 16})
    off.load_state_dict(on.state_dict())
    activate_side(on).eval()
    activate_side(off).eval()
    assert (on.encode_video(video) - off.encode_video(video)).abs().max() > 1e-4


def test_classification_head_learns_the_direction_of_time():
    """Clips and their time-reversed twins, labelled by direction: indistinguishable for the frozen backbone's
    frame mean, learned by the side network (loss falls well below log 2, accuracy far above chance)."""
    model, _ = make("vit", head="classification", num_classes=2)
    gen = torch.Generator().manual_seed(0)
    forward = torch.rand(16, FRAMES, 3, 32, 32, generator=gen)
    video = torch.cat([forward, forward.flip(1)])
    labels = torch.cat([torch.zeros(16), torch.ones(16)]).long()
    params = [p for p in model.video.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    model.train()
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model.video(video), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    accuracy = (model.video(video).argmax(-1) == labels).float().mean().item()
    assert losses[-1] < 0.3 and accuracy >= 0.9, (losses[0], losses[-1], accuracy)


@pytest.mark.parametrize(
    "side,match",
    [
        ({"block": {"block": "repmixer"}}, r"model\.video\.side\.block: block 'repmixer' is a video block"),
        ({"fusion": "bottom"}, r"model\.video\.side\.fusion: expected one of all, interval, top"),
        ({"head": "classification"}, r"model\.video\.side\.num_classes: expected a positive integer"),
        ({"fusion": "interval", "fusion_every": 9}, r"model\.video\.side: fusion='interval' \(fusion_every=9\) picks none"),
        ({"widht": 64}, r"model\.video\.side: unknown key\(s\) 'widht'"),
    ],
)
def test_side_config_errors_name_the_key(side, match):
    cfg = copy.deepcopy(VIT_SIDE)
    cfg["video"]["side"].update(side)
    with pytest.raises(ConfigError, match=match):
        build_model(cfg)


def test_a_side_block_in_a_video_stage_is_refused():
    cfg = copy.deepcopy(VIT_SIDE)
    cfg["video"]["stages"][0]["block"] = "side_block"
    with pytest.raises(ConfigError, match=r"model\.video\.stages\[0\]: block 'side_block' is a side block"):
        build_model(cfg)


def test_lightning_module_never_trains_or_unfreezes_the_backbone():
    from mvclip.lightning_module import VideoTextModule

    module = VideoTextModule(model=copy.deepcopy(VIT_SIDE), freeze=["text"])
    module.train()
    encoder = module.model.video
    trained = {id(p) for group in module.parameter_groups() for p in group["params"]}
    assert not trained & {id(p) for p in encoder.backbone_parameters()}
    assert trained >= {id(p) for p in encoder.side.parameters()}
    assert not any(m.training for part in encoder.backbone_modules() for m in part.modules())
    assert encoder.side.training


def test_side_model_exports_verified_with_onnx(tmp_path):
    """The export pipeline fuses the side network, rebuilds it from the folder, runs it in onnxruntime, and
    reports what did not fold."""
    from mvclip.export import export_model, random_inputs

    model, _ = make("mci")
    model = activate_side(model)
    config = mci_side()
    metrics = export_model(model, config, tmp_path / "side.export", random_inputs(FRAMES, 64), latency_repeats=2)
    checks = {c["name"]: c for c in metrics["checks"]}
    assert {"video", "reloaded/video", "onnx/video"} <= set(checks), sorted(checks)
    assert all(c["max_abs_diff"] <= 1e-4 for c in checks.values()), checks
    assert metrics["unfolded"]["batchnorms"] == []
    assert metrics["unfolded"]["norms"]["LayerNorm"] >= 8  # 4 fusion norms + 4 side blocks (+ the text tower's)


def test_summary_reports_the_side_network_as_its_own_row():
    from mvclip.summary import count_params, summarize

    model, _ = make("vit")
    rows = summarize(model, frames=FRAMES, resolution=32)
    side = next(r for r in rows if r.name == "side network")
    assert side.params == count_params(model.video.side) + count_params(model.video.side_head)
    assert side.flops > 0 and side.output_shape == (1, 32)
    assert [r.name for r in rows if r.encoder == "video"][:2] == ["stem", "stages[0]"]


BEFORE_REGISTRATION = Path(__file__).parent / "fixtures" / "side_models_before_registration.json"


@pytest.mark.parametrize("path", ["recipes/models/tiny_cpu_side.yaml", "recipes/models/side4video_tiny.yaml",
                                  "recipes/models/side4video_vit_b16.yaml"])
def test_side_yamls_build_the_state_they_built_before_the_parts_were_registered(path):
    """The fixture was written from the hand-wired builder: same names, order and shapes (built on the meta device)."""
    expected = json.loads(BEFORE_REGISTRATION.read_text())["models"][path]["state"]
    with torch.device("meta"):
        model = build_model(path)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected
    assert list(model.state_dict()) == list(expected)


def test_tiny_side_yaml_computes_what_it_computed_before_the_parts_were_registered():
    expected = json.loads(BEFORE_REGISTRATION.read_text())["models"]["recipes/models/tiny_cpu_side.yaml"]
    torch.manual_seed(0)
    model = build_model("recipes/models/tiny_cpu_side.yaml").eval()
    torch.manual_seed(1)
    with torch.no_grad():
        embedding = model.encode_video(torch.rand(1, 2, 3, 64, 64))
    torch.testing.assert_close(embedding[0, :16], torch.tensor(expected["video_embedding"]), atol=1e-6, rtol=0)
    assert float(embedding.double().sum()) == pytest.approx(expected["video_embedding_sum"], rel=1e-6)


@pytest.mark.parametrize("head", [("retrieval", "side_retrieval_head"), ("classification", "side_classification_head")])
def test_naming_the_default_parts_builds_the_same_model(head):
    short, registered = head
    shorthand = mci_side()
    shorthand["video"]["side"].update(head=short, num_classes=3)
    named = mci_side()
    side = named["video"]["side"]
    patch_size, grid = side.pop("patch_size"), side.pop("grid")
    side.update(stem={"block": "side_stem", "patch_size": patch_size, "grid": grid}, fusion_block="side_fusion",
                head={"block": registered, "num_classes": 3} if short == "classification" else {"block": registered})
    torch.manual_seed(0)
    a = build_model(shorthand)
    torch.manual_seed(0)
    b = build_model(named)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert [m.block_name for m in (b.video.side.stem, b.video.side.fusions[0], b.video.side_head)] == [
        "side_stem", "side_fusion", registered]


def test_a_registered_side_part_replaces_the_default(isolated_registry):
    @mvclip.register_block("test_gated_fusion", kind="side_fusion")
    class GatedFusion(torch.nn.Module):
        """Down(Norm(x)) scaled by a learned gate."""

        def __init__(self, in_dim: int, dim: int, gate: float = 0.5):
            super().__init__()
            self.down = torch.nn.Sequential(torch.nn.LayerNorm(in_dim), torch.nn.Linear(in_dim, dim))
            self.gate = torch.nn.Parameter(torch.tensor(gate))

        def forward(self, x):
            return self.gate * self.down(x)

    model, video = make("mci", fusion_block={"block": "test_gated_fusion", "gate": 0.25})
    assert all(isinstance(f, GatedFusion) and float(f.gate) == 0.25 for f in model.video.side.fusions)
    assert [f.down[1].in_features for f in model.video.side.fusions] == [32, 64, 128, 256]  # the backbone's stage widths
    assert model.encode_video(video).shape == (2, 256)


@pytest.mark.parametrize(
    "side,match",
    [
        ({"stem": {"block": "side_block"}}, r"model\.video\.side\.stem: block 'side_block' is a side block; expected a side_stem block"),
        ({"fusion_block": "side_stem"}, r"model\.video\.side\.fusion_block: block 'side_stem' is a side_stem block; expected a side_fusion"),
        ({"head": {"block": "mci_head"}}, r"model\.video\.side\.head: block 'mci_head' is a video block; expected a side_head block"),
        ({"head": "regression"}, r"model\.video\.side\.head: expected one of retrieval, classification, got 'regression'"),
        ({"stem": {"block": "side_stem", "patch": 8}}, r"model\.video\.side\.stem: block 'side_stem' got unexpected argument\(s\) 'patch'"),
    ],
)
def test_side_parts_of_the_wrong_kind_or_arguments_are_named(side, match):
    cfg = copy.deepcopy(VIT_SIDE)
    cfg["video"]["side"].update(side)
    with pytest.raises(ConfigError, match=match):
        build_model(cfg)
