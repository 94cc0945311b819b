"""Readers for the annotation files the standard video-text benchmarks publish, in their own layouts.

Each is an `AnnotationFormat` registered beside the built-in ones (`annotations.FORMATS`), so
`python -m mvclip shards --annotations FILE` detects it and `--format NAME` forces it. Which file of which release
each reader expects, and the protocol built on it, is in docs/evaluation.md; the split list / class list step that
turns a reader's samples into a benchmark is `mvclip.datamodules.benchmarks`.

- `msrvtt_1ka`: the 1k-A test CSV (`MSRVTT_JSFUSION_test.csv`: `key,vid_key,video_id,sentence`), one caption per video.
- `didemo`: DiDeMo's `{train,val,test}_data.json`: a JSON list of moments `{video, description, times, ...}`; the
  descriptions of one video, in file order, joined into one paragraph for the whole video.
- `activitynet`: ActivityNet Captions' `val_1.json` / `train.json`: `{"v_<id>": {duration, timestamps, sentences}}`;
  the sentences joined into one paragraph, the whole video.
- `msvd`: MSVD captions as text lines `<video_id> <caption>` (`AllVideoDescriptions.txt`; `#` lines skipped) or the
  JSON form of the CLIP4Clip-style `raw-captions.pkl`: `{video_id: ["caption", ...] or [["word", ...], ...]}`.
  A pickle is never read here (unpickling runs code); docs/evaluation.md says how to convert it once, offline.
- `kinetics`: Kinetics' `validate.csv` / `kinetics_400_val.csv`: `label,youtube_id,time_start,time_end,split`; the
  caption is the class name, the label its index among the file's sorted class names (a class list may reorder them:
  `benchmarks.assign_labels`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .annotations import (
    AnnotationError, AnnotationFile, AnnotationFormat, FORMATS, _read_csv, _require, find_video, register_annotation_format,
)
from .shard_format import safe_key
from .shard_writer import ClipSource
from .text_encoding import DEFAULT_ENCODING

__all__ = ["read_msrvtt_1ka", "read_didemo", "read_activitynet", "read_msvd", "read_kinetics", "paragraph"]


def paragraph(sentences: list[str]) -> str:
    """Sentences of one video as one caption: each stripped, empty ones dropped, joined by single spaces."""
    return " ".join(s.strip() for s in sentences if s and s.strip())


def _find_first(videos_dir: Path, names: list[str], subdirs: tuple[str, ...] = ()) -> Path:
    """The first of `names` (with any video extension, or as given) that exists; else where the first was looked for."""
    for name in names:
        found = find_video(videos_dir, name, subdirs)
        if found.is_file():
            return found
    return find_video(videos_dir, names[0], subdirs)


def _json(path: Path, encoding: str) -> Any:
    try:
        return json.loads(path.read_text(encoding=encoding))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from err


# -- MSR-VTT 1k-A --------------------------------------------------------------------------------------------------
def read_msrvtt_1ka(path: Path, videos_dir: Path, encoding: str = DEFAULT_ENCODING) -> list[ClipSource]:
    """One sample per `video_id` in file order; its `sentence` is the caption (a repeated video keeps all of its)."""
    clips: dict[str, ClipSource] = {}
    for i, row in enumerate(_read_csv(path, encoding)):
        _require(row, ("video_id", "sentence"), f"{path}: row {i + 2} (expected columns key,vid_key,video_id,sentence)")
        video_id = row["video_id"]
        if not video_id or not row["sentence"]:
            raise AnnotationError(f"{path}: row {i + 2}: empty video_id or sentence")
        if video_id in clips:
            clips[video_id].captions.append(row["sentence"])
            continue
        extra = {k: row[k] for k in ("key", "vid_key") if row.get(k)}
        clips[video_id] = ClipSource(key=safe_key(video_id), path=find_video(videos_dir, video_id), captions=[row["sentence"]], extra=extra)
    return list(clips.values())


# -- DiDeMo --------------------------------------------------------------------------------------------------------
def read_didemo(path: Path, videos_dir: Path, encoding: str = DEFAULT_ENCODING) -> list[ClipSource]:
    """Paragraph-to-video: one sample per video (first appearance order), its moment descriptions joined."""
    data = _json(path, encoding)
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected DiDeMo's JSON list of moments {{video, description, times}}, got a {type(data).__name__}")
    sentences: dict[str, list[str]] = {}
    for i, moment in enumerate(data):
        where = f"{path}: moment {i}"
        if not isinstance(moment, dict):
            raise AnnotationError(f"{where}: expected an object {{video, description, times}}")
        _require(moment, ("video", "description"), where)
        sentences.setdefault(str(moment["video"]), []).append(str(moment["description"]))
    clips = []
    for video, described in sentences.items():
        stem = Path(video).stem if Path(video).suffix else video
        clips.append(ClipSource(key=safe_key(stem), path=_find_first(videos_dir, [video, stem]), captions=[paragraph(described)],
                                extra={"video": video, "sentences": len(described)}))
    return clips


# -- ActivityNet Captions ------------------------------------------------------------------------------------------
def read_activitynet(path: Path, videos_dir: Path, encoding: str = DEFAULT_ENCODING) -> list[ClipSource]:
    """Paragraph-to-video: one sample per `v_<id>` (file order), its sentences joined; files named with or without `v_`."""
    data = _json(path, encoding)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected ActivityNet Captions' JSON object {{\"v_<id>\": {{duration, timestamps, sentences}}}}")
    clips = []
    for video_id, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sentences"), list):
            raise AnnotationError(f"{path}: {video_id}: expected an object with a list of 'sentences' (and duration, timestamps)")
        names = [video_id] + ([video_id[2:]] if video_id.startswith("v_") else [])
        extra = {"sentences": len(entry["sentences"])}
        if isinstance(entry.get("duration"), (int, float)):
            extra["annotated_duration"] = float(entry["duration"])
        clips.append(ClipSource(key=safe_key(video_id), path=_find_first(videos_dir, names),
                                captions=[paragraph([str(s) for s in entry["sentences"]])], extra=extra))
    return clips


# -- MSVD ----------------------------------------------------------------------------------------------------------
def _msvd_text_lines(path: Path, encoding: str) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    with open(path, encoding=encoding) as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split(None, 1)
            if len(parts) != 2:
                raise AnnotationError(f"{path}:{lineno}: expected '<video_id> <caption>', got {text[:60]!r}")
            captions.setdefault(parts[0], []).append(parts[1].strip())
    return captions


def _msvd_json(path: Path, encoding: str) -> dict[str, list[str]]:
    data = _json(path, encoding)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object {{video_id: [captions]}} (raw-captions converted to JSON)")
    captions: dict[str, list[str]] = {}
    for video_id, entries in data.items():
        if not isinstance(entries, list):
            raise AnnotationError(f"{path}: {video_id}: expected a list of captions (strings or lists of words)")
        captions[str(video_id)] = [" ".join(map(str, c)) if isinstance(c, list) else str(c) for c in entries]
    return captions


def read_msvd(path: Path, videos_dir: Path, encoding: str = DEFAULT_ENCODING) -> list[ClipSource]:
    """Multi-caption: one sample per video id (first appearance order) with every caption of it."""
    captions = _msvd_json(path, encoding) if path.suffix.lower() == ".json" else _msvd_text_lines(path, encoding)
    return [ClipSource(key=safe_key(video_id), path=find_video(videos_dir, video_id), captions=[c for c in texts if c.strip()])
            for video_id, texts in captions.items()]


# -- Kinetics ------------------------------------------------------------------------------------------------------
def read_kinetics(path: Path, videos_dir: Path, encoding: str = DEFAULT_ENCODING) -> list[ClipSource]:
    """One sample per row: key `<youtube_id>_<start:06d>_<end:06d>` (the common downloaders' file name), looked for
    in `<videos>/<label>/` (spaces or underscores) and `<videos>/`; an untrimmed `<youtube_id>.<ext>` is trimmed."""
    rows = _read_csv(path, encoding)
    parsed = []
    for i, row in enumerate(rows):
        where = f"{path}: row {i + 2} (expected columns label,youtube_id,time_start,time_end,split)"
        _require(row, ("label", "youtube_id", "time_start", "time_end"), where)
        try:
            start, end = float(row["time_start"]), float(row["time_end"])
        except ValueError as err:
            raise AnnotationError(f"{where}: time_start/time_end must be seconds ({err})") from err
        if not row["label"] or not row["youtube_id"]:
            raise AnnotationError(f"{where}: empty label or youtube_id")
        parsed.append((row, start, end))
    classes = sorted({row["label"] for row, _, _ in parsed})
    index = {name: i for i, name in enumerate(classes)}
    clips = []
    for row, start, end in parsed:
        label, youtube_id = row["label"], row["youtube_id"]
        trimmed = f"{youtube_id}_{int(start):06d}_{int(end):06d}"
        subdirs = tuple(dict.fromkeys((label, label.replace(" ", "_"))))
        clip_path = _find_first(videos_dir, [trimmed], subdirs)
        trim: tuple[float | None, float | None] = (None, None)
        if not clip_path.is_file():
            whole = find_video(videos_dir, youtube_id, subdirs)
            if whole.is_file():
                clip_path, trim = whole, (start, end)
        extra = {"split": row["split"]} if row.get("split") else {}
        clips.append(ClipSource(key=safe_key(trimmed), path=clip_path, captions=[label], start=trim[0], end=trim[1],
                                label=index[label], label_name=label, extra=extra))
    return clips


# -- detection -----------------------------------------------------------------------------------------------------
def _first_value(file: AnnotationFile) -> Any:
    doc = file.document
    return next(iter(doc.values()), None) if isinstance(doc, dict) and doc else None


def _is_msvd(file: AnnotationFile) -> bool:
    if file.suffix == ".json":
        return isinstance(_first_value(file), list)
    if file.suffix != ".txt":
        return False
    with open(file.path, encoding=file.encoding) as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                return len(line.split(None, 1)) == 2
    return False


def _register() -> None:
    formats = (
        AnnotationFormat("msrvtt_1ka", "CSV with columns key,vid_key,video_id,sentence (MSRVTT_JSFUSION_test.csv)",
                         detect=lambda f: {"video_id", "sentence"} <= f.columns, read=read_msrvtt_1ka),
        AnnotationFormat("didemo", "JSON list of {video, description, times} (DiDeMo test_data.json)",
                         detect=lambda f: {"video", "description", "times"} <= f.record_keys, read=read_didemo),
        AnnotationFormat("activitynet", 'JSON {"v_<id>": {duration, timestamps, sentences}} (ActivityNet Captions val_1.json)',
                         detect=lambda f: isinstance(_first_value(f), dict) and {"timestamps", "sentences"} <= _first_value(f).keys(),
                         read=read_activitynet),
        AnnotationFormat("msvd", "text lines '<video_id> <caption>' or JSON {video_id: [captions]} (MSVD)", detect=_is_msvd, read=read_msvd),
        AnnotationFormat("kinetics", "CSV with columns label,youtube_id,time_start,time_end,split (Kinetics)",
                         detect=lambda f: {"label", "youtube_id", "time_start", "time_end"} <= f.columns, read=read_kinetics),
    )
    for fmt in formats:
        if fmt.name not in FORMATS:  # importing twice (tests reload modules) registers once
            register_annotation_format(fmt)


_register()
