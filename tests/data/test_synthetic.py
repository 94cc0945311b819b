"""The synthetic temporal dataset: determinism, splits, the time-reversal property, captions."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mvclip.datamodules import synthetic
from mvclip.datamodules.shard_format import read_manifest
from mvclip.datamodules.synthetic import (
    CLASS_NAMES, PAIRS, SPLITS, captions_for, ensure_synthetic_dataset, make_pair, render_scene,
    sample_scene,
)

SMALL = dict(num_train=16, num_val=8, num_test=8, frames=12, size=64)


def load(root: Path) -> dict[str, dict[str, dict]]:
    """split -> key -> {"meta": json, "mp4": bytes}, read straight from the tars."""
    out: dict[str, dict[str, dict]] = {}
    for split in SPLITS:
        out[split] = {}
        for shard in read_manifest(root / split)["shards"]:
            with tarfile.open(root / split / shard["name"]) as tar:
                for member in tar.getmembers():
                    key, ext = member.name.split(".", 1)
                    data = tar.extractfile(member).read()
                    entry = out[split].setdefault(key, {})
                    entry["meta" if ext == "json" else ext] = json.loads(data) if ext == "json" \
                        else data
    return out


@pytest.fixture(scope="module")
def seed0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("s") / "seed0", seed=0, workers=2,
                                    progress=False, **SMALL)


@pytest.fixture(scope="module")
def seed0_again(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # one process instead of two: the result must not depend on scheduling
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("s") / "seed0b", seed=0, workers=1,
                                    progress=False, **SMALL)


@pytest.fixture(scope="module")
def seed1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("s") / "seed1", seed=1, workers=2,
                                    progress=False, **SMALL)


def test_layout_and_counts(seed0: Path) -> None:
    info = json.loads((seed0 / "dataset.json").read_text())
    assert info["seed"] == 0 and info["counts"] == {"train": 16, "val": 8, "test": 8}
    assert info["classes"] == list(CLASS_NAMES)
    data = load(seed0)
    for split, n in info["counts"].items():
        manifest = read_manifest(seed0 / split)
        assert manifest["total_samples"] == n == len(data[split]) and manifest["skipped"] == []
        assert all(s["name"].startswith(f"{split}-") for s in manifest["shards"])
    meta = data["train"]["train_000000_a"]["meta"]
    assert (meta["frames"], meta["width"], meta["height"], meta["fps"]) == (12, 64, 64, 8.0)
    assert meta["codec"] == "h264" and meta["duration"] == pytest.approx(1.5)
    for split in SPLITS:
        for sample in data[split].values():
            m = sample["meta"]
            assert CLASS_NAMES[m["label"]] == m["label_name"] == m["event"]
            assert m["shape"] in synthetic.SHAPES and m["colour"] in synthetic.COLOURS
            assert len(m["captions"]) >= 2 and len(set(m["captions"])) == len(m["captions"])
    assert not list(seed0.parent.glob(".seed0.tmp-*"))


def test_same_seed_same_dataset(seed0: Path, seed0_again: Path, seed1: Path) -> None:
    def fingerprint(root: Path) -> dict:
        return {split: {k: (v["meta"]["captions"], v["meta"]["label"],
                            hashlib.sha256(v["mp4"]).hexdigest())
                        for k, v in samples.items()} for split, samples in load(root).items()}

    a, b, c = fingerprint(seed0), fingerprint(seed0_again), fingerprint(seed1)
    assert a == b  # same keys, captions, labels and even the same encoded bytes
    for split in SPLITS:
        manifest_a = read_manifest(seed0 / split)
        manifest_b = read_manifest(seed0_again / split)
        assert manifest_a["shards"] == manifest_b["shards"]
        for shard in manifest_a["shards"]:
            assert (seed0 / split / shard["name"]).read_bytes() == \
                (seed0_again / split / shard["name"]).read_bytes()
    assert a["train"].keys() == c["train"].keys()  # keys name positions, not content
    captions_a = [v[0] for v in a["train"].values()]
    captions_c = [v[0] for v in c["train"].values()]
    assert captions_a != captions_c
    assert {v[2] for v in a["train"].values()}.isdisjoint({v[2] for v in c["train"].values()})


def test_splits_are_disjoint_and_twins_stay_together(seed0: Path) -> None:
    data = load(seed0)
    keys = [set(data[s]) for s in SPLITS]
    videos = [{hashlib.sha256(v["mp4"]).hexdigest() for v in data[s].values()} for s in SPLITS]
    for i in range(3):
        assert len(videos[i]) == len(data[SPLITS[i]])  # no duplicate clips within a split
        for j in range(i + 1, 3):
            assert keys[i].isdisjoint(keys[j]) and videos[i].isdisjoint(videos[j])
    for split in SPLITS:
        for key, sample in data[split].items():
            twin = sample["meta"]["twin"]
            assert twin in data[split], f"{key}'s twin {twin} is not in {split}"
            assert data[split][twin]["meta"]["twin"] == key
            assert sample["meta"]["time_reversed"] != data[split][twin]["meta"]["time_reversed"]


@pytest.mark.parametrize("index", range(len(PAIRS)))
def test_time_reversal_raw_frames(index: int) -> None:
    spec = sample_scene(7, "train", index, frames=16, size=96)
    a, b = make_pair(spec)
    assert (a.meta["event"], b.meta["event"]) == PAIRS[index]
    # the same multiset of frames ...
    def as_sorted(frames: np.ndarray) -> list[bytes]:
        return sorted(f.tobytes() for f in frames)

    assert as_sorted(a.frames) == as_sorted(b.frames)
    np.testing.assert_array_equal(a.frames[::-1], b.frames)
    np.testing.assert_array_equal(a.frames, render_scene(spec))
    # ... in an order that matters (not a palindrome) ...
    assert not np.array_equal(a.frames, a.frames[::-1])
    assert np.abs(a.frames[0].astype(int) - a.frames[-1].astype(int)).max() > 100
    # ... and captions that cannot both be right
    assert set(a.captions).isdisjoint(b.captions)


def test_time_reversal_survives_encoding(seed0: Path, decode) -> None:
    data = load(seed0)["val"]
    checked = set()
    for key, sample in sorted(data.items()):
        meta = sample["meta"]
        if meta["time_reversed"]:
            continue
        twin = data[meta["twin"]]
        fwd, rev = decode(sample["mp4"]).astype(np.int16), decode(twin["mp4"]).astype(np.int16)
        assert fwd.shape == rev.shape == (12, 64, 64, 3)
        err_twin = np.abs(fwd[::-1] - rev).mean()
        err_order = np.abs(fwd - rev).mean()  # the same clips compared in the wrong order
        # measured: 0.7-1.2 grey levels (both clips went through the codec), 2.5-12 for the
        # wrong order
        assert err_twin < 2.0, f"{key}: reversed twin differs by {err_twin:.2f} grey levels"
        assert err_order > 2 * err_twin, key
        # the encoded clip is the rendered one, up to codec loss
        spec = sample_scene(0, "val", int(meta["pair"].split("_")[1]), frames=12, size=64)
        raw = render_scene(spec).astype(np.int16)
        assert np.abs(raw - fwd).mean() < 4.0  # measured 1.9-2.9: grain and 4:2:0 chroma
        checked.add(meta["event"])
    assert len(checked) >= 3


def test_caption_vocabulary_covers_every_direction(seed0: Path) -> None:
    words = {
        "move_left": "left", "move_right": "right", "move_up": "up", "move_down": "down",
        "grow": "grows", "shrink": "shrinks", "appear": "appears", "disappear": "disappears",
        "change_colour": "turns",
    }
    for event, word in words.items():
        captions = captions_for(event, "circle", "red", "blue")
        assert word in captions[0].split(), (event, captions[0])
        assert len(captions) >= 3
    assert captions_for("change_colour", "square", "red", "blue")[0] == "a red square turns blue"
    assert captions_for("change_colour", "square", "blue", "red")[0] == "a blue square turns red"
    assert captions_for("appear", "cross", "orange")[0] == "an orange cross appears"
    # a small set already holds every class, balanced within each pair
    labels = [s["meta"]["label_name"] for s in load(seed0)["train"].values()]
    assert set(labels) == set(CLASS_NAMES)
    for fwd, rev in PAIRS[:4]:
        assert labels.count(fwd) == labels.count(rev)


def _ensure_in_child(root: str, queue: multiprocessing.Queue) -> None:
    path = ensure_synthetic_dataset(root, seed=3, workers=1, progress=False, **SMALL)
    queue.put(str(path))


def test_ensure_is_idempotent_concurrent_and_cached(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVCLIP_CACHE", str(tmp_path / "cache"))
    assert synthetic.default_cache_dir() == tmp_path / "cache"
    root = tmp_path / "cache" / "shared"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    children = [ctx.Process(target=_ensure_in_child, args=(str(root), queue)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0
    assert queue.get() == queue.get() == str(root)
    assert sorted(p.name for p in root.parent.iterdir()) == [".shared.lock", "shared"]
    stamp = (root / "dataset.json").stat().st_mtime_ns
    assert ensure_synthetic_dataset(root, seed=3, progress=False, **SMALL) == root
    assert (root / "dataset.json").stat().st_mtime_ns == stamp  # found, not regenerated
    with pytest.raises(ValueError, match="dataset.json.*already there"):
        ensure_synthetic_dataset(root, seed=4, progress=False, **SMALL)

    # root=None: a folder named after the settings under $MVCLIP_CACHE
    default = ensure_synthetic_dataset(seed=3, num_train=4, num_val=2, num_test=2, frames=8,
                                       size=48, workers=1, progress=False)
    assert default.parent == tmp_path / "cache" and "seed3" in default.name
    assert read_manifest(default / "train")["total_samples"] == 4

    # a damaged dataset of ours is regenerated
    (default / "val" / "manifest.json").unlink()
    again = ensure_synthetic_dataset(seed=3, num_train=4, num_val=2, num_test=2, frames=8,
                                     size=48, workers=1, progress=False)
    assert read_manifest(again / "val")["total_samples"] == 2

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        ensure_synthetic_dataset(foreign, progress=False, **SMALL)


def test_cli_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mvclip.commands import shards as shards_cli

    out = tmp_path / "syn"
    assert shards_cli.main(["--synthetic", "6", "--out", str(out), "--seed", "5", "--frames", "8",
                            "--size", "48", "--no_progress", "--workers", "1"]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["counts"] == {"train": 6, "val": 32, "test": 32} and info["seed"] == 5
    assert "6 train, 32 val, 32 test clips" in capsys.readouterr().out
