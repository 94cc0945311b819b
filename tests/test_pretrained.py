"""Loading MobileCLIP checkpoints (Apple, timm, open_clip names) into mvclip presets, from the key/shape fixtures.

The fixtures (tests/fixtures/pretrained_formats/*.json) list every tensor name and shape of each published
layout, written down from the reference code; `random_checkpoint` fills them with distinct random values.
"""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mvclip
from mvclip.errors import ConfigError
from mvclip.pretrained import FORMATS, declared_keys, detect_format, load_pretrained
from mvclip.testing import random_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained_formats"
PRESETS = Path(__file__).parents[1] / "recipes" / "models"

# fixture -> the presets it must load into strictly
MATCHING = [
    ("apple_mobileclip_s0", "mobileviclip_tiny"),
    ("apple_mobileclip_s0", "mobileclip_s0_frames"),
    ("apple_mobileclip_s2", "mobileviclip_small"),
    ("apple_mobileclip_s2", "mobileclip_s2_frames"),
    ("timm_fastvit_mci0", "mobileviclip_tiny"),
    ("timm_fastvit_mci1", "mobileviclip_s1"),
    ("timm_fastvit_mci2", "mobileviclip_small"),
    ("open_clip_mobileclip_s1", "mobileviclip_s1"),
    ("open_clip_mobileclip_s2", "mobileviclip_small"),
]


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def checkpoint(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in a published layout; the head bias timm/open_clip carry is zero, as in their files."""
    data = fixture(name)
    state = random_checkpoint(data["tensors"], seed)
    for key in FORMATS[data["format"]].zero_only:
        state[key].zero_()
    return state


def build(preset: str, **overrides) -> mvclip.VideoTextModel:
    from omegaconf import OmegaConf

    from mvclip.builder import apply_overrides

    return mvclip.build_model(apply_overrides(OmegaConf.load(PRESETS / f"{preset}.yaml"), overrides, new_keys=True)).eval()


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.json")))
def test_format_is_detected_from_the_keys(name):
    data = fixture(name)
    assert detect_format(list(data["tensors"])).name == data["format"]
    wrapped = ["module." + k for k in data["tensors"]]  # DDP-saved checkpoints
    assert detect_format(wrapped).name == data["format"]


def test_unknown_format_names_its_first_keys_and_the_known_formats():
    with pytest.raises(ConfigError, match=r"encoder\.layer\.0\.weight.*apple_mobileclip.*timm_fastvit.*open_clip"):
        detect_format(["encoder.layer.0.weight", "encoder.layer.0.bias"], "bert.pt")


@pytest.mark.parametrize("name, preset", MATCHING)
def test_every_tensor_lands_where_it_belongs(name, preset):
    state = checkpoint(name)
    model = build(preset)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained(model, state)  # strict
    fmt = FORMATS[fixture(name)["format"]]
    own = model.state_dict()
    landed = set()
    for key, value in state.items():
        if key in fmt.zero_only:
            continue
        target, rule = fmt.target_of(key)
        expected = value.t() if rule.transpose else value
        assert torch.equal(own[target], expected.reshape(own[target].shape)), f"{key} -> {target}"
        landed.add(target)
    # the values are all distinct, so a tensor landing on a same-shaped neighbour would have been caught
    firsts = [v.flatten()[0].item() for v in state.values() if v.numel() > 1]
    assert len(set(firsts)) == len(firsts)
    assert set(report.loaded) == landed
    # everything else kept its initialization: the temporal additions, and the text tower of image-only formats
    for key in report.newly_initialized:
        assert torch.equal(own[key], before[key]), key
    assert set(report.temporal) == declared_keys(model)
    assert all(k.startswith(("text.", "logit_scale")) for k in report.outside)
    assert (len(report.outside) > 0) == (fmt.name == "timm_fastvit")


def test_text_tower_of_s0_is_mct_and_of_s2_the_12_layer_transformer():
    for name, preset, kinds in [("apple_mobileclip_s0", "mobileclip_s0_frames", ["repmixer"] + ["transformer"] * 4 + ["repmixer"]),
                                ("apple_mobileclip_s2", "mobileclip_s2_frames", ["transformer"] * 12)]:
        model = build(preset)
        report = load_pretrained(model, checkpoint(name))
        text_keys = [k for k in report.loaded if k.startswith("text.")]
        assert len(text_keys) == sum(1 for k in fixture(name)["tensors"] if k.startswith("text_encoder."))
        names = [type(b).__name__ for b in model.text.blocks]
        assert names == [{"repmixer": "TextRepMixerBlock", "transformer": "TextTransformerLayer"}[k] for k in kinds]


def _apple_text_reference(sd: dict[str, torch.Tensor], tokens: torch.Tensor, heads: int = 8) -> torch.Tensor:
    """Apple's text encoder written out from its equations (non-causal; embedding scale unused; EOT = argmax)."""
    p = "text_encoder."
    width = sd[p + "embedding_layer.weight"].shape[1]
    x = F.embedding(tokens, sd[p + "embedding_layer.weight"]) + sd[p + "positional_embedding.pos_embed.pos_embed"].reshape(-1, width)[: tokens.shape[1]]

    def bn(name, t):
        return F.batch_norm(t, sd[name + ".running_mean"], sd[name + ".running_var"], sd[name + ".weight"], sd[name + ".bias"], False, 0.0, 1e-5)

    def conv_bn(name, t):
        kernel = sd[name + ".conv.weight"]
        return bn(name + ".bn", F.conv2d(t, kernel, padding=(0, kernel.shape[-1] // 2), groups=width))

    layer = 0
    while f"{p}transformer.{layer}.convffn.fc1.weight" in sd or f"{p}transformer.{layer}.pre_norm_mha.0.weight" in sd:
        q = f"{p}transformer.{layer}."
        if q + "pre_norm_mha.0.weight" in sd:
            h = F.layer_norm(x, (width,), sd[q + "pre_norm_mha.0.weight"], sd[q + "pre_norm_mha.0.bias"])
            qkv = F.linear(h, sd[q + "pre_norm_mha.1.qkv_proj.weight"], sd[q + "pre_norm_mha.1.qkv_proj.bias"])
            qkv = qkv.reshape(*tokens.shape, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            attn = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) * (width // heads) ** -0.5, dim=-1) @ qkv[2]
            x = x + F.linear(attn.transpose(1, 2).reshape(x.shape), sd[q + "pre_norm_mha.1.out_proj.weight"], sd[q + "pre_norm_mha.1.out_proj.bias"])
            h = F.layer_norm(x, (width,), sd[q + "pre_norm_ffn.0.weight"], sd[q + "pre_norm_ffn.0.bias"])
            h = F.linear(F.gelu(F.linear(h, sd[q + "pre_norm_ffn.1.weight"], sd[q + "pre_norm_ffn.1.bias"])), sd[q + "pre_norm_ffn.4.weight"], sd[q + "pre_norm_ffn.4.bias"])
            x = x + h
        else:
            y = x.transpose(1, 2).unsqueeze(2)  # (B, C, 1, L)
            mixer = bn(q + "token_mixer.mixer.rbr_skip", y) + conv_bn(q + "token_mixer.mixer.rbr_conv.0", y)
            y = y + sd[q + "token_mixer.layer_scale"] * (mixer - bn(q + "token_mixer.norm.rbr_skip", y))
            h = conv_bn(q + "convffn.conv", y)
            h = F.conv2d(F.gelu(F.conv2d(h, sd[q + "convffn.fc1.weight"], sd[q + "convffn.fc1.bias"])), sd[q + "convffn.fc2.weight"], sd[q + "convffn.fc2.bias"])
            x = (y + sd[q + "layer_scale"] * h).squeeze(2).transpose(1, 2)
        layer += 1
    x = F.layer_norm(x, (width,), sd[p + "final_layer_norm.weight"], sd[p + "final_layer_norm.bias"])
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ sd[p + "projection_layer"]


@pytest.mark.parametrize("name, preset", [("apple_mobileclip_s0", "mobileclip_s0_frames"), ("apple_mobileclip_s2", "mobileclip_s2_frames")])
def test_loaded_text_tower_computes_apples_text_encoder(name, preset):
    state = checkpoint(name, seed=1)
    model = build(preset)
    load_pretrained(model, state)
    tokens = mvclip.tokenize(["a person slicing a tomato", "two dogs run along a beach at sunset", "a"])
    with torch.no_grad():
        ours = model.encode_text(tokens)
        reference = _apple_text_reference(state, tokens)
        fused = mvclip.fuse(model).encode_text(tokens)
    assert reference.abs().max() > 0.1  # a real signal, not all zeros
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-5)


def test_mismatched_preset_names_the_first_keys_and_what_they_should_be():
    model = build("mobileviclip_small")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError) as error:
        load_pretrained(model, checkpoint("apple_mobileclip_s0"))
    message = str(error.value)
    assert "image_encoder.model.patch_embed.0.rbr_conv.0.conv.weight [64, 3, 3, 3]: video.stem.blocks.0.rbr_conv.0.conv.weight expects [80, 3, 3, 3]" in message
    assert "would be text.blocks.0.layer_scale, which this model does not have" in message
    assert "(expected in the file as image_encoder.model.network.0.2.layer_scale)" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # strict failure loads nothing


def test_missing_and_extra_keys_are_named():
    state = checkpoint("apple_mobileclip_s0")
    del state["image_encoder.model.network.7.1.token_mixer.qkv.weight"]
    state["image_encoder.model.network.7.0.token_mixer.q_norm.weight"] = torch.ones(32)
    with pytest.raises(ConfigError) as error:
        load_pretrained(build("mobileclip_s0_frames"), state)
    message = str(error.value)
    assert "video.stages.3.blocks.1.token_mixer.qkv.weight (expected in the file as image_encoder.model.network.7.1.token_mixer.qkv.weight)" in message
    assert "image_encoder.model.network.7.0.token_mixer.q_norm.weight: would be video.stages.3.blocks.0.token_mixer.q_norm.weight" in message
    # not strict: what fits is loaded, the rest reported
    model = build("mobileclip_s0_frames")
    report = load_pretrained(model, state, strict=False)
    assert len(report.loaded) == len(state) - 1 and len(report.missing) == 1 and len(report.unmapped) == 1
    assert torch.equal(model.state_dict()["video.stages.3.blocks.0.token_mixer.qkv.weight"], state["image_encoder.model.network.7.0.token_mixer.qkv.weight"])


def test_timm_head_bias_must_be_zero_since_mvclip_heads_have_none():
    state = checkpoint("timm_fastvit_mci0")
    assert load_pretrained(build("mobileviclip_tiny"), state).dropped_zero == ["head.fc.bias"]
    state["head.fc.bias"][3] = 0.5
    with pytest.raises(ConfigError, match=r"head\.fc\.bias: non-zero"):
        load_pretrained(build("mobileviclip_tiny"), state)


def test_files_load_safely_and_in_any_supported_container(tmp_path):
    from safetensors.torch import save_file

    state = checkpoint("timm_fastvit_mci0")
    pt, st = tmp_path / "fastvit_mci0.pth", tmp_path / "fastvit_mci0.safetensors"
    torch.save(state, pt)
    save_file(state, str(st))
    for path in (pt, st):
        model = build("mobileviclip_tiny")
        report = load_pretrained(model, path)
        assert report.format == "timm_fastvit" and str(path) in str(report)
        assert torch.equal(model.video.head.proj, state["head.fc.weight"].t())
    wrapped = {"module." + k: v for k, v in state.items()}  # as DistributedDataParallel saves it
    assert len(load_pretrained(build("mobileviclip_tiny"), wrapped).loaded) == len(state) - 1  # all but the zero bias

    class Payload:  # what an untrusted pickle could carry
        def __reduce__(self):
            return (print, ("executed",))

    evil = tmp_path / "mobileclip_s0.pt"
    torch.save({"logit_scale": torch.tensor(1.0), "x": Payload()}, evil)
    with pytest.raises(ConfigError, match="weights_only=True"):
        load_pretrained(build("mobileclip_s0_frames"), evil)


def test_explicit_format_must_be_known():
    with pytest.raises(ConfigError, match="unknown format 'apple'"):
        load_pretrained(build("mobileclip_s0_frames"), checkpoint("apple_mobileclip_s0"), format="apple")


# -- inflation: the loaded video model starts as MobileCLIP applied per frame ---------------------------------
FRAMES, SIZE = 4, 64


@pytest.fixture(scope="module")
def s0_state():
    return checkpoint("apple_mobileclip_s0", seed=2)


@pytest.fixture(scope="module")
def image_model(s0_state):
    model = build("mobileclip_s0_frames")
    load_pretrained(model, s0_state)
    return model


def per_frame_mean(image_model, clip):
    """MobileCLIP's image embedding of every frame on its own, averaged."""
    with torch.no_grad():
        return torch.stack([image_model.encode_video(clip[:, t]) for t in range(clip.shape[1])], dim=1).mean(dim=1)


def _encode_both_forms(model, clip):
    with torch.no_grad():
        return model.encode_video(clip), mvclip.fuse(model).encode_video(clip)


@pytest.mark.parametrize("preset, overrides", [
    ("mobileviclip_tiny", {"video.stages.3.attention_mode": "frame"}),  # per-frame attention in the last stage
    ("mobileclip_s0_frames", {}),  # the frame-mean baseline preset
])
def test_inflated_model_is_the_per_frame_mean_on_any_clip(s0_state, image_model, preset, overrides):
    model = build(preset, **overrides)
    load_pretrained(model, s0_state)
    clip = torch.rand(2, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    expected = per_frame_mean(image_model, clip)
    assert expected.abs().max() > 0.05
    for out in _encode_both_forms(model, clip):
        assert (out - expected).abs().max() <= 1e-5


def test_joint_attention_model_is_the_image_model_on_repeated_frames(s0_state, image_model):
    model = build("mobileviclip_tiny")
    assert model.video.stages[3].blocks[0].attention_mode == "joint"
    load_pretrained(model, s0_state)
    frame = torch.rand(2, 1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    clip = frame.expand(2, FRAMES, 3, SIZE, SIZE)
    expected = per_frame_mean(image_model, frame)
    for out in _encode_both_forms(model, clip):
        assert (out - expected).abs().max() <= 1e-5
    # joint attention sees across frames, so on a clip of different frames it is close but not equal
    varied = torch.rand(2, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (model.encode_video(varied) - per_frame_mean(image_model, varied)).abs().max()
    assert 1e-6 < diff < 0.05 * per_frame_mean(image_model, varied).abs().max()


def test_side_network_starts_from_mobileclip_weights_exactly(s0_state, image_model):
    """Side4Video on MobileCLIP-S0: the backbone loads, the side network and its head are new, the start is exact."""
    model = build("side4video_tiny")
    report = load_pretrained(model, s0_state)
    assert len(report.loaded) == len(s0_state) and not report.outside
    assert report.temporal and all(k.startswith(("video.side.", "video.side_head.")) for k in report.temporal)
    assert report.derived == ["video.side_head.proj"]  # the head's copy of the projection follows the backbone
    assert torch.equal(model.video.side_head.proj, model.video.head.proj)
    clip = torch.rand(1, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model.encode_video(clip) - per_frame_mean(image_model, clip)).abs().max() <= 1e-5


@pytest.mark.parametrize("name, preset", [("apple_mobileclip_s0", "mobileclip_s0_frames"), ("apple_mobileclip_s2", "mobileclip_s2_frames"),
                                          ("open_clip_mobileclip_s1", "mobileclip_s1_frames")])
def test_frame_mean_model_is_read_off_the_checkpoint(name, preset):
    from mvclip.pretrained import frame_mean_config

    shapes = fixture(name)["tensors"]
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    with torch.device("meta"):
        inferred = mvclip.build_model(frame_mean_config(state, detect_format(list(state))))
        written = build(preset)
    assert {k: v.shape for k, v in inferred.state_dict().items()} == {k: v.shape for k, v in written.state_dict().items()}


def test_module_loads_pretrained_before_the_first_step_and_an_explicit_logit_scale_wins(tmp_path):
    from mvclip.lightning_module import VideoTextModule

    state = checkpoint("apple_mobileclip_s0")
    path = tmp_path / "mobileclip_s0.pt"
    torch.save(state, path)
    module = VideoTextModule(model=str(PRESETS / "mobileviclip_tiny.yaml"), pretrained=str(path), freeze=["text"])
    assert len(module.pretrained_report.loaded) == len(state) and len(module.pretrained_report.temporal) == 109
    assert module.model.logit_scale.item() == pytest.approx(state["logit_scale"].item())
    assert torch.equal(module.model.text.token_embedding.weight, state["text_encoder.embedding_layer.weight"])
    # parameters from the file are "pretrained" for pretrained_lr_mult; the temporal ones are new
    assert "video.stages.0.blocks.0.token_mixer.layer_scale" in module.pretrained_names
    assert not any("temporal_mixer" in k or k.endswith(".tpe") for k in module.pretrained_names)
    fixed = VideoTextModule(model=str(PRESETS / "mobileviclip_tiny.yaml"), pretrained=str(path), logit_scale=4.0, learn_logit_scale=False)
    assert fixed.model.logit_scale.item() == 4.0
    with pytest.raises(ConfigError, match="checkpoint not found: .*mobileclip_s2.pt"):
        VideoTextModule(model=str(PRESETS / "mobileviclip_small.yaml"), pretrained=str(tmp_path / "mobileclip_s2.pt"))


def test_convert_writes_a_checkpoint_and_a_verified_fused_export(tmp_path, capsys):
    from mvclip.cli import main
    from mvclip.export import load_export
    from mvclip.lightning_module import VideoTextModule

    state = checkpoint("apple_mobileclip_s0", seed=4)
    path = tmp_path / "mobileclip_s0.pt"
    torch.save(state, path)
    out = tmp_path / "s0_video_baseline"
    assert main(["convert", "--from", "mobileclip", "--ckpt_path", str(path), "--out", str(out), "--frames", "2", "--resolution", "64",
                 "--latency_repeats", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"{path} (apple_mobileclip): loaded {len(state)} tensors" in printed
    metrics = json.loads((out / "export" / "metrics.json").read_text())
    assert {"model.safetensors", "model.yaml", "preprocess.json", "video.onnx", "text.onnx"} <= set(metrics["files"])
    assert {c["name"] for c in metrics["checks"]} >= {"video", "text", "reloaded/video", "onnx/video"}
    assert all(c["max_abs_diff"] <= 1e-4 for c in metrics["checks"])  # the export itself refuses anything worse
    assert json.loads((out / "export" / "preprocess.json").read_text())["pixels"] == "RGB in [0, 1]"
    # the checkpoint is what `init_from` reads, and the export embeds like the loaded MobileCLIP, frame by frame
    reference = build("mobileclip_s0_frames")
    load_pretrained(reference, state)
    started = VideoTextModule(model=str(PRESETS / "mobileclip_s0_frames.yaml"), init_from=str(out / "model.ckpt"))
    exported = load_export(out / "export")
    clip = torch.rand(2, 2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    tokens = mvclip.tokenize(["a cat", "a person dancing"])
    with torch.no_grad():
        expected = per_frame_mean(reference, clip)
        assert torch.equal(started.model.eval().encode_video(clip), reference.encode_video(clip))
        assert (exported.encode_video(clip) - expected).abs().max() <= 1e-5
        assert (exported.encode_text(tokens) - reference.encode_text(tokens)).abs().max() <= 1e-5


def test_convert_refuses_a_file_of_another_family(tmp_path, capsys):
    from mvclip.cli import main

    path = tmp_path / "tiny.pt"
    torch.save(build("mobileclip_s0_frames").state_dict(), path)  # mvclip names, not a MobileCLIP release
    assert main(["convert", "--from", "mobileclip", "--ckpt_path", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "mvclip layout, not a mobileclip checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tiny_recipe_fine_tunes_two_steps_from_a_mobileclip_checkpoint(synthetic_root, tmp_path):
    from helpers import cli

    path = tmp_path / "mobileclip_s0.pt"
    torch.save(checkpoint("apple_mobileclip_s0"), path)
    out = cli("fit", "--config", "recipes/mobileviclip_tiny.yaml", f"--model.pretrained={path}",
              f"--data.train={synthetic_root / 'train'}", f"--data.val={synthetic_root / 'val'}", "--model.input={resolution: 64, frames: 4}",
              "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--trainer.max_epochs=null",
              "--data.batch_size=2", "--data.num_workers=0", "--trainer.logger=false", "--trainer.callbacks=[]",
              "--trainer.enable_checkpointing=false", "--trainer.precision=32-true")
    text = out.stdout + out.stderr
    assert f"pretrained {path} (apple_mobileclip): loaded 893 tensors; newly initialized 109 (109 temporal" in text
    assert "`Trainer.fit` stopped: `max_steps=2` reached." in text
