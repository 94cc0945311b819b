"""Core ML target: fp16 iOS 17 ML programs converted on Linux. Core ML cannot predict here, so what is checked is the
converted graph's parity in PyTorch, the package's inputs/outputs/shapes and its fp16 weights; and `.mlpackage`
folders inside an export keep the rule that an export never deletes what it did not write."""
import json

import pytest
import torch

pytest.importorskip("coremltools")

from mvclip.export import export_model, random_inputs  # noqa: E402
from mvclip.export_folder import ExportTargetError, check_export_target  # noqa: E402

from test_export_targets import _random_model, assert_divergent_graph_refused  # noqa: E402


def test_coreml_packages_have_fixed_shapes_fp16_weights_and_a_matching_graph(tmp_path, tiny_model_config):
    model = _random_model(tiny_model_config)
    folder = tmp_path / "exp"
    metrics = export_model(model, tiny_model_config, folder, random_inputs(4, 64), formats=["coreml"], clip_lengths=[4, 8], latency_repeats=1)
    assert {"video.mlpackage", "video_t8.mlpackage", "text.mlpackage"} <= set(metrics["files"])
    assert (folder / "video.mlpackage" / "Manifest.json").is_file() and (folder / "video.mlpackage").stat().st_mode & 0o777 == 0o755
    info = metrics["targets"]["coreml"]
    assert info["predicted_here"] is False and info["deployment_target"] == "iOS17" and info["compute_precision"] == "float16"
    video, long, text = (info["packages"][n] for n in ("video.mlpackage", "video_t8.mlpackage", "text.mlpackage"))
    assert video["inputs"] == {"video": {"shape": [1, 4, 3, 64, 64], "dtype": "float32"}}
    assert long["inputs"] == {"video": {"shape": [1, 8, 3, 64, 64], "dtype": "float32"}}
    assert text["inputs"] == {"text": {"shape": [1, 77], "dtype": "int32"}}
    assert video["outputs"] == text["outputs"] == {"embedding": {"shape": [1, 32], "dtype": "float32"}}
    assert video["fp32_weights"] == [] and set(video["weight_values"]) == {"float16"}
    assert video["ops"]["conv"] >= 10 and video["spec_version"] >= 8  # iOS 17 = spec 8
    checks = {c["name"]: c for c in metrics["checks"]}
    assert all(checks[n]["max_abs_diff"] < 1e-5 for n in ("coreml/video/graph/frames4", "coreml/video/graph/frames8", "coreml/text/graph"))

    # the marker lists the packages file by file; re-exporting replaces them, and a foreign file inside one is refused
    marker = json.loads((folder / "mvclip-export.json").read_text())
    assert "video.mlpackage/Manifest.json" in marker["files"]
    check_export_target(folder)
    (folder / "video.mlpackage" / "notes.txt").write_text("mine")
    with pytest.raises(ExportTargetError, match=r"also holds video\.mlpackage"):
        check_export_target(folder)


def test_a_coreml_graph_that_differs_is_refused_naming_the_package(tmp_path, tiny_model_config, isolated_registry):
    assert_divergent_graph_refused(tmp_path, tiny_model_config, "coreml", r"video\.mlpackage: differs from the PyTorch fused model on coreml/video/graph/frames4", video_only=True)


def test_reexporting_over_an_export_with_packages_replaces_them(tmp_path, tiny_model_config):
    tiny_model_config.pop("text")
    model = _random_model(tiny_model_config)
    folder = tmp_path / "exp"
    export_model(model, tiny_model_config, folder, random_inputs(4, 64), formats=["coreml"], clip_lengths=[4, 2], latency_repeats=1)
    assert (folder / "video_t2.mlpackage").is_dir()
    export_model(model, tiny_model_config, folder, random_inputs(4, 64), formats=["coreml"], latency_repeats=1)
    assert not (folder / "video_t2.mlpackage").exists() and (folder / "video.mlpackage").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]
