"""Markdown that mvclip writes: aligned tables (results, ablations) and `## heading` sections of documents
that several writers share (docs/benchmarks.md, docs/ablations.md), each replacing only its own section."""
from __future__ import annotations

import os
from collections.abc import Sequence

from torch import Tensor

from mvclip.atomic import atomic_write


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table with columns padded to their widest cell, one string per line."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *[line(r) for r in rows]]


def format_value(value: float, integral_as_int: bool = False) -> str:
    """Two decimals (percentages, ranks), or an integer as such where `integral_as_int` (counts)."""
    value = float(value)
    if integral_as_int and value.is_integer():
        return str(int(value))
    return f"{value:.2f}"


def print_table(results: dict[str, float], title: str) -> str:
    """Results as aligned Markdown tables (returned, not printed, so the caller decides which rank logs it).

    Keys shaped `row/column` (e.g. `t2v/R@1`) form wide tables, one per set of columns (retrieval rows share one;
    `zeroshot/*` and `temporal/*` get their own); the other keys (e.g. `num_videos`) follow as a name/value table.
    """
    grouped: dict[str, dict[str, float]] = {}
    plain: list[tuple[str, float]] = []
    for key, value in results.items():
        value = value.item() if isinstance(value, Tensor) else value
        if "/" in key:
            row, col = key.rsplit("/", 1)
            grouped.setdefault(row, {})[col] = value
        else:
            plain.append((key, value))
    tables: dict[tuple[str, ...], list[str]] = {}  # column set -> its rows, in order of first appearance
    for row, vals in grouped.items():
        tables.setdefault(tuple(vals), []).append(row)
    lines = [f"### {title}"]
    for columns, rows in tables.items():
        body = [[row] + [format_value(grouped[row][c]) for c in columns] for row in rows]
        lines += ["", *table(["", *columns], body)]
    if plain:
        lines += ["", *table(["metric", "value"], [[k, format_value(v, integral_as_int=True)] for k, v in plain])]
    return "\n".join(lines)


def replace_section(text: str, heading: str, section: str) -> str:
    """Replace the `## heading` section of a Markdown text (up to the next `#`/`##` heading outside code
    fences) with `section`, or append it; everything else stays as it was."""
    lines = text.splitlines()
    start = end = None
    fenced = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced:
            continue
        if start is None and line.strip() == f"## {heading}":
            start = i
        elif start is not None and (line.startswith("## ") or line.startswith("# ")):
            end = i
            break
    new = section.rstrip("\n").splitlines()
    if start is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines = lines + ([""] if lines else []) + new
    else:
        end = len(lines) if end is None else end
        lines = lines[:start] + new + [""] + lines[end:]
        while lines and not lines[-1].strip():
            lines.pop()
    return "\n".join(lines) + "\n"


def write_section(path: str | os.PathLike[str], heading: str, body: str, *, header: str = "") -> None:
    """Replace (or append) the `## heading` section of the file at `path` with `body`, atomically; a missing
    file starts as `header`."""
    path = os.fspath(path)
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else header
    text = replace_section(old, heading, f"## {heading}\n\n{body.strip()}\n")
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
