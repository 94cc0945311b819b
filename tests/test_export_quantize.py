"""`--quantize int8`: graphs calibrated on validation clips, kept only when the retrieval gate passes.

The tiny random model's embeddings are nearly collapsed (every clip's embedding is within cosine 0.99999 of every
other's), so a passing gate on it says little; the refusal is the informative case: calibrating on clips in [0, 255]
instead of [0, 1] (a pipeline that forgot to scale its pixels) sets every activation range ~255x too wide, and the
int8 video graph's embeddings fall to mean cosine 0.91 of float (0.997 calibrated on the real clips)."""
import json
import re

import pytest
import torch

from mvclip.builder import build_model
from mvclip.datamodules.synthetic import ensure_synthetic_dataset
from mvclip.export import Quantize, export_model, random_inputs
from mvclip.export_gate import EvalSet, Gate, QuantizationRefused, evaluate, gate_report
from mvclip.export_quantize import default_calibration
from mvclip.testing import randomize_for_fusion_

from test_training import datamodule


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    root = ensure_synthetic_dataset(tmp_path_factory.mktemp("val"), num_train=8, num_val=32, num_test=8, seed=0, frames=8, size=64, progress=False)
    dm = datamodule(root, eval_batch_size=16)
    dm.setup("validate")
    return EvalSet.from_batches(dm.val_dataloader(), max_clips=256)


def _random_model(config, seed=0):
    torch.manual_seed(seed)  # the int8 cosine depends on the weights: the same model every run
    model = build_model(config)
    randomize_for_fusion_(model, seed=seed)
    return model.eval()


def test_the_gate_measures_retrieval_and_cosine_and_refuses_with_the_numbers(validation):
    data = validation
    assert len(data) == 32 and data.text.shape[0] == 4 * 32 and sum(g is not None for g in data.groups) == 32
    # embeddings that retrieve perfectly: each caption gets its clip's embedding
    video = torch.nn.functional.normalize(torch.randn(32, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    text = video[data.text_video_index]
    perfect = evaluate(video, text, data)
    assert perfect["t2v/R@1"] == 100.0 and perfect["v2t/R@1"] == 100.0 and perfect["v2t/R@5"] == 100.0
    # the quantized side swaps the embeddings of two clips: 2 of 32 clips wrong, R@1 falls 6.25 points
    swapped = video.clone()
    swapped[[0, 1]] = video[[1, 0]]
    with pytest.raises(QuantizationRefused, match=r"x\.int8: int8 refused on 32 validation clips: t2v/R@1 drops 6\.25 points \(100\.00 -> 93\.75; limit 1\);"
                       r" v2t/R@1 drops 6\.25 points .*mean video cosine to float 0\.9[0-9]+ \(limit 0\.99\); nothing was written"):
        gate_report("x.int8", {"video": video, "text": text}, {"video": swapped, "text": text}, data, Gate())
    report = gate_report("x.int8", {"video": video, "text": text}, {"video": swapped, "text": text}, data, Gate(override=True))
    assert report["passed"] is False and report["delta"]["t2v/R@1"] == -6.25 and report["cosine"]["text"]["mean"] == pytest.approx(1.0)
    assert report["quantized"]["temporal/twin_acc"] <= report["float"]["temporal/twin_acc"]
    # a looser gate keeps it
    assert gate_report("x.int8", {"video": video, "text": text}, {"video": swapped, "text": text}, data, Gate(max_r1_drop=7, min_mean_cosine=0.5))["passed"]


def test_onnx_int8_passes_the_gate_and_records_the_changes(tmp_path, tiny_model_config, validation):
    model = _random_model(tiny_model_config)
    quantize = Quantize(validation, default_calibration(validation, 32))
    metrics = export_model(model, tiny_model_config, tmp_path / "exp", random_inputs(4, 64), formats=["onnx"], quantize=quantize, latency_repeats=1)
    assert {"video.int8.onnx", "text.int8.onnx"} <= set(metrics["files"])
    int8 = json.loads((tmp_path / "exp" / "metrics.json").read_text())["targets"]["onnx"]["int8"]
    assert int8["passed"] and int8["clips"] == 32 and int8["calibration"] == {"video": 32, "text": 128}
    assert int8["cosine"]["video"]["mean"] >= 0.99 and int8["cosine"]["text"]["mean"] >= 0.99
    assert set(int8["delta"]) == {"t2v/R@1", "t2v/R@5", "v2t/R@1", "v2t/R@5", "temporal/twin_acc"}
    assert all(int8["delta"][k] == int8["quantized"][k] - int8["float"][k] for k in int8["delta"])


def test_int8_calibrated_on_unscaled_pixels_is_refused_and_nothing_is_written(tmp_path, tiny_model_config, validation):
    model = _random_model(tiny_model_config)
    calibration = default_calibration(validation, 32)
    damaged = {"video": calibration["video"] * 255.0, "text": calibration["text"]}  # [0, 255] where the graph expects [0, 1]
    with pytest.raises(QuantizationRefused, match=r"video\.int8\.onnx \+ text\.int8\.onnx: int8 refused on 32 validation clips: .*mean video cosine to float ([0-9.]+) \(limit 0\.99\)") as refused:
        export_model(model, tiny_model_config, tmp_path / "exp", random_inputs(4, 64), formats=["onnx"],
                     quantize=Quantize(validation, damaged), latency_repeats=1)
    # well calibrated, this model keeps >= 0.99 (the test above); the damage costs a clear margin, how much depends on
    # onnxruntime's int8 kernels for the CPU: < 0.95 with AVX2, 0.9645 with AVX-512 VNNI (both measured)
    assert float(re.search(r"mean video cosine to float ([0-9.]+)", str(refused.value)).group(1)) < 0.98
    assert list(tmp_path.iterdir()) == []



def test_export_command_quantize_refuses_with_the_numbers_and_exit_code_1(tmp_path, tiny_model_config, validation, capsys, synthetic_root):
    """`--quantize int8 --val_data`: a gate no int8 graph can pass (mean cosine >= 0.999999) refuses, naming the numbers."""
    from mvclip.cli import main as cli_main
    from mvclip.lightning_module import VideoTextModule

    torch.manual_seed(0)
    module = VideoTextModule(model=tiny_model_config)
    randomize_for_fusion_(module.model)
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "mvclip_preprocess": {"frames": 4, "resolution": 64}}, ckpt)
    args = ["export", "--ckpt_path", str(ckpt), "--format", "onnx", "--quantize", "int8", "--val_data", str(synthetic_root / "val"),
            "--calibration_clips", "16", "--eval_clips", "16", "--min_cosine", "0.999999", "--latency_repeats", "1"]
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert re.search(r"video\.int8\.onnx \+ text\.int8\.onnx: int8 refused on 16 validation clips: mean video cosine to float 0\.9[0-9]+ \(limit 0\.999999\)", err), err
    assert err.count("nothing was written") == 1 and not (tmp_path / "run" / "last.export").exists()
    with pytest.raises(SystemExit) as usage:
        cli_main(["export", "--ckpt_path", str(ckpt), "--quantize", "int8"])
    assert usage.value.code == 2 and "--quantize int8 needs --val_data" in capsys.readouterr().err
