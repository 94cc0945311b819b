"""bench/temporal_cost.py: its take-outs remove exactly what they name, and its attention floor is the right count."""
import pytest
import torch
from helpers import load_bench_script

from mvclip.blocks.attention import AttentionBlock


def test_take_outs_and_the_joint_attention_floor(tiny_model_config):
    bench = load_bench_script("temporal_cost", on_path=True)
    import mvclip

    from mvclip.testing import randomize_for_fusion_

    torch.manual_seed(0)  # random BN statistics and layer scales, so that every part changes the output
    model = mvclip.fuse(randomize_for_fusion_(mvclip.build_model(tiny_model_config), seed=0).eval())
    clip = torch.rand(1, 4, 3, 64, 64)
    no_convs = bench.variant(model, temporal_convs=False, joint_attention=True)
    per_frame = bench.variant(model, temporal_convs=True, joint_attention=False)
    assert any(hasattr(m, "temporal_mixer") for m in model.modules())
    assert all(isinstance(m.temporal_mixer, bench.PassFrames) for m in no_convs.modules() if hasattr(m, "temporal_mixer"))
    assert [m.attention_mode for m in per_frame.modules() if isinstance(m, AttentionBlock)] == ["frame"]
    assert [m.attention_mode for m in model.modules() if isinstance(m, AttentionBlock)] == ["joint"]  # a copy was changed
    with torch.no_grad():
        for changed in (no_convs, per_frame):
            assert not torch.allclose(changed.encode_video(clip), model.encode_video(clip))
    shapes = bench.joint_attention_shapes(model, clip)
    assert shapes == [(4, 64, 4, 4)]  # stride 16 at stage 3: 64 px -> 4 x 4 tokens per frame, 4 frames
    # one clip: joint over 4 * 16 = 64 tokens against 4 attentions over 16 tokens, 4 * L^2 * C FLOP each
    assert bench.extra_attention_flop(shapes, 4) == 4 * 64 * (64**2 - 4 * 16**2)
    # MobileViCLIP-Tiny at 256 px: two blocks over 8 x 8 x 8 tokens of width 512
    assert bench.extra_attention_flop([(8, 512, 8, 8)] * 2, 8) == 2 * 4 * 512 * (512**2 - 8 * 64**2)


@pytest.mark.parametrize("args, message", [(["--repeats", "0"], "--repeats: expected an integer >= 1, got 0"),
                                           (["--resolution", "16"], "--resolution: expected an integer >= 32, got 16"),
                                           (["--threads", "-1"], "--threads: expected an integer >= 1, got -1")])
def test_bad_arguments_are_one_line_errors_before_any_model_is_built(args, message, capsys):
    bench = load_bench_script("temporal_cost", on_path=True)
    with pytest.raises(SystemExit):
        bench.main([*args, "--no-write"])
    assert message in capsys.readouterr().err
