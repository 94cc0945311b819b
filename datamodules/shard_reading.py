"""Finding shards and reading them: a pattern or a folder -> `Shard`s with sample counts; one tar -> raw samples.

Sample counts come from `manifest.json` where there is one (`shard_format`); a damaged tar yields the samples before
the damage and is counted once as `truncated_shard` (:mod:`.bad_samples`).
"""
from __future__ import annotations

import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .bad_samples import BadSampleCounter
from .shard_format import MANIFEST_NAME, read_manifest


# --------------------------------------------------------------------------------------------
# Listing shards
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    url: str
    samples: int


def _is_remote(url: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", url)) and not re.match(r"^[A-Za-z]:[\\/]", url)


def count_samples(url: str) -> int:
    """Distinct keys in a tar (used only for shards that no manifest lists)."""
    keys = set()
    for sample in iter_tar(url, BadSampleCounter()):
        keys.add(sample["__key__"])
    return len(keys)


def list_shards(pattern: str) -> list[Shard]:
    """Shards of a pattern: a directory with a manifest, or brace-expanded paths/URLs.

    Sample counts come from ``manifest.json`` next to the shards when there is one; other shards
    are counted by reading them once.
    """
    from braceexpand import braceexpand

    if not _is_remote(pattern) and Path(pattern).is_dir():
        manifest = read_manifest(pattern)
        shards = [Shard(str(Path(pattern) / s["name"]), int(s["samples"])) for s in manifest["shards"]]
        if not shards:
            raise FileNotFoundError(f"{pattern}/{MANIFEST_NAME} lists no shards")
        return shards
    urls = [u for part in pattern.split("::") for u in braceexpand(part)]
    if not urls:
        raise FileNotFoundError(f"shard pattern {pattern!r} expands to no paths")
    counts: dict[str, int] = {}
    for parent in {str(Path(u).parent) for u in urls if not _is_remote(u)}:
        if (Path(parent) / MANIFEST_NAME).is_file():
            for s in read_manifest(parent)["shards"]:
                counts[str(Path(parent) / s["name"])] = int(s["samples"])
    missing = [u for u in urls if not _is_remote(u) and not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(
            f"shard pattern {pattern!r}: {len(missing)} of {len(urls)} shards do not exist, e.g. {missing[0]}"
        )
    out = []
    for u in urls:
        key = str(Path(u)) if not _is_remote(u) else u
        out.append(Shard(u, counts[key] if key in counts else count_samples(u)))
    return out


# --------------------------------------------------------------------------------------------
# Reading one shard
# --------------------------------------------------------------------------------------------
_MEMBER = re.compile(r"^((?:.*/)?[^./]+)\.([^/]+)$")  # key = path up to the first dot of the basename


def _open(url: str):
    if _is_remote(url):
        import webdataset as wds

        return wds.gopen(url, "rb")
    return open(url, "rb")


def iter_tar(url: str, counter: BadSampleCounter) -> Iterator[dict[str, Any]]:
    """Samples of one tar as dicts ``{"__key__", "__shard__", ext: bytes}``, in file order.

    A tar that ends mid-member or is corrupt is counted once as ``truncated_shard`` and its
    remaining samples are lost; the samples before the damage are still yielded.
    """
    current: dict[str, Any] | None = None
    try:
        with _open(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
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
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__shard__": url}
                current[ext] = data
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        counter.add("truncated_shard", url)
        current = None  # its last member may be cut short
    if current is not None:
        yield current
