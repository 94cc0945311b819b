"""Read caption annotations of the common video-text datasets into `ClipSource`s.

Supported (detected from the file when no format is named):
- `msrvtt`: JSON `{"videos": [{"video_id": ...}], "sentences": [{"video_id", "caption"}]}`;
  the ~20 captions of a video stay together in one sample.
- `webvid`: CSV `videoid,contentUrl,duration,page_dir,name`; caption = `name`, the file is
  `<videos>/<videoid>.mp4` or `<videos>/<page_dir>/<videoid>.mp4`.
- `internvid`: JSONL `{"YoutubeID", "Start_timestamp": "00:00:12.345", "End_timestamp",
  "Caption"}`; each line is a clip trimmed from `<videos>/<YoutubeID>.<ext>`.
- `csv`: plain CSV (header `path,caption[,start,end,label,label_name,group]`) or JSONL/JSON list with
  the same keys; rows naming the same untrimmed file are merged into one multi-caption sample.
  `group` names a set of hard negatives (a clip and its time-reversed twin, say): the samples of a
  group are written next to each other in one shard, can be batched together (`data.group_batching`)
  and are scored by twin accuracy at evaluation (`mvclip.temporal_metrics`).
A video that cannot be found still becomes a `ClipSource` (with the path it was looked for at), so
the build lists it as `missing` in the manifest instead of dropping it silently. Files are read as UTF-8
(with or without a byte-order mark) unless another `encoding` is named; a file that is not valid in it,
or that holds no sample at all (a CSV header alone), is an `AnnotationError` naming the file (and line).
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Callable

from .shard_format import VIDEO_EXTENSIONS, safe_key
from .shard_writer import ClipSource
from .text_encoding import DEFAULT_ENCODING, decode_error_message, known_encoding

FORMATS = ("msrvtt", "webvid", "internvid", "csv")
_EXPECTED = (
    "msrvtt (JSON with 'videos' and 'sentences'), webvid (CSV with columns videoid,name,...), "
    "internvid (JSONL with YoutubeID, Start_timestamp, End_timestamp, Caption), or csv "
    "(CSV/JSONL with path and caption)")


class AnnotationError(ValueError):
    """An annotation file that cannot be read as the expected format."""


def parse_timestamp(value: Any) -> float:
    """`"00:01:02.5"`, `"01:02.5"` or a number of seconds -> seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def find_video(videos_dir: Path, stem: str, subdirs: tuple[str, ...] = ()) -> Path:
    """The file `<dir>[/<subdir>]/<stem>.<ext>` for the first video extension that exists;
    when none does, the `.mp4` path (so the build reports it as missing)."""
    folders = [videos_dir / s for s in subdirs if s] + [videos_dir]
    for folder in folders:
        for ext in VIDEO_EXTENSIONS:
            candidate = folder / f"{stem}.{ext}"
            if candidate.is_file():
                return candidate
    # the stem may already carry its extension
    for folder in folders:
        if (folder / stem).is_file():
            return folder / stem
    return folders[0] / f"{stem}.mp4"


def _read_jsonl(path: Path, encoding: str = DEFAULT_ENCODING) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding=encoding) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise AnnotationError(f"{path}:{lineno}: not a JSON line ({err})") from err
            if not isinstance(row, dict):
                raise AnnotationError(f"{path}:{lineno}: expected a JSON object per line")
            rows.append(row)
    return rows


def _read_csv(path: Path, encoding: str = DEFAULT_ENCODING) -> list[dict[str, str]]:
    with open(path, encoding=encoding, newline="") as f:
        sample = f.read(4096)
        f.seek(0)
        delimiter = "\t" if path.suffix.lower() == ".tsv" or (
            "\t" in sample.splitlines()[0] if sample else False) else ","
        reader = csv.DictReader(f, delimiter=delimiter)
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def detect_format(path: str | os.PathLike[str], encoding: str = DEFAULT_ENCODING) -> str:
    """Name the annotation format from the file's extension and header/keys."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    if not known_encoding(encoding):
        raise AnnotationError(f"{path}: unknown encoding {encoding!r}; expected a codec name such as utf-8, latin-1, cp1252")
    try:
        return _detect_format(path, encoding)
    except UnicodeDecodeError as err:
        raise AnnotationError(decode_error_message(path, encoding)) from err


def _detect_format(path: Path, encoding: str) -> str:
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        with open(path, encoding=encoding, newline="") as f:
            header = f.readline()
        columns = {c.strip().lower() for c in header.replace("\t", ",").split(",")}
        if {"videoid", "name"} <= columns:
            return "webvid"
        if {"path", "caption"} <= columns:
            return "csv"
    elif suffix == ".jsonl":
        rows = _first_jsonl_row(path, encoding)
        if rows is not None:
            if {"YoutubeID", "Caption"} <= rows.keys():
                return "internvid"
            if {"path", "caption"} <= rows.keys():
                return "csv"
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding=encoding))
        except json.JSONDecodeError as err:
            raise AnnotationError(f"{path}: not valid JSON ({err}); expected {_EXPECTED}") from err
        if isinstance(data, dict) and {"videos", "sentences"} <= data.keys():
            return "msrvtt"
        if isinstance(data, list) and data and isinstance(data[0], dict):
            if {"YoutubeID", "Caption"} <= data[0].keys():
                return "internvid"
            if {"path", "caption"} <= data[0].keys():
                return "csv"
    raise AnnotationError(f"{path}: unrecognized annotation file; expected {_EXPECTED}")


def _first_jsonl_row(path: Path, encoding: str = DEFAULT_ENCODING) -> dict[str, Any] | None:
    with open(path, encoding=encoding) as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return None
                return row if isinstance(row, dict) else None
    return None


def _records(path: Path, encoding: str = DEFAULT_ENCODING) -> list[dict[str, Any]]:
    """Rows of a CSV, JSONL or JSON-list file."""
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        return _read_csv(path, encoding)
    if suffix == ".jsonl":
        return _read_jsonl(path, encoding)
    data = json.loads(path.read_text(encoding=encoding))
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list of objects")
    return data


def _require(row: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise AnnotationError(f"{where}: missing key(s) {missing}; found {sorted(row)}")


def read_msrvtt(path: Path, videos_dir: Path, encoding: str = DEFAULT_ENCODING) -> list[ClipSource]:
    data = json.loads(path.read_text(encoding=encoding))
    if not isinstance(data, dict) or not {"videos", "sentences"} <= data.keys():
        raise AnnotationError(f"{path}: expected an object with 'videos' and 'sentences'")
    captions: dict[str, list[str]] = {}
    for i, sentence in enumerate(data["sentences"]):
        _require(sentence, ("video_id", "caption"), f"{path}: sentences[{i}]")
        captions.setdefault(str(sentence["video_id"]), []).append(str(sentence["caption"]))
    clips = []
    ids = [str(v["video_id"]) for v in data["videos"] if "video_id" in v]
    extra_info = {str(v["video_id"]): v for v in data["videos"] if "video_id" in v}
    for video_id in ids + sorted(set(captions) - set(ids)):  # captions of unlisted videos too
        info = extra_info.get(video_id, {})
        extra = {k: info[k] for k in ("split", "category", "url") if k in info}
        category = info.get("category")
        clips.append(ClipSource(
            key=safe_key(video_id), path=find_video(videos_dir, video_id),
            captions=captions.get(video_id, []),
            label=int(category) if isinstance(category, (int, str)) and str(category).isdigit()
            else None, extra=extra))
    return clips


def read_webvid(path: Path, videos_dir: Path, encoding: str = DEFAULT_ENCODING) -> list[ClipSource]:
    clips = []
    for i, row in enumerate(_records(path, encoding)):
        _require(row, ("videoid", "name"), f"{path}: row {i + 2}")
        video_id = str(row["videoid"])
        page_dir = str(row.get("page_dir") or "")
        extra = {k: row[k] for k in ("contentUrl", "page_dir") if row.get(k)}
        clips.append(ClipSource(key=safe_key(video_id),
                                path=find_video(videos_dir, video_id, (page_dir,)),
                                captions=[row["name"]], extra=extra))
    return clips


def read_internvid(path: Path, videos_dir: Path, encoding: str = DEFAULT_ENCODING) -> list[ClipSource]:
    clips = []
    for i, row in enumerate(_records(path, encoding)):
        where = f"{path}: record {i + 1}"
        _require(row, ("YoutubeID", "Start_timestamp", "End_timestamp", "Caption"), where)
        try:
            start = parse_timestamp(row["Start_timestamp"])
            end = parse_timestamp(row["End_timestamp"])
        except ValueError as err:
            raise AnnotationError(f"{where}: timestamps must look like 00:00:12.345 ({err})") \
                from err
        video_id = str(row["YoutubeID"])
        extra = {k: row[k] for k in row
                 if k not in {"YoutubeID", "Start_timestamp", "End_timestamp", "Caption"}}
        clips.append(ClipSource(
            key=safe_key(f"{video_id}_{round(start * 1000)}_{round(end * 1000)}"),
            path=find_video(videos_dir, video_id), captions=[str(row["Caption"])],
            start=start, end=end, extra=extra))
    return clips


def read_plain(path: Path, videos_dir: Path, encoding: str = DEFAULT_ENCODING) -> list[ClipSource]:
    grouped: dict[tuple[str, float | None, float | None], ClipSource] = {}
    for i, row in enumerate(_records(path, encoding)):
        where = f"{path}: record {i + 1}"
        _require(row, ("path", "caption"), where)
        video = Path(str(row["path"]))
        video = video if video.is_absolute() else videos_dir / video
        start = parse_timestamp(row["start"]) if row.get("start") not in (None, "") else None
        end = parse_timestamp(row["end"]) if row.get("end") not in (None, "") else None
        group = (str(video), start, end)
        if group in grouped:
            grouped[group].captions.append(str(row["caption"]))
            continue
        # the path with its extension: `clip.mp4` and `clip.avi` must not share a key
        name = str(row["path"])
        key = name if start is None and end is None else \
            f"{name}_{round((start or 0) * 1000)}_{round(end * 1000) if end is not None else 'end'}"
        label = row.get("label")
        extra = {"group": str(row["group"])} if row.get("group") not in (None, "") else {}
        grouped[group] = ClipSource(
            key=safe_key(key), path=video, captions=[str(row["caption"])], start=start, end=end,
            label=int(label) if label not in (None, "") else None,
            label_name=str(row["label_name"]) if row.get("label_name") else None, extra=extra)
    return list(grouped.values())


READERS: dict[str, Callable[..., list[ClipSource]]] = {
    "msrvtt": read_msrvtt, "webvid": read_webvid, "internvid": read_internvid, "csv": read_plain,
}


def read_annotations(path: str | os.PathLike[str], videos_dir: str | os.PathLike[str],
                     format: str | None = None, encoding: str = DEFAULT_ENCODING) -> list[ClipSource]:
    """ClipSources for every annotated video; `format=None` detects it from the file. No sample is an error."""
    path, videos_dir = Path(path), Path(videos_dir)
    if not known_encoding(encoding):
        raise AnnotationError(f"{path}: unknown encoding {encoding!r}; expected a codec name such as utf-8, latin-1, cp1252")
    fmt = format or detect_format(path, encoding)
    if fmt not in READERS:
        raise AnnotationError(f"unknown annotation format {fmt!r}; expected one of {FORMATS}")
    try:
        clips = READERS[fmt](path, videos_dir, encoding=encoding)
    except UnicodeDecodeError as err:
        raise AnnotationError(decode_error_message(path, encoding)) from err
    except (json.JSONDecodeError, csv.Error) as err:
        raise AnnotationError(f"{path}: cannot be read as {fmt} ({err})") from err
    if not clips:
        raise AnnotationError(f"{path}: no samples in it (a {fmt} file with no rows or records, e.g. a CSV header alone); "
                              "expected at least one annotated video")
    return clips
