"""Keep freed memory in the process for reuse, so each step's feature maps do not fault in fresh pages.

A training step or a clip's forward allocates and frees the same large tensors again and again. glibc's malloc serves
blocks above its mmap threshold (128 KiB at start, raised on the fly up to 32 MiB) with fresh `mmap` pages, unmaps them
at `free`, and trims the heap's top back to the OS: the next step touches new pages, each a minor page fault the kernel
zero-fills. Measured on the project's CPU machine (`bench/train_speed.py`, docs/benchmarks.md): about 111,000 faults per
demo training step with glibc's defaults, about 5,500 with mmap and trimming off, and 12 % shorter steps; the fused
encoders' forward gains more. jemalloc or tcmalloc preloaded (PyTorch's CPU tuning advice) do the same by reuse; this
needs no preload and no package.

The cost: the process keeps the heap it reached at its peak instead of handing memory back between steps (its peak RSS
does not change). `python -m mvclip ...` turns it on for every command; `MVCLIP_ALLOCATOR=system` leaves glibc's
defaults alone. A program that imports mvclip is not changed unless it calls `keep_freed_memory()` itself. Other C
libraries (macOS, musl) are left alone: the call reports that it did nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["ENV_VAR", "keep_freed_memory", "apply_env_choice", "freed_memory_kept"]

ENV_VAR = "MVCLIP_ALLOCATOR"  # "keep" (default for the CLI) or "system"
CHOICES = ("keep", "system")
# mallopt(3) parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int): the heap's top is never given back
_kept = False


def keep_freed_memory() -> bool:
    """glibc only: serve every allocation from the heap (no `mmap` per block) and never trim it, so freed blocks are
    reused by the next step. True when both settings took effect, False on another C library (nothing changed)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    global _kept
    _kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    return _kept


def freed_memory_kept() -> bool:
    """Whether `keep_freed_memory()` took effect in this process (what a latency figure was measured under)."""
    return _kept


def apply_env_choice(environ: dict[str, str] | None = None) -> bool:
    """What the CLI calls first: `keep_freed_memory()` unless `MVCLIP_ALLOCATOR=system`; True when it took effect."""
    choice = (os.environ if environ is None else environ).get(ENV_VAR, "keep").strip().lower() or "keep"
    if choice not in CHOICES:
        raise ValueError(f"{ENV_VAR}={choice!r}: expected one of {', '.join(CHOICES)}")
    return choice == "keep" and keep_freed_memory()
