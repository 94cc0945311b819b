"""Presets, the public model API, whole-model fusion and the summary."""
import pytest
import torch

import mvclip
from mvclip.summary import summarize
from mvclip.testing import randomize_for_fusion_

PUBLISHED = {  # MobileCLIP's published parameter counts (image, text), in millions
    "mobileviclip_tiny": (11.41, 42.44),
    "mobileviclip_small": (35.82, 63.43),
    "mobileclip_s0_frames": (11.41, 42.44),
}


def _millions(module, keep=lambda name: True):
    return sum(p.numel() for n, p in module.named_parameters() if keep(n)) / 1e6


def _is_temporal(name):
    return ".temporal_mixer." in name or name.endswith(".tpe")


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_preset_parameter_counts_match_mobileclip(preset):
    model = mvclip.build_model(f"recipes/models/{preset}.yaml")
    image_m = _millions(model.video, lambda n: not _is_temporal(n))
    text_m = _millions(model.text)
    temporal_m = _millions(model.video, _is_temporal)
    image_ref, text_ref = PUBLISHED[preset]
    assert abs(image_m - image_ref) / image_ref < 0.01, image_m
    assert abs(text_m - text_ref) / text_ref < 0.01, text_m
    assert temporal_m < 0.2
    if preset == "mobileclip_s0_frames":
        assert temporal_m == 0


def test_public_api_shapes_and_normalization():
    model = mvclip.build_model("recipes/models/tiny_cpu.yaml").eval()
    video = torch.rand(2, 8, 3, 64, 64)
    tokens = mvclip.tokenize(["a red square moves left", "a blue circle grows"])
    with torch.no_grad():
        v = model.encode_video(video, normalize=True)
        t = model.encode_text(tokens, normalize=True)
        image = model.encode_video(video[:, 0])  # T=1: an image
    assert v.shape == t.shape == image.shape == (2, 256)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))


def test_build_model_accepts_path_dict_and_omegaconf(tiny_model_config):
    from omegaconf import OmegaConf

    a = mvclip.build_model(tiny_model_config)
    b = mvclip.build_model(OmegaConf.create(tiny_model_config))
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())


def test_fused_model_matches_unfused(tiny_model_config):
    torch.manual_seed(0)
    model = randomize_for_fusion_(mvclip.build_model(tiny_model_config), seed=5).eval()
    fused = mvclip.fuse(model)
    assert model.video.stages[0].blocks[0].temporal_mixer.branch is not None  # original untouched
    video = torch.rand(2, 4, 3, 64, 64)
    tokens = torch.randint(0, 49406, (3, 77))
    report_v = mvclip.verify(model, video, fused=fused, forward=lambda m, x: m.encode_video(x))
    report_t = mvclip.verify(model, tokens, fused=fused, forward=lambda m, x: m.encode_text(x))
    assert report_v.max_rel_diff < 1e-5 and report_v.min_cosine > 0.99999, report_v
    assert report_t.max_rel_diff < 1e-5, report_t
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in model.parameters())


def test_summary_rows_add_up(tiny_model_config):
    model = mvclip.build_model(tiny_model_config)
    rows = summarize(model, frames=4, resolution=64)
    video_rows = [r for r in rows if r.encoder == "video"]
    assert [r.name for r in video_rows] == ["stem", "stages[0]", "stages[1]", "stages[2]", "head"]
    assert sum(r.params for r in video_rows) == sum(p.numel() for p in model.video.parameters())
    assert video_rows[-1].output_shape == (4, 32)
    assert video_rows[1].output_shape == (4, 16, 16, 16)
    assert all(r.flops_fused <= r.flops for r in rows) and sum(r.flops for r in video_rows) > 0



def _transformer_text_model(mask: str, pool: str = "eot"):
    cfg = {"embed_dim": 16, "video": {"stem": {"block": "mobileone_stem"}, "stages": [{"block": "repmixer", "dim": 8}],
                                      "head": {"block": "mci_head"}},
           "text": {"width": 32, "attention_mask": mask, "pool": pool,
                    "stages": [{"block": "text_transformer", "depth": 2, "num_heads": 2}]}}
    torch.manual_seed(0)
    return mvclip.build_model(cfg).eval()


@pytest.mark.parametrize("mask", ["padding", "causal"])
def test_text_attention_masks_make_the_caption_independent_of_what_follows_its_end(mask):
    tokens = mvclip.tokenize(["a red circle moves to the left", "a green square grows"])
    other = tokens.clone()
    other[tokens == 0] = 320  # a real word where the padding was
    cut = tokens[:, : int(tokens.argmax(-1).max()) + 1]  # the captions without their padding
    with torch.no_grad():
        masked = _transformer_text_model(mask)
        got = masked.encode_text(tokens)
        assert torch.allclose(got, masked.encode_text(other), atol=1e-6)
        assert torch.allclose(got, masked.encode_text(cut), atol=1e-6)
        unmasked = _transformer_text_model("none")  # the check can fail: MCt attends to the padding too
        assert not torch.allclose(unmasked.encode_text(tokens), unmasked.encode_text(other), atol=1e-3)


def test_text_attention_mask_is_checked_when_the_model_is_built():
    with pytest.raises(mvclip.ConfigError, match=r"model.text.attention_mask: expected one of \['none', 'padding', 'causal'\]"):
        _transformer_text_model("pad")


def test_mean_pooling_averages_the_word_tokens_only():
    """Checked against a hand-computed mean of the final-norm features at the word positions (1 .. end-1)."""
    model = _transformer_text_model("padding", pool="mean")
    text = model.text
    tokens = mvclip.tokenize(["a red circle grows", "a blue cross moves up", ""])
    with torch.no_grad():
        x = text.token_embedding(tokens) + text.positional_embedding[: tokens.shape[1]]
        mask = mvclip.model.text_attention_mask(tokens, "padding")
        for block in text.blocks:
            x = block(x, attn_mask=mask)
        x = text.final_norm(x)
        ends = tokens.argmax(-1).tolist()
        expected = torch.stack([x[0, 1 : ends[0]].mean(0), x[1, 1 : ends[1]].mean(0), x[2, ends[2]]]) @ text.projection
        assert torch.allclose(text(tokens), expected, atol=1e-6)
        eot = _transformer_text_model("padding", pool="eot").text(tokens)  # same seed, same weights: only the read-out differs
        assert not torch.allclose(eot, expected, atol=1e-3)


def test_text_pool_is_checked_when_the_model_is_built():
    with pytest.raises(mvclip.ConfigError, match=r"model.text.pool: expected one of \['eot', 'mean'\]"):
        _transformer_text_model("padding", pool="max")
