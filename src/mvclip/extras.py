"""Optional dependencies (`pip install "mvclip[onnx]"`, `"mvclip[plot]"`): what is installed, and the one-line
note a feature prints when it is skipped for want of one."""
from __future__ import annotations

import importlib.util

EXTRAS = {"onnx": ("onnx", "onnxruntime"), "plot": ("matplotlib",)}


def installed(extra: str) -> bool:
    """Whether every module of an extra (a key of EXTRAS) can be imported."""
    return all(importlib.util.find_spec(module) is not None for module in EXTRAS[extra])


def missing_note(extra: str, skipped: str) -> str:
    """`note: <what> skipped: <modules> not installed (pip install "mvclip[<extra>]")`."""
    return f'note: {skipped} skipped: {", ".join(EXTRAS[extra])} not installed (pip install "mvclip[{extra}]")'
