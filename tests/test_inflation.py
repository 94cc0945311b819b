"""Temporal blocks start as their image counterparts: a video model inflated from image weights is the image model per frame."""
import pytest
import torch

import mvclip
from mvclip.model import Stage
from mvclip.testing import randomize_for_fusion_


def _same_spatial_weights(image_block, video_block):
    missing, unexpected = video_block.load_state_dict(image_block.state_dict(), strict=False)
    assert not unexpected
    return missing


@pytest.mark.parametrize("init", ["zero", "mirror"])
def test_st_repmixer_at_init_is_the_repmixer_per_frame(init):
    image = randomize_for_fusion_(mvclip.build_block({"block": "repmixer", "dim": 24}), seed=1).eval()
    video = mvclip.build_block({"block": "st_repmixer", "dim": 24, "temporal_init": init}).eval()
    missing = _same_spatial_weights(image, video)
    assert missing and all(k.startswith("temporal_mixer.") for k in missing)
    clip = torch.randn(3 * 5, 24, 10, 10)  # 3 clips of 5 frames
    with torch.no_grad():
        assert torch.equal(video(clip, 5), image(clip, 5))
        # ...and training mode too: a zero BN weight, or two identical branches that cancel, give exactly zero
        video.train(), image.train()
        assert torch.equal(video(clip, 5), image(clip, 5))


@pytest.mark.parametrize("init, conv_learns", [("zero", False), ("mirror", True), ("active", True)])
def test_temporal_conv_gets_a_gradient_from_the_first_step_unless_zero_initialized(init, conv_learns):
    block = mvclip.build_block({"block": "st_repmixer", "dim": 8, "temporal_init": init}).train()
    clip = torch.randn(2 * 4, 8, 6, 6)
    (block(clip, 4) * torch.randn(8, 8, 6, 6)).sum().backward()
    grad = block.temporal_mixer.branch.conv.weight.grad
    assert (grad.abs().max() > 1e-4) == conv_learns


@pytest.mark.parametrize("init", ["zero", "mirror", "active"])
def test_every_temporal_init_folds_into_one_conv(init):
    """Fused equals unfused within 1e-5 on random clips, with randomized BatchNorm statistics and affine (for
    `mirror` the two branches then differ, so the difference is folded, not a zero)."""
    block = randomize_for_fusion_(mvclip.build_block({"block": "st_repmixer", "dim": 8, "temporal_init": init}), seed=5)
    block.eval()
    clip = torch.randn(3 * 4, 8, 7, 7)
    with torch.no_grad():
        before = block(clip, 4)
        block.reparameterize()
        assert block.temporal_mixer.branch is None and block.temporal_mixer.mirror is None
        torch.testing.assert_close(block(clip, 4), before, rtol=1e-5, atol=1e-5)


def _stage(block, dim, mode=None):
    spec = {"block": block, "dim": dim}
    if mode:
        spec["attention_mode"] = mode
    pos = {"tpe_attention": "tpe_cpe", "attention": "rep_cpe"}[block]
    return Stage([mvclip.build_block(spec)], pos_embed=mvclip.build_block({"block": pos, "dim": dim, **({"num_frames": 4} if pos == "tpe_cpe" else {})}))


def test_tpe_attention_per_frame_mode_is_the_image_block_exactly():
    image = randomize_for_fusion_(_stage("attention", 64), seed=2).eval()
    video = _stage("tpe_attention", 64, mode="frame").eval()
    missing = _same_spatial_weights(image, video)
    assert missing == ["pos_embed.tpe"]
    clip = torch.randn(2 * 4, 64, 6, 6)
    with torch.no_grad():
        assert torch.equal(video(clip, 4), image(clip, 4))


def test_tpe_attention_joint_mode_on_repeated_frames_is_the_image_block():
    image = randomize_for_fusion_(_stage("attention", 64), seed=3).eval()
    video = _stage("tpe_attention", 64).eval()
    assert video.blocks[0].attention_mode == "joint"
    _same_spatial_weights(image, video)
    frame = torch.randn(2, 1, 64, 6, 6)
    clip = frame.expand(2, 4, 64, 6, 6).reshape(8, 64, 6, 6)  # every frame the same image
    with torch.no_grad():
        out_video, out_image = video(clip, 4), image(clip, 4)
        torch.testing.assert_close(out_video, out_image, rtol=1e-5, atol=1e-5)
        # On a clip of different frames joint attention is not per-frame attention.
        varied = torch.randn(8, 64, 6, 6)
        assert (video(varied, 4) - image(varied, 4)).abs().max() > 1e-3


def test_tpe_is_interpolated_linearly():
    tpe = mvclip.build_block({"block": "tpe_cpe", "dim": 3, "num_frames": 8})
    with torch.no_grad():
        tpe.tpe.copy_(torch.arange(8.0)[:, None].expand(8, 3))
    assert torch.equal(tpe.temporal_embedding(8), tpe.tpe)
    halved = tpe.temporal_embedding(4)  # align_corners=False: the mean of each pair
    torch.testing.assert_close(halved[:, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))
    doubled = tpe.temporal_embedding(16)[:, 0]
    assert doubled[0] == 0 and doubled[-1] == 7 and torch.all(doubled[1:] >= doubled[:-1])


@pytest.mark.parametrize("frames", [4, 16])
def test_model_built_for_8_frames_runs_other_clip_lengths(frames):
    model = mvclip.build_model("recipes/models/tiny_cpu.yaml").eval()
    assert model.video.num_frames == 8
    randomize_for_fusion_(model, seed=4)
    with torch.no_grad():
        out = model.encode_video(torch.rand(2, frames, 3, 64, 64))
    assert out.shape == (2, 256) and torch.isfinite(out).all()


def test_video_temporal_init_reaches_every_block_that_takes_it_and_a_stage_may_override():
    config = {"embed_dim": 16, "video": {"num_frames": 4, "temporal_init": "mirror", "stem": {"block": "mobileone_stem"},
                                         "stages": [{"block": "st_repmixer", "dim": 8},
                                                    {"block": "repmixer", "dim": 8},  # takes no temporal_init: not given one
                                                    {"block": "st_repmixer", "dim": 8, "temporal_init": "zero"}],
                                         "head": {"block": "mci_head"}}, "text": None}
    video = mvclip.build_model(config).video
    assert video.stages[0].blocks[0].temporal_mixer.init == "mirror"
    assert not hasattr(video.stages[1].blocks[0], "temporal_mixer")
    assert video.stages[2].blocks[0].temporal_mixer.init == "zero"



@pytest.mark.parametrize("std", [0.0, 0.5])
def test_tpe_starts_at_zero_for_inflation_unless_an_init_std_is_given(std):
    tpe = mvclip.build_block({"block": "tpe_cpe", "dim": 64, "num_frames": 8, "tpe_init_std": std}).tpe
    if std:
        assert 0.4 < tpe.std().item() < 0.6 and tpe.abs().max().item() <= 2 * std
        rows = torch.nn.functional.normalize(tpe, dim=1)
        assert (rows @ rows.t() - torch.eye(8)).abs().max().item() < 0.5  # every frame gets its own direction
    else:
        assert torch.count_nonzero(tpe) == 0
    with pytest.raises(ValueError, match="tpe_init_std"):
        mvclip.build_block({"block": "tpe_cpe", "dim": 8, "tpe_init_std": -1.0})
    with pytest.raises(ValueError, match="tpe_init_std must be a number >= 0, got 'big'"):
        mvclip.build_block({"block": "tpe_cpe", "dim": 8, "tpe_init_std": "big"})
