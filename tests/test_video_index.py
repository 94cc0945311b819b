"""VideoIndex: exact rankings on hand-made embeddings, save/load, a refused query from another model, building from
real clips with an unreadable file skipped, and the `index` / `search` commands."""
import math
import shutil
from pathlib import Path

import pytest
import torch

import mvclip
from mvclip.cli import main
from mvclip.embedder import Embedder
from mvclip.input_spec import InputSpec
from mvclip.portable_config import CHECKPOINT_KEY
from mvclip.video_index import Hit, IndexMismatchError, VideoIndex

ROOT = Path(__file__).resolve().parents[1]
REAL_VIDEOS = ROOT / ".." / "shared" / "data" / "videos"  # ../shared/data/videos from the repo root
SPEC = InputSpec(frames=2, resolution=32)


def hand_made() -> VideoIndex:
    s = 1 / math.sqrt(2)
    embeddings = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [s, s, 0.0], [0.0, 0.0, 1.0]])
    return VideoIndex(embeddings, ["a.mp4", "b.mp4", "ab.mp4", "c.mp4"], SPEC, "f00d")


def test_rankings_and_scores_are_exact_on_hand_made_embeddings():
    index = hand_made()
    s = 1 / math.sqrt(2)
    queries = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [s, s, 0.0]])
    first, second, third = index.search_embeddings(queries, k=3)
    assert first == [Hit("a.mp4", 1.0), Hit("ab.mp4", pytest.approx(s)), Hit("b.mp4", 0.0)]  # b and c tie at 0: index order
    assert [h.path for h in second] == ["c.mp4", "b.mp4", "ab.mp4"]
    assert [round(h.score, 6) for h in second] == [0.8, 0.6, round(0.6 * s, 6)]
    assert [h.path for h in third] == ["ab.mp4", "a.mp4", "b.mp4"] and third[0].score == pytest.approx(1.0)
    assert len(index.search_embeddings(queries[:1], k=10)[0]) == 4  # k larger than the index: all of it


def test_save_and_load_keep_everything(tmp_path):
    index = hand_made()
    index.skipped = [("broken.mp4", "DecodeError: no video stream")]
    path = index.save(tmp_path / "sub" / "videos.npz")
    loaded = VideoIndex.load(path)
    assert torch.equal(loaded.embeddings, index.embeddings) and loaded.paths == index.paths
    assert loaded.input_spec == SPEC and loaded.fingerprint == "f00d" and loaded.skipped == [("broken.mp4", "DecodeError: no video stream")]
    assert [p.name for p in path.parent.iterdir()] == ["videos.npz"]  # no temporary file left beside it
    (tmp_path / "junk.npz").write_bytes(b"not an index")
    with pytest.raises(mvclip.ConfigError, match=r"junk.npz: not a video index written by VideoIndex.save"):
        VideoIndex.load(tmp_path / "junk.npz")


def tiny_model(seed: int) -> mvclip.VideoTextModel:
    torch.manual_seed(seed)
    model, _ = mvclip.create_model("tiny_cpu", frames=2, input={"resolution": 32})
    return model


def test_a_query_from_another_model_is_refused():
    index = hand_made()
    other = Embedder(tiny_model(0), source="other.ckpt")
    with pytest.raises(IndexMismatchError, match=rf"^the index was built with model f00d \(\) but the query model is "
                                                  rf"{other.fingerprint} \(other.ckpt\); query with the index's model or rebuild"):
        index.use_model(other)
    with pytest.raises(IndexMismatchError, match="no query model"):
        index.search("a dog")
    assert Embedder(tiny_model(0)).fingerprint == other.fingerprint != Embedder(tiny_model(1)).fingerprint


@pytest.mark.skipif(not REAL_VIDEOS.is_dir(), reason="real clips not found in ../shared/data/videos")
def test_build_from_real_clips_skips_unreadable_files_and_searches(tmp_path):
    videos = tmp_path / "videos"
    (videos / "more").mkdir(parents=True)
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        shutil.copy(REAL_VIDEOS / name, videos / name)
    shutil.copy(REAL_VIDEOS / "bigbuckbunny.mp4", videos / "more" / "bunny.mp4")
    (videos / "broken.mp4").write_bytes(b"\x00" * 100)
    (videos / "notes.txt").write_text("not a video")
    embedder = Embedder(tiny_model(0), source="tiny")
    index = VideoIndex.build(embedder, videos, batch_size=2, progress=False)
    assert [Path(p).name for p in index.paths] == ["bikes.mp4", "carphone_pristine.mp4", "bunny.mp4"]
    assert [Path(p).name for p, _ in index.skipped] == ["broken.mp4"]
    assert index.embeddings.shape == (3, 256)
    torch.testing.assert_close(index.embeddings.norm(dim=1), torch.ones(3))
    hits = index.search_video(videos / "more" / "bunny.mp4", k=3)
    assert Path(hits[0].path).name == "bunny.mp4" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    ranked = index.search(["bicycles on a road", "a man talking on the phone"], k=2)
    assert [len(r) for r in ranked] == [2, 2]
    expected = torch.topk(embedder.embed_texts(["bicycles on a road"]) @ index.embeddings.T, 2).indices[0].tolist()
    assert [h.path for h in ranked[0]] == [index.paths[i] for i in expected]
    labels = index.classify(videos / "bikes.mp4", ["bicycles", "a cartoon rabbit", "a phone call"])
    assert sorted(l for l, _ in labels) == ["a cartoon rabbit", "a phone call", "bicycles"]
    assert sum(p for _, p in labels) == pytest.approx(1.0) and labels[0][1] >= labels[1][1] >= labels[2][1]

    reloaded = VideoIndex.load(index.save(tmp_path / "i.npz"), model=embedder)
    assert reloaded.search_video(videos / "bikes.mp4", k=1)[0].path == str(videos / "bikes.mp4")


def test_a_loaded_embedder_serves_in_channels_last_with_the_same_embeddings_and_fingerprint(tmp_path):
    """`load_embedder` turns the video tower NHWC (faster oneDNN kernels): same fingerprint, embeddings within 1e-5."""
    from mvclip.embedder import load_embedder

    model = tiny_model(0)
    ckpt = tmp_path / "tiny.ckpt"
    config = mvclip.models.OmegaConf.to_container(mvclip.models.OmegaConf.load(ROOT / "src/mvclip/presets/tiny_cpu.yaml"))
    config["video"]["num_frames"], config["input"]["resolution"] = 2, 32
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, CHECKPOINT_KEY: config}, ckpt)
    loaded, reference = load_embedder(ckpt), Embedder(tiny_model(0))
    convs = [m for m in loaded.model.video.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert loaded.fingerprint == reference.fingerprint
    clips = torch.rand(3, 2, 3, 32, 32)
    torch.testing.assert_close(loaded.embed_clips(clips), reference.embed_clips(clips), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not REAL_VIDEOS.is_dir(), reason="real clips not found in ../shared/data/videos")
def test_index_and_search_commands(tmp_path, capsys):
    model = tiny_model(0)
    ckpt = tmp_path / "tiny.ckpt"
    config = mvclip.models.OmegaConf.to_container(mvclip.models.OmegaConf.load(ROOT / "src/mvclip/presets/tiny_cpu.yaml"))
    config["video"]["num_frames"], config["input"]["resolution"] = 2, 32
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, CHECKPOINT_KEY: config}, ckpt)
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        shutil.copy(REAL_VIDEOS / name, videos / name)
    (videos / "broken.mp4").write_bytes(b"\x00" * 100)
    assert main(["index", "--model", str(ckpt), "--videos", str(videos), "--out", str(tmp_path / "i.npz")]) == 0
    captured = capsys.readouterr()
    assert f"skipped {videos / 'broken.mp4'}: cannot be read" in captured.err
    assert captured.out.startswith(f"indexed 2 videos into {tmp_path / 'i.npz'} (model ")
    assert main(["search", "--index", str(tmp_path / "i.npz"), "--video", str(videos / "bikes.mp4"), "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"video {videos / 'bikes.mp4'}" and lines[1].startswith("  1. 1.000  ") and lines[1].endswith("bikes.mp4")
    torch.manual_seed(5)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {f"model.{k}": torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()},
                CHECKPOINT_KEY: config}, other)
    assert main(["search", "--index", str(tmp_path / "i.npz"), "--model", str(other), "a bike"]) == 2
    assert "mvclip search: the index was built with model" in capsys.readouterr().err


def test_build_from_a_shard_set(tmp_path):
    from mvclip.datamodules.shard_writer import ClipSource, write_shards

    if not REAL_VIDEOS.is_dir():
        pytest.skip("real clips not found in ../shared/data/videos")
    sources = [ClipSource(key=n.split(".")[0], path=REAL_VIDEOS / n, captions=["x"]) for n in ("bikes.mp4", "carphone_pristine.mp4")]
    write_shards(sources, tmp_path / "shards", prefix="s", samples_per_shard=1, progress=False)
    embedder = Embedder(tiny_model(0), source="tiny")
    index = VideoIndex.build(embedder, shards=str(tmp_path / "shards"), progress=False)
    assert [p.rsplit(":", 1)[1] for p in index.paths] == ["bikes", "carphone_pristine"]
    direct = VideoIndex.build(embedder, [REAL_VIDEOS / "bikes.mp4"], progress=False)
    torch.testing.assert_close(index.embeddings[:1], direct.embeddings, rtol=0, atol=1e-5)  # same bytes; batch of 2 vs 1
