"""Deployment targets of an export: ONNX through the dynamo exporter at several clip lengths, a graph that diverges
from eager refused with nothing written, the format option, and the base install without the deploy extras."""
import json

import onnxruntime as ort
import pytest
import torch
from torch import nn

from mvclip.builder import build_model
from mvclip.errors import MissingExtraError
from mvclip.export import ExportError, export_model, random_inputs
from mvclip.export_targets import check_formats
from mvclip.fusion import fuse
from mvclip.registry import register_block
from mvclip.testing import randomize_for_fusion_


def _random_model(config, seed=0):
    model = build_model(config)
    randomize_for_fusion_(model, seed=seed)
    return model.eval()


def test_onnx_video_graph_has_a_dynamic_clip_length_correct_at_each_length(tmp_path, tiny_model_config):
    model = _random_model(tiny_model_config)
    metrics = export_model(model, tiny_model_config, tmp_path / "exp", random_inputs(4, 64), clip_lengths=[2, 4, 8], latency_repeats=1)
    names = {c["name"] for c in metrics["checks"]}
    assert {"onnx/video/frames2", "onnx/video/frames8", "onnx/video/batch3", "onnx/text/batch3"} <= names
    info = metrics["targets"]["onnx"]
    assert info["exporter"] == "torch.onnx.export(dynamo=True)" and info["clip_lengths_checked"] == [2, 4, 8]
    assert info["clip_length"] == "dynamic"
    assert info["inputs"]["video.onnx"] == ["batch", "frames", 3, 64, 64] and info["inputs"]["text.onnx"] == ["batch", 77]
    # lengths and batch sizes the export never checked: still the fused PyTorch model's embeddings
    session = ort.InferenceSession(str(tmp_path / "exp" / "video.onnx"), providers=["CPUExecutionProvider"])
    fused = fuse(model)
    for frames in (1, 3, 6):
        clip = torch.rand(5, frames, 3, 64, 64, generator=torch.Generator().manual_seed(frames))
        got = torch.from_numpy(session.run(None, {"video": clip.numpy()})[0])
        with torch.no_grad():
            want = fused.encode_video(clip, normalize=True)
        assert got.shape == (5, 32)
        assert (got - want).abs().max().item() < 1e-4, frames


class _DivergesWhenExported(nn.Module):
    """Eager is the identity, the exported graph scales by 1.5: a block whose graph path is wrong (as the temporal conv's
    would be if its exported Conv2d form disagreed with the eager kernel). Fusion cannot see it; the runtimes must."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return x * 1.5 if torch.compiler.is_exporting() else x


def assert_divergent_graph_refused(tmp_path, config, target: str, message: str, video_only: bool = False) -> None:
    """Export a model holding `_DivergesWhenExported` to `target` (needs the `isolated_registry` fixture): refused with
    `message`, and nothing written, not even a temporary folder. Shared by every target's test."""
    register_block("diverges_when_exported")(_DivergesWhenExported)
    config["video"]["stages"].insert(2, {"block": "diverges_when_exported", "dim": 32})
    if video_only:
        config.pop("text")
    with pytest.raises(ExportError, match=message):
        export_model(_random_model(config), config, tmp_path / "exp", random_inputs(4, 64), formats=[target], latency_repeats=1)
    assert list(tmp_path.iterdir()) == [], "a refused export writes nothing, not even a temporary folder"


def test_a_graph_that_differs_from_pytorch_is_refused_naming_it_and_nothing_is_written(tmp_path, tiny_model_config, isolated_registry):
    assert_divergent_graph_refused(tmp_path, tiny_model_config, "onnx",
                                   r"video\.onnx: differs from the PyTorch fused model on onnx/video: max \|diff\| [0-9.e-]+ \(limit 0\.0001\)")


def test_formats_are_checked_and_a_named_target_needs_its_extra(monkeypatch):
    assert check_formats(["onnx", "onnx"], require_extras=False) == ["onnx"]
    with pytest.raises(ValueError, match="export format: expected one of onnx, executorch, coreml, got 'tflite'"):
        check_formats(["tflite"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("executorch", "coremltools") else real(name, *a))
    with pytest.raises(MissingExtraError, match=r'the executorch export needs executorch, which is not installed: pip install "mvclip\[executorch\]"'):
        check_formats(["onnx", "executorch"])
    with pytest.raises(MissingExtraError, match=r'mvclip\[coreml\]'):
        check_formats(["coreml"])


def test_base_install_exports_without_the_deploy_extras(tmp_path, tiny_model_config, monkeypatch):
    """No executorch, no coremltools: the default export still writes the fused model (targets are imported lazily)."""
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.split(".")[0] in ("executorch", "coremltools", "torchao") else real(name, *a))
    for name in [m for m in sys.modules if m.split(".")[0] in ("executorch", "coremltools")]:
        monkeypatch.delitem(sys.modules, name)
    metrics = export_model(_random_model(tiny_model_config), tiny_model_config, tmp_path / "exp", random_inputs(4, 64), onnx=False, latency_repeats=1)
    assert metrics["targets"] == {} and not any(m.split(".")[0] in ("executorch", "coremltools") for m in sys.modules)
    assert json.loads((tmp_path / "exp" / "metrics.json").read_text())["targets"] == {}


def test_the_format_option_of_the_command_and_the_callback_is_checked_before_any_work(tmp_path, capsys):
    from mvclip.callbacks import FuseExport
    from mvclip.cli import main as cli_main

    with pytest.raises(ValueError, match="export format: expected one of onnx, executorch, coreml, got 'tflite'"):
        FuseExport(formats=["onnx", "tflite"])
    assert FuseExport(formats=["onnx", "onnx"], clip_lengths=[8, 16]).formats == ["onnx"]
    for bad, said in ((["--format", "tflite"], "expected a comma-separated list of onnx, executorch, coreml, got 'tflite'"),
                      (["--clip_lengths", "8,0"], "expected comma-separated positive clip lengths such as 4,8, got '8,0'"),
                      (["--format", "onnx", "--no_onnx"], "--no_onnx and --format exclude each other")):
        with pytest.raises(SystemExit) as usage:
            cli_main(["export", "--ckpt_path", str(tmp_path / "x.ckpt"), *bad])
        assert usage.value.code == 2 and said in capsys.readouterr().err
