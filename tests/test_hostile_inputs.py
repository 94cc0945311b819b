"""Hostile and careless inputs, as a user would try them: each case checks the message and that no file was lost.

The sections follow docs/reliability.md: exports never delete what they did not write; checkpoints carry their model
config and rebuild from it; resuming checks the command line against the checkpoint; broken model configs fail when
built; damaged checkpoints, annotation files, videos and captions are named; shard keys, workers and re-encoding.
"""
import copy
import json
import os
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mvclip import export_folder
from mvclip.builder import build_model
from mvclip.cli import main as cli_main
from mvclip.commands import shards as shards_cli
from mvclip.datamodules import shard_writer
from mvclip.datamodules.annotations import AnnotationError, read_annotations
from mvclip.datamodules.probe import probe_video
from mvclip.datamodules.shard_format import read_manifest, safe_key
from mvclip.datamodules.shard_writer import ClipSource, encode_frames_h264, write_shards
from mvclip.datamodules.worker_pool import worker_pool
from mvclip.errors import CheckpointError, ConfigError
from mvclip.export import export_model, load_export, random_inputs
from mvclip.export_folder import MARKER_NAME
from mvclip.fusion import fuse
from mvclip.inference import ExportedModel
from mvclip.lightning_module import VideoTextModule
from mvclip.testing import randomize_for_fusion_

from helpers import ROOT

EXPORT = ["--no_onnx", "--latency_repeats", "1"]
PREPROCESS = {"frames": 4, "resolution": 32, "sampling": "segments"}  # small clips keep each export around a second


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes): what "no file was lost" compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture
def model_yaml(tmp_path, tiny_model_config):
    path = tmp_path / "models" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(tiny_model_config))
    return path


def write_checkpoint(path: Path, module: VideoTextModule, step: int = 7) -> Path:
    """A checkpoint as `fit` writes its mvclip parts (module hook included), without running a fit."""
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": step,
                  "mvclip_preprocess": PREPROCESS}
    module.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def checkpoint(tmp_path, model_yaml):
    """runs/x/checkpoints/last.ckpt of a randomized tiny model, with a note of the user's beside it."""
    module = VideoTextModule(model=str(model_yaml))
    randomize_for_fusion_(module.model)
    path = write_checkpoint(tmp_path / "runs" / "x" / "checkpoints" / "last.ckpt", module)
    (path.parent / "notes.txt").write_text("my notes\n")
    return path


def tiny_export(folder: Path, config: dict, seed: int = 0) -> dict:
    model = build_model(config)
    randomize_for_fusion_(model, seed=seed)
    inputs = random_inputs(PREPROCESS["frames"], PREPROCESS["resolution"], batch=1)
    return export_model(model.eval(), config, folder, inputs, preprocess=PREPROCESS, onnx=False, latency_repeats=1)


# -- exports never delete what they did not write ------------------------------------------------------------------
def test_export_refuses_the_checkpoint_folder_and_every_folder_above_it(checkpoint, capsys):
    runs = checkpoint.parents[2]
    before = snapshot(runs)
    for out in (checkpoint.parent, checkpoint.parent.parent, runs):
        assert cli_main(["export", "--ckpt_path", str(checkpoint), "--out", str(out), *EXPORT]) == 2
        lines = error_lines(capsys)
        assert lines == [f"mvclip export: {out}: holds the checkpoint {checkpoint}; an export replaces its whole folder, "
                         "so it is never written over the checkpoint's folder (or a folder above it). Choose another "
                         f"--out, e.g. {checkpoint.with_name('last.export')}"]
    assert snapshot(runs) == before, "the checkpoint and the files beside it must be untouched"


def test_export_refuses_a_folder_of_other_files_and_an_export_holding_foreign_files(tmp_path, checkpoint, capsys):
    foreign = tmp_path / "mine"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "report.txt").write_text("keep me")
    (foreign / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = snapshot(foreign)
    assert cli_main(["export", "--ckpt_path", str(checkpoint), "--out", str(foreign), *EXPORT]) == 2
    assert error_lines(capsys) == [f"mvclip export: {foreign}: is not empty and is not an mvclip export (no {MARKER_NAME}); "
                                   "refusing to replace it, because an export never deletes what it did not write. "
                                   "Choose a new or empty folder"]
    assert snapshot(foreign) == before

    out = tmp_path / "exp"
    assert cli_main(["export", "--ckpt_path", str(checkpoint), "--out", str(out), *EXPORT]) == 0
    (out / "my_results.csv").write_text("a,b\n")  # the user adds a file to the export folder
    before = snapshot(out)
    capsys.readouterr()
    assert cli_main(["export", "--ckpt_path", str(checkpoint), "--out", str(out), *EXPORT]) == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"mvclip export: {out}: an earlier export, but it also holds my_results.csv, which the export did not write")
    assert snapshot(out) == before


def test_export_replaces_an_earlier_export_atomically_and_leaves_nothing_behind(tmp_path, tiny_model_config):
    out = tmp_path / "exp"
    tiny_export(out, tiny_model_config, seed=0)
    first = snapshot(out)
    marker = json.loads((out / MARKER_NAME).read_text())
    assert sorted(marker["files"]) == sorted(first)  # the marker lists every file the export wrote, itself included
    tiny_export(out, tiny_model_config, seed=1)
    second = snapshot(out)
    assert sorted(second) == sorted(first) and second["model.safetensors"] != first["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["exp"], "no temporary or old folder may be left beside it"
    empty = tmp_path / "empty"
    empty.mkdir()
    tiny_export(empty, tiny_model_config)  # an empty folder is fine to fill
    assert (empty / "model.safetensors").is_file()


def test_export_without_an_atomic_swap_puts_the_earlier_export_back_when_the_rename_fails(tmp_path, tiny_model_config, monkeypatch):
    out = tmp_path / "exp"
    tiny_export(out, tiny_model_config, seed=0)
    before = snapshot(out)
    monkeypatch.setattr(export_folder, "_exchange", lambda a, b: False)  # a system without renameat2
    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(src).name.startswith(".exp.tmp-"):
            raise OSError(28, "No space left on device", str(src))
        return real_rename(src, dst)

    monkeypatch.setattr(export_folder.os, "rename", failing_rename)
    with pytest.raises(export_folder.ExportTargetError, match=r"cannot write the export: No space left on device .*the earlier export there is untouched"):
        tiny_export(out, tiny_model_config, seed=1)
    monkeypatch.undo()
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]
    tiny_export(out, tiny_model_config, seed=1)  # the fallback path replaces it when the rename works
    assert snapshot(out)["model.safetensors"] != before["model.safetensors"]


def test_an_export_from_before_the_marker_is_recognized_by_its_metrics(tmp_path, tiny_model_config):
    out = tmp_path / "exp"
    tiny_export(out, tiny_model_config)
    (out / MARKER_NAME).unlink()  # as written by an older mvclip: metrics.json lists the other files
    export_folder.check_export_target(out)
    (out / "extra.txt").write_text("not ours")
    with pytest.raises(export_folder.ExportTargetError, match="also holds extra.txt"):
        export_folder.check_export_target(out)


def test_export_to_a_place_that_cannot_be_written_is_one_line_and_the_earlier_export_stays(tmp_path, checkpoint, capsys, monkeypatch):
    place = tmp_path / "shared"
    out = place / "exp"
    assert cli_main(["export", "--ckpt_path", str(checkpoint), "--out", str(out), *EXPORT]) == 0
    before = snapshot(place)
    capsys.readouterr()
    if os.geteuid() != 0:
        place.chmod(0o555)  # read-only for everyone but root
    else:  # root writes anywhere: let the file system refuse as it would
        import mvclip.export

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", kwargs.get("dir"))

        monkeypatch.setattr(mvclip.export.tempfile, "mkdtemp", refuse)
    try:
        assert cli_main(["export", "--ckpt_path", str(checkpoint), "--out", str(out), *EXPORT]) == 2
    finally:
        place.chmod(0o755)
    [line] = error_lines(capsys)
    assert line.startswith(f"mvclip export: {out}: cannot write the export: Permission denied")
    assert line.endswith("nothing was written and the earlier export there is untouched")
    assert snapshot(place) == before


def test_convert_does_not_overwrite_a_model_ckpt_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.ckpt").write_bytes(b"someone else's checkpoint")
    assert cli_main(["convert", "--from", "mobileclip", "--ckpt_path", str(tmp_path / "mobileclip_s0.pt"), "--out", str(out)]) == 2
    assert error_lines(capsys) == [f"mvclip convert: {out / 'model.ckpt'} exists and was not written by convert; refusing to "
                                   "overwrite it (choose another --out)"]
    assert snapshot(out) == {"model.ckpt": b"someone else's checkpoint"}


# -- checkpoints carry their model config ----------------------------------------------------------------------------
def test_export_rebuilds_from_the_checkpoint_config_when_the_yaml_was_edited_or_removed(tmp_path, checkpoint, model_yaml, capsys):
    module = VideoTextModule(model=str(model_yaml))
    module.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    edited = yaml.safe_load(model_yaml.read_text())
    edited["text"]["stages"][1]["depth"] = 2  # another model under the same name
    model_yaml.write_text(yaml.safe_dump(edited))
    assert cli_main(["export", "--ckpt_path", str(checkpoint), "--out", str(tmp_path / "a"), *EXPORT]) == 0
    warning = [line for line in error_lines(capsys) if "warning" in line]
    assert warning == [f"mvclip export: warning: model {model_yaml} differs from the model config stored in the checkpoint "
                       f"(text.stages[1].depth: 1 in the checkpoint, 2 here); using the copy stored in {checkpoint}"]
    assert yaml.safe_load((tmp_path / "a" / "model.yaml").read_text())["text"]["stages"][1]["depth"] == 1
    model_yaml.unlink()  # moved away: the checkpoint still exports
    assert cli_main(["export", "--ckpt_path", str(checkpoint), "--out", str(tmp_path / "b"), *EXPORT]) == 0
    assert f"model {model_yaml} cannot be used (model config file not found" in capsys.readouterr().err
    clip = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = fuse(module.model).encode_video(clip, normalize=True)
        for name in ("a", "b"):
            torch.testing.assert_close(load_export(tmp_path / name).encode_video(clip, normalize=True), expected, atol=1e-5, rtol=0)


def test_a_module_refuses_the_checkpoint_of_another_model(checkpoint, tiny_model_config, model_yaml):
    other = copy.deepcopy(tiny_model_config)
    other["video"]["stages"][0]["depth"] = 2
    saved = torch.load(checkpoint, weights_only=True)
    with pytest.raises(ConfigError, match=r"the checkpoint's model differs from this module's \(video\.stages\[0\]\.depth: 1 in the checkpoint, 2 here\)"):
        VideoTextModule(model=other).on_load_checkpoint(saved)
    # outside a resumed fit (load_from_checkpoint, fine-tuning) other training settings are fine
    VideoTextModule(model=str(model_yaml), freeze=["text"], lr=0.1).on_load_checkpoint(saved)


# -- resuming: the command line against the checkpoint (one short fit, then resumes) ---------------------------------
def _recipe(tmp_path: Path, model: Path, runs: Path, synthetic_root: Path) -> Path:
    recipe = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(runs), "name": "t"}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True, "save_top_k": 0}}]},
        "model": {"model": str(model), "lr": 2e-3, "warmup_steps": 0},
        "data": {"train": str(synthetic_root / "train"), "frames": 4, "resolution": 64, "batch_size": 8, "num_workers": 0},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_resume_checks_overrides_rebuilds_the_stored_model_applies_lr_and_survives_a_moved_folder(tmp_path, model_yaml, synthetic_root, capsys):
    runs = tmp_path / "runs"
    recipe = _recipe(tmp_path, model_yaml, runs, synthetic_root)
    fit = ["fit", "--config", str(recipe)]
    assert cli_main(fit) == 0
    ckpt = runs / "t" / "version_0" / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    other = tmp_path / "other.yaml"
    other.write_text(model_yaml.read_text().replace("embed_dim: 32", "embed_dim: 48"))

    # a different model or setting is an error naming the key, whether the checkpoint is `last` or a path
    for where in ("last", str(ckpt)):
        capsys.readouterr()
        assert cli_main([*fit, f"--ckpt_path={where}", f"--model.model={other}"]) == 2
        [line] = [x for x in error_lines(capsys) if x.startswith("mvclip fit:")]
        assert line.startswith(f"mvclip fit: {ckpt}: model.model: model {other} differs from the model config stored in the "
                               "checkpoint (embed_dim: 32 in the checkpoint, 48 here)")
        assert cli_main([*fit, f"--ckpt_path={where}", "--model.warmup_steps=5", "--model.freeze=[text]"]) == 2
        [line] = [x for x in error_lines(capsys) if x.startswith("mvclip fit:")]
        assert line.startswith(f"mvclip fit: {ckpt}: model.freeze: ['text'] here, None in the checkpoint; "
                               "model.warmup_steps: 5 here, 0 in the checkpoint. A checkpoint keeps its run's settings")
    assert ckpt.read_bytes() == before

    # an edited YAML under the same name: a warning, and the checkpoint's own model trains on
    edited = yaml.safe_load(model_yaml.read_text())
    edited["video"]["stages"][0]["depth"] = 2
    model_yaml.write_text(yaml.safe_dump(edited))
    capsys.readouterr()
    assert cli_main([*fit, f"--ckpt_path={ckpt}", "--trainer.max_steps=3"]) == 0
    assert "differs from the model config stored in the checkpoint (video.stages[0].depth: 1 in the checkpoint, 2 here); using the copy" in capsys.readouterr().err
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 3 and state["mvclip_model_config"]["video"]["stages"][0]["depth"] == 1
    assert not any(k.startswith("model.video.stages.0.blocks.1.") for k in state["state_dict"])

    # a new learning rate wins: every group and the schedule's base follow it, and it is said
    assert cli_main([*fit, "--ckpt_path=last", "--trainer.max_steps=4", "--model.lr=0.0005"]) == 0
    assert "resumed with lr 0.0005: learning rates of every parameter group and of the schedule scaled by 0.25" in capsys.readouterr().out
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 4 and state["hyper_parameters"]["lr"] == 0.0005
    assert {g["initial_lr"] for g in state["optimizer_states"][0]["param_groups"]} == {0.0005}
    assert state["lr_schedulers"][0]["base_lrs"] == [0.0005] * len(state["optimizer_states"][0]["param_groups"])

    # the run folder moves: resuming there goes on writing last.ckpt (not last-v1.ckpt) in the same version
    moved = tmp_path / "moved"
    runs.rename(moved)
    assert cli_main([*fit, "--ckpt_path=last", "--trainer.max_steps=5", "--model.lr=0.0005",
                     f"--trainer.logger.init_args.save_dir={moved}"]) == 0
    folder = moved / "t" / "version_0" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 5
    assert sorted(p.name for p in (moved / "t").iterdir()) == ["version_0"]


# -- broken model configs fail when built, naming the key and the accepted values ------------------------------------
def _broken(tiny_model_config, tmp_path, case):
    cfg = copy.deepcopy(tiny_model_config)
    if case == "head out_dim":
        cfg["video"]["head"]["out_dim"] = 64
    elif case.startswith("kernel_size"):
        cfg["video"]["stages"][0]["kernel_size"] = int(case.split()[-1])
    elif case.startswith("temporal_kernel_size"):
        cfg["video"]["stages"][1]["temporal_kernel_size"] = int(case.split()[-1])
    elif case == "logit_scale":
        cfg["logit_scale"] = "high"
    elif case == "imports itself":
        path = tmp_path / "self.yaml"
        path.write_text(yaml.safe_dump({**cfg, "imports": ["self.yaml"]}))
        return path
    elif case == "plugin imports itself":
        plugin, config = tmp_path / "plugin.py", tmp_path / "with_plugin.yaml"
        plugin.write_text(f"import mvclip\nmvclip.build_model({str(config)!r})\n")
        config.write_text(yaml.safe_dump({**cfg, "imports": ["plugin.py"]}))
        return config
    elif case == "interpolation cycle":
        cfg["embed_dim"] = "${video.num_frames}"
        cfg["video"]["num_frames"] = "${embed_dim}"
    return cfg


BROKEN = {
    "head out_dim": "model.video.head.out_dim: 64 differs from model.embed_dim (32); video and text embeddings are compared, "
                    "so the head must output embed_dim: remove out_dim or set it to 32",
    "kernel_size 4": "model.video.stages[0].kernel_size: block 'st_repmixer' got 4; expected a positive odd integer (1, 3, 5, ...)",
    "kernel_size 0": "model.video.stages[0].kernel_size: block 'st_repmixer' got 0; expected a positive odd integer (1, 3, 5, ...)",
    "kernel_size -3": "model.video.stages[0].kernel_size: block 'st_repmixer' got -3; expected a positive odd integer (1, 3, 5, ...)",
    "temporal_kernel_size 2": "model.video.stages[1].temporal_kernel_size: block 'st_repmixer' got 2; expected a positive odd integer",
    "temporal_kernel_size 0": "model.video.stages[1].temporal_kernel_size: block 'st_repmixer' got 0; expected a positive odd integer",
    "temporal_kernel_size -1": "model.video.stages[1].temporal_kernel_size: block 'st_repmixer' got -1; expected a positive odd integer",
    "logit_scale": "model.logit_scale: expected a finite number (the initial log of the logit scale, e.g. 2.659 = ln(1/0.07)), got 'high'",
    "imports itself": "model.imports[0]: 'self.yaml' is a config file, not a block plugin (a config cannot import another config, "
                      "or itself); expected Python module names (my_package.blocks) or .py files that register blocks",
    "plugin imports itself": "model.imports[0]: block plugin 'plugin.py' imports itself: its code builds a model whose `imports:` lists it again",
    "interpolation cycle": "model.embed_dim: cannot resolve the interpolation: the interpolation refers back to itself (a cycle); "
                           "expected a value, or a ${...} reference to another key that does not lead back to this one",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_model_config_fails_when_built_naming_the_key(case, tiny_model_config, tmp_path, isolated_registry):
    config = _broken(tiny_model_config, tmp_path, case)
    with pytest.raises(ConfigError) as caught:
        build_model(config)
    assert str(caught.value).startswith(BROKEN[case])
    assert "\n" not in str(caught.value)


def test_fit_with_a_broken_config_exits_with_one_line_and_no_traceback(tmp_path, model_yaml, synthetic_root):
    broken = yaml.safe_load(model_yaml.read_text())
    broken["video"]["stages"][0]["kernel_size"] = 2
    model_yaml.write_text(yaml.safe_dump(broken))
    recipe = _recipe(tmp_path, model_yaml, tmp_path / "runs", synthetic_root)
    result = subprocess.run([sys.executable, "-m", "mvclip", "fit", "--config", str(recipe)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "mvclip fit: model.video.stages[0].kernel_size: block 'st_repmixer' got 2; expected a positive odd integer")
    assert not (tmp_path / "runs").exists(), "nothing is written before the config is known to be good"


# -- damaged checkpoints ---------------------------------------------------------------------------------------------
def test_truncated_empty_or_garbage_checkpoints_say_so_and_a_malicious_one_is_refused(tmp_path, checkpoint, model_yaml, synthetic_root, capsys):
    whole = checkpoint.read_bytes()
    damaged = {"empty.ckpt": b"", "half.ckpt": whole[: len(whole) // 2], "garbage.ckpt": b"PK\x03\x04 not a checkpoint" * 10}
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
    for name in damaged:
        path = tmp_path / name
        assert cli_main(["export", "--ckpt_path", str(path), *EXPORT]) == 2
        [line] = error_lines(capsys)
        assert line.startswith(f"mvclip export: {path}: truncated or corrupted"), line
        with pytest.raises(CheckpointError, match=rf"{path}: truncated or corrupted"):
            VideoTextModule(model=str(model_yaml), init_from=str(path))
    recipe = _recipe(tmp_path, model_yaml, tmp_path / "runs", synthetic_root)
    assert cli_main(["fit", "--config", str(recipe), f"--ckpt_path={tmp_path / 'half.ckpt'}"]) == 2
    assert error_lines(capsys)[-1].startswith(f"mvclip fit: {tmp_path / 'half.ckpt'}: truncated or corrupted")
    assert cli_main(["fit", "--config", str(recipe), f"--ckpt_path={checkpoint}"]) == 2  # weights, no training state
    assert error_lines(capsys)[-1] == (f"mvclip fit: {checkpoint}: holds weights but not the training state Lightning resumes "
                                       f"(not written by `fit`); start from its weights with --model.init_from={checkpoint} "
                                       "instead of --ckpt_path")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, evil)
    assert cli_main(["export", "--ckpt_path", str(evil), *EXPORT]) == 2
    assert error_lines(capsys) == [f"mvclip export: {evil}: refused: it holds a Python object (posix.system) that loading could "
                                   "execute; mvclip loads weights with weights_only=True and never runs code from a file "
                                   "(save tensors, or use safetensors)"]
    assert {name: (tmp_path / name).read_bytes() for name in damaged} == damaged


# -- annotation files ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    """A small real H.264 clip (16 frames of 64x48)."""
    frames = [np.full((48, 64, 3), 20 + 10 * i, np.uint8) for i in range(16)]
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    path.write_bytes(encode_frames_h264(frames, 8))
    return path


def test_annotations_in_another_encoding_name_file_and_line_and_read_with_encoding(tmp_path, clip_file, capsys):
    videos = clip_file.parent
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,caption\nclip.mp4,a red ball\nclip.mp4,un café noir\n".encode("latin-1"))
    with pytest.raises(AnnotationError) as caught:
        read_annotations(latin, videos)
    assert str(caught.value) == (f"{latin}:3: not valid UTF-8 (byte 0xe9 at byte column 16); save the file as UTF-8, or name "
                                 "its encoding with --encoding (e.g. --encoding latin-1 or cp1252)")
    [clip] = read_annotations(latin, videos, encoding="latin-1")
    assert clip.captions == ["a red ball", "un café noir"]
    out = tmp_path / "shards"
    assert shards_cli.main(["--videos", str(videos), "--annotations", str(latin), "--out", str(out), "--no_progress"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {caught.value}"
    assert shards_cli.main(["--videos", str(videos), "--annotations", str(latin), "--out", str(out), "--no_progress",
                            "--encoding", "latin-1"]) == 0
    assert read_manifest(out)["total_samples"] == 1
    bom = tmp_path / "bom.csv"  # "CSV UTF-8" from a spreadsheet starts with a byte-order mark
    bom.write_bytes("path,caption\nclip.mp4,a red ball\n".encode("utf-8-sig"))
    assert [c.captions for c in read_annotations(bom, videos)] == [["a red ball"]]


def test_a_header_only_csv_is_an_error_not_an_empty_dataset(tmp_path, clip_file, capsys):
    header = tmp_path / "header.csv"
    header.write_text("path,caption\n")
    out = tmp_path / "shards"
    assert shards_cli.main(["--videos", str(clip_file.parent), "--annotations", str(header), "--out", str(out), "--no_progress"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {header}: no samples in it (a csv file with no rows or records, e.g. a CSV "
                                               "header alone); expected at least one annotated video")
    assert not out.exists()
    missing = tmp_path / "missing.csv"  # rows, but every video is missing: the build says nothing was written
    missing.write_text("path,caption\nnope.mp4,a red ball\n")
    assert shards_cli.main(["--videos", str(clip_file.parent), "--annotations", str(missing), "--out", str(out), "--no_progress"]) == 1
    assert f"error: no sample was written to {out}: every input was skipped" in capsys.readouterr().err


# -- embed: unreadable videos and empty captions ---------------------------------------------------------------------
def test_embed_skips_and_reports_an_unreadable_video_and_refuses_an_empty_caption(tmp_path, tiny_model_config, clip_file, capsys):
    folder = tmp_path / "exp"
    tiny_export(folder, tiny_model_config)
    videos = tmp_path / "videos"
    videos.mkdir()
    good = videos / "good.mp4"
    good.write_bytes(clip_file.read_bytes())
    (videos / "cut.mp4").write_bytes(clip_file.read_bytes()[:300])
    (videos / "notes.mp4").write_text("not a video")
    out = tmp_path / "emb.npz"
    assert cli_main(["embed", "--export", str(folder), "--video", str(videos), "--text", "a red ball", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("mvclip embed: skipped")]
    assert [line.split(":")[1].strip() for line in skipped] == ["skipped " + str(videos / "cut.mp4"), "skipped " + str(videos / "notes.mp4")]
    assert all("cannot be read" in line for line in skipped)
    assert f"wrote 1 video and 1 text embeddings to {out} (skipped 2 unreadable video(s), listed above)" in captured.out
    data = np.load(out)
    assert list(data["video_key"]) == [str(good)] and data["video"].shape == (1, 32)
    np.testing.assert_allclose(data["video"][0], ExportedModel(folder).embed_videos([good])[0].numpy(), atol=1e-6)

    empty_out = tmp_path / "empty.npz"
    assert cli_main(["embed", "--export", str(folder), "--text", "a red ball", "", "--out", str(empty_out)]) == 2
    assert error_lines(capsys) == ["mvclip embed: --text caption 2 ('') is empty; every caption needs some text"]
    assert not empty_out.exists()
    with pytest.raises(ValueError, match=r"caption 1 \('   '\) is empty"):
        ExportedModel(folder).embed_texts(["a red ball", "   "])


# -- shards: keys, workers, re-encoding ------------------------------------------------------------------------------
def test_non_ascii_names_give_unique_stable_keys_and_a_duplicate_names_what_it_collided_with(tmp_path, clip_file):
    videos = tmp_path / "videos"
    videos.mkdir()
    names = ["日本語.mp4", "中文.mp4", "🎬.mp4", "🎥.mp4", "café.mp4", "a.b.mp4", "a_b.mp4"]
    for name in names:
        (videos / name).write_bytes(clip_file.read_bytes())
    table = tmp_path / "clips.csv"
    table.write_text("path,caption\n" + "".join(f"{n},clip {i}\n" for i, n in enumerate(names)), encoding="utf-8")
    clips = read_annotations(table, videos)
    keys = {Path(str(c.path)).name: c.key for c in clips}
    assert keys["日本語.mp4"] == "日本語_mp4" and keys["中文.mp4"] == "中文_mp4" and keys["café.mp4"] == "café_mp4"
    assert keys["🎬.mp4"].startswith("mp4-") and keys["🎥.mp4"].startswith("mp4-") and keys["🎬.mp4"] != keys["🎥.mp4"]
    assert keys == {n: safe_key(n) for n in names}, "keys are stable: the same name gives the same key"
    assert safe_key(unicodedata.normalize("NFD", "café.mp4")) == "café_mp4", "one key however the name is normalized"
    manifest = write_shards(clips, tmp_path / "shards", progress=False)
    assert manifest["total_samples"] == 6
    [skip] = manifest["skipped"]
    assert skip["reason"] == "duplicate-key" and skip["key"] == "a_b_mp4"
    assert skip["detail"] == f"key 'a_b_mp4' is already taken by {videos / 'a.b.mp4'}"


_ORPHAN_SCRIPT = """
import time
from mvclip.datamodules.worker_pool import worker_pool
pool = worker_pool(2)
for _ in range(2):
    pool.submit(time.sleep, 600)
while len(pool._processes) < 2:
    time.sleep(0.05)
print(*pool._processes, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_shard_workers_exit_when_their_parent_is_killed(tmp_path, clip_file, monkeypatch):
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "workers outlived their killed parent"

    used = []  # the shard writer builds its pool this way
    monkeypatch.setattr(shard_writer, "worker_pool", lambda n: used.append(n) or worker_pool(n))
    write_shards([ClipSource("a", clip_file, ["a clip"])], tmp_path / "shards", workers=1, progress=False)
    assert used == [1]


def test_reencoding_gives_the_same_bytes_on_any_cpus_and_in_a_resumed_build(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    source = tmp_path / "moving.mp4"
    source.write_bytes(encode_frames_h264([np.roll(base, 3 * i, axis=1) for i in range(30)], 10, keyframe_interval=30, threads=1))
    info = probe_video(str(source))
    cpus = os.sched_getaffinity(0)
    outputs = []
    for allowed in (cpus, {min(cpus)}):  # x264 sizes its "auto" thread pool from the CPUs this process may use
        os.sched_setaffinity(0, allowed)
        try:
            outputs.append(shard_writer.transcode(source, info, short_side=None, keyframe_interval=8))
        finally:
            os.sched_setaffinity(0, cpus)
    assert outputs[0] == outputs[1]

    clips = [ClipSource(f"k{i}", source, [f"clip {i}"], start=0.1 * i, end=2.0) for i in range(6)]
    write_shards(clips, tmp_path / "clean", samples_per_shard=2, reencode_short_side=96, progress=False)
    real_finish, finished = shard_writer._ShardFile.finish, []

    def dying_finish(self):
        if len(finished) == 1:
            raise KeyboardInterrupt("killed")
        finished.append(self.path.name)
        return real_finish(self)

    monkeypatch.setattr(shard_writer._ShardFile, "finish", dying_finish)
    with pytest.raises(KeyboardInterrupt):
        write_shards(clips, tmp_path / "resumed", samples_per_shard=2, reencode_short_side=96, progress=False)
    monkeypatch.undo()
    write_shards(clips, tmp_path / "resumed", samples_per_shard=2, reencode_short_side=96, progress=False)
    clean, resumed = snapshot(tmp_path / "clean"), snapshot(tmp_path / "resumed")
    tars = sorted(name for name in clean if name.endswith(".tar"))
    assert len(tars) == 3 and {n: resumed[n] for n in tars} == {n: clean[n] for n in tars}
