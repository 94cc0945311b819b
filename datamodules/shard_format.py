"""The on-disk shard format shared by the writer (`shard_writer`) and the loaders.

One place defines the names, so the two sides cannot drift apart. A shard is a POSIX tar with one
sample per clip (`<key>.json`, `<key>.<video ext>`, optionally `<key>.teacher.npy`); a shard
directory holds `<prefix>-000000.tar`, ... plus `manifest.json`, from which loaders read epoch
sizes without scanning the tars. `docs/data.md` describes the format for humans.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, TypedDict

MANIFEST_NAME = "manifest.json"
# Sidecar with the per-shard input keys a resumed build needs; loaders ignore it.
PROGRESS_NAME = ".progress.json"
MANIFEST_VERSION = 1
TEACHER_EXTENSION = "teacher.npy"

# Container extensions PyAV opens; a sample's video member is stored under one of them, so a
# loader finds it by extension and hands the bytes to PyAV unchanged.
VIDEO_EXTENSIONS: tuple[str, ...] = (
    "mp4", "m4v", "mov", "webm", "mkv", "avi", "mpg", "mpeg", "ts", "flv", "ogv", "3gp", "wmv",
)


class _SampleMetaRequired(TypedDict):
    captions: list[str]
    source: str
    fps: float
    duration: float
    frames: int


class SampleMeta(_SampleMetaRequired, total=False):
    """The `json` member of a sample. Times are seconds; `start`/`end` locate a trimmed clip in
    its source video (the stored clip itself starts at 0). Extra keys are allowed."""

    start: float
    end: float
    label: int
    label_name: str
    width: int
    height: int
    codec: str


def shard_name(prefix: str, index: int) -> str:
    """`train-000003.tar`: zero-padded so lexical order is shard order."""
    return f"{prefix}-{index:06d}.tar"


def safe_key(text: str) -> str:
    """A WebDataset key: letters and digits of any script, `_` and `-`; no dots (they separate key from
    extension) and no path separators. Unique and stable for any Unicode name:

    - the text is NFC-normalized first (macOS spells `é` as e + accent), so one name gives one key;
    - letters, digits and combining marks of any script are kept (`日本語.mp4` -> `日本語_mp4`); every run of other
      characters becomes one `_` (`a/b.mp4` -> `a_b_mp4`, as before for ASCII names);
    - when a character outside ASCII had to be replaced (an emoji, a CJK full stop), or nothing is left, a hash of the
      whole name is appended, so names differing only there still get distinct keys (`🎬.mp4` -> `mp4-<hash>`).
    """
    text = unicodedata.normalize("NFC", str(text))
    kept = "".join(ch if _key_char(ch) else "\0" for ch in text)
    key = re.sub("\0+", "_", kept).strip("_")
    lossy = any(not ch.isascii() and not _key_char(ch) for ch in text)
    if lossy or not key:
        digest = base64.b32encode(hashlib.sha1(text.encode("utf-8")).digest()).decode("ascii")[:13].lower()
        key = f"{key}-{digest}" if key else digest
    return key


def _key_char(ch: str) -> bool:
    """Letters, digits, combining marks (of any script), `_` and `-`."""
    if ch.isascii():
        return ch.isalnum() or ch in "_-"
    return unicodedata.category(ch)[0] in "LNM"


def video_member(sample: dict[str, Any]) -> str | None:
    """The extension under which a decoded WebDataset sample (dict of member name -> bytes) keeps
    its video, or None when it has none."""
    for ext in VIDEO_EXTENSIONS:
        if ext in sample:
            return ext
    return None


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check `<directory>/manifest.json`; errors name the file and what was expected."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no shard manifest here; build shards with `python -m mvclip shards "
            f"--videos DIR --annotations FILE --out {Path(directory)}` (or --synthetic N)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON manifest ({err})") from err
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(manifest).__name__}")
    for field, kind in (("version", int), ("shards", list), ("total_samples", int)):
        if not isinstance(manifest.get(field), kind):
            raise ValueError(f"{path}: key {field!r} missing or not a {kind.__name__}")
    if manifest["version"] != MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest version {manifest['version']} is not supported "
                         f"(expected {MANIFEST_VERSION})")
    for i, shard in enumerate(manifest["shards"]):
        if not (isinstance(shard, dict) and isinstance(shard.get("name"), str)
                and isinstance(shard.get("samples"), int) and isinstance(shard.get("bytes"), int)):
            raise ValueError(f"{path}: shards[{i}] must be {{'name': str, 'samples': int, "
                             f"'bytes': int}}, found {shard!r}")
    counted = sum(s["samples"] for s in manifest["shards"])
    if counted != manifest["total_samples"]:
        raise ValueError(f"{path}: total_samples is {manifest['total_samples']} but the shards "
                         f"list {counted} samples")
    manifest.setdefault("skipped", [])
    manifest.setdefault("options", {})
    return manifest


