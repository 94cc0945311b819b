"""Write clips into WebDataset shards: probe, optionally re-encode, pack, and record a manifest.

Real data and the synthetic set go through this one writer, so both produce the same format (see
`shard_format`). Design choices, and why:
- Inputs are sorted by key and packed in that order, so which input lands in which shard does not
  depend on worker timing; that is what makes resuming well defined.
- Each finished shard is written to `name.tar.tmp`, fsynced and renamed, then recorded (with the
  input keys it consumed) in `.progress.json`; a rerun keeps every recorded shard whose file is
  intact and starts after it. The manifest is written last, also atomically.
- Bad inputs are skipped with a reason instead of failing the build: one corrupt file among a
  million should cost one line in the manifest, not the run.
- Without re-encoding the original container bytes are stored untouched (no quality loss, no
  time); re-encoding to H.264 with a short GOP makes seeking cheap for the loaders. A trimmed clip
  is always re-encoded, because a cut without re-encoding can only start on a keyframe.

Packing lives here; re-encoding to H.264 is :mod:`.video_encoding`, whose names are re-exported.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from mvclip.atomic import fsync_dir, write_json_atomic

from . import probe as probe_mod
from .shard_format import (
    MANIFEST_NAME, MANIFEST_VERSION, PROGRESS_NAME, TEACHER_EXTENSION, VIDEO_EXTENSIONS, read_manifest, safe_key, shard_name,
)
from .video_encoding import (
    DEFAULT_CRF, DEFAULT_KEYFRAME_INTERVAL, REENCODE_THREADS, encode_frames_h264, even_size, open_h264_stream, transcode,
)
from .worker_pool import worker_pool

__all__ = [
    "DEFAULT_CRF", "DEFAULT_KEYFRAME_INTERVAL", "DEFAULT_SAMPLES_PER_SHARD", "REENCODE_THREADS", "ClipSource", "clip_group",
    "encode_frames_h264", "even_size", "first_input_of_each_key", "open_h264_stream", "summary_line", "transcode",
    "write_shards",
]

log = logging.getLogger(__name__)

DEFAULT_SAMPLES_PER_SHARD = 256
_TAR_MTIME = 1_700_000_000  # fixed member mtime: same inputs -> byte-identical shards
_CORE_META = ("captions", "source", "fps", "duration", "frames")
# PyAV container format name (first alias) -> file extension when the source has an unknown one
_FORMAT_EXT = {"mov": "mp4", "matroska": "mkv", "avi": "avi", "mpeg": "mpg", "mpegts": "ts",
               "flv": "flv", "ogg": "ogv", "asf": "wmv"}


@dataclass
class ClipSource:
    """One input clip: a video file, its captions, and an optional [start, end) trim in seconds.

    `extra` goes into the sample's json as is (it cannot override the measured fields, except
    `source`, for inputs whose file is a temporary one)."""

    key: str
    path: str | os.PathLike[str]
    captions: list[str]
    start: float | None = None
    end: float | None = None
    label: int | None = None
    label_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    teacher: np.ndarray | None = None  # stored as `teacher.npy` (float32) for distillation


@dataclass(frozen=True)
class _Options:
    reencode_short_side: int | None
    keyframe_interval: int | None
    crf: int


@dataclass
class _Prepared:
    """A worker's answer for one input: the members to store, or why it was skipped."""

    key: str
    source: str
    members: dict[str, bytes] | None = None
    reason: str | None = None
    detail: str = ""

    @property
    def size_in_tar(self) -> int:
        return sum(512 + -(-len(b) // 512) * 512 for b in (self.members or {}).values())


# ----------------------------------------------------------------------------------------------
# Per-input work (runs in pool workers)


def _video_ext(path: Path, container: str) -> str:
    ext = path.suffix.lower().lstrip(".")
    if ext in VIDEO_EXTENSIONS:
        return ext
    return _FORMAT_EXT.get(container.split(",")[0], "mp4")


def _prepare(clip: ClipSource, options: _Options) -> _Prepared:
    """Probe one input and return its tar members, or the reason to skip it."""
    source = str(clip.path)
    captions = [c.strip() for c in (clip.captions or []) if isinstance(c, str) and c.strip()]
    if not captions:
        return _Prepared(clip.key, source, reason=probe_mod.NO_CAPTIONS,
                         detail="no non-empty caption")
    info = probe_mod.probe_video(source, start=clip.start, end=clip.end)
    if not info.ok:
        return _Prepared(clip.key, source, reason=info.reason, detail=info.detail)

    trimmed = clip.start is not None or clip.end is not None
    reencode = trimmed or options.reencode_short_side or options.keyframe_interval
    if reencode:
        try:
            data = transcode(source, info, short_side=options.reencode_short_side,
                             keyframe_interval=options.keyframe_interval
                             or DEFAULT_KEYFRAME_INTERVAL, crf=options.crf)
        except Exception as err:
            return _Prepared(clip.key, source, reason=probe_mod.ENCODE_FAILED, detail=str(err))
        stored = probe_mod.probe_video(data)
        if not stored.ok:
            return _Prepared(clip.key, source, reason=probe_mod.ENCODE_FAILED,
                             detail=f"re-encoded clip does not probe: {stored.detail}")
        ext = "mp4"
    else:
        data = Path(source).read_bytes()
        stored, ext = info, _video_ext(Path(source), info.container)

    meta: dict[str, Any] = {k: v for k, v in clip.extra.items() if k not in _CORE_META}
    meta.update(captions=captions, source=str(clip.extra.get("source", source)), fps=round(stored.fps, 6),
                duration=round(stored.duration, 6), frames=stored.frames, width=stored.width,
                height=stored.height, codec=stored.codec, keyframes=stored.keyframes)
    if trimmed:
        meta.update(start=round(info.start or 0.0, 6), end=round(info.end or 0.0, 6),
                    source_duration=round(info.source_duration, 6))
    if clip.label is not None:
        meta["label"] = int(clip.label)
    if clip.label_name is not None:
        meta["label_name"] = str(clip.label_name)
    members = {"json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"),
               ext: data}
    if clip.teacher is not None:
        npy = io.BytesIO()
        np.save(npy, np.asarray(clip.teacher, dtype=np.float32))
        members[TEACHER_EXTENSION] = npy.getvalue()
    return _Prepared(clip.key, source, members=members)



def _prepared_in_order(clips: Sequence[ClipSource], options: _Options,
                       workers: int) -> Iterator[_Prepared]:
    """Results in input order; a bounded window of futures keeps memory flat on big builds."""
    if workers <= 0:
        for clip in clips:
            yield _prepare(clip, options)
        return
    with worker_pool(workers) as pool:
        window: deque[Future[_Prepared]] = deque()
        todo = iter(clips)
        for clip in todo:
            window.append(pool.submit(_prepare, clip, options))
            if len(window) >= 4 * workers:
                break
        while window:
            result = window.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                window.append(pool.submit(_prepare, nxt, options))
            yield result


# ----------------------------------------------------------------------------------------------
# Tar files


class _ShardFile:
    """A tar being written to `<name>.tmp`; `finish()` fsyncs and renames it into place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.samples = 0
        self.inputs: list[str] = []
        self.skipped: list[dict[str, str]] = []
        self.last_group: str | None = None  # a group is never split across shards

    def projected_size(self, extra: int) -> int:
        """Size of the finished tar if `extra` more member bytes (headers included) were added:
        tarfile ends with two zero blocks and pads to a 10 KiB record."""
        end = self._file.tell() + extra + 1024
        return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

    def add(self, item: _Prepared) -> None:
        for ext, data in (item.members or {}).items():
            info = tarfile.TarInfo(f"{item.key}.{ext}")
            info.size, info.mtime, info.mode = len(data), _TAR_MTIME, 0o444
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def finish(self) -> int:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path.stat().st_size

    def abandon(self) -> None:
        try:
            self._tar.close()
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# The build


def _skip_entry(item: _Prepared) -> dict[str, str]:
    return {"input": item.source, "key": item.key, "reason": item.reason or "",
            "detail": item.detail}


def make_output_dir(out_dir: str | os.PathLike[str]) -> Path:
    """The shard folder `--out`, created if missing; a file in its place is a one-line error, not a traceback."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a folder; give a new or existing folder for the shards")
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_progress(out: Path, options: dict[str, Any], *, made_from: str = "built with other options") -> list[dict[str, Any]]:
    """Shard records of an earlier run into `out` with the same options; [] when there is none or it is unreadable.

    A run with other options is refused (`made_from` says how they differ), so shards of two recipes never mix."""
    path = out / PROGRESS_NAME
    if not path.is_file():
        return []
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable (%s); writing every shard again", path, err)
        return []
    if progress.get("options") != options:
        raise ValueError(
            f"{path}: the shards in {out} were {made_from} ({progress.get('options')}; this run: {options}); "
            "use another output directory or delete it")
    return list(progress.get("shards", []))


def first_input_of_each_key(clips: Sequence[ClipSource]) -> dict[str, str]:
    """key -> the input that keeps it (the first in packing order), to name it when a later input collides."""
    first: dict[str, str] = {}
    for clip in clips:
        first.setdefault(clip.key, str(clip.extra.get("source", clip.path)))
    return first


def clip_group(clip: ClipSource) -> str | None:
    """The hard-negative group a clip declares in its metadata (`group`; the synthetic set calls it `pair`)."""
    group = clip.extra.get("group", clip.extra.get("pair"))
    return None if group is None else str(group)


def write_shards(samples: Iterable[ClipSource], out_dir: str | os.PathLike[str], *,
                 prefix: str = "shard", samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
                 max_shard_bytes: int | None = None, workers: int = 0,
                 reencode_short_side: int | None = None, keyframe_interval: int | None = None,
                 progress: bool = True, crf: int = DEFAULT_CRF,
                 extra_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Probe, (re-encode,) and pack `samples` into `<out_dir>/<prefix>-NNNNNN.tar` plus
    `manifest.json`; returns the manifest. Resumes an interrupted build of the same inputs and
    options, keeping its finished shards untouched."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if max_shard_bytes is not None and max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
    if not prefix or not re.fullmatch(r"[A-Za-z0-9_-]+", prefix):
        raise ValueError(f"prefix must be letters, digits, '_' or '-', got {prefix!r}")
    out = make_output_dir(out_dir)

    # stable: the first duplicate key wins; members of a group sit next to each other (group batching reads them so)
    clips = sorted(samples, key=lambda c: (clip_group(c) or c.key, c.key))
    group_of = {c.key: clip_group(c) for c in clips}
    for clip in clips:
        if safe_key(clip.key) != clip.key:
            raise ValueError(f"sample key {clip.key!r} (from {clip.path}) may only hold letters, "
                             "digits (any script, NFC-normalized), '_' and '-'; "
                             "shard_format.safe_key() makes one")
    build_options: dict[str, Any] = {
        "prefix": prefix, "samples_per_shard": samples_per_shard,
        "max_shard_bytes": max_shard_bytes, "reencode_short_side": reencode_short_side,
        "keyframe_interval": keyframe_interval,
        "crf": crf if _reencodes(clips, reencode_short_side, keyframe_interval) else None,
    }
    manifest_options = {**build_options, **(extra_options or {})}

    # Keep the finished shards of an earlier run whose inputs and file are unchanged.
    done: list[dict[str, Any]] = []
    consumed = 0
    for record in load_progress(out, build_options):
        n = len(record["inputs"])
        path = out / record["name"]
        if (record["name"] != shard_name(prefix, len(done))
                or [c.key for c in clips[consumed:consumed + n]] != record["inputs"]
                or not path.is_file() or path.stat().st_size != record["bytes"]):
            break
        done.append(record)
        consumed += n
    if done:
        log.info("%s: resuming after %d finished shard(s) (%d inputs)", out, len(done), consumed)
    _drop_stale_manifest(out, done)
    _remove_stale(out, prefix, keep=len(done))
    progress_state = {"version": MANIFEST_VERSION, "options": build_options, "shards": done}
    write_json_atomic(out / PROGRESS_NAME, progress_state)

    first_input = first_input_of_each_key(clips)
    seen = {c.key for c in clips[:consumed]}
    options = _Options(reencode_short_side, keyframe_interval, crf)
    todo: list[ClipSource] = []
    duplicates: dict[int, _Prepared] = {}
    for clip in clips[consumed:]:
        if clip.key in seen:
            duplicates[len(todo)] = _Prepared(
                clip.key, str(clip.path), reason=probe_mod.DUPLICATE_KEY,
                detail=f"key {clip.key!r} is already taken by {first_input[clip.key]}")
        seen.add(clip.key)
        todo.append(clip)
    unique = [c for i, c in enumerate(todo) if i not in duplicates]

    # Skips seen while no shard is open belong to the shard that opens next (or, at the very
    # end, to no shard: they are re-probed by a rerun, which is cheap).
    pending_inputs: list[str] = []
    pending_skips: list[dict[str, str]] = []
    current: _ShardFile | None = None
    bar = tqdm(total=len(todo), desc=f"shards {out.name}", unit="clip", disable=not progress,
               dynamic_ncols=True)
    written = sum(r["samples"] for r in done)
    skipped = sum(len(r["skipped"]) for r in done)

    def finish(shard: _ShardFile) -> None:
        size = shard.finish()
        done.append({"name": shard.path.name, "samples": shard.samples, "bytes": size,
                     "inputs": shard.inputs, "skipped": shard.skipped})
        write_json_atomic(out / PROGRESS_NAME, progress_state)

    results = _prepared_in_order(unique, options, workers)
    try:
        for i in range(len(todo)):
            item = duplicates[i] if i in duplicates else next(results)
            bar.update(1)
            if item.members is None:
                skipped += 1
                inputs, skips = (pending_inputs, pending_skips) if current is None else (
                    current.inputs, current.skipped)
                inputs.append(item.key)
                skips.append(_skip_entry(item))
            else:
                group = group_of.get(item.key)
                if (current is not None and current.samples >= samples_per_shard
                        and (group is None or group != current.last_group)):
                    finish(current)  # full, and not in the middle of a group
                    current = None
                if (current is not None and max_shard_bytes is not None
                        and current.projected_size(item.size_in_tar) > max_shard_bytes):
                    finish(current)
                    current = None
                if current is None:
                    current = _ShardFile(out / shard_name(prefix, len(done)))
                    current.inputs, current.skipped = pending_inputs, pending_skips
                    pending_inputs, pending_skips = [], []
                current.add(item)
                current.inputs.append(item.key)
                current.last_group = group
                written += 1
            bar.set_postfix(written=written, skipped=skipped, refresh=False)
        if current is not None:
            finish(current)
            current = None
    finally:
        results.close()  # shuts the worker pool down now, also after an error
        bar.close()
        if current is not None:
            current.abandon()

    manifest = {
        "version": MANIFEST_VERSION,
        "shards": [{"name": r["name"], "samples": r["samples"], "bytes": r["bytes"]} for r in done],
        "total_samples": sum(r["samples"] for r in done),
        "options": manifest_options,
        "skipped": [s for r in done for s in r["skipped"]] + pending_skips,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_manifest(out, manifest)
    return manifest


def _reencodes(clips: Sequence[ClipSource], short_side: int | None,
               keyframe_interval: int | None) -> bool:
    return bool(short_side or keyframe_interval
                or any(c.start is not None or c.end is not None for c in clips))


def _remove_stale(out: Path, prefix: str, keep: int) -> None:
    """Delete leftovers of this prefix beyond the kept shards (old tars, `.tmp` files) so the
    directory ends up holding exactly what the manifest lists."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d{{6}})\.tar(\.tmp)?")
    for path in out.iterdir():
        match = pattern.fullmatch(path.name)
        if match and (match.group(2) or int(match.group(1)) >= keep):
            path.unlink()
    (out / (MANIFEST_NAME + ".tmp")).unlink(missing_ok=True)


def _drop_stale_manifest(out: Path, kept: list[dict[str, Any]]) -> None:
    """A manifest listing shards this run will rewrite must not be read while it runs."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        return
    try:
        listed = [(s["name"], s["bytes"]) for s in read_manifest(out)["shards"]]
    except (OSError, ValueError):
        listed = None
    if listed != [(r["name"], r["bytes"]) for r in kept]:
        path.unlink()


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest, but leave an identical one (apart from `created`) untouched."""
    path = out / MANIFEST_NAME
    if path.is_file():
        try:
            old = read_manifest(out)
        except (OSError, ValueError):
            old = None
        if old is not None and {k: v for k, v in old.items() if k != "created"} == {
                k: v for k, v in manifest.items() if k != "created"}:
            manifest["created"] = old.get("created", manifest["created"])
            return
        path.unlink()  # a stale manifest must not outlive a changed build
    write_json_atomic(path, manifest)


def summary_line(manifest: dict[str, Any], out_dir: str | os.PathLike[str] | None = None) -> str:
    """`wrote 120 samples in 3 shards to DIR; skipped 4 (empty: 1, missing: 2, ...)`."""
    where = f" to {out_dir}" if out_dir is not None else ""
    line = (f"wrote {manifest['total_samples']} samples in {len(manifest['shards'])} "
            f"shard(s){where}; skipped {len(manifest['skipped'])}")
    counts = Counter(s["reason"] for s in manifest["skipped"])
    if counts:
        line += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(counts.items())) + ")"
    return line
