"""Where shards live: a local path, ``http(s)://``, ``s3://`` or a ``pipe:`` command; opening one, and fetching the one
small file beside it (``manifest.json``, video2dataset's ``<shard>_stats.json``).

Listing remote shards must never download them (every rank would pull the whole corpus during setup), so the loader
asks this module for the small sidecar files instead. ``s3://`` goes through fsspec when ``s3fs`` is installed, else
through the AWS CLI (``aws s3 cp URL -``); ``http(s)://`` through the standard library; ``pipe:`` runs the command
(the same trust as the shard pattern that names it); other schemes (``gs://``, ``hf://``, ...) through WebDataset.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

from mvclip.errors import FetchError

FETCH_TIMEOUT_S = 60.0
# a shard's file name, inside a URL or a pipe: command
_SHARD_NAME = re.compile(r"^(.*?)(\.tar|\.tar\.gz|\.tgz)$")


def is_remote(url: str) -> bool:
    """A URL with a scheme (``http:``, ``s3:``, ``pipe:`` ...), not a local path (Windows drives included)."""
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", url)) and not re.match(r"^[A-Za-z]:[\\/]", url)


def _has_s3fs() -> bool:
    try:
        import s3fs  # noqa: F401
    except ImportError:
        return False
    return True


def shard_stem(url: str) -> str | None:
    """The shard's file name without ``.tar`` (``00012`` for ``.../00012.tar`` or ``pipe:cat .../00012.tar``)."""
    token = _shard_token(url)
    if token is None:
        return None
    match = _SHARD_NAME.match(token.rsplit("/", 1)[-1])
    return match.group(1) if match else None


def shard_basename(url: str) -> str | None:
    """The shard's file name (``00012.tar``), as a manifest lists it."""
    token = _shard_token(url)
    return None if token is None else token.rsplit("/", 1)[-1]


def _shard_token(url: str) -> str | None:
    """The part of ``url`` naming the shard file: the path for a URL or a local file; for a ``pipe:`` command, its one
    argument ending in ``.tar`` (None when there is not exactly one, so no sidecar can be derived)."""
    if url.startswith("pipe:"):
        try:
            tokens = shlex.split(url[len("pipe:"):])
        except ValueError:
            return None
        found = [t for t in tokens if _SHARD_NAME.match(t.rsplit("/", 1)[-1])]
        return found[0] if len(found) == 1 else None
    if is_remote(url):
        path = urlsplit(url).path
        return path if _SHARD_NAME.match(path.rsplit("/", 1)[-1]) else None
    return url if _SHARD_NAME.match(Path(url).name) else None


def sibling(url: str, name: str) -> str | None:
    """The address of file ``name`` in the same folder as shard ``url``, in the same form (a ``pipe:`` command reading
    ``.../name`` instead of ``.../<shard>.tar``); None when it cannot be told (a command naming no single ``.tar``)."""
    if url.startswith("pipe:"):
        token = _shard_token(url)
        if token is None:
            return None
        cmd = url[len("pipe:"):]
        head, _, _ = token.rpartition("/")
        replaced = f"{head}/{name}" if head else name
        if cmd.count(token) != 1:
            return None
        return "pipe:" + cmd.replace(token, replaced)
    if is_remote(url):
        parts = urlsplit(url)
        folder = parts.path.rpartition("/")[0]
        return urlunsplit((parts.scheme, parts.netloc, f"{folder}/{name}", "", ""))
    return str(Path(url).parent / name)


def open_stream(url: str) -> BinaryIO:
    """A readable binary stream of a shard anywhere (the caller reads it once, front to back, and closes it)."""
    if not is_remote(url):
        return open(url, "rb")
    scheme = url.split(":", 1)[0]
    if scheme in ("http", "https"):
        return urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S)  # noqa: S310 (the scheme is checked)
    if scheme == "s3" and _has_s3fs():
        import fsspec

        return fsspec.open(url, "rb").open()
    import webdataset as wds

    if scheme == "s3":
        return wds.gopen(f"pipe:aws s3 cp {shlex.quote(url)} -", "rb")
    return wds.gopen(url, "rb")


def fetch_small(url: str, timeout: float = FETCH_TIMEOUT_S) -> bytes | None:
    """The bytes of a small file (a manifest, a stats file) at ``url``, or None when it does not exist there.

    Absence is a 404/403 answer, a missing object or local file, or a command that fails (``cat``, ``aws s3 cp``); a
    server that cannot be reached at all raises :class:`FetchError` naming the URL.
    """
    if not is_remote(url):
        path = Path(url)
        return path.read_bytes() if path.is_file() else None
    scheme = url.split(":", 1)[0]
    if scheme == "pipe":
        return _run(url[len("pipe:"):], timeout)
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (the scheme is checked)
                return response.read()
        except urllib.error.HTTPError as err:
            if err.code in (403, 404, 410):  # object stores answer 403 for a missing key without list rights
                return None
            raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from err
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise FetchError(f"{url}: cannot fetch ({getattr(err, 'reason', err)})") from err
    if scheme == "s3" and _has_s3fs():
        import fsspec

        try:
            with fsspec.open(url, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
    if scheme == "s3":
        return _run(f"aws s3 cp {shlex.quote(url)} -", timeout)
    import webdataset as wds

    try:
        with wds.gopen(url, "rb") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def _run(cmd: str, timeout: float) -> bytes | None:
    """A shell command's output, or None when it fails (the file it reads is not there)."""
    try:
        done = subprocess.run(cmd, shell=True, capture_output=True, timeout=timeout, check=False)  # noqa: S602
    except subprocess.TimeoutExpired as err:
        raise FetchError(f"pipe:{cmd}: no answer within {timeout:.0f} s") from err
    return done.stdout if done.returncode == 0 else None
