"""Finding shards and reading them: a pattern or a folder -> `Shard`s with sample counts; one tar -> raw samples.

Sample counts come from `manifest.json` where there is one (`shard_format`), else from video2dataset's stats files
(:mod:`.video2dataset`); remote shards (:mod:`.remote_files`) are never downloaded just to count them. A damaged tar
yields the samples before the damage and is counted once as `truncated_shard` (:mod:`.bad_samples`).
"""
from __future__ import annotations

import math
import re
import tarfile
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from mvclip.errors import ConfigError

from .bad_samples import BadSampleCounter
from .remote_files import fetch_small, is_remote, open_stream, shard_basename, shard_stem, sibling
from .shard_format import MANIFEST_NAME, read_manifest
from .video2dataset import STATS_SUFFIX, is_failed_download, samples_from_stats, stats_name


# --------------------------------------------------------------------------------------------
# Listing shards
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    url: str
    samples: int


_is_remote = is_remote  # the old private name, kept for callers


def count_samples(url: str) -> int:
    """Distinct keys in a tar (used only for local shards that no manifest or stats file counts)."""
    keys = set()
    for sample in iter_tar(url, BadSampleCounter()):
        keys.add(sample["__key__"])
    return len(keys)


def list_shards(pattern: str, epoch_samples: int | None = None, *, where: str = "shard pattern") -> list[Shard]:
    """Shards of a pattern with their sample counts: a folder (with ``manifest.json``, or video2dataset's
    ``*.tar`` + ``*_stats.json``), or brace-expanded paths/URLs joined with ``::``.

    Counts come from ``manifest.json`` beside the shards, else from video2dataset's ``<shard>_stats.json``. Local
    shards neither counts are counted by reading them once. Remote shards are never downloaded here: with neither
    file, each gets an even share of ``epoch_samples`` (a weight for splitting the epoch's work; training only), and
    without ``epoch_samples`` that is a ConfigError naming ``where`` and the pattern.
    """
    if not is_remote(pattern) and Path(pattern).is_dir():
        return _list_folder(Path(pattern))
    urls = _expand(pattern)
    if not urls:
        raise FileNotFoundError(f"shard pattern {pattern!r} expands to no paths")
    missing = [u for u in urls if not is_remote(u) and not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(
            f"shard pattern {pattern!r}: {len(missing)} of {len(urls)} shards do not exist, e.g. {missing[0]}"
        )
    manifests, absent = manifests_beside(urls)
    listed = {where: {s["name"]: int(s["samples"]) for s in m["shards"]} for where, m in manifests.items()}
    counts: dict[str, int] = {}
    for u in urls:
        samples = listed.get(sibling(u, MANIFEST_NAME) or "", {}).get(shard_basename(u) or "")
        if samples is not None:
            counts[u] = samples
    remote = [u for u in urls if is_remote(u)]
    _stats_counts([u for u in remote if u not in counts], counts)
    unknown = [u for u in remote if u not in counts]
    if unknown:
        if not epoch_samples:
            tried = absent[0] if absent else f"beside {unknown[0]}"
            raise ConfigError(
                f"{where}: {pattern!r}: sample counts of {len(unknown)} remote shards are unknown (no {MANIFEST_NAME} "
                f"at {tried}, no <shard>{STATS_SUFFIX}) and shards are not downloaded to count them; write a "
                f"{MANIFEST_NAME} beside them (docs/data.md, 'Remote shards') or, for training, set data.epoch_samples"
            )
        share = max(1, epoch_samples // len(urls))
        counts.update({u: share for u in unknown})
    return [Shard(u, counts[u] if u in counts else _count_local(u)) for u in urls]


def manifests_beside(urls: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The ``manifest.json`` of each folder these shards sit in, keyed by its address (a path, a URL or a ``pipe:``
    command), read once per folder: a remote one is one small fetch, its shards are never downloaded. Also returns the
    remote manifest addresses that were asked for and not there (a local folder without one is not asked)."""
    found: dict[str, dict[str, Any]] = {}
    absent: list[str] = []
    for where in sorted({m for m in (sibling(u, MANIFEST_NAME) for u in urls) if m is not None}):
        if not is_remote(where):
            if Path(where).is_file():
                found[where] = read_manifest(Path(where).parent)
            continue
        data = fetch_small(where)
        if data is None:
            absent.append(where)
        else:
            found[where] = _parse_manifest(data, where)
    return found, absent


def manifests_of(pattern: str) -> dict[str, dict[str, Any]]:
    """The manifests of a pattern's shards, keyed by address: a folder's own, or those beside its shards."""
    if not is_remote(pattern) and Path(pattern).is_dir():
        path = Path(pattern) / MANIFEST_NAME
        return {str(path): read_manifest(pattern)} if path.is_file() else {}
    return manifests_beside(_expand(pattern))[0]


def teacher_logit_scales(pattern: str) -> dict[str, float]:
    """{teacher name: its logit scale} from the ``teachers`` of the manifests beside a pattern's shards (written by
    ``python -m mvclip teacher``); empty for shards without teachers or without a manifest. A name two manifests
    give different scales is a ConfigError: one loss cannot take both."""
    return {name: float(scale) for name, scale in _teacher_field(
        pattern, "logit_scale", "a finite number > 0", lambda v: math.isfinite(v) and v > 0).items()}


def teacher_embed_dims(pattern: str) -> dict[str, int]:
    """{teacher name: the width of its embedding space} from the same manifests, as `teacher_logit_scales`."""
    return {name: int(width) for name, width in _teacher_field(
        pattern, "embed_dim", "an integer > 0", lambda v: float(v).is_integer() and v > 0).items()}


def _teacher_field(pattern: str, field: str, expected: str, valid: Callable[[float], bool]) -> dict[str, float]:
    """One number per teacher from the manifests beside a pattern's shards; a bad value, or two manifests that
    disagree on a teacher, is a ConfigError naming the manifest and the field."""
    values: dict[str, float] = {}
    for where, manifest in manifests_of(pattern).items():
        teachers = manifest.get("teachers") or {}
        for name, record in teachers.items() if isinstance(teachers, dict) else ():
            value = record.get(field) if isinstance(record, dict) else None
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not valid(value):
                raise ConfigError(f"{where}: teachers.{name}.{field}: expected {expected}, got {value!r}")
            if name in values and values[name] != value:
                raise ConfigError(f"{where}: teacher {name!r} has {field} {value}, another manifest of {pattern!r} "
                                  f"has {values[name]}; reinforce all training shards with the same teacher")
            values[name] = value
    return values


def _expand(pattern: str) -> list[str]:
    """The shard paths/URLs of a pattern: ``::``-joined parts, each brace-expanded."""
    from braceexpand import braceexpand

    return [u for part in pattern.split("::") for u in braceexpand(part)]


def _list_folder(folder: Path) -> list[Shard]:
    """A local shard folder: ours (``manifest.json``), or video2dataset's (``*.tar`` with ``*_stats.json``)."""
    if not (folder / MANIFEST_NAME).is_file():
        tars = sorted(folder.glob("*.tar"))
        if tars and any((folder / stats_name(t.stem)).is_file() for t in tars):
            return [Shard(str(t), _count_local(str(t))) for t in tars]
    manifest = read_manifest(folder)  # a folder with neither: its error says how to build shards
    shards = [Shard(str(folder / s["name"]), int(s["samples"])) for s in manifest["shards"]]
    if not shards:
        raise FileNotFoundError(f"{folder}/{MANIFEST_NAME} lists no shards")
    return shards


def _count_local(path: str) -> int:
    """A local shard's samples: its video2dataset stats file when there is one, else counted by reading it."""
    stem = shard_stem(path)
    stats = Path(path).parent / stats_name(stem) if stem else None
    if stats is not None and stats.is_file():
        return samples_from_stats(stats.read_bytes(), str(stats))
    return count_samples(path)


def _stats_counts(urls: list[str], counts: dict[str, int]) -> None:
    """Fill ``counts`` for remote shards no manifest counted from video2dataset's stats files: tried once per folder,
    then fetched for all that folder's shards (a folder without them is not asked again for every shard)."""
    folders: dict[str | None, list[str]] = {}
    for u in urls:
        folders.setdefault(sibling(u, MANIFEST_NAME), []).append(u)
    for members in folders.values():
        stats_urls = {u: _stats_url(u) for u in members}
        todo = [u for u in members if stats_urls[u] is not None]
        if not todo:
            continue
        first = fetch_small(stats_urls[todo[0]])  # type: ignore[arg-type]
        if first is None:
            continue  # not a video2dataset folder: do not ask for every shard's stats
        counts[todo[0]] = samples_from_stats(first, stats_urls[todo[0]])  # type: ignore[arg-type]
        with ThreadPoolExecutor(max_workers=16) as pool:
            for u, data in zip(todo[1:], pool.map(fetch_small, [stats_urls[u] for u in todo[1:]])):
                if data is not None:
                    counts[u] = samples_from_stats(data, stats_urls[u])  # type: ignore[arg-type]


def _stats_url(url: str) -> str | None:
    stem = shard_stem(url)
    return sibling(url, stats_name(stem)) if stem else None


def _parse_manifest(data: bytes, url: str) -> dict[str, Any]:
    """Check a fetched manifest with the same rules as a local one; errors name the URL."""
    with tempfile.TemporaryDirectory(prefix="mvclip-manifest-") as tmp:
        path = Path(tmp) / MANIFEST_NAME
        path.write_bytes(data)
        try:
            return read_manifest(tmp)
        except ValueError as err:
            raise ValueError(str(err).replace(str(path), url)) from None


# --------------------------------------------------------------------------------------------
# Reading one shard
# --------------------------------------------------------------------------------------------
_MEMBER = re.compile(r"^((?:.*/)?[^./]+)\.([^/]+)$")  # key = path up to the first dot of the basename


def iter_tar(url: str, counter: BadSampleCounter) -> Iterator[dict[str, Any]]:
    """Samples of one tar as dicts ``{"__key__", "__shard__", ext: bytes}``, in file order.

    A tar that ends mid-member or is corrupt is counted once as ``truncated_shard`` and its
    remaining samples are lost; the samples before the damage are still yielded.
    """
    current: dict[str, Any] | None = None
    try:
        with open_stream(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                m = _MEMBER.match(member.name)
                if m is None:
                    continue
                key, ext = m.group(1), m.group(2).lower()
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if current is not None and current["__key__"] != key:
                    if not is_failed_download(current):
                        yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__shard__": url}
                current[ext] = data
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        counter.add("truncated_shard", url)
        current = None  # its last member may be cut short
    if current is not None and not is_failed_download(current):
        yield current
