"""Reinforced shards (`python -m mvclip teacher`): stored teacher embeddings, replayed views, manifest, resume, batches.

Two tiny random mvclip teachers (one saved as a checkpoint, one as an export folder, different embedding widths) run
over 4 tiny clips (48x32 px, 12 frames) in 2 shards; every test reads that one reinforced set.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvclip.cli import main as cli_main
from mvclip.datamodules.bad_samples import BadSampleCounter
from mvclip.datamodules.collate import collate_train
from mvclip.datamodules.datamodule import VideoTextDataModule
from mvclip.datamodules.decode import VideoReader
from mvclip.datamodules.pipeline import SampleDecoder, ShardDataset, iter_tar, list_shards
from mvclip.datamodules.sampling import sample_indices
from mvclip.datamodules.shard_reading import teacher_embed_dims, teacher_logit_scales
from mvclip.datamodules.shard_writer import ClipSource, write_shards
from mvclip.datamodules.transforms import VideoTransform, random_resized_crop_box
from mvclip.datamodules.views import decode_views
from mvclip.errors import ConfigError
from mvclip.losses import DistillationLoss
from mvclip.losses.base import ModelOutputs
from tests.data.loader_fixtures import encode_clip, stub_tokenize

import mvclip.reinforce as reinforce

K = 3  # views per clip
DIMS = {"a": 32, "b": 24}
CAPTIONS = {"c0": ["a bar moves right", "stripes"], "c1": ["", "a bright frame"], "c2": ["one caption"],
            "c3": ["first", "second", "third"]}


def _model_config(embed_dim: int) -> dict:
    return {
        "embed_dim": embed_dim,
        "input": {"resolution": 32},
        "video": {"num_frames": 4, "stem": {"block": "mobileone_stem"},
                  "stages": [{"block": "st_repmixer", "depth": 1, "dim": 16},
                             {"block": "st_repmixer", "depth": 1, "dim": 32, "downsample": {"block": "patch_embed"}}],
                  "head": {"block": "mci_head"}},
        "text": {"width": 32, "context_length": 77, "stages": [{"block": "text_transformer", "depth": 1, "num_heads": 2}]},
    }


def _teachers(root: Path) -> tuple[Path, Path]:
    """Teacher `a` as a checkpoint (as `fit`/`convert` write one), `b` as an export folder (the files `export`
    writes that loading reads, without its verification and timing, which would double this file's runtime)."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from mvclip.commands.convert import write_checkpoint
    from mvclip.export import fused_config
    from mvclip.fusion import fuse
    from mvclip.lightning_module import VideoTextModule

    torch.manual_seed(0)
    ckpt = root / "a.ckpt"
    write_checkpoint(VideoTextModule(model=_model_config(DIMS["a"])), ckpt, source="test", format_name="random",
                     frames=4, resolution=32)
    torch.manual_seed(1)
    module = VideoTextModule(model=_model_config(DIMS["b"]))
    export = root / "b.export"
    export.mkdir()
    fused = fuse(module.model.eval())
    save_file({k: v.detach().contiguous().clone() for k, v in fused.state_dict().items()}, str(export / "model.safetensors"))
    (export / "model.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(fused_config(module.model_config))))
    (export / "preprocess.json").write_text(json.dumps(module.model.input_spec.describe()))
    return ckpt, export


@pytest.fixture(scope="module")
def reinforced(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("reinforced")
    videos = root / "videos"
    videos.mkdir()
    clips = []
    for i, (key, captions) in enumerate(CAPTIONS.items()):
        path = videos / f"{key}.mp4"
        path.write_bytes(encode_clip(frames=12, width=48, height=32, fps=12 + i))
        clips.append(ClipSource(key, path, captions))
    write_shards(clips, root / "in", samples_per_shard=2, progress=False)
    ckpt, export = _teachers(root)

    calls: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    original = reinforce.embed_sample

    def recording(teacher, clips, captions, device="cpu"):
        video, text = original(teacher, clips, captions, device)
        calls.append((teacher.name, clips.clone(), video.clone(), text.clone()))
        return video, text

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reinforce, "embed_sample", recording)
        code = cli_main(["teacher", "--model", f"a={ckpt}", "--model", f"b={export}", "--shards", str(root / "in"),
                         "--out", str(root / "out"), "--views", str(K), "--seed", "5", "--hflip", "--no_progress"])
    assert code == 0
    raws = [raw for name in ("shard-000000.tar", "shard-000001.tar")
            for raw in iter_tar(str(root / "out" / name), BadSampleCounter())]
    return {"root": root, "ckpt": ckpt, "export": export, "calls": calls, "raws": raws}


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _captions(key: str) -> list[str]:
    return [c for c in CAPTIONS[key] if c.strip()]


def _decoder(train: bool = True) -> SampleDecoder:
    return SampleDecoder(transform=VideoTransform(32, train), tokenizer=stub_tokenize, train=train, frames=4, short_side=32)


def test_teacher_tensors_round_trip_bitwise_for_two_teachers_of_different_widths(reinforced):
    raws, calls = reinforced["raws"], reinforced["calls"]
    assert [r["__key__"] for r in raws] == ["c0", "c1", "c2", "c3"]
    assert [name for name, *_ in calls] == ["a", "b"] * 4  # each sample: every teacher once, on all K views
    for i, raw in enumerate(raws):
        for j, name in enumerate(("a", "b")):
            _, clips, video, text = calls[2 * i + j]
            stored_video, stored_text = _npy(raw[f"teacher.{name}.video.npy"]), _npy(raw[f"teacher.{name}.text.npy"])
            assert stored_video.dtype == np.float32 and stored_video.shape == (K, DIMS[name])
            assert stored_text.shape == (len(_captions(raw["__key__"])), DIMS[name])  # the empty caption has no row
            assert np.array_equal(stored_video, video.numpy()) and np.array_equal(stored_text, text.numpy())
            np.testing.assert_allclose(np.linalg.norm(stored_video, axis=1), 1.0, atol=1e-5)
            assert clips.shape == (K, 4, 3, 32, 32)


def test_original_members_are_copied_unchanged(reinforced):
    src = {r["__key__"]: r for name in ("shard-000000.tar", "shard-000001.tar")
           for r in iter_tar(str(reinforced["root"] / "in" / name), BadSampleCounter())}
    for raw in reinforced["raws"]:
        assert raw["json"] == src[raw["__key__"]]["json"] and raw["mp4"] == src[raw["__key__"]]["mp4"]
        assert set(raw) - set(src[raw["__key__"]]) == {"views.json", "teacher.a.video.npy", "teacher.a.text.npy",
                                                         "teacher.b.video.npy", "teacher.b.text.npy"}


def test_training_replays_a_stored_view_exactly_with_its_teacher_embeddings(reinforced):
    decoder = _decoder()
    seen_views = set()
    for i, raw in enumerate(reinforced["raws"]):
        views = decode_views(raw["views.json"])
        assert len(views) == K and all(len(v.indices) == 4 and v.frame_size == (32, 48) for v in views)
        for seed in range(4):
            rng = random.Random(seed)
            probe = random.Random()
            probe.setstate(rng.getstate())
            v, caption = probe.randrange(K), probe.randrange(len(_captions(raw["__key__"])))  # the decoder's two draws
            sample = decoder(raw, rng)
            seen_views.add((i, v))
            teacher_input = reinforced["calls"][2 * i][1][v]
            assert torch.equal(sample["video"], teacher_input), "the student must see exactly the teacher's view"
            assert torch.equal(sample["text"], stub_tokenize([_captions(raw["__key__"])[caption]])[0])
            for name in ("a", "b"):
                assert torch.equal(sample["teacher_video"][name], torch.from_numpy(_npy(raw[f"teacher.{name}.video.npy"])[v]))
                assert torch.equal(sample["teacher_text"][name], torch.from_numpy(_npy(raw[f"teacher.{name}.text.npy"])[caption]))
    assert len({v for _, v in seen_views}) > 1  # different views do get picked


def test_views_differ_and_follow_the_recipe(reinforced):
    views = [v for raw in reinforced["raws"] for v in decode_views(raw["views.json"])]
    assert len({(v.indices, v.box) for v in views[:K]}) == K
    assert {v.flip for v in views} == {True, False}  # --hflip: some views are flipped, some not
    for v in views:
        top, left, h, w = v.box
        assert 0.5 * 32 * 48 - 48 <= h * w <= 32 * 48 and top + h <= 32 and left + w <= 48
        assert sorted(v.indices) == list(v.indices) and all(3 * s <= i < 3 * s + 3 for s, i in enumerate(v.indices))


def test_manifest_names_the_teachers_with_fingerprints(reinforced):
    root = reinforced["root"]
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    assert manifest["total_samples"] == 4 and [s["name"] for s in manifest["shards"]] == ["shard-000000.tar", "shard-000001.tar"]
    assert manifest["views"] == K and manifest["seed"] == 5 and manifest["view"]["short_side"] == 32
    assert list(manifest["teachers"]) == ["a", "b"]
    a, b = manifest["teachers"]["a"], manifest["teachers"]["b"]
    assert a["kind"] == "checkpoint" and b["kind"] == "export"
    assert a["weights_sha256"] == hashlib.sha256(reinforced["ckpt"].read_bytes()).hexdigest()
    assert b["weights_sha256"] == hashlib.sha256((reinforced["export"] / "model.safetensors").read_bytes()).hexdigest()
    assert (a["embed_dim"], b["embed_dim"]) == (32, 24) and a["model_fingerprint"] != b["model_fingerprint"]
    assert a["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5) and a["input"]["frames"] == 4 and a["input"]["resolution"] == 32


def test_collate_gives_teacher_dicts_of_batch_rows(reinforced):
    decoder, rng = _decoder(), random.Random(0)
    batch = collate_train([decoder(raw, rng) for raw in reinforced["raws"]])
    for key in ("teacher_video", "teacher_text"):
        assert sorted(batch[key]) == ["a", "b"]
        assert {n: tuple(t.shape) for n, t in batch[key].items()} == {"a": (4, 32), "b": (4, 24)}
        assert all(t.dtype == torch.float32 for t in batch[key].values())
    # and through the training pipeline itself (manifest, shard split, batching)
    shards = list_shards(str(reinforced["root"] / "out" / "shard-{000000..000001}.tar"))
    dataset = ShardDataset(shards, _decoder(), collate_train, batch_size=2, train=True, num_workers=0, seed=0)
    batches = list(dataset)
    assert len(batches) == 2 and all(b["bad_samples"]["good"] == 2 for b in batches)
    assert all({n: tuple(t.shape) for n, t in b["teacher_text"].items()} == {"a": (2, 32), "b": (2, 24)} for b in batches)


def test_data_module_hands_the_manifests_teacher_scales_to_the_loss(reinforced, tmp_path):
    """Each teacher's logit scale travels from the manifest into the training batch, and the distillation loss uses it."""
    out = reinforced["root"] / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    data = VideoTextDataModule(train=str(out), frames=4, resolution=32, short_side=32, batch_size=2, num_workers=0)
    batch = data.on_before_batch_transfer(collate_train([_decoder()(raw, random.Random(0)) for raw in reinforced["raws"][:2]]), 0)
    assert batch["teacher_logit_scale"] == {n: manifest["teachers"][n]["logit_scale"] for n in ("a", "b")}
    # a brace pattern over the same shards reads the same manifest; shards without teachers give none
    assert teacher_logit_scales(str(out / "shard-{000000..000001}.tar")) == batch["teacher_logit_scale"]
    assert teacher_logit_scales(str(reinforced["root"] / "in")) == {}
    # the loss takes the batch's scale when the recipe states none, and the recipe's when it does
    g = torch.Generator().manual_seed(0)
    outputs = ModelOutputs(F.normalize(torch.randn(2, 8, generator=g), dim=-1), F.normalize(torch.randn(2, 8, generator=g), dim=-1),
                           torch.tensor(10.0))
    batch["teacher_logit_scale"] = {"a": 3.0, "b": 3.0}
    from_batch = DistillationLoss(weight=1.0)(outputs, batch)["kd"]
    assert torch.allclose(from_batch, DistillationLoss(weight=1.0, teacher_logit_scale=3.0)(outputs, batch)["kd"])
    assert not torch.allclose(DistillationLoss(weight=1.0, teacher_logit_scale=30.0)(outputs, batch)["kd"], from_batch)
    # two manifests that disagree on a teacher's scale: one line naming the manifest
    other = tmp_path / "other"
    shutil.copytree(out, other)
    changed = json.loads((other / "manifest.json").read_text())
    changed["teachers"]["a"]["logit_scale"] = 1.0
    (other / "manifest.json").write_text(json.dumps(changed))
    with pytest.raises(ConfigError, match=r"other/manifest.json: teacher 'a' has logit_scale 1.0"):
        teacher_logit_scales(f"{out}/shard-000000.tar::{other}/shard-000000.tar")
    # a scale that is no usable number: one line naming the manifest and the key, before training
    for bad in ("abc", -1.0, float("nan"), True):
        changed["teachers"]["a"]["logit_scale"] = bad
        (other / "manifest.json").write_text(json.dumps(changed))
        with pytest.raises(ConfigError, match=r"other/manifest.json: teachers.a.logit_scale: expected a finite number > 0"):
            teacher_logit_scales(str(other))


def test_a_teacher_of_another_width_for_the_feature_term_is_a_config_error_before_the_first_step(reinforced, tmp_path):
    """The manifest records each teacher's width; `setup("fit")` compares it with the student's, so a feature term that
    could not match the two spaces fails before training, naming the teacher (the teachers here: a 32, b 24)."""
    from types import SimpleNamespace

    from mvclip.lightning_module import VideoTextModule

    out = reinforced["root"] / "out"
    data = VideoTextDataModule(train=str(out), batch_size=2, num_workers=0)  # the clip format: the model's
    assert data.training_teacher_embed_dims() == DIMS

    def setup(**init_args) -> None:
        module = VideoTextModule(model=_model_config(DIMS["a"]),
                                 loss={"class_path": "mvclip.losses.DistillationLoss", "init_args": init_args})
        module._trainer = SimpleNamespace(datamodule=data)
        module.setup("fit")

    with pytest.raises(ConfigError, match=r"data.train \(.*out\) with model.loss: feature_weight: teacher 'b' embeds in 24 "
                                          r"dimensions and the student in 32"):
        setup(feature_weight=1.0)
    setup(feature_weight=1.0, teachers=["a"])  # only the teacher of the student's width is read
    setup(weight=0.5)  # no feature term: KL works across widths
    # a width that is no usable number: one line naming the manifest and the key
    other = tmp_path / "other"
    shutil.copytree(out, other)
    changed = json.loads((other / "manifest.json").read_text())
    for bad in (12.5, 0, "32", True):
        changed["teachers"]["a"]["embed_dim"] = bad
        (other / "manifest.json").write_text(json.dumps(changed))
        with pytest.raises(ConfigError, match=r"other/manifest.json: teachers.a.embed_dim: expected an integer > 0"):
            teacher_embed_dims(str(other))


def test_shards_without_teachers_decode_as_before(reinforced):
    """An input sample: no teacher keys, and the draws of the old pipeline (indices, crop box, caption) in that order."""
    raw = next(iter_tar(str(reinforced["root"] / "in" / "shard-000001.tar"), BadSampleCounter()))
    sample = _decoder()(raw, random.Random(3))
    assert "teacher_video" not in sample and "teacher_text" not in sample
    rng = random.Random(3)
    idx = sample_indices(12, 4, "segments", train=True, rng=rng)
    with VideoReader(raw["mp4"]) as reader:
        frames = reader.frames(idx, short_side=32)
    top, left, h, w = random_resized_crop_box(32, 48, (0.5, 1.0), (3 / 4, 4 / 3), rng)
    crop = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2)[:, :, top:top + h, left:left + w], size=(32, 32),
                                           mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(sample["video"], crop.float() / 255.0)
    assert torch.equal(sample["text"], stub_tokenize([rng.choice(CAPTIONS[raw["__key__"]])])[0])
    # evaluation ignores the teacher members: a reinforced sample evaluates like its input
    out = {r["__key__"]: r for r in reinforced["raws"]}[raw["__key__"]]
    assert torch.equal(_decoder(False)(out, random.Random(0))["video"], _decoder(False)(raw, random.Random(0))["video"])
    assert "teacher_video" not in _decoder(False)(out, random.Random(0))


def _pickled() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize("corrupt", [
    {"teacher.b.video.npy": b"not an npy file"},
    {"teacher.a.text.npy": _pickled()},  # an object array: refused, never unpickled
    {"teacher.a.video.npy": _npy_bytes(np.zeros((K + 1, 32), np.float32))},  # one row per view expected
    {"teacher.b.text.npy": _npy_bytes(np.full((1, 24), np.nan, np.float32))},
    {"views.json": b'{"version": 1, "views": [{"indices": [0], "box": [0, 0, 99, 99], "frame_size": [32, 48]}]}'},
    {"views.json": None},  # teacher members without their views
])
def test_a_corrupt_teacher_member_is_a_counted_bad_sample(reinforced, corrupt):
    raw = dict(reinforced["raws"][0])
    for ext, value in corrupt.items():
        if value is None:
            del raw[ext]
        else:
            raw[ext] = value
    dataset = ShardDataset([], _decoder(), collate_train, batch_size=1, train=True, num_workers=0)
    counter = BadSampleCounter()
    assert dataset._decode(raw, random.Random(0), counter) is None
    assert dict(counter.counts) == {"bad_teacher": 1}


def test_rerun_resumes_keeps_finished_shards_and_never_touches_the_input(reinforced):
    root = reinforced["root"]
    inputs = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((root / "in").iterdir())}
    first, second = root / "out" / "shard-000000.tar", root / "out" / "shard-000001.tar"
    kept = (first.read_bytes(), first.stat().st_mtime_ns)
    expected_second = second.read_bytes()
    second.unlink()  # as if the run had been killed while writing it
    (root / "out" / "shard-000001.tar.tmp").write_bytes(b"half a shard")
    args = ["teacher", "--model", f"a={reinforced['ckpt']}", "--model", f"b={reinforced['export']}", "--shards",
            str(root / "in"), "--out", str(root / "out"), "--views", str(K), "--seed", "5", "--hflip", "--no_progress"]
    assert cli_main(args) == 0
    assert (first.read_bytes(), first.stat().st_mtime_ns) == kept
    assert second.read_bytes() == expected_second  # rebuilt identically
    assert not (root / "out" / "shard-000001.tar.tmp").exists()
    assert cli_main(args) == 0  # nothing left to do: everything untouched
    assert (first.read_bytes(), first.stat().st_mtime_ns) == kept
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((root / "in").iterdir())} == inputs


def test_other_options_into_the_same_folder_and_writing_into_the_input_are_refused(reinforced, capsys):
    root = reinforced["root"]
    base = ["teacher", "--model", f"a={reinforced['ckpt']}", "--shards", str(root / "in"), "--no_progress"]
    assert cli_main([*base, "--out", str(root / "out"), "--seed", "6"]) == 2
    assert "reinforced from other inputs, teachers or view options" in capsys.readouterr().err
    assert cli_main([*base, "--out", str(root / "in")]) == 2
    assert "must lie outside --shards" in capsys.readouterr().err
    assert cli_main(["teacher", "--model", "Big=x.ckpt", "--shards", str(root / "in"), "--out", str(root / "o2")]) == 2
    assert "teacher name 'Big': use lowercase letters" in capsys.readouterr().err
