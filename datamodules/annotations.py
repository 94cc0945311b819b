"""Read caption annotations of the common video-text datasets into `ClipSource`s.

Each format is one `AnnotationFormat` of `FORMATS`, owning its detection and its reader; detection asks them in
order and takes the first that claims the file. Supported (detected from the file when no format is named):
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
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from .shard_format import VIDEO_EXTENSIONS, safe_key
from .shard_writer import ClipSource
from .text_encoding import DEFAULT_ENCODING, decode_error_message, known_encoding

CSV_SUFFIXES = (".csv", ".tsv")


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


@dataclass(frozen=True)
class AnnotationFormat:
    """One caption-file layout: how to recognise it and how to read it. A new dataset's layout is one entry of
    `FORMATS` (or `register_annotation_format` from outside), the way checkpoint layouts are `KeyRule` tables."""

    name: str
    looks_like: str  # what such a file holds, for the message naming the formats a file could have been
    detect: Callable[[AnnotationFile], bool]
    read: Callable[..., list[ClipSource]]  # (path, videos_dir, encoding=...) -> ClipSources


class AnnotationFile:
    """What detection looks at, each part read at most once however many formats ask: the suffix, a CSV's
    header columns (lowercased), a JSON file's document, the first record of a JSONL file or JSON list."""

    def __init__(self, path: Path, encoding: str) -> None:
        self.path, self.encoding = path, encoding
        self.suffix = path.suffix.lower()

    @cached_property
    def columns(self) -> frozenset[str]:
        if self.suffix not in CSV_SUFFIXES:
            return frozenset()
        with open(self.path, encoding=self.encoding, newline="") as f:
            header = f.readline()
        return frozenset(c.strip().lower() for c in header.replace("\t", ",").split(","))

    @cached_property
    def document(self) -> Any:
        """The parsed JSON of a `.json` file (None for other files); invalid JSON is an error naming the formats."""
        if self.suffix != ".json":
            return None
        try:
            return json.loads(self.path.read_text(encoding=self.encoding))
        except json.JSONDecodeError as err:
            raise AnnotationError(f"{self.path}: not valid JSON ({err}); expected {expected_formats()}") from err

    @cached_property
    def record_keys(self) -> frozenset[str]:
        """Keys of the first record of a JSONL file or a JSON list (empty when there is none)."""
        if self.suffix == ".jsonl":
            row = _first_jsonl_row(self.path, self.encoding)
        else:
            data = self.document
            row = data[0] if isinstance(data, list) and data else None
        return frozenset(row) if isinstance(row, dict) else frozenset()


def detect_format(path: str | os.PathLike[str], encoding: str = DEFAULT_ENCODING) -> str:
    """Name the annotation format from the file's extension and header/keys: the first of `FORMATS` that claims it."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    if not known_encoding(encoding):
        raise AnnotationError(f"{path}: unknown encoding {encoding!r}; expected a codec name such as utf-8, latin-1, cp1252")
    file = AnnotationFile(path, encoding)
    try:
        found = next((fmt.name for fmt in FORMATS.values() if fmt.detect(file)), None)
    except UnicodeDecodeError as err:
        raise AnnotationError(decode_error_message(path, encoding)) from err
    if found is None:
        raise AnnotationError(f"{path}: unrecognized annotation file; expected {expected_formats()}")
    return found


def expected_formats() -> str:
    """`msrvtt (JSON with ...), ..., or csv (...)`: every format with what its files hold."""
    described = [f"{fmt.name} ({fmt.looks_like})" for fmt in FORMATS.values()]
    return ", ".join(described[:-1]) + ", or " + described[-1] if len(described) > 1 else described[0]


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
    if suffix in CSV_SUFFIXES:
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


def _is_msrvtt(file: AnnotationFile) -> bool:
    return isinstance(file.document, dict) and {"videos", "sentences"} <= file.document.keys()


def _csv_columns(*names: str) -> Callable[[AnnotationFile], bool]:
    return lambda file: set(names) <= file.columns


def _record_keys(*keys: str) -> Callable[[AnnotationFile], bool]:
    return lambda file: set(keys) <= file.record_keys


FORMATS: dict[str, AnnotationFormat] = {fmt.name: fmt for fmt in (
    AnnotationFormat("msrvtt", "JSON with 'videos' and 'sentences'", detect=_is_msrvtt, read=read_msrvtt),
    AnnotationFormat("webvid", "CSV with columns videoid,name,...", detect=_csv_columns("videoid", "name"), read=read_webvid),
    AnnotationFormat("internvid", "JSONL with YoutubeID, Start_timestamp, End_timestamp, Caption",
                     detect=_record_keys("YoutubeID", "Caption"), read=read_internvid),
    AnnotationFormat("csv", "CSV/JSONL with path and caption",
                     detect=lambda file: _csv_columns("path", "caption")(file) or _record_keys("path", "caption")(file),
                     read=read_plain),
)}


def register_annotation_format(fmt: AnnotationFormat) -> AnnotationFormat:
    """Add a format from outside mvclip; it is detected after the built-in ones and `shards --format` offers it."""
    if fmt.name in FORMATS:
        raise ValueError(f"annotation format {fmt.name!r} exists already")
    FORMATS[fmt.name] = fmt
    return fmt


def read_annotations(path: str | os.PathLike[str], videos_dir: str | os.PathLike[str],
                     format: str | None = None, encoding: str = DEFAULT_ENCODING) -> list[ClipSource]:
    """ClipSources for every annotated video; `format=None` detects it from the file. No sample is an error."""
    path, videos_dir = Path(path), Path(videos_dir)
    if not known_encoding(encoding):
        raise AnnotationError(f"{path}: unknown encoding {encoding!r}; expected a codec name such as utf-8, latin-1, cp1252")
    fmt = format or detect_format(path, encoding)
    if fmt not in FORMATS:
        raise AnnotationError(f"unknown annotation format {fmt!r}; expected one of {tuple(FORMATS)}")
    try:
        clips = FORMATS[fmt].read(path, videos_dir, encoding=encoding)
    except UnicodeDecodeError as err:
        raise AnnotationError(decode_error_message(path, encoding)) from err
    except (json.JSONDecodeError, csv.Error) as err:
        raise AnnotationError(f"{path}: cannot be read as {fmt} ({err})") from err
    if not clips:
        raise AnnotationError(f"{path}: no samples in it (a {fmt} file with no rows or records, e.g. a CSV header alone); "
                              "expected at least one annotated video")
    return clips


from . import benchmark_formats  # noqa: E402,F401  registers the benchmark layouts (MSR-VTT 1k-A, DiDeMo, ...) after the above
