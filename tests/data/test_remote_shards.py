"""Remote shards (http, s3 through the AWS CLI, pipe:) are listed from the small files beside them, never downloaded
to count them; video2dataset's layout (txt captions, failure records, _stats.json counts) reads like ours."""
from __future__ import annotations

import functools
import json
import shutil
import sys
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from mvclip.datamodules import remote_files
from mvclip.datamodules.bad_samples import BadSampleCounter
from mvclip.datamodules.datamodule import VideoTextDataModule
from mvclip.datamodules.shard_reading import Shard, count_samples, iter_tar, list_shards, teacher_logit_scales
from mvclip.errors import ConfigError
from mvclip.eval_card import split_record

from loader_fixtures import encode_clip, meta, stub_tokenize, write_tar_shards

FRAMES, RES = 2, 32
OURS = ["a0", "a1", "b0", "b1"]  # train-000000.tar holds a0, a1; train-000001.tar b0, b1


def _dm(**kw: Any) -> VideoTextDataModule:
    args = dict(frames=FRAMES, resolution=RES, batch_size=2, num_workers=0, shuffle_buffer=0, tokenizer=stub_tokenize)
    args.update(kw)
    return VideoTextDataModule(**args)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ours/ (two shards + manifest), bare/ (the same shards, no manifest), badmanifest/, v2d/ (video2dataset)."""
    base = tmp_path_factory.mktemp("served")
    clip = encode_clip("libx264", "mp4", frames=8, width=32, height=32, fps=8)
    samples = [{"__key__": k, "mp4": clip, "json": meta([f"caption {k}"], frames=8, fps=8.0)} for k in OURS]
    write_tar_shards(base / "ours", samples, per_shard=2, prefix="train")
    (base / "bare").mkdir()
    (base / "badmanifest").mkdir()
    for name in ("train-000000.tar", "train-000001.tar"):
        shutil.copy(base / "ours" / name, base / "bare" / name)
        shutil.copy(base / "ours" / name, base / "badmanifest" / name)
    (base / "badmanifest" / "manifest.json").write_text("{")
    shutil.copytree(base / "ours", base / "taught")  # as `python -m mvclip teacher` records its teachers
    manifest = json.loads((base / "ours" / "manifest.json").read_text())
    options = {**manifest.get("options", {}), "benchmark": "msrvtt_1ka", "split_hash": "0123abcd4567"}
    (base / "taught" / "manifest.json").write_text(
        json.dumps({**manifest, "options": options, "teachers": {"big": {"logit_scale": 17.5}}}))
    _write_video2dataset(base / "v2d", clip)
    return base


def _write_video2dataset(folder: Path, clip: bytes) -> None:
    """video2dataset's webdataset output: `NNNNN.tar` of `<key>.json/.mp4/.txt` (members sorted by extension within a
    sample, as webdataset's TarWriter writes them), a failure record without video, `NNNNN_stats.json`, no manifest."""
    folder.mkdir()

    def record(key: str, caption: str, status: str = "success", txt: bool = True, with_video: bool = True) -> dict:
        row = {"url": f"https://example.com/{key}.mp4", "key": key, "status": status, "error_message": None,
               "yt_meta_dict": None}
        if caption:
            row["caption"] = caption
        members: dict[str, bytes] = {"json": json.dumps(row, indent=4).encode()}
        if with_video:
            members["mp4"] = clip
        if txt:
            members["txt"] = caption.encode()
        return {"__key__": key, **members}

    shards = {
        "00000": [record("000000000", "a dog runs on a beach"),
                  record("000000001", "", status="failed_to_download", with_video=False),
                  record("000000002", "two cats", txt=False)],  # caption only in its json
        "00001": [record("000010000", "rain over a city at night")],
    }
    for stem, records in shards.items():
        with tarfile.open(folder / f"{stem}.tar", "w") as tar:
            for rec in records:
                for ext in sorted(k for k in rec if k != "__key__"):
                    info = tarfile.TarInfo(f"{rec['__key__']}.{ext}")
                    info.size = len(rec[ext])
                    tar.addfile(info, BytesIO(rec[ext]))
        good = sum(r.get("mp4") is not None for r in records)
        stats = {"count": len(records), "successes": good, "failed_to_download": len(records) - good,
                 "failed_to_subsample": 0, "duration": 1.5, "bytes_downloaded": 1234, "start_time": 0.0,
                 "end_time": 1.5, "status_dict": {"success": good}}
        (folder / f"{stem}_stats.json").write_text(json.dumps(stats, indent=4))


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback serving `root`; yields its base URL and the list of paths it was asked for."""
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            seen.append(self.path)
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def _keys(url: str) -> list[str]:
    return [raw["__key__"] for raw in iter_tar(url, BadSampleCounter())]


# ---------------------------------------------------------------------------------------------
def test_http_listing_reads_only_the_manifest(server: tuple[str, list[str]]) -> None:
    base, seen = server
    seen.clear()
    shards = list_shards(f"{base}/ours/train-{{000000..000001}}.tar")
    assert shards == [Shard(f"{base}/ours/train-000000.tar", 2), Shard(f"{base}/ours/train-000001.tar", 2)]
    assert seen == ["/ours/manifest.json"]  # one small file, no shard


def test_teacher_logit_scales_over_http_read_only_the_manifest(server: tuple[str, list[str]]) -> None:
    base, seen = server
    seen.clear()
    assert teacher_logit_scales(f"{base}/taught/train-{{000000..000001}}.tar") == {"big": 17.5}
    assert teacher_logit_scales(f"{base}/ours/train-{{000000..000001}}.tar") == {}  # shards without teachers
    assert seen == ["/taught/manifest.json", "/ours/manifest.json"]


def test_remote_benchmark_record_comes_from_its_manifest(server: tuple[str, list[str]]) -> None:
    base, seen = server
    seen.clear()
    record = split_record(f"{base}/taught/train-{{000000..000001}}.tar")
    assert record == {"benchmark": "msrvtt_1ka", "split_hash": "0123abcd4567"}
    assert split_record(f"{base}/bare/train-000000.tar") == {}  # no manifest there: nothing to record
    assert seen == ["/taught/manifest.json", "/bare/manifest.json"]


def test_training_and_evaluation_over_http_match_local_reading(server: tuple[str, list[str]], root: Path) -> None:
    import lightning.pytorch as pl

    base, seen = server
    remote = f"{base}/ours/train-{{000000..000001}}.tar"
    dm = _dm(train=remote, val=remote)
    dm.setup("fit")
    seen.clear()
    train = list(dm.train_dataloader())
    assert len(train) == 2 and sorted(k for b in train for k in b["key"]) == OURS
    assert train[0]["video"].shape == (2, FRAMES, 3, RES, RES)
    assert sorted(seen) == ["/ours/train-000000.tar", "/ours/train-000001.tar"]  # read once each, when iterating
    over_http = list(dm.val_dataloader())
    local = list(_dm(val=str(root / "ours")).val_dataloader())
    assert [b["key"] for b in over_http] == [b["key"] for b in local] == [["a0", "a1"], ["b0", "b1"]]
    for h, loc in zip(over_http, local):  # the same bytes decode to the same clips and captions
        assert torch.equal(h["video"], loc["video"]) and torch.equal(h["text"], loc["text"])

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch: dict, _: int) -> torch.Tensor:
            return (batch["video"].mean() - self.w).pow(2)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.5)

    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    model = Tiny()
    trainer.fit(model, datamodule=_dm(train=remote))
    assert trainer.global_step == 2 and model.w.item() != 0.0


def test_unknown_remote_counts_are_an_error_or_take_epoch_samples(server: tuple[str, list[str]]) -> None:
    base, seen = server
    pattern = f"{base}/bare/train-{{000000..000001}}.tar"
    seen.clear()
    with pytest.raises(ConfigError) as err:
        list_shards(pattern, where="data.train")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"data.train: {pattern!r}")
    assert f"{base}/bare/manifest.json" in message and "data.epoch_samples" in message
    # a video2dataset stats file was tried for the first shard only, and no shard was fetched
    assert seen == ["/bare/manifest.json", "/bare/train-000000_stats.json"]

    seen.clear()
    assert [s.samples for s in list_shards(pattern, epoch_samples=6)] == [3, 3]  # an even share of 6 per shard
    assert not [p for p in seen if p.endswith(".tar")]
    dm = _dm(train=pattern, epoch_samples=4)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and sorted(k for b in batches for k in b["key"]) == OURS
    with pytest.raises(ConfigError, match=r"^data\.val: .*write a manifest\.json"):
        _dm(val=pattern, epoch_samples=4).setup("validate")  # epoch_samples is for training only


def test_a_bad_remote_manifest_names_its_url(server: tuple[str, list[str]]) -> None:
    base, _ = server
    with pytest.raises(ValueError, match=rf"^{base}/badmanifest/manifest\.json: not a readable JSON manifest"):
        list_shards(f"{base}/badmanifest/train-000000.tar")


def test_pipe_cat_reads_the_manifest_and_the_shards(root: Path) -> None:
    pattern = f"pipe:cat {root}/ours/train-{{000000..000001}}.tar"
    shards = list_shards(pattern)
    assert [(s.url, s.samples) for s in shards] == [(f"pipe:cat {root}/ours/train-00000{i}.tar", 2) for i in (0, 1)]
    assert [k for s in shards for k in _keys(s.url)] == OURS
    with pytest.raises(ConfigError, match="sample counts of 2 remote shards are unknown"):
        list_shards(f"pipe:cat {root}/bare/train-{{000000..000001}}.tar")


def test_s3_urls_go_through_the_aws_cli(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without s3fs, `s3://` runs `aws s3 cp URL -`; a stand-in `aws` serves bucket `data` from `root`."""
    (tmp_path / "aws").write_text(f'#!/bin/sh\n[ "$1 $2 $4" = "s3 cp -" ] || exit 2\nexec cat "{root}/${{3#s3://data/}}"\n')
    (tmp_path / "aws").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setattr(remote_files, "_has_s3fs", lambda: False)
    shards = list_shards("s3://data/ours/train-{000000..000001}.tar")
    assert [s.samples for s in shards] == [2, 2]
    assert [k for s in shards for k in _keys(s.url)] == OURS
    with pytest.raises(ConfigError, match="no manifest.json at s3://data/bare/manifest.json"):
        list_shards("s3://data/bare/train-000000.tar")


def test_sidecar_addresses_keep_the_form_of_the_shard_url() -> None:
    sib = remote_files.sibling
    assert sib("https://h.org/c/x/00012.tar?sig=1", "manifest.json") == "https://h.org/c/x/manifest.json"
    assert sib("s3://bucket/webvid/00012.tar", "00012_stats.json") == "s3://bucket/webvid/00012_stats.json"
    assert (sib("pipe:aws s3 cp s3://b/w/00012.tar -", "manifest.json")
            == "pipe:aws s3 cp s3://b/w/manifest.json -")
    assert sib("pipe:curl -s -L https://h/x/t-1.tar.gz", "manifest.json") == "pipe:curl -s -L https://h/x/manifest.json"
    assert sib("pipe:cat a.tar b.tar", "manifest.json") is None  # which folder: not to be guessed
    assert remote_files.shard_stem("pipe:cat /d/00012.tar") == "00012"
    assert remote_files.is_remote("C:\\shards\\a.tar") is False and remote_files.is_remote("s3://b/a.tar") is True


def test_video2dataset_shards_read_like_ours(root: Path, server: tuple[str, list[str]]) -> None:
    folder = root / "v2d"
    expected = [Shard(str(folder / "00000.tar"), 2), Shard(str(folder / "00001.tar"), 1)]
    assert list_shards(str(folder)) == expected  # a folder without manifest: the stats files count it
    assert list_shards(str(folder / "{00000..00001}.tar")) == expected
    assert count_samples(str(folder / "00000.tar")) == 2  # the failure record is not a sample

    base, seen = server
    seen.clear()
    assert [s.samples for s in list_shards(f"{base}/v2d/{{00000..00001}}.tar")] == [2, 1]
    assert sorted(seen) == ["/v2d/00000_stats.json", "/v2d/00001_stats.json", "/v2d/manifest.json"]

    dm = _dm(val=str(folder), eval_batch_size=4)
    (batch,) = list(dm.val_dataloader())
    dm.record_bad_samples(batch, "val")
    assert batch["key"] == ["000000000", "000000002", "000010000"]
    assert batch["video"].shape == (3, FRAMES, 3, RES, RES)
    # the stub tokenizer puts the caption's length first: .txt captions, and the json caption where .txt is missing
    lengths = [len("a dog runs on a beach"), len("two cats"), len("rain over a city at night")]
    assert batch["text"][:, 0].tolist() == lengths and batch["text_video_index"].tolist() == [0, 1, 2]
    assert dm.bad_samples["val"].counts == {} and dm.bad_samples["val"].good == 3
