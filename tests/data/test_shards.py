"""Building shards: probing, every input kind, annotation formats, trimming, resume, atomicity."""
from __future__ import annotations

import csv
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from mvclip.commands import shards as shards_cli
from mvclip.datamodules import shard_writer
from mvclip.datamodules.annotations import (
    FORMATS, AnnotationError, AnnotationFormat, detect_format, read_annotations, register_annotation_format,
)
from mvclip.datamodules.probe import probe_video
from mvclip.datamodules.shard_format import (
    MANIFEST_NAME, PROGRESS_NAME, VIDEO_EXTENSIONS, read_manifest, safe_key, video_member,
)
from mvclip.datamodules.shard_writer import ClipSource, write_shards



def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} of one shard, read with tarfile (independent of the writer)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def all_samples(out: Path) -> dict[str, dict[str, bytes]]:
    merged: dict[str, dict[str, bytes]] = {}
    for shard in read_manifest(out)["shards"]:
        merged.update(tar_samples(out / shard["name"]))
    return merged


def check_consistent(out: Path) -> dict:
    """The manifest matches the directory: counts and sizes per shard, no leftovers."""
    manifest = read_manifest(out)
    for shard in manifest["shards"]:
        path = out / shard["name"]
        assert path.stat().st_size == shard["bytes"]
        assert len(tar_samples(path)) == shard["samples"]
    listed = {s["name"] for s in manifest["shards"]}
    on_disk = {p.name for p in out.iterdir() if p.suffix == ".tar"}
    assert on_disk == listed
    assert not list(out.glob("*.tmp")), "temporary files left behind"
    return manifest


# ---------------------------------------------------------------------------------------------
# probing


def test_probe_real_clips(real_videos: Path, real_clip_facts: dict) -> None:
    for name, (frames, fps, width, height) in real_clip_facts.items():
        info = probe_video(real_videos / name)
        assert info.ok, info.detail
        assert (info.frames, info.width, info.height) == (frames, width, height)
        assert info.fps == pytest.approx(fps, abs=0.01)
        assert info.duration == pytest.approx(frames / fps, abs=0.05)
        assert info.codec == "h264"


def test_probe_generated_clips(clip_set) -> None:
    for name, (frames, width, height) in clip_set.good.items():
        info = probe_video(clip_set.folder / name)
        assert info.ok, f"{name}: {info.detail}"
        assert (info.frames, info.width, info.height) == (frames, width, height), name
        assert info.fps == pytest.approx(10.0)
        assert info.duration == pytest.approx(frames / 10, abs=0.011), name
    for name, reason in clip_set.bad.items():
        info = probe_video(clip_set.folder / name)
        assert not info.ok and info.reason == reason, f"{name}: {info.reason} {info.detail}"


def test_probe_trim_range(long_clip: Path) -> None:
    info = probe_video(long_clip, start=1.0, end=3.5)
    assert info.ok and info.frames == 25 and info.duration == pytest.approx(2.5)
    assert probe_video(long_clip, start=20.0, end=25.0).reason == "bad-trim"
    assert probe_video(long_clip, start=3.0, end=2.0).reason == "bad-trim"


# ---------------------------------------------------------------------------------------------
# building from every input kind


def write_plain_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "caption", "start", "end"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_build_every_codec_and_bad_input(clip_set, tmp_path: Path, decode) -> None:
    names = sorted(clip_set.good) + sorted(clip_set.bad)
    rows = [{"path": n, "caption": f"clip {n}"} for n in names]
    rows.append({"path": "h264.mp4", "caption": "a second caption of the same file"})
    rows.append({"path": "mpeg4.mp4", "caption": "   "})  # blank: dropped, first caption stays
    annotations = write_plain_csv(tmp_path / "captions.csv", rows)
    assert detect_format(annotations) == "csv"
    clips = read_annotations(annotations, clip_set.folder)
    clips.append(ClipSource(key="no_caption", path=clip_set.folder / "h264.mp4", captions=[]))

    out = tmp_path / "shards"
    manifest = write_shards(clips, out, prefix="train", samples_per_shard=4, workers=2,
                            progress=False)
    check_consistent(out)
    assert manifest["total_samples"] == len(clip_set.good)
    assert [s["samples"] for s in manifest["shards"]] == [4, 2]
    reasons = {Path(s["input"]).name if s["key"] != "no_caption" else s["key"]: s["reason"]
               for s in manifest["skipped"]}
    assert reasons == {**clip_set.bad, "no_caption": "no-captions"}
    assert all(s["detail"] for s in manifest["skipped"])

    samples = all_samples(out)
    assert len(samples) == len(clip_set.good)
    for name, (frames, width, height) in clip_set.good.items():
        ext = name.split(".")[1]
        sample = samples[name.replace(".", "_")]
        assert video_member(sample) == ext
        # without re-encoding the original bytes are stored untouched
        assert sample[ext] == (clip_set.folder / name).read_bytes()
        meta = json.loads(sample["json"])
        assert (meta["frames"], meta["width"], meta["height"]) == (frames, width, height)
        assert meta["fps"] == pytest.approx(10.0)
        assert meta["source"] == str(clip_set.folder / name)
        assert "start" not in meta
        assert len(decode(sample[ext])) == frames
    assert json.loads(samples["h264_mp4"]["json"])["captions"] == [
        "clip h264.mp4", "a second caption of the same file"]


def test_keys_collide_in_plain_csv_gives_distinct_keys(clip_set) -> None:
    # mpeg4.mp4 and mpeg4.avi share a stem: keys must still be unique
    clips = read_annotations(write_plain_csv(clip_set.folder.parent / "k.csv", [
        {"path": "mpeg4.mp4", "caption": "a"}, {"path": "mpeg4.avi", "caption": "b"}]),
        clip_set.folder)
    assert len({c.key for c in clips}) == 2


def test_real_clips_reencoded_short_gop(real_copy: Path, tmp_path: Path,
                                        real_clip_facts: dict) -> None:
    clips = [ClipSource(key=p.stem, path=p, captions=[p.stem], label=i, label_name=f"c{i}")
             for i, p in enumerate(sorted(real_copy.iterdir()))]
    clips[0].teacher = np.arange(8, dtype=np.float64)
    out = tmp_path / "re"
    manifest = write_shards(clips, out, prefix="val", reencode_short_side=64,
                            keyframe_interval=4, progress=False)
    check_consistent(out)
    assert manifest["total_samples"] == 3 and manifest["options"]["keyframe_interval"] == 4
    samples = all_samples(out)
    expected = dict(zip(sorted(real_clip_facts), ("video0", "video1", "video2")))
    for name, key in expected.items():
        frames, fps, width, height = real_clip_facts[name]
        meta = json.loads(samples[key]["json"])
        assert min(meta["width"], meta["height"]) == 64
        assert meta["width"] % 2 == 0 and meta["height"] % 2 == 0
        assert meta["width"] / meta["height"] == pytest.approx(width / height, rel=0.05)
        assert meta["frames"] == frames and meta["codec"] == "h264"
        assert meta["fps"] == pytest.approx(fps, abs=0.01)
        assert meta["keyframes"] >= math.ceil(frames / 4)
        stored = probe_video(samples[key]["mp4"])
        assert stored.frames == frames and stored.keyframes == meta["keyframes"]
    assert json.loads(samples["video1"]["json"])["label_name"] == "c1"
    teacher = np.load(io.BytesIO(samples["video0"]["teacher.npy"]))
    assert teacher.dtype == np.float32 and teacher.tolist() == list(range(8))


def test_reencode_size_is_even_and_never_upscaled() -> None:
    assert shard_writer.even_size(1280, 720, 256) == (454, 256)
    assert shard_writer.even_size(97, 61, 256) == (96, 60)  # smaller already: only made even
    assert shard_writer.even_size(97, 61, None) == (96, 60)
    assert shard_writer.even_size(61, 97, 32) == (32, 50)


def test_webdataset_reads_the_shards(clip_set, tmp_path: Path) -> None:
    clips = [ClipSource(key=n.replace(".", "_"), path=clip_set.folder / n, captions=[n])
             for n in sorted(clip_set.good)]
    out = tmp_path / "wds"
    write_shards(clips, out, samples_per_shard=2, progress=False)
    urls = [str(out / s["name"]) for s in read_manifest(out)["shards"]]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        ext = video_member(sample)
        assert ext in VIDEO_EXTENSIONS
        seen[sample["__key__"]] = json.loads(sample["json"])["captions"]
    assert seen == {c.key: c.captions for c in clips}


# ---------------------------------------------------------------------------------------------
# annotation formats


def test_msrvtt_groups_captions(real_copy: Path, tmp_path: Path) -> None:
    ann = {"videos": [{"video_id": f"video{i}", "category": i, "split": "train"}
                      for i in range(4)],  # video3 has neither file nor captions
           "sentences": [{"video_id": "video1", "caption": "bikes on a road"},
                         {"video_id": "video0", "caption": "a rabbit"},
                         {"video_id": "video1", "caption": "people cycling"},
                         {"video_id": "video0", "caption": "a cartoon"},
                         {"video_id": "video1", "caption": "a street scene"}]}
    path = tmp_path / "msrvtt.json"
    path.write_text(json.dumps(ann))
    assert detect_format(path) == "msrvtt"
    out = tmp_path / "msr"
    assert shards_cli.main(["--videos", str(real_copy), "--annotations", str(path),
                            "--out", str(out), "--no_progress"]) == 0
    manifest = check_consistent(out)
    samples = all_samples(out)
    assert sorted(samples) == ["video0", "video1"]
    assert json.loads(samples["video1"]["json"])["captions"] == [
        "bikes on a road", "people cycling", "a street scene"]
    assert json.loads(samples["video0"]["json"])["label"] == 0
    assert {s["key"]: s["reason"] for s in manifest["skipped"]} == {
        "video2": "no-captions", "video3": "no-captions"}
    assert manifest["options"]["format"] == "msrvtt"


def test_webvid_csv(real_copy: Path, tmp_path: Path) -> None:
    (real_copy / "page7").mkdir()
    (real_copy / "video2.mp4").rename(real_copy / "page7" / "1002.mp4")
    (real_copy / "video1.mp4").rename(real_copy / "1001.mp4")
    path = tmp_path / "results_2M_val.csv"
    path.write_text("videoid,contentUrl,duration,page_dir,name\n"
                    "1001,https://x/1001.mp4,PT00H00M10S,page3,Bicycles crossing a street\n"
                    "1002,https://x/1002.mp4,PT00H00M04S,page7,\"Man talking, in a car\"\n"
                    "1003,https://x/1003.mp4,PT00H00M04S,page7,Nowhere to be found\n")
    assert detect_format(path) == "webvid"
    out = tmp_path / "webvid"
    manifest = write_shards(read_annotations(path, real_copy), out, progress=False)
    samples = all_samples(out)
    assert json.loads(samples["1002"]["json"])["captions"] == ["Man talking, in a car"]
    assert json.loads(samples["1001"]["json"])["frames"] == 250
    assert json.loads(samples["1002"]["json"])["page_dir"] == "page7"
    assert [(s["key"], s["reason"]) for s in manifest["skipped"]] == [("1003", "missing")]


def test_internvid_trims(long_clip: Path, tmp_path: Path, decode, frame_level) -> None:
    lines = [
        {"YoutubeID": "yt_long", "Start_timestamp": "00:00:01.000",
         "End_timestamp": "00:00:03.500", "Caption": "the first part", "UMT_Score": 0.4},
        {"YoutubeID": "yt_long", "Start_timestamp": "00:00:06.000",
         "End_timestamp": "00:00:12.000", "Caption": "runs past the end"},
        {"YoutubeID": "yt_long", "Start_timestamp": "00:00:30.000",
         "End_timestamp": "00:00:31.000", "Caption": "outside the video"},
    ]
    path = tmp_path / "internvid.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert detect_format(path) == "internvid"
    out = tmp_path / "iv"
    manifest = write_shards(read_annotations(path, long_clip.parent), out, progress=False)
    check_consistent(out)
    samples = all_samples(out)
    first = samples["yt_long_1000_3500"]
    meta = json.loads(first["json"])
    assert (meta["start"], meta["end"], meta["source_duration"]) == (1.0, 3.5, 10.0)
    assert meta["UMT_Score"] == 0.4
    stored = probe_video(first["mp4"])  # the stored clip itself is trimmed
    assert stored.frames == meta["frames"] == 25
    assert stored.duration == pytest.approx(2.5, abs=0.01)
    frames = decode(first["mp4"])
    # content check: the clip starts at source frame 10 and ends at source frame 34
    assert abs(float(frames[0, -8:, -8:].mean()) - frame_level(10)) < 4
    assert abs(float(frames[-1, -8:, -8:].mean()) - frame_level(34)) < 4
    tail = json.loads(samples["yt_long_6000_12000"]["json"])
    assert tail["end"] == pytest.approx(10.0) and tail["frames"] == 40
    assert [(s["key"], s["reason"]) for s in manifest["skipped"]] == [
        ("yt_long_30000_31000", "bad-trim")]


def test_format_detection_and_errors(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"path": "x.mp4", "caption": "c"}\n')
    (tmp_path / "b.json").write_text('[{"path": "x.mp4", "caption": "c"}]')
    (tmp_path / "c.tsv").write_text("path\tcaption\nx.mp4\tc\n")
    assert [detect_format(tmp_path / n) for n in ("a.jsonl", "b.json", "c.tsv")] == ["csv"] * 3
    assert read_annotations(tmp_path / "c.tsv", tmp_path)[0].captions == ["c"]
    bad = tmp_path / "mystery.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(AnnotationError, match="mystery.csv.*msrvtt.*webvid.*internvid"):
        detect_format(bad)
    with pytest.raises(AnnotationError, match="missing key"):
        read_annotations(bad, tmp_path, format="webvid")
    assert shards_cli.main(["--videos", str(tmp_path), "--annotations", str(bad),
                            "--out", str(tmp_path / "o"), "--no_progress"]) == 2


def test_unrecognized_file_names_every_format_as_before(tmp_path: Path) -> None:
    bad = tmp_path / "mystery.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(AnnotationError) as caught:
        detect_format(bad)
    assert str(caught.value) == (
        f"{bad}: unrecognized annotation file; expected msrvtt (JSON with 'videos' and 'sentences'), webvid (CSV with "
        "columns videoid,name,...), internvid (JSONL with YoutubeID, Start_timestamp, End_timestamp, Caption), csv "
        "(CSV/JSONL with path and caption), msrvtt_1ka (CSV with columns key,vid_key,video_id,sentence "
        "(MSRVTT_JSFUSION_test.csv)), didemo (JSON list of {video, description, times} (DiDeMo test_data.json)), "
        "activitynet (JSON {\"v_<id>\": {duration, timestamps, sentences}} (ActivityNet Captions val_1.json)), msvd (text "
        "lines '<video_id> <caption>' or JSON {video_id: [captions]} (MSVD)), or kinetics (CSV with columns "
        "label,youtube_id,time_start,time_end,split (Kinetics))")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(AnnotationError, match=r"broken.json: not valid JSON \(.*\); expected msrvtt .* csv .* or kinetics "):
        detect_format(broken)
    with pytest.raises(AnnotationError, match=r"unknown annotation format 'nope'; expected one of \('msrvtt', 'webvid', "
                                              r"'internvid', 'csv', 'msrvtt_1ka', 'didemo', 'activitynet', 'msvd', 'kinetics'\)"):
        read_annotations(bad, tmp_path, format="nope")


@pytest.fixture
def pipe_format():
    """A third-party format registered for one test: `.pipe` files of `video|caption` lines."""
    def read(path: Path, videos_dir: Path, encoding: str = "utf-8") -> list[ClipSource]:
        rows = [line.split("|", 1) for line in path.read_text(encoding=encoding).splitlines() if line.strip()]
        return [ClipSource(key=safe_key(video), path=videos_dir / video, captions=[caption]) for video, caption in rows]

    fmt = register_annotation_format(AnnotationFormat(
        "pipe", "lines of video|caption", detect=lambda file: file.suffix == ".pipe", read=read))
    try:
        yield fmt
    finally:
        del FORMATS["pipe"]


def test_a_registered_format_is_detected_read_and_offered_by_the_command(pipe_format, clip_set, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    annotations = tmp_path / "captions.pipe"
    annotations.write_text("h264.mp4|a red square\nvp9.webm|a blue circle\n")
    assert detect_format(annotations) == "pipe"
    clips = read_annotations(annotations, clip_set.folder)
    assert [(c.path.name, c.captions) for c in clips] == [("h264.mp4", ["a red square"]), ("vp9.webm", ["a blue circle"])]
    with pytest.raises(ValueError, match="'pipe' exists already"):
        register_annotation_format(pipe_format)
    assert shards_cli.main(["--videos", str(clip_set.folder), "--annotations", str(annotations), "--format", "pipe",
                            "--out", str(tmp_path / "out"), "--no_progress"]) == 0
    assert read_manifest(tmp_path / "out")["total_samples"] == 2
    assert "unrecognized" not in capsys.readouterr().err


def test_cli_summary_counts_skips_by_reason(clip_set, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"path": n, "caption": n} for n in ("h264.mp4", "zero_bytes.mp4", "missing.mp4",
                                                "vp9.webm")]
    ann = write_plain_csv(tmp_path / "c.csv", rows)
    out = tmp_path / "cli"
    assert shards_cli.main(["--videos", str(clip_set.folder), "--annotations", str(ann),
                            "--out", str(out), "--no_progress", "--reencode_short_side", "32",
                            "--workers", "2"]) == 0
    line = capsys.readouterr().out
    assert "wrote 2 samples in 1 shard(s)" in line
    assert "skipped 2 (empty: 1, missing: 1)" in line
    assert read_manifest(out)["options"]["reencode_short_side"] == 32


# ---------------------------------------------------------------------------------------------
# sharding, resume and atomic writes


def many_clips(clip_set, n: int) -> list[ClipSource]:
    names = sorted(clip_set.good)
    return [ClipSource(key=f"k{i:02d}", path=clip_set.folder / names[i % len(names)],
                       captions=[f"c{i}"]) for i in range(n)]


def test_max_shard_bytes(clip_set, tmp_path: Path) -> None:
    limit = 40_000
    out = tmp_path / "bytes"
    manifest = write_shards(many_clips(clip_set, 12), out, samples_per_shard=100,
                            max_shard_bytes=limit, progress=False)
    check_consistent(out)
    assert manifest["total_samples"] == 12 and len(manifest["shards"]) > 1
    assert all(s["bytes"] <= limit for s in manifest["shards"])


def test_resume_keeps_finished_shards(clip_set, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    clips = many_clips(clip_set, 10)
    clips.insert(3, ClipSource(key="k02_bad", path=clip_set.folder / "zero_bytes.mp4",
                               captions=["x"]))
    out = tmp_path / "resume"

    # a build that dies while finishing its third shard
    real_finish = shard_writer._ShardFile.finish
    finished = []

    def dying_finish(self: shard_writer._ShardFile) -> int:
        if len(finished) == 2:
            raise KeyboardInterrupt("simulated crash")
        finished.append(self.path.name)
        return real_finish(self)

    monkeypatch.setattr(shard_writer._ShardFile, "finish", dying_finish)
    with pytest.raises(KeyboardInterrupt):
        write_shards(clips, out, samples_per_shard=3, progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == [
        PROGRESS_NAME, "shard-000000.tar", "shard-000001.tar"]  # no manifest, no .tmp
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}

    # the rerun prepares only the inputs after the two finished shards
    prepared = []
    real_prepare = shard_writer._prepare
    monkeypatch.setattr(shard_writer, "_prepare",
                        lambda clip, opts: prepared.append(clip.key) or real_prepare(clip, opts))
    manifest = write_shards(clips, out, samples_per_shard=3, progress=False)
    assert prepared == [f"k{i:02d}" for i in range(6, 10)]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-00000[01].tar")} == mtimes
    check_consistent(out)
    assert [s["samples"] for s in manifest["shards"]] == [3, 3, 3, 1]
    assert [(s["key"], s["reason"]) for s in manifest["skipped"]] == [("k02_bad", "empty")]
    assert sorted(all_samples(out)) == [f"k{i:02d}" for i in range(10)]

    # a rerun of a finished build rewrites nothing, not even the manifest
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != PROGRESS_NAME}
    prepared.clear()
    again = write_shards(clips, out, samples_per_shard=3, progress=False)
    assert prepared == [] and again == manifest
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()
            if p.name != PROGRESS_NAME} == before

    # other options: refuse rather than mix two builds in one folder
    with pytest.raises(ValueError, match=r"\.progress\.json.*options"):
        write_shards(clips, out, samples_per_shard=4, progress=False)


def test_changed_inputs_rebuild_from_the_first_difference(clip_set,
                                                          tmp_path: Path) -> None:
    clips = many_clips(clip_set, 6)
    out = tmp_path / "changed"
    write_shards(clips, out, samples_per_shard=2, progress=False)
    first = (out / "shard-000000.tar").stat().st_mtime_ns
    clips[3].captions = ["edited"]  # same key: the shard is kept (keys identify inputs)
    clips = clips[:4] + [ClipSource(key="k03a", path=clips[0].path, captions=["new"])]
    manifest = write_shards(clips, out, samples_per_shard=2, progress=False)
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first
    check_consistent(out)
    assert [s["samples"] for s in manifest["shards"]] == [2, 2, 1]
    assert sorted(all_samples(out)) == ["k00", "k01", "k02", "k03", "k03a"]


def test_duplicate_keys_and_bad_keys(clip_set, tmp_path: Path) -> None:
    path = clip_set.folder / "h264.mp4"
    clips = [ClipSource("same", path, ["first"]), ClipSource("same", path, ["second"])]
    manifest = write_shards(clips, tmp_path / "dup", progress=False)
    assert manifest["total_samples"] == 1
    assert [s["reason"] for s in manifest["skipped"]] == ["duplicate-key"]
    assert json.loads(all_samples(tmp_path / "dup")["same"]["json"])["captions"] == ["first"]
    with pytest.raises(ValueError, match="may only hold"):
        write_shards([ClipSource("a.b", path, ["x"])], tmp_path / "dots", progress=False)


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=MANIFEST_NAME):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not a readable JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(
        {"version": 1, "shards": [{"name": "a.tar", "samples": 2, "bytes": 10}],
         "total_samples": 3}))
    with pytest.raises(ValueError, match="total_samples is 3"):
        read_manifest(tmp_path)


def test_out_that_is_a_file_is_a_one_line_error_and_the_file_is_kept(tmp_path: Path) -> None:
    """`shards` and `teacher` share the output folder check: a file in its place is named, never replaced."""
    taken = tmp_path / "taken"
    taken.write_text("not mine")
    with pytest.raises(ValueError, match=r"^--out .*taken: exists and is not a folder"):
        write_shards([], taken)
    assert taken.read_text() == "not mine"
    assert shard_writer.make_output_dir(tmp_path / "new" / "dir").is_dir()
