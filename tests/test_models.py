"""Models by name: presets shipped in the package (and in a built wheel), create_model with its preprocessing, the
model's input description against the data module, and pretrained weights from a Hugging Face cache (offline)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mvclip
from mvclip.cli import main
from mvclip.datamodules.datamodule import VideoTextDataModule
from mvclip.datamodules.shard_writer import ClipSource, write_shards
from mvclip.errors import ConfigError
from mvclip.input_spec import InputSpec

ROOT = Path(__file__).resolve().parents[1]
REAL_VIDEOS = ROOT / ".." / "shared" / "data" / "videos"  # ../shared/data/videos from the repo root
PRESETS = ["mobileclip_s0_frames", "mobileclip_s1_frames", "mobileclip_s2_frames", "mobileviclip_s1", "mobileviclip_small",
           "mobileviclip_tiny", "side4video_tiny", "side4video_vit_b16", "tiny_cpu", "tiny_cpu_frames", "tiny_cpu_side",
           "tiny_cpu_teacher", "vit_b16"]


def test_presets_are_package_data_and_recipes_models_is_the_same_folder():
    assert mvclip.list_models() == PRESETS
    packaged = Path(mvclip.__file__).parent / "presets"
    assert sorted(p.stem for p in packaged.glob("*.yaml")) == PRESETS
    assert (ROOT / "recipes/models").resolve() == packaged.resolve()  # recipes keep naming recipes/models/x.yaml


def test_models_command_lists_parameters_input_and_weights(capsys):
    assert main(["models", "tiny_cpu", "mobileviclip_tiny"]) == 0
    out = capsys.readouterr().out
    tiny = next(line for line in out.splitlines() if line.startswith("| tiny_cpu "))
    assert "1.3M" in tiny and "15.4M" in tiny and "8 x 64 px" in tiny and "| none " in tiny
    assert "mobileclip_s0 (apple/MobileCLIP-S0/mobileclip_s0.pt)" in out


def test_create_model_returns_the_model_and_its_preprocess():
    model, preprocess = mvclip.create_model("tiny_cpu", frames=4, input={"resolution": 64})
    assert not model.training and model.video.num_frames == 4
    assert preprocess.spec == InputSpec(frames=4, resolution=64)
    clip = preprocess(torch.randint(0, 256, (20, 96, 120, 3), dtype=torch.uint8))  # decoded frames
    assert clip.shape == (4, 3, 64, 64) and clip.dtype == torch.float32 and 0 <= clip.min() and clip.max() <= 1
    assert model.encode_video(clip[None], normalize=True).shape == (1, 256)


@pytest.mark.skipif(not REAL_VIDEOS.is_dir(), reason="real clips not found in ../shared/data/videos")
def test_preprocess_of_a_real_clip_equals_the_data_modules_evaluation_path_bit_for_bit(tmp_path):
    video = REAL_VIDEOS / "bikes.mp4"
    write_shards([ClipSource(key="bikes", path=video, captions=["bicycles"])], tmp_path / "shards", progress=False)
    model, preprocess = mvclip.create_model("tiny_cpu")
    dm = VideoTextDataModule(val=str(tmp_path / "shards"), eval_batch_size=1, num_workers=0)
    dm.adopt_input(model.input_spec, "tiny_cpu")
    batch = next(iter(dm.val_dataloader()))
    clip = preprocess(video)
    assert clip.shape == (8, 3, 64, 64)
    assert torch.equal(batch["video"][0], clip)
    assert torch.equal(preprocess(video.read_bytes()), clip)


def test_a_data_section_that_contradicts_the_model_is_a_config_error():
    spec = InputSpec.from_model_config({"video": {"num_frames": 8}, "input": {"resolution": 80}})
    dm = VideoTextDataModule(val="unused", resolution=64, frames=8)
    with pytest.raises(ConfigError, match=r"^data.resolution: 64 differs from input.resolution of model tiny_cpu \(80\); .*"
                                          r"model.input: \{resolution: 64\}"):
        dm.adopt_input(spec, "model tiny_cpu")
    agreeing = VideoTextDataModule(val="unused", frames=8)  # states only what the model says too
    agreeing.adopt_input(spec, "model tiny_cpu")
    assert (agreeing.frames, agreeing.resolution, agreeing.mean) == (8, 80, None)
    with pytest.raises(ConfigError, match=r"model.input.frames: 4 differs from model.video.num_frames \(8\)"):
        InputSpec.from_model_config({"video": {"num_frames": 8}, "input": {"frames": 4}})
    with pytest.raises(ConfigError, match=r"model.input.value_range: expected \[0, 1\] or \[0, 255\], got \[0.0, 2.0\]"):
        mvclip.build_model({**_tiny_mapping(), "input": {"value_range": [0, 2]}})


def test_fit_refuses_a_recipe_whose_data_contradicts_its_model_before_step_one():
    result = subprocess.run([sys.executable, "-m", "mvclip", "fit", "--config", "recipes/small.yaml", "--data.frames=4",
                             "--trainer.max_steps=1", "--trainer.logger=false", "--trainer.callbacks=[]"],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "mvclip fit: data.frames: 4 differs from input.frames of model recipes/models/tiny_cpu.yaml (8)")


# -- pretrained weights from the Hugging Face cache, offline ----------------------------------------------------------
def _tiny_mapping() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "src/mvclip/presets/tiny_cpu.yaml"))


def _hub_cache(root: Path, repo: str, file: str, content: dict) -> Path:
    """A cache folder in huggingface_hub's layout: models--owner--name/{refs/main, snapshots/<commit>/<file>}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    target = repo_dir / "snapshots" / commit / file
    target.parent.mkdir(parents=True)
    torch.save(content, target)
    return root


def test_pretrained_from_a_hub_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(1)
    source = mvclip.build_model("tiny_cpu")
    cache = _hub_cache(tmp_path / "hub", "acme/tiny-video", "weights.pt", source.state_dict())

    model, _ = mvclip.create_model("tiny_cpu", pretrained="hf-hub:acme/tiny-video/weights.pt", cache_dir=cache)
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name

    # a preset's published weights by name; those weights decide the normalization
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    config = {**_tiny_mapping(), "weights": {"tiny_openai": {"hub": "acme/tiny-video", "file": "weights.pt", "input": {"mean": mean, "std": std}}}}
    model, preprocess = mvclip.create_model(config, pretrained="tiny_openai", cache_dir=cache)
    assert preprocess.spec.mean == tuple(mean) and preprocess.spec.std == tuple(std)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    model, preprocess = mvclip.create_model(config, pretrained="hf-hub:acme/tiny-video", cache_dir=cache)  # file from the preset
    assert preprocess.spec.mean == tuple(mean)


def test_a_hub_file_missing_from_the_cache_says_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "empty"
    cache.mkdir()
    with pytest.raises(FileNotFoundError) as error:
        mvclip.create_model("mobileviclip_tiny", pretrained="mobileclip_s0", cache_dir=cache)
    assert str(error.value) == (
        f"mobileclip_s0.pt of apple/MobileCLIP-S0 is not in the Hugging Face cache {cache} (mvclip downloads nothing at "
        f"run time): run `huggingface-cli download apple/MobileCLIP-S0 mobileclip_s0.pt` on a machine with network "
        f"(with HF_HUB_CACHE={cache} if not the default) and copy the cache here, or download "
        "https://huggingface.co/apple/MobileCLIP-S0/resolve/main/mobileclip_s0.pt and pass its path as pretrained="
    )
    with pytest.raises(FileNotFoundError, match=r"pretrained='nope.pt': no such file, and not a weight name or "
                                                r"hf-hub:owner/repo/file; this model's published weights: mobileclip_s0"):
        mvclip.create_model("mobileviclip_tiny", pretrained="nope.pt")


# -- a built wheel ----------------------------------------------------------------------------------------------------
def test_presets_list_and_build_from_a_built_wheel(tmp_path):
    wheel_dir, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(ROOT)],
                   check=True, cwd=tmp_path)
    wheel = next(wheel_dir.glob("mvclip-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True)
    probe = ("import mvclip; print(mvclip.__file__); print(','.join(mvclip.list_models()));"
             "m, p = mvclip.create_model('tiny_cpu', frames=2); print(m.video.num_frames, p.spec.resolution);"
             "print(mvclip.build_model('mobileviclip_tiny').input_spec.resolution)")
    # mvclip only from the wheel (the editable install's finder is not on this path); torch etc. from this environment
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys, site; sys.path.append({_site_packages()!r}); {probe}"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(target)), lines
    assert lines[1].split(",") == PRESETS
    assert lines[2] == "2 64" and lines[3] == "256"


def _site_packages() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]
