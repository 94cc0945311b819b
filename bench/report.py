"""Shared by the bench scripts: machine description and section-wise updates of docs/benchmarks.md."""
from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

import torch

from mvclip import markdown

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the script it names; numbers are measured, never edited by hand.\n"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} with {torch.get_num_threads()} threads, Python {platform.python_version()}"


def today() -> str:
    return _dt.date.today().isoformat()


def write_section(heading: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the `## heading` section, leaving the other scripts' sections alone; atomic."""
    markdown.write_section(path, heading, body, header=HEADER)
