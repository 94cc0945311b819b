"""Benchmark readers on small files in each benchmark's published layout (written here), the split lists, the split
hash, and `shards --benchmark` writing the record evaluation reads back."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mvclip.datamodules.annotations import AnnotationError, detect_format, read_annotations
from mvclip.datamodules.benchmarks import build_benchmark, read_class_list
from mvclip.eval_card import split_record


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def touch(folder: Path, name: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    text = str(err.value)
    assert "\n" not in text
    for part in parts:
        assert part in text, text
    return text


# -- MSR-VTT 1k-A ----------------------------------------------------------------------------------------------------
def write_1ka(path: Path, third: str = "a person is frying fish") -> Path:
    path.write_text(
        "key,vid_key,video_id,sentence\n"
        "ret0,msr7579,video7579,a girl wearing red top and black trouser is putting a sweater on a dog\n"
        "ret1,msr7725,video7725,young people sit around the edges of a room clapping\n"
        f"ret2,msr9258,video9258,{third}\n")
    return path


def test_msrvtt_1ka_one_caption_per_video_and_the_split_hash(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "video7579.mp4")
    csv_path = write_1ka(tmp_path / "MSRVTT_JSFUSION_test.csv")
    assert detect_format(csv_path) == "msrvtt_1ka"
    clips, record = build_benchmark("msrvtt_1ka", csv_path, videos)
    assert [c.key for c in clips] == ["video7579", "video7725", "video9258"]
    assert [c.captions for c in clips] == [
        ["a girl wearing red top and black trouser is putting a sweater on a dog"],
        ["young people sit around the edges of a room clapping"], ["a person is frying fish"]]
    assert clips[0].path == videos / "video7579.mp4" and clips[1].path == videos / "video7725.mp4"  # missing: reported later
    assert clips[2].extra == {"key": "ret2", "vid_key": "msr9258"}
    assert record["split_hash"] == sha12(csv_path) and record["split_files"] == {csv_path.name: sha12(csv_path)}
    assert (record["benchmark"], record["num_videos"], record["num_captions"]) == ("msrvtt_1ka", 3, 3)
    # stable for the same bytes, changed by one word
    assert build_benchmark("msrvtt_1ka", write_1ka(tmp_path / "copy.csv"), videos)[1]["split_hash"] == record["split_hash"]
    changed = build_benchmark("msrvtt_1ka", write_1ka(tmp_path / "other.csv", "a person is frying eggs"), videos)[1]
    assert changed["split_hash"] != record["split_hash"]


def test_msrvtt_1ka_bad_file_names_it(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("key,vid_key,video_id,caption\nret0,msr1,video1,hello\n")
    with pytest.raises(AnnotationError) as err:
        read_annotations(bad, tmp_path, "msrvtt_1ka")
    one_line(err, str(bad), "row 2", "sentence", "key,vid_key,video_id,sentence")


# -- MSR-VTT full captions -------------------------------------------------------------------------------------------
def write_msrvtt_data(path: Path) -> Path:
    videos = [{"category": 9, "video_id": f"video{i}", "split": "test" if i >= 7010 else "train"} for i in (7009, 7010, 7011)]
    sentences = [{"caption": f"caption {j} of video{i}", "video_id": f"video{i}", "sen_id": 20 * i + j}
                 for i in (7009, 7010, 7011) for j in range(20)]
    path.write_text(json.dumps({"info": {}, "videos": videos, "sentences": sentences}))
    return path


def test_msrvtt_full_all_twenty_captions_of_the_split_in_split_order(tmp_path):
    data = write_msrvtt_data(tmp_path / "MSRVTT_data.json")
    split = tmp_path / "test_list_full.txt"
    split.write_text("video7011\nvideo7010\n")
    clips, record = build_benchmark("msrvtt_full", data, tmp_path, split=split)
    assert [c.key for c in clips] == ["video7011", "video7010"]
    assert clips[0].captions == [f"caption {j} of video7011" for j in range(20)]
    assert (record["num_videos"], record["num_captions"]) == (2, 40)
    assert record["split_hash"] == f"{sha12(data)}+{sha12(split)}"
    split.write_text("video7010\n")
    assert build_benchmark("msrvtt_full", data, tmp_path, split=split)[1]["split_hash"] != record["split_hash"]


def test_msrvtt_full_needs_its_split_list_and_every_listed_video(tmp_path):
    data = write_msrvtt_data(tmp_path / "MSRVTT_data.json")
    with pytest.raises(AnnotationError) as err:
        build_benchmark("msrvtt_full", data, tmp_path)
    one_line(err, "msrvtt_full", "--split")
    split = tmp_path / "test_list_full.txt"
    split.write_text("video7010\nvideo9999\n")
    with pytest.raises(AnnotationError) as err:
        build_benchmark("msrvtt_full", data, tmp_path, split=split)
    one_line(err, str(split), "1 of 2 video ids", "video9999")
    split.write_text("video7010 extra words\n")
    with pytest.raises(AnnotationError) as err:
        build_benchmark("msrvtt_full", data, tmp_path, split=split)
    one_line(err, str(split), "one video id per line")


# -- DiDeMo ----------------------------------------------------------------------------------------------------------
def test_didemo_paragraph_per_video_in_file_order(tmp_path):
    moments = [
        {"annotation_id": 1, "description": "a man walks in. ", "times": [[0, 0], [0, 1]], "video": "111@N02_222_aaa.mov",
         "download_link": "x", "num_segments": 6},
        {"annotation_id": 2, "description": "a dog barks at a car.", "times": [[3, 3]], "video": "333@N08_444_bbb.mp4"},
        {"annotation_id": 3, "description": "  the man sits down.", "times": [[2, 4]], "video": "111@N02_222_aaa.mov"},
    ]
    path = tmp_path / "test_data.json"
    path.write_text(json.dumps(moments))
    videos = tmp_path / "videos"
    touch(videos, "111@N02_222_aaa.mp4")  # converted from .mov: found by its stem
    assert detect_format(path) == "didemo"
    clips, record = build_benchmark("didemo", path, videos)
    assert [c.key for c in clips] == ["111_N02_222_aaa", "333_N08_444_bbb"]
    assert [c.captions for c in clips] == [["a man walks in. the man sits down."], ["a dog barks at a car."]]
    assert clips[0].path == videos / "111@N02_222_aaa.mp4" and clips[0].start is None and clips[0].end is None
    assert clips[0].extra == {"video": "111@N02_222_aaa.mov", "sentences": 2}
    assert (record["num_videos"], record["num_captions"], record["split_hash"]) == (2, 2, sha12(path))


def test_didemo_bad_file_names_it(tmp_path):
    path = tmp_path / "test_data.json"
    path.write_text(json.dumps({"video": "x"}))
    with pytest.raises(AnnotationError) as err:
        read_annotations(path, tmp_path, "didemo")
    one_line(err, str(path), "JSON list of moments")
    path.write_text(json.dumps([{"video": "a.mov", "times": [[0, 1]]}]))
    with pytest.raises(AnnotationError) as err:
        read_annotations(path, tmp_path, "didemo")
    one_line(err, str(path), "moment 0", "description")


# -- ActivityNet Captions --------------------------------------------------------------------------------------------
def test_activitynet_paragraph_and_the_v_prefix(tmp_path):
    data = {
        "v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[0.83, 19.86], [17.37, 60.81]],
                          "sentences": ["A young woman is seen standing in a room.", " The girl dances around the room."]},
        "v_ehGHCYKzyZ8": {"duration": 61.72, "timestamps": [[0, 10.0]], "sentences": ["Two men play ping pong. "]},
    }
    path = tmp_path / "val_1.json"
    path.write_text(json.dumps(data))
    videos = tmp_path / "videos"
    touch(videos, "QOlSCBRmfWY.mp4")  # stored without the prefix
    touch(videos, "v_ehGHCYKzyZ8.mkv")  # with it
    assert detect_format(path) == "activitynet"
    clips, record = build_benchmark("activitynet", path, videos)
    assert [c.key for c in clips] == ["v_QOlSCBRmfWY", "v_ehGHCYKzyZ8"]
    assert [c.captions for c in clips] == [["A young woman is seen standing in a room. The girl dances around the room."],
                                           ["Two men play ping pong."]]
    assert [c.path for c in clips] == [videos / "QOlSCBRmfWY.mp4", videos / "v_ehGHCYKzyZ8.mkv"]
    assert clips[0].extra == {"sentences": 2, "annotated_duration": 82.73}
    assert record["split_hash"] == sha12(path)


def test_activitynet_bad_file_names_it(tmp_path):
    path = tmp_path / "val_1.json"
    path.write_text(json.dumps({"v_a": {"duration": 1.0, "timestamps": [], "sentences": "not a list"}}))
    with pytest.raises(AnnotationError) as err:
        read_annotations(path, tmp_path, "activitynet")
    one_line(err, str(path), "v_a", "sentences")


# -- MSVD ------------------------------------------------------------------------------------------------------------
MSVD_LINES = (
    "# MSVD English descriptions\n"
    "\n"
    "-4wsuPCjDBc_5_15 a squirrel is eating a peanut in it's shell\n"
    "-4wsuPCjDBc_5_15 a chipmunk is eating\n"
    "0lh_UWF9ZP4_62_69 a woman is doing a cheerleading routine\n"
    "-4wsuPCjDBc_5_15 a squirrel eats\n"
    "zzit5b_-ukg_5_20 a man is slicing a potato\n"
)


def test_msvd_text_captions_with_the_test_list(tmp_path):
    path = tmp_path / "AllVideoDescriptions.txt"
    path.write_text(MSVD_LINES)
    split = tmp_path / "test_list.txt"
    split.write_text("zzit5b_-ukg_5_20\n-4wsuPCjDBc_5_15\n")
    videos = tmp_path / "YouTubeClips"
    touch(videos, "-4wsuPCjDBc_5_15.avi")
    assert detect_format(path) == "msvd"
    clips, record = build_benchmark("msvd", path, videos, split=split)
    assert [c.key for c in clips] == ["zzit5b_-ukg_5_20", "-4wsuPCjDBc_5_15"]
    assert clips[1].captions == ["a squirrel is eating a peanut in it's shell", "a chipmunk is eating", "a squirrel eats"]
    assert clips[1].path == videos / "-4wsuPCjDBc_5_15.avi"
    assert (record["num_videos"], record["num_captions"]) == (2, 4)
    assert record["split_hash"] == f"{sha12(path)}+{sha12(split)}"


def test_msvd_json_of_raw_captions_words_or_strings(tmp_path):
    path = tmp_path / "raw-captions.json"
    path.write_text(json.dumps({"-4wsuPCjDBc_5_15": [["a", "squirrel", "eats"], ["a", "chipmunk", "is", "eating"]],
                                "0lh_UWF9ZP4_62_69": ["a woman dances"]}))
    assert detect_format(path) == "msvd"
    clips = read_annotations(path, tmp_path)
    assert [(c.key, c.captions) for c in clips] == [("-4wsuPCjDBc_5_15", ["a squirrel eats", "a chipmunk is eating"]),
                                                    ("0lh_UWF9ZP4_62_69", ["a woman dances"])]


def test_msvd_bad_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("-4wsuPCjDBc_5_15 a squirrel eats\nlonely_id\n")
    with pytest.raises(AnnotationError) as err:
        read_annotations(path, tmp_path, "msvd")
    one_line(err, f"{path}:2", "'<video_id> <caption>'")


# -- Kinetics-400 ----------------------------------------------------------------------------------------------------
def write_kinetics(path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        writer.writerow(["zumba", "--07WQ2iBlw", "1", "11", "val"])
        writer.writerow(["air drumming", "--0NTAs-fA0", "29", "39", "val"])
        writer.writerow(["passing American football (in game)", "-0IErS_cisg", "0", "10", "val"])
        writer.writerow(["air drumming", "-1B9xPTqD6w", "7", "17", "val"])
    return path


def test_kinetics_rows_labels_and_class_list(tmp_path):
    path = write_kinetics(tmp_path / "validate.csv")
    videos = tmp_path / "val"
    touch(videos, "air_drumming/--0NTAs-fA0_000029_000039.mp4")  # the downloaders' layout: <label>/<id>_<start>_<end>
    touch(videos, "-1B9xPTqD6w.mp4")  # an untrimmed download: trimmed when shards are built
    assert detect_format(path) == "kinetics"
    clips, record = build_benchmark("kinetics400", path, videos)
    assert [c.key for c in clips] == ["--07WQ2iBlw_000001_000011", "--0NTAs-fA0_000029_000039", "-0IErS_cisg_000000_000010",
                                      "-1B9xPTqD6w_000007_000017"]
    assert record["class_names"] == ["air drumming", "passing American football (in game)", "zumba"]
    assert [(c.label, c.label_name, c.captions) for c in clips] == [
        (2, "zumba", ["zumba"]), (0, "air drumming", ["air drumming"]),
        (1, "passing American football (in game)", ["passing American football (in game)"]), (0, "air drumming", ["air drumming"])]
    assert clips[1].path == videos / "air_drumming" / "--0NTAs-fA0_000029_000039.mp4" and clips[1].start is None
    assert (clips[3].path, clips[3].start, clips[3].end) == (videos / "-1B9xPTqD6w.mp4", 7.0, 17.0)
    # a published class list fixes the label order; it joins the split hash
    classes = tmp_path / "kinetics_400_labels.csv"
    classes.write_text("id,name\n1,zumba\n0,passing American football (in game)\n2,air drumming\n")
    assert read_class_list(classes) == ["passing American football (in game)", "zumba", "air drumming"]
    clips, record = build_benchmark("kinetics400", path, videos, classes=classes)
    assert [c.label for c in clips] == [1, 2, 0, 2]
    assert record["split_hash"] == f"{sha12(path)}+{sha12(classes)}"
    classes.write_text("id,name\n0,zumba\n1,air drumming\n")
    with pytest.raises(AnnotationError) as err:
        build_benchmark("kinetics400", path, videos, classes=classes)
    one_line(err, str(classes), "passing American football (in game)")


def test_kinetics_bad_time_names_the_row(tmp_path):
    path = tmp_path / "validate.csv"
    path.write_text("label,youtube_id,time_start,time_end,split\nzumba,abc,one,11,val\n")
    with pytest.raises(AnnotationError) as err:
        read_annotations(path, tmp_path)
    one_line(err, str(path), "row 2", "time_start/time_end")


# -- shards --benchmark ----------------------------------------------------------------------------------------------
def test_shards_command_records_the_benchmark_for_evaluation(tmp_path, capsys):
    from mvclip.cli import main
    from mvclip.datamodules.video_encoding import encode_frames_h264

    videos = tmp_path / "videos"
    videos.mkdir()
    frames = [np.full((32, 32, 3), 40 * i, dtype=np.uint8) for i in range(4)]
    for name in ("video7579", "video7725", "video9258"):
        (videos / f"{name}.mp4").write_bytes(encode_frames_h264(frames, 4))
    csv_path = write_1ka(tmp_path / "MSRVTT_JSFUSION_test.csv")
    out = tmp_path / "shards"
    assert main(["shards", "--benchmark", "msrvtt_1ka", "--videos", str(videos), "--annotations", str(csv_path),
                 "--out", str(out), "--no_progress"]) == 0
    record = split_record(str(out))
    assert record == {"benchmark": "msrvtt_1ka", "split_hash": sha12(csv_path), "split_files": {csv_path.name: sha12(csv_path)},
                      "num_videos": 3, "num_captions": 3}
    assert split_record(str(out / "shard-{000000..000000}.tar")) == record
    with pytest.raises(SystemExit):
        main(["shards", "--split", str(csv_path), "--videos", str(videos), "--annotations", str(csv_path), "--out", str(out)])
    assert "--split and --classes belong to a benchmark" in capsys.readouterr().err
