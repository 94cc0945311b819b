"""The teacher members of a reinforced shard sample: names, writing and checked reading.

Per teacher NAME a sample holds `<key>.teacher.NAME.video.npy` (float32 (K, D): the unit-norm embedding of each of
the K views in `<key>.views.json`) and `<key>.teacher.NAME.text.npy` (float32 (C, D): one row per usable caption, in
the order of the json's `captions` once empty ones are dropped). Arrays are plain `.npy` read with
`allow_pickle=False`: nothing in a shard can run code. Names are lowercase, since tar member extensions are
lowercased by the reader.
"""
from __future__ import annotations

import io
import re
from typing import Any

import numpy as np

TEACHER_PREFIX = "teacher."
_MEMBER = re.compile(r"teacher\.([a-z0-9_-]+)\.(video|text)\.npy")
NAME_PATTERN = re.compile(r"[a-z0-9_-]+")


def check_teacher_name(name: str) -> str:
    """A teacher name is a dict key downstream and part of member names: lowercase letters, digits, `_`, `-`."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"teacher name {name!r}: use lowercase letters, digits, '_' and '-' only (e.g. 'mobileclip_s2')")
    return name


def member_name(teacher: str, kind: str) -> str:
    """`teacher.NAME.video.npy` or `teacher.NAME.text.npy` (the extension after the sample key)."""
    if kind not in ("video", "text"):
        raise ValueError(f"kind must be 'video' or 'text', got {kind!r}")
    return f"{TEACHER_PREFIX}{check_teacher_name(teacher)}.{kind}.npy"


def is_reinforcement_member(ext: str) -> bool:
    """Whether a member extension belongs to reinforcement (replaced when a shard is reinforced again)."""
    return ext == "views.json" or _MEMBER.fullmatch(ext) is not None


def encode_array(array: np.ndarray) -> bytes:
    """A float32 array as `.npy` bytes (the exact bits round-trip)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _load(data: bytes, where: str) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{where}: not a readable .npy array ({exc})") from exc
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype.kind != "f" or 0 in array.shape:
        raise ValueError(f"{where}: expected a non-empty 2-D float array, got "
                         f"{getattr(array, 'dtype', type(array).__name__)} {getattr(array, 'shape', '')}")
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: holds NaN or infinite values")
    return array.astype(np.float32, copy=False)


def read_teachers(raw: dict[str, Any], views: int, captions: int, where: str = "sample") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (video (views, D), text (captions, D))} of a raw sample; ValueError naming the member that is
    missing, unreadable or of the wrong shape."""
    names = sorted({m.group(1) for ext in raw if isinstance(ext, str) and (m := _MEMBER.fullmatch(ext))})
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        arrays = []
        for kind, rows in (("video", views), ("text", captions)):
            ext = member_name(name, kind)
            if ext not in raw:
                raise ValueError(f"{where}: has teacher {name!r} but no {ext} member")
            array = _load(raw[ext], f"{where}.{ext}")
            if array.shape[0] != rows:
                what = "view in views.json" if kind == "video" else "usable caption"
                raise ValueError(f"{where}.{ext}: {array.shape[0]} rows, expected {rows} (one per {what})")
            arrays.append(array)
        if arrays[0].shape[1] != arrays[1].shape[1]:
            raise ValueError(f"{where}: teacher {name!r} video dim {arrays[0].shape[1]} != text dim {arrays[1].shape[1]}")
        out[name] = (arrays[0], arrays[1])
    return out


def has_teachers(raw: dict[str, Any]) -> bool:
    return any(isinstance(ext, str) and _MEMBER.fullmatch(ext) for ext in raw)
