"""ExecuTorch target: `.pte` programs with the XNNPACK delegate, run through ExecuTorch's Python runtime on this CPU."""
import json

import pytest
import torch

pytest.importorskip("executorch.runtime")

from mvclip.export import export_model, random_inputs  # noqa: E402
from mvclip.export_executorch import load, set_threads, thread_count  # noqa: E402
from mvclip.fusion import fuse  # noqa: E402

from test_export_targets import _random_model, assert_divergent_graph_refused  # noqa: E402


@pytest.mark.slow  # two XNNPACK lowerings of ~20 s each on one shared core
def test_executorch_programs_of_both_encoders_match_pytorch_at_each_clip_length(tmp_path, tiny_model_config):
    model = _random_model(tiny_model_config)
    inputs = random_inputs(4, 64, batch=2)
    metrics = export_model(model, tiny_model_config, tmp_path / "exp", inputs, formats=["executorch"], clip_lengths=[4, 2], latency_repeats=1)
    folder = tmp_path / "exp"
    assert {"video.pte", "video_t2.pte", "text.pte"} <= set(metrics["files"])
    checks = {c["name"]: c for c in metrics["checks"]}
    assert {"executorch/video/frames4", "executorch/video/frames2", "executorch/text"} <= set(checks)
    assert all(checks[n]["max_abs_diff"] < 1e-5 and checks[n]["min_cosine"] > 0.99999 for n in checks if n.startswith("executorch/"))
    info = json.loads((folder / "metrics.json").read_text())["targets"]["executorch"]
    assert info["executorch"] == "1.5.1" and info["runtime_threads"] >= 1
    assert info["graphs"]["video.pte"]["input"] == [1, 4, 3, 64, 64] and info["graphs"]["text.pte"]["input"] == [1, 77]
    # every convolution went to XNNPACK (the temporal conv included: XNNPACK has no Conv3d, the graph form is a Conv2d)
    assert not any("convolution" in op for op in info["graphs"]["video.pte"]["not_delegated"])

    # the written program, on clips it never saw, with the thread count set
    fused = fuse(model)
    before = thread_count()
    set_threads(1)
    try:
        assert thread_count() == 1
        run = load(folder / "video_t2.pte")
        clip = torch.rand(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            want = fused.encode_video(clip, normalize=True)
        assert (run(clip) - want).abs().max().item() < 1e-5
    finally:
        set_threads(before)


@pytest.mark.slow
def test_an_executorch_program_that_differs_is_refused_naming_it(tmp_path, tiny_model_config, isolated_registry):
    assert_divergent_graph_refused(tmp_path, tiny_model_config, "executorch", r"video\.pte: differs from the PyTorch fused model on executorch/video/frames4", video_only=True)


@pytest.mark.slow  # float and int8 lowerings of both encoders: about two minutes on one shared core
def test_executorch_int8_through_xnnpacks_quantizer_passes_the_gate(tmp_path, tiny_model_config):
    from mvclip.datamodules.synthetic import ensure_synthetic_dataset
    from mvclip.export import Quantize
    from mvclip.export_gate import EvalSet
    from mvclip.export_quantize import default_calibration

    from test_training import datamodule

    root = ensure_synthetic_dataset(tmp_path / "data", num_train=8, num_val=16, num_test=8, seed=0, frames=8, size=64, progress=False)
    dm = datamodule(root, eval_batch_size=16)
    dm.setup("validate")
    data = EvalSet.from_batches(dm.val_dataloader(), max_clips=16)
    torch.manual_seed(0)
    metrics = export_model(_random_model(tiny_model_config), tiny_model_config, tmp_path / "exp", random_inputs(4, 64), formats=["executorch"],
                           quantize=Quantize(data, default_calibration(data, 16)), latency_repeats=1)
    int8 = metrics["targets"]["executorch"]["int8"]
    assert int8["files"] == ["video.int8.pte", "text.int8.pte"] and {"video.int8.pte", "text.int8.pte"} <= set(metrics["files"])
    assert int8["passed"] and int8["clips"] == 16 and int8["quantizer"].startswith("PT2E XNNPACKQuantizer")
    assert int8["cosine"]["video"]["mean"] >= 0.99 and int8["cosine"]["text"]["mean"] >= 0.99
    assert abs(int8["delta"]["t2v/R@1"]) <= 1 and abs(int8["delta"]["v2t/R@1"]) <= 1
