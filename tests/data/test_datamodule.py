"""The loader end to end: batch format, bad samples, rank/worker splitting, epoch length."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from mvclip.datamodules.bad_samples import BadSampleCounter, BadSampleLogger, TooManyBadSamples
from mvclip.datamodules.datamodule import VideoTextDataModule
from mvclip.datamodules.pipeline import list_shards, shuffled_shards, split_quota
from mvclip.datamodules.shard_writer import ClipSource, write_shards

from loader_fixtures import encode_clip, meta, real_videos, stub_tokenize, write_tar_shards

FRAMES, RES = 4, 32
CLIP = dict(frames=16, width=64, height=48, fps=8, gop=4)


def _dm(**kw) -> VideoTextDataModule:
    args = dict(frames=FRAMES, resolution=RES, batch_size=3, num_workers=0, shuffle_buffer=4, seed=0)
    args.update(kw)
    return VideoTextDataModule(**args)


@pytest.fixture(scope="module")
def clip_bytes() -> bytes:
    return encode_clip("libx264", "mp4", **CLIP)


@pytest.fixture(scope="module")
def even_shards(tmp_path_factory: pytest.TempPathFactory, clip_bytes: bytes) -> Path:
    """24 clips, 3 per shard = 8 shards, written by the real shard writer."""
    root = tmp_path_factory.mktemp("even")
    sources = []
    for i in range(24):
        path = root / "videos" / f"clip{i:02d}.mp4"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(clip_bytes)
        caps = [f"clip {i} caption {j}" for j in range(1 + i % 3)]
        sources.append(ClipSource(key=f"clip{i:02d}", path=path, captions=caps, label=i % 5))
    write_shards(sources, root / "shards", prefix="train", samples_per_shard=3, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory: pytest.TempPathFactory, clip_bytes: bytes) -> Path:
    """Shards of 1, 5, 2, 7, 3 and 4 samples (22 in all)."""
    sizes = [1, 5, 2, 7, 3, 4]
    samples = []
    for s, n in enumerate(sizes):
        for j in range(n):
            samples.append({"__key__": f"s{s}_{j}", "mp4": clip_bytes, "json": meta([f"shard {s} clip {j}"], frames=16)})
    out = tmp_path_factory.mktemp("uneven")
    # one shard per size: write each separately into the same directory
    start = 0
    shards = []
    for s, n in enumerate(sizes):
        write_tar_shards(out / "tmp", samples[start : start + n], per_shard=n, prefix=f"u{s}")
        (out / "tmp" / f"u{s}-000000.tar").rename(out / f"uneven-{s:06d}.tar")
        shards.append({"name": f"uneven-{s:06d}.tar", "samples": n, "bytes": (out / f"uneven-{s:06d}.tar").stat().st_size})
        start += n
    import json

    (out / "manifest.json").write_text(json.dumps({"version": 1, "shards": shards, "total_samples": sum(sizes), "options": {}, "skipped": []}))
    return out


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory: pytest.TempPathFactory, clip_bytes: bytes) -> Path:
    """4 shards of 4: shard 1 holds two bad samples, shards 0 and 2 one each, shard 3 none."""
    good = lambda k: {"__key__": k, "mp4": clip_bytes, "json": meta([f"caption of {k}"], frames=16)}  # noqa: E731
    samples = [
        good("a0"), good("a1"), {"__key__": "a2_empty", "mp4": b"", "json": meta(["x"])}, good("a3"),
        good("b0"), {"__key__": "b1_trunc", "mp4": clip_bytes[: len(clip_bytes) // 3], "json": meta(["x"])},
        {"__key__": "b2_nocap", "mp4": clip_bytes, "json": {"source": "t", "fps": 8, "duration": 2, "frames": 16}}, good("b3"),
        good("c0"), good("c1"), {"__key__": "c2_badjson", "mp4": clip_bytes, "json": b"\xff\xfe{not json"}, good("c3"),
        good("d0"), good("d1"), good("d2"), good("d3"),
    ]
    return write_tar_shards(tmp_path_factory.mktemp("bad"), samples, per_shard=4, prefix="bad")


# ---------------------------------------------------------------------------------------------
def test_train_and_eval_batch_format(even_shards: Path) -> None:
    dm = _dm(train=str(even_shards), val=str(even_shards), eval_batch_size=5)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == 24 // 3
    b = batches[0]
    assert b["video"].dtype == torch.float32 and b["video"].shape == (3, FRAMES, 3, RES, RES)
    assert 0.0 <= b["video"].min() and b["video"].max() <= 1.0 and b["video"].std() > 0.05
    assert b["text"].dtype == torch.long and b["text"].shape == (3, 77)
    assert b["label"].dtype == torch.long and b["label"].shape == (3,)
    assert len(b["key"]) == 3 and all(isinstance(k, str) for k in b["key"])
    assert b["bad_samples"]["counts"] == {}

    val = list(dm.val_dataloader())
    keys = [k for v in val for k in v["key"]]
    assert sorted(keys) == [f"clip{i:02d}" for i in range(24)]  # every sample once, no padding
    v = val[0]
    assert v["video"].shape == (5, FRAMES, 3, RES, RES)
    n_caps = [1 + int(k[4:]) % 3 for k in v["key"]]
    assert v["text"].shape == (sum(n_caps), 77)
    assert v["text_video_index"].tolist() == [i for i, n in enumerate(n_caps) for _ in range(n)]
    # evaluation is deterministic: same frames and crops twice
    again = next(iter(dm.val_dataloader()))
    assert torch.equal(again["video"], v["video"])


def test_tokenizer_injection_and_default(even_shards: Path) -> None:
    dm = _dm(train=str(even_shards), tokenizer=stub_tokenize)
    b = next(iter(dm.train_dataloader()))
    # the stub puts the caption length first: "clip N caption M" has 16 or 17 characters
    assert set(b["text"][:, 0].tolist()) <= {16, 17}
    from mvclip.tokenizer import tokenize

    dm = _dm(train=str(even_shards))
    b = next(iter(dm.train_dataloader()))
    assert b["text"][0, 0].item() == tokenize(["x"])[0, 0].item()  # start-of-text id


@pytest.mark.skipif(not real_videos(), reason="real clips not found in ../shared/data/videos")
def test_real_clips_through_the_writer_and_loader(tmp_path: Path) -> None:
    sources = [ClipSource(key=p.stem, path=p, captions=[f"a clip called {p.stem}"]) for p in real_videos()]
    write_shards(sources, tmp_path, prefix="real", samples_per_shard=1, progress=False)
    dm = _dm(val=str(tmp_path), eval_batch_size=len(sources), frames=8, resolution=64, sampling="fps")
    batch = next(iter(dm.val_dataloader()))
    assert batch["video"].shape == (len(sources), 8, 3, 64, 64)
    assert sorted(batch["key"]) == sorted(p.stem for p in real_videos())


def test_bad_samples_skipped_counted_and_checked(bad_shards: Path) -> None:
    dm = _dm(val=str(bad_shards), eval_batch_size=4, max_bad_fraction=0.5, bad_check_min_samples=1)
    keys = []
    for batch in dm.val_dataloader():
        dm.record_bad_samples(batch, "val")
        assert "bad_samples" not in batch
        keys += batch["key"]
    assert sorted(keys) == sorted(["a0", "a1", "a3", "b0", "b3", "c0", "c1", "c3", "d0", "d1", "d2", "d3"])
    c = dm.bad_samples["val"]
    assert c.good == 12 and c.bad == 4
    assert c.counts["empty_video"] == 1
    assert c.counts["no_captions"] == 1
    assert c.counts["bad_json"] == 1
    assert c.counts["undecodable"] + c.counts["truncated_video"] == 1
    shard1 = str(bad_shards / "bad-000001.tar")
    assert sum(c.by_shard[shard1].values()) == 2
    with pytest.raises(TooManyBadSamples, match="bad-000001.tar") as exc:
        c.check(0.1)
    assert "25.0%" in str(exc.value)
    c.check(0.3)  # 25 % is allowed under 30 %


def test_training_with_bad_samples_keeps_epoch_length_and_raises_over_limit(bad_shards: Path) -> None:
    # 16 samples in the manifest, 4 bad: the epoch still has 16 // 4 = 4 full batches per rank
    dm = _dm(train=str(bad_shards), batch_size=4, num_workers=2, max_bad_fraction=0.5)
    batches = [dm.record_bad_samples(b, "train") for b in dm.train_dataloader()]
    assert len(batches) == 4 and all(b["video"].shape[0] == 4 for b in batches)
    assert dm.bad_samples["train"].counts["bad_json"] >= 1  # counts came back from both workers
    strict = _dm(train=str(bad_shards), batch_size=4, num_workers=2, max_bad_fraction=0.05, bad_check_min_samples=8)
    with pytest.raises(TooManyBadSamples, match=r"bad-00000[0-2]\.tar"):
        for b in strict.train_dataloader():
            strict.record_bad_samples(b, "train")


def _epoch_keys(dm: VideoTextDataModule, epoch: int) -> list[list[str]]:
    loader = dm.train_dataloader()
    loader.set_epoch(epoch)
    return [b["key"] for b in loader]


@pytest.mark.parametrize("workers", [1, 2])
def test_two_ranks_see_every_shard_once_per_epoch(even_shards: Path, monkeypatch, workers: int) -> None:
    per_epoch = []
    for epoch in (0, 1):
        per_rank = {}
        for rank in (0, 1):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            dm = _dm(train=str(even_shards), num_workers=workers)
            per_rank[rank] = _epoch_keys(dm, epoch)
        # 24 samples / (2 ranks x 3) = 4 batches on each rank
        assert [len(per_rank[r]) for r in (0, 1)] == [4, 4]
        keys = [k for r in (0, 1) for b in per_rank[r] for k in b]
        assert collections.Counter(keys) == collections.Counter(f"clip{i:02d}" for i in range(24))
        shard_of = lambda k: int(k[4:]) // 3  # noqa: E731  (3 clips per shard, in key order)
        assert not {shard_of(k) for b in per_rank[0] for k in b} & {shard_of(k) for b in per_rank[1] for k in b}
        per_epoch.append(per_rank)
    assert per_epoch[0][0] != per_epoch[1][0]  # a new shard order next epoch
    # and the order is reproducible
    monkeypatch.setenv("RANK", "0")
    assert _epoch_keys(_dm(train=str(even_shards), num_workers=workers), 1) == per_epoch[1][0]


def test_uneven_shards_give_every_rank_the_same_number_of_batches(uneven_shards: Path, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for epoch in range(3):
        counts = []
        for rank in (0, 1):
            monkeypatch.setenv("RANK", str(rank))
            batches = _epoch_keys(_dm(train=str(uneven_shards), num_workers=2, batch_size=2), epoch)
            assert all(len(b) == 2 for b in batches)
            counts.append(len(batches))
        assert counts == [22 // (2 * 2)] * 2


def test_too_few_shards_is_a_clear_error(even_shards: Path, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    dm = _dm(train=str(even_shards), num_workers=5)
    with pytest.raises(ValueError) as exc:
        dm.train_dataloader()
    msg = str(exc.value)
    assert str(even_shards) in msg and "8 shards" in msg and "2 ranks" in msg and "5 workers" in msg
    # resampled mode has no such limit and keeps the epoch length
    dm = _dm(train=str(even_shards), num_workers=5, resampled=True)
    assert len(dm.train_dataloader()) == 4


def test_eval_split_over_ranks_is_exactly_once_even_with_few_shards(bad_shards: Path, even_shards: Path, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for shards, workers in ((even_shards, 2), (bad_shards, 3)):  # 8 shards >= 4 slots; 4 shards < 6 slots
        keys = []
        for rank in (0, 1):
            monkeypatch.setenv("RANK", str(rank))
            keys += [k for b in _dm(val=str(shards), num_workers=workers).val_dataloader() for k in b["key"]]
        assert len(keys) == len(set(keys))
        assert len(keys) == (24 if shards == even_shards else 12)


def test_brace_pattern_and_helpers(even_shards: Path) -> None:
    shards = list_shards(str(even_shards / "train-{000000..000003}.tar"))
    assert [s.samples for s in shards] == [3, 3, 3, 3]
    with pytest.raises(FileNotFoundError, match="do not exist"):
        list_shards(str(even_shards / "train-{000000..000009}.tar"))
    assert sum(split_quota(7, [3, 0, 5])) == 7 and split_quota(7, [3, 0, 5])[1] == 0
    assert shuffled_shards(shards, 0, 0) == shuffled_shards(shards, 0, 0) != shuffled_shards(shards, 0, 1)


def test_counter_merge_roundtrip() -> None:
    a, b = BadSampleCounter(), BadSampleCounter()
    a.add("bad_json", "s0")
    a.add_good("s0", 3)
    b.add("bad_json", "s1", 2)
    b.add("empty_video", "s1")
    a.merge(b.to_dict())
    assert a.counts == {"bad_json": 3, "empty_video": 1} and a.good == 3 and a.bad == 4
    assert a.worst_shards(1)[0][0] == "s1"
    with pytest.raises(ValueError, match="unknown bad-sample reason"):
        a.add("weird", "s0")


def test_lightning_fit_logs_bad_sample_counts(bad_shards: Path, tmp_path: Path) -> None:
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            assert "bad_samples" not in batch  # the data module took them
            return (batch["video"].mean() - self.w).pow(2)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = _dm(train=str(bad_shards), batch_size=4, max_bad_fraction=0.5)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[BadSampleLogger()],
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), datamodule=dm)
    metrics = trainer.callback_metrics
    assert metrics["data/train/bad/bad_json"].item() >= 1
    assert metrics["data/train/good"].item() >= 16


def test_synthetic_dataset_through_prepare_data(tmp_path: Path) -> None:
    dm = _dm(synthetic={"root": str(tmp_path / "synth"), "num_train": 8, "num_val": 4, "num_test": 4},
             batch_size=2, eval_batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert Path(dm.paths["train"]) == tmp_path / "synth" / "train"
    train = list(dm.train_dataloader())
    assert len(train) == dm.train_batches_per_rank() == sum(s.samples for s in dm.shards["train"]) // 2
    assert train[0]["video"].shape == (2, FRAMES, 3, RES, RES)
    val = list(dm.val_dataloader())
    assert sum(len(b["key"]) for b in val) == sum(s.samples for s in dm.shards["val"])


def test_synthetic_fills_only_the_splits_given_no_path(tmp_path: Path) -> None:
    """Reinforced training shards of the synthetic clips are validated on the synthetic validation split."""
    own_train = tmp_path / "own_train"
    own_train.mkdir()
    dm = _dm(train=str(own_train), synthetic={"root": str(tmp_path / "synth"), "num_train": 2, "num_val": 2, "num_test": 2,
                                              "frames": 8, "size": 32})
    dm.prepare_data()
    assert dm.paths["train"] == str(own_train)
    assert Path(dm.paths["val"]) == tmp_path / "synth" / "val"
    assert Path(dm.paths["test"]) == tmp_path / "synth" / "test"
    every = _dm(train="a", val="b", test="c", synthetic={"root": str(tmp_path / "unused")})
    every.prepare_data()  # every split has a path: nothing is generated
    assert not (tmp_path / "unused").exists()


def test_transforms_same_crop_for_all_frames_and_eval_centre_crop() -> None:
    import random

    from mvclip.datamodules.transforms import VideoTransform, random_resized_crop_box

    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (1, 48, 96, 3), dtype=torch.uint8, generator=g)
    clip = base.repeat(6, 1, 1, 1)
    clip[3:] = 255 - clip[3:]  # frames differ, but pixel-wise: same crop => out[3:] == 1 - out[:3]
    out = VideoTransform(32, train=True, crop_scale=(0.3, 0.6))(clip, random.Random(1))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    assert torch.allclose(out[3], 1 - out[0], atol=2 / 255)
    # evaluation: resize short side 48 -> 32 (96 -> 64) then centre crop columns 16..48
    ev = VideoTransform(32, train=False)(clip)
    resized = torch.nn.functional.interpolate(
        clip.permute(0, 3, 1, 2), size=(32, 64), mode="bilinear", antialias=True, align_corners=False
    )
    assert torch.equal(ev, resized[:, :, :, 16:48].float() / 255)
    norm = VideoTransform(32, train=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))(clip)
    assert torch.allclose(norm, (ev - 0.5) / 0.25)
    # random crops cover the configured share of the area
    rng = random.Random(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(100, 200, (0.3, 0.6), (3 / 4, 4 / 3), rng)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 200
        assert 0.28 <= h * w / 20000 <= 0.62
    # flipping is off by default: a training transform never mirrors a left-right ramp
    ramp = torch.arange(64, dtype=torch.uint8).mul(4).view(1, 1, 64, 1).expand(2, 64, 64, 3).contiguous()
    for seed in range(20):
        o = VideoTransform(32, train=True)(ramp, random.Random(seed))
        assert o[0, 0, 0, -1] > o[0, 0, 0, 0]
    flips = [VideoTransform(32, train=True, hflip=True)(ramp, random.Random(s))[0, 0, 0] for s in range(20)]
    assert any(f[-1] < f[0] for f in flips)


# ---------------------------------------------------------------------------------------------
# Group batching: declared hard negatives (a clip and its twin) always share a training batch
@pytest.fixture(scope="module")
def grouped_shards(tmp_path_factory: pytest.TempPathFactory, clip_bytes: bytes) -> Path:
    """48 clips in 24 groups of two, given to the real writer in scrambled order with groups whose names sort
    apart from their keys; 6 per shard = 8 shards. The writer must keep each group together in one shard."""
    root = tmp_path_factory.mktemp("grouped")
    (root / "videos").mkdir()
    sources = []
    for i in range(48):
        path = root / "videos" / f"v{i:02d}.mp4"
        path.write_bytes(clip_bytes)
        group = f"g{(i * 7) % 24:02d}"  # members of a group are far apart in key order
        sources.append(ClipSource(key=f"v{i:02d}", path=path, captions=[f"clip {i}"], extra={"group": group}))
    write_shards(sources[::-1], root / "shards", prefix="train", samples_per_shard=6, progress=False)
    return root / "shards"


def _group_of(key: str) -> str:
    return f"g{(int(key[1:]) * 7) % 24:02d}"


@pytest.mark.parametrize("world", [1, 2])
def test_group_batching_keeps_groups_together_without_losing_or_repeating_samples(grouped_shards: Path, monkeypatch, world: int) -> None:
    monkeypatch.setenv("WORLD_SIZE", str(world))
    for epoch in (0, 1):
        keys: list[str] = []
        for rank in range(world):
            monkeypatch.setenv("RANK", str(rank))
            dm = _dm(train=str(grouped_shards), batch_size=4, shuffle_buffer=8, group_batching=True, num_workers=2 if world == 1 else 1)
            dm.setup("fit")
            loader = dm.train_dataloader()
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == 48 // (world * 4)
            for batch in batches:
                assert collections.Counter(batch["group"]) == collections.Counter({g: 2 for g in batch["group"]})
                assert batch["group"] == [_group_of(k) for k in batch["key"]]
            keys += [k for b in batches for k in b["key"]]
        assert collections.Counter(keys) == collections.Counter(f"v{i:02d}" for i in range(48))


def test_without_group_batching_groups_split_across_batches(grouped_shards: Path) -> None:
    """The check above can fail: plain shuffling separates partners."""
    dm = _dm(train=str(grouped_shards), batch_size=4, shuffle_buffer=8)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert any(len(set(b["group"])) > len(b["group"]) // 2 for b in batches)


def test_writer_never_splits_a_group_across_shards(grouped_shards: Path) -> None:
    import tarfile

    seen: dict[str, str] = {}
    for shard in sorted(grouped_shards.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for name in tar.getnames():
                group = _group_of(name.split(".")[0])
                assert seen.setdefault(group, shard.name) == shard.name
    assert len(seen) == 24
