"""Optional dependencies (`pip install "mvclip[onnx]"`, `"mvclip[plot]"`, `[search]`, `[serve]`, `[hub]`, and the
on-device targets `[executorch]`, `[coreml]`, both as `[deploy]`): what is
installed, the one-line note a feature prints when it is skipped for want of one, and the one-line error of a
feature that cannot run without one (`require`)."""
from __future__ import annotations

import importlib.util

from mvclip.errors import MissingExtraError

EXTRAS = {
    "onnx": ("onnx", "onnxscript", "onnxruntime"),  # onnxscript: torch.onnx.export(dynamo=True) needs it
    "plot": ("matplotlib",),
    "search": ("faiss",),                 # approximate search for large video indexes (faiss-cpu)
    "serve": ("starlette", "uvicorn"),    # `python -m mvclip serve`
    "hub": ("huggingface_hub",),          # pretrained= names resolved in the Hugging Face cache
    "executorch": ("executorch",),        # `export --format executorch` (.pte, XNNPACK) and its int8
    "coreml": ("coremltools",),           # `export --format coreml` (.mlpackage)
}
PIP_NAMES = {"faiss": "faiss-cpu", "huggingface_hub": "huggingface_hub"}


def installed(extra: str) -> bool:
    """Whether every module of an extra (a key of EXTRAS) can be imported."""
    return all(importlib.util.find_spec(module) is not None for module in EXTRAS[extra])


def missing_note(extra: str, skipped: str) -> str:
    """`note: <what> skipped: <modules> not installed (pip install "mvclip[<extra>]")`."""
    return f'note: {skipped} skipped: {", ".join(EXTRAS[extra])} not installed (pip install "mvclip[{extra}]")'


def require(extra: str, feature: str) -> None:
    """Raise a one-line MissingExtraError naming the extra to install when `feature` needs one that is missing."""
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        names = ", ".join(PIP_NAMES.get(m, m) for m in missing)
        raise MissingExtraError(f'{feature} needs {names}, which is not installed: pip install "mvclip[{extra}]"')
