"""Where an export may be written, and how it replaces an earlier one, without ever deleting what mvclip did not write.

An export folder carries a marker, `mvclip-export.json`, listing every file the export wrote. A target folder is
accepted only when it does not exist, is empty, or is an earlier export whose marker lists everything in it; a folder
that holds the checkpoint being exported (its own folder, or any folder above it) is refused outright. The new export
is assembled in a temporary folder beside the target and swapped in with one atomic rename (Linux's
`renameat2(RENAME_EXCHANGE)`; elsewhere two renames, the old export moved back if the second fails), so a reader sees
the old export or the new one. Only then are the old export's listed files removed, and nothing else.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MARKER_NAME = "mvclip-export.json"
MARKER_FORMAT = "mvclip-export"
MARKER_VERSION = 1
LEGACY_METRICS = "metrics.json"  # exports from before the marker list their files here
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


class ExportTargetError(ValueError):
    """The export cannot go where it was asked to (a folder of someone else's files, the checkpoint's own folder, a
    place that cannot be written); nothing was written or deleted."""


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of an export folder, or None when the folder is not (recognizably) one of ours.

    Exports written before the marker existed are recognized by their `metrics.json`, which lists the other files."""
    marker = _read_json(folder / MARKER_NAME)
    if marker is not None:
        ok = marker.get("format") == MARKER_FORMAT and isinstance(marker.get("files"), list)
        return marker if ok else None
    metrics = _read_json(folder / LEGACY_METRICS)
    if metrics is not None and isinstance(metrics.get("files"), list) and isinstance(metrics.get("checks"), list):
        return {"format": MARKER_FORMAT, "files": [*map(str, metrics["files"]), LEGACY_METRICS], "legacy": True}
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _listing(folder: Path) -> list[str]:
    """Every file under `folder` by relative POSIX path: packages that are folders (Core ML's `.mlpackage`) are
    listed file by file, so a file someone adds inside one is still recognized as not ours."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(part not in ("", ".", "..") for part in parts)


def write_marker(folder: Path, checkpoint: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Record every file now in `folder` (and the marker itself) as written by this export."""
    files = [name for name in _listing(folder) if name != MARKER_NAME] + [MARKER_NAME]
    marker = {
        "format": MARKER_FORMAT,
        "version": MARKER_VERSION,
        "files": files,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (folder / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return marker


def _holds(folder: Path, path: Path) -> bool:
    """Whether `path` is `folder` or lies somewhere inside it (both resolved, so links and `..` cannot hide it)."""
    folder, path = folder.resolve(), path.resolve()
    return folder == path or folder in path.parents


def check_export_target(out: str | os.PathLike[str], protect: Iterable[str | os.PathLike[str]] = ()) -> None:
    """Raise `ExportTargetError` unless an export may (re)place `out`: it must not hold any path in `protect` (the
    checkpoint), and must be new, empty, or an earlier export holding only the files its marker lists."""
    out = Path(out)
    for path in protect:
        if _holds(out, Path(path)):
            raise ExportTargetError(
                f"{out}: holds the checkpoint {path}; an export replaces its whole folder, so it is never written over "
                "the checkpoint's folder (or a folder above it). Choose another --out, e.g. "
                f"{Path(path).with_name(Path(path).stem + '.export')}"
            )
    if out.is_symlink():
        raise ExportTargetError(f"{out}: is a symbolic link; refusing to replace it, give the folder it points to or a new one")
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportTargetError(f"{out}: exists and is not a folder; refusing to replace it with an export")
    entries = sorted(out.iterdir())
    if not entries:
        return
    marker = read_marker(out)
    if marker is None:
        raise ExportTargetError(
            f"{out}: is not empty and is not an mvclip export (no {MARKER_NAME}); refusing to replace it, because an export "
            "never deletes what it did not write. Choose a new or empty folder"
        )
    listed = set(marker["files"])
    foreign = [p.name for p in entries if not _ours(out, p, listed)]
    if foreign:
        raise ExportTargetError(
            f"{out}: an earlier export, but it also holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, "
            "which the export did not write; refusing to replace it. Move those away or choose another folder"
        )


def _ours(out: Path, entry: Path, listed: set[str]) -> bool:
    """A file the marker lists, or a real folder (no link) holding only listed files and folders."""
    if entry.is_symlink():
        return False
    if entry.is_file():
        return entry.name in listed
    if not entry.is_dir():
        return False
    inside = list(entry.rglob("*"))
    return bool(inside) and all(
        not p.is_symlink() and (p.is_dir() or (p.is_file() and p.relative_to(out).as_posix() in listed)) for p in inside
    )


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: this file system or kernel cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def replace_export(tmp: Path, final: Path) -> None:
    """Put the finished export `tmp` at `final`; an earlier export there is swapped out atomically and then its
    listed files (only those) are removed. `final` must have passed `check_export_target`."""
    if not final.exists():
        os.rename(tmp, final)
        return
    if not any(final.iterdir()):
        os.rename(tmp, final)  # over an empty folder: allowed, and atomic
        return
    if _exchange(tmp, final):
        old = tmp  # the earlier export now sits at the temporary name
    else:
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)  # put the earlier export back
            raise
    remove_export(old)


def remove_export(folder: Path) -> None:
    """Delete an export folder's listed files and the folder; anything it does not list is left where it is."""
    marker = read_marker(folder)
    parents: set[Path] = set()
    for name in marker["files"] if marker else []:
        if _safe_name(name):
            path = folder / name
            if not path.is_symlink() and path.is_dir():
                continue
            path.unlink(missing_ok=True)
            parents.update(p for p in path.parents if folder in p.parents)
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):  # folders of listed files, deepest first
        try:
            parent.rmdir()
        except OSError:
            pass  # not empty: something we did not write is in it
    try:
        folder.rmdir()
    except OSError:
        pass  # something we did not write appeared in it: leave it
