"""Fused exports: the FuseExport callback, `mvclip export`, ONNX parity, failure naming the block, `mvclip embed`."""
import json
from pathlib import Path

import lightning as L
import numpy as np
import onnxruntime as ort
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from mvclip.builder import build_model
from mvclip.callbacks import FuseExport
from mvclip.cli import main as cli_main
from mvclip.export import EXPORT_FILES, MAX_ABS_DIFF, ExportError, export_model, load_export, random_inputs
from mvclip.fusion import fuse
from mvclip.inference import ExportedModel
from mvclip.lightning_module import VideoTextModule
from mvclip.registry import register_block
from mvclip.testing import randomize_for_fusion_

from test_training import datamodule

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


def _random_model(config, seed=0):
    model = build_model(config)
    randomize_for_fusion_(model, seed=seed)  # non-trivial BatchNorm statistics and layer scales
    return model.eval()


def test_export_folder_rebuilds_the_fused_model_and_onnx_matches(tmp_path, tiny_model_config):
    model = _random_model(tiny_model_config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = random_inputs(frames=4, resolution=64, batch=2)
    metrics = export_model(model, tiny_model_config, tmp_path / "exp", inputs, latency_repeats=2)
    folder = tmp_path / "exp"
    assert {*EXPORT_FILES, "video.onnx", "text.onnx"} <= {p.name for p in folder.iterdir()}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "export must not modify the model"
    assert [p.name for p in tmp_path.iterdir()] == ["exp"], "no temporary folder may be left behind"
    written = json.loads((folder / "metrics.json").read_text())
    assert written["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert written["params"]["video_fused"] < written["params"]["video"]  # BatchNorms and branches are gone
    assert written["flops"]["video_clip"] > 0 and written["latency_ms"]["video_fused"] > 0
    assert written["latency_ms"]["video_fused_channels_last"] > 0
    from mvclip.allocator import freed_memory_kept

    setup = written["latency_setup"]  # what the latency was measured under, for a deployer to reproduce
    assert setup["threads"] == torch.get_num_threads() and setup["compiled"] is False
    assert setup["allocator"].startswith("freed memory kept" if freed_memory_kept() else "C library defaults")
    assert setup["memory_format"] == {"video_unfused": "contiguous", "video_fused": "contiguous",
                                      "video_fused_channels_last": "channels_last, RGB stem too"}
    assert setup["fused_speedup"] == "video_unfused / video_fused"  # a contiguous model: both rows contiguous
    assert written["latency_ms"]["fused_speedup"] == pytest.approx(
        written["latency_ms"]["video_unfused"] / written["latency_ms"]["video_fused"])
    names = {c["name"] for c in metrics["checks"]}
    assert {"video", "text", "reloaded/video", "onnx/video", "onnx/text", "onnx/video/batch3"} <= names
    assert all(c["max_abs_diff"] <= MAX_ABS_DIFF for c in metrics["checks"])

    # the folder rebuilds the fused model in inference form: no BatchNorm, same outputs as fusing here
    rebuilt = load_export(folder)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in rebuilt.modules())
    clip = torch.rand(3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model.encode_video(clip, normalize=True)
        torch.testing.assert_close(rebuilt.encode_video(clip, normalize=True), reference, atol=MAX_ABS_DIFF, rtol=0)
        # ONNX on inputs it never saw, batch size unlike the export's
        session = ort.InferenceSession(str(folder / "video.onnx"), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"video": clip.numpy()})[0])
        assert (got - reference).abs().max().item() <= 1e-4
        tokens = inputs["text"]
        text_session = ort.InferenceSession(str(folder / "text.onnx"), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(text_session.run(None, {"text": tokens.numpy()})[0])
        assert (got - model.encode_text(tokens, normalize=True)).abs().max().item() <= 1e-4


class _BrokenFold(nn.Module):
    """A depthwise conv + BatchNorm whose reparameterize() forgets the BatchNorm shift (a plausible bug)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return x + self.bn(self.conv(x))

    def reparameterize(self) -> None:
        if isinstance(self.bn, nn.Identity):
            return
        scale = self.bn.weight / (self.bn.running_var + self.bn.eps).sqrt()
        self.conv.weight.data.mul_(scale.reshape(-1, 1, 1, 1))
        self.bn = nn.Identity()  # bug: the bias (beta - mean * scale) is dropped


def test_a_broken_reparameterize_fails_the_export_naming_the_block_and_writes_nothing(tmp_path, tiny_model_config, isolated_registry):
    register_block("broken_fold")(_BrokenFold)
    tiny_model_config["video"]["stages"][1]["depth"] = 2
    tiny_model_config["video"]["stages"].insert(2, {"block": "broken_fold", "dim": 32})
    model = _random_model(tiny_model_config)
    with pytest.raises(ExportError, match=r"video\.stages\.2\.blocks\.0 \(_BrokenFold\)"):
        export_model(model, tiny_model_config, tmp_path / "exp", random_inputs(4, 64), latency_repeats=1)
    assert list(tmp_path.iterdir()) == [], "a failed export writes nothing, not even a temporary folder"


def test_export_keeps_the_previous_folder_when_a_new_export_fails(tmp_path, tiny_model_config, isolated_registry):
    good = _random_model(tiny_model_config)
    export_model(good, tiny_model_config, tmp_path / "exp", random_inputs(4, 64), onnx=False, latency_repeats=1)
    before = (tmp_path / "exp" / "model.safetensors").read_bytes()
    register_block("broken_fold")(_BrokenFold)
    tiny_model_config["video"]["stages"].insert(2, {"block": "broken_fold", "dim": 32})
    with pytest.raises(ExportError):
        export_model(_random_model(tiny_model_config), tiny_model_config, tmp_path / "exp", random_inputs(4, 64), onnx=False)
    assert (tmp_path / "exp" / "model.safetensors").read_bytes() == before


@pytest.mark.slow
def test_fuse_export_callback_writes_verified_exports_for_best_and_last(tmp_path, synthetic_root, tiny_model_config):  # noqa: F811
    module = VideoTextModule(model=tiny_model_config, lr=2e-3, warmup_steps=0)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/t2v/R@1", mode="max", save_last=True, filename="best")
    export = FuseExport(latency_repeats=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, val_check_interval=2, check_val_every_n_epoch=None,
                        limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[checkpoints, export])
    trainer.fit(module, datamodule=datamodule(synthetic_root))
    assert set(export.exports) == {"best", "last"}
    assert module.model.training and any(isinstance(m, nn.BatchNorm2d) for m in module.model.modules()), "the training module is untouched"
    for kind, folder in export.exports.items():
        assert folder == tmp_path / "ckpt" / f"{kind}.export"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["kind"] == kind and metrics["validation"]["val/t2v/R@1"] >= 0 and metrics["validation_step"] in (2, 4)
        assert metrics["train"]["steps"] == 4 and metrics["train"]["time_s"] > 0 and metrics["train"]["peak_memory_mb"] > 100
        assert all(c["max_abs_diff"] <= MAX_ABS_DIFF and c["min_cosine"] >= 0.99999 for c in metrics["checks"])
        assert json.loads((folder / "preprocess.json").read_text())["frames"] == 4
    # the last export is the trained module, fused
    with torch.no_grad():
        clip = export.inputs["video"]
        expected = fuse(module.model).encode_video(clip, normalize=True)
        torch.testing.assert_close(load_export(export.exports["last"]).encode_video(clip, normalize=True), expected, atol=1e-5, rtol=0)


def test_export_command_on_a_checkpoint_then_embed_real_videos_with_both_backends(tmp_path, tiny_model_config, capsys):
    module = VideoTextModule(model=tiny_model_config)
    randomize_for_fusion_(module.model)
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 7,
                "mvclip_preprocess": {"frames": 4, "resolution": 64, "sampling": "segments"}}, ckpt)
    assert cli_main(["export", "--ckpt_path", str(ckpt), "--latency_repeats", "1"]) == 0
    folder = tmp_path / "run" / "last.export"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["step"] == 7 and metrics["input"] == {"frames": 4, "resolution": 64}

    videos = sorted(VIDEOS.glob("*.mp4"))[:2]
    assert videos, f"no sample videos in {VIDEOS}"
    texts = ["a rabbit in a forest", "people riding bikes"]
    out = {}
    for backend in ("torch", "onnx"):
        path = tmp_path / f"{backend}.npz"
        args = ["embed", "--export", str(folder), "--video", *map(str, videos), "--text", *texts, "--backend", backend, "--out", str(path)]
        assert cli_main(args) == 0
        out[backend] = np.load(path)
        assert out[backend]["video"].shape == (2, 32) and out[backend]["text"].shape == (2, 32)
        assert list(out[backend]["video_key"]) == [str(v) for v in videos]
    np.testing.assert_allclose(out["onnx"]["video"], out["torch"]["video"], atol=1e-4)
    np.testing.assert_allclose(out["onnx"]["text"], out["torch"]["text"], atol=1e-4)
    # embed reads the videos exactly as evaluation does: same clip through the fused model directly
    exported = ExportedModel(folder)
    clip = exported.load_clip(videos[0])
    assert clip.shape == (4, 3, 64, 64) and 0.0 <= clip.min() and clip.max() <= 1.0
    with torch.no_grad():
        direct = fuse(module.model).encode_video(clip[None], normalize=True)[0].numpy()
    np.testing.assert_allclose(out["torch"]["video"][0], direct, atol=1e-5)


def test_export_command_errors_name_the_file(tmp_path, capsys):
    assert cli_main(["export", "--ckpt_path", str(tmp_path / "missing.ckpt")]) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    bad = tmp_path / "bad.ckpt"
    torch.save({"weights": torch.zeros(1)}, bad)
    assert cli_main(["export", "--ckpt_path", str(bad)]) == 2
    assert "bad.ckpt: not a Lightning checkpoint" in capsys.readouterr().err


def test_a_model_trained_in_channels_last_is_timed_against_the_fused_model_in_its_layout(tmp_path, tiny_model_config):
    """The fused speed-up compares one layout: a channels_last training copy against the fused channels_last row."""
    from mvclip.layers.memory_format import to_channels_last

    model = to_channels_last(_random_model(tiny_model_config))
    export_model(model, tiny_model_config, tmp_path / "exp", random_inputs(frames=4, resolution=64, batch=2),
                 onnx=False, latency_repeats=2)
    written = json.loads((tmp_path / "exp" / "metrics.json").read_text())
    setup, latency = written["latency_setup"], written["latency_ms"]
    assert setup["memory_format"]["video_unfused"] == "channels_last, RGB stem contiguous"
    assert setup["memory_format"]["video_fused"] == "contiguous"  # the folder rebuilds a plain model
    assert setup["fused_speedup"] == "video_unfused / video_fused_channels_last"
    assert latency["fused_speedup"] == pytest.approx(latency["video_unfused"] / latency["video_fused_channels_last"])
