"""Writing files so that a reader sees the old file or the new one, never half of one.

Every writer in mvclip (checkpoints, exports, embeddings, manifests, reports, docs sections) goes through
`atomic_write`: the content goes to a temporary file beside the target, which is then renamed over it.
`durable=True` also flushes the file and the rename to disk, for files a crash must not lose (shard manifests).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None], *, durable: bool = False) -> Path:
    """Call `write(tmp)` on a temporary file next to `path`, then rename it into place; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; the result should read like any other
        if durable:
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """JSON (UTF-8, indented, newline-terminated), written atomically and durably."""
    text = json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=True)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
