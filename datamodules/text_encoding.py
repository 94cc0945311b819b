"""Reading annotation text in a named encoding, and saying exactly where a file stops being that encoding.

A caption file saved by a spreadsheet in Latin-1 or Windows-1252 fails deep inside the CSV reader with a byte offset
into some buffer. The files are read streaming as before; only when decoding fails is the file decoded once more in
full to find the line and column of the first bad byte, so the error can name them.
"""
from __future__ import annotations

import codecs
import os
from pathlib import Path

# UTF-8, with or without the byte-order mark spreadsheets put at the start of "CSV UTF-8" files
DEFAULT_ENCODING = "utf-8-sig"


def encoding_name(encoding: str) -> str:
    """How to call an encoding in messages (`utf-8-sig` is plain UTF-8 to a user)."""
    return "UTF-8" if encoding.lower().replace("_", "-") in ("utf-8-sig", "utf-8", "utf8") else encoding


def decode_error_message(path: str | os.PathLike[str], encoding: str) -> str:
    """`file:LINE: not valid UTF-8 (byte 0xe9 at column 12); ...`, for a file that fails to decode."""
    data = Path(path).read_bytes()
    name = encoding_name(encoding)
    try:
        data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data[: error.start].decode(encoding, errors="replace").count("\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        return (
            f"{path}:{line}: not valid {name} (byte 0x{data[error.start]:02x} at byte column {column}); save the file "
            "as UTF-8, or name its encoding with --encoding (e.g. --encoding latin-1 or cp1252)"
        )
    return f"{path}: cannot be decoded as {name}"


def known_encoding(encoding: str) -> bool:
    """Whether Python has a codec of that name."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        return False
    return True
