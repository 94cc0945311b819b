"""Reading shards written by video2dataset (WebVid, InternVid and other corpora are often fetched with it).

Its webdataset output differs from ours (`shard_format`) in three ways, all handled here:

- a sample is ``<key>.mp4`` + ``<key>.txt`` (the caption) + ``<key>.json`` (the input row's columns, ``caption``
  among them when a caption column was given, plus ``key``, ``status``, ``error_message``, ...), with no
  ``captions`` list: the caption comes from ``.txt``, else from ``json["caption"]``;
- a video that failed to download or to process is still written, as ``.txt`` + ``.json`` with
  ``status: "failed_to_..."`` and no video: that is a record of a failure, not a sample, and is passed over;
- there is no manifest; each shard ``NNNNN.tar`` has ``NNNNN_stats.json`` beside it, whose ``successes`` is the
  number of videos written to the shard (with clipping on, one video gives several clips, so it undercounts them).
"""
from __future__ import annotations

import json
from typing import Any

from .shard_format import video_member

STATS_SUFFIX = "_stats.json"


def stats_name(stem: str) -> str:
    """``00012_stats.json`` for shard ``00012.tar``."""
    return f"{stem}{STATS_SUFFIX}"


def samples_from_stats(data: bytes, where: str) -> int:
    """The ``successes`` count of a ``_stats.json``; a malformed file is a ValueError naming ``where``."""
    try:
        stats = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where}: not a readable video2dataset stats file ({err})") from err
    successes = stats.get("successes") if isinstance(stats, dict) else None
    if isinstance(successes, bool) or not isinstance(successes, int) or successes < 0:
        raise ValueError(f"{where}: expected an integer 'successes' >= 0, found {successes!r}")
    return successes


def captions_of(raw: dict[str, Any], meta: dict[str, Any]) -> list[str] | None:
    """A video2dataset sample's caption as a one-item list (``.txt``, else ``json["caption"]``), or None."""
    text = raw.get("txt")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if not (isinstance(text, str) and text.strip()):
        text = meta.get("caption")
    return [text] if isinstance(text, str) and text.strip() else None


def is_failed_download(raw: dict[str, Any]) -> bool:
    """True for video2dataset's record of a video it could not fetch: no video member and a ``status`` other than
    ``success`` in its json. Such records are not samples (the stats' ``successes`` leaves them out)."""
    if video_member(raw) is not None or "json" not in raw:
        return False
    try:
        meta = json.loads(raw["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    status = meta.get("status") if isinstance(meta, dict) else None
    return isinstance(status, str) and status.startswith("failed_to_")
