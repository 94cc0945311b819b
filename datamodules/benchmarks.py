"""The standard evaluation benchmarks: which published files make each one, and the hash that names them.

A benchmark is an annotation format (`benchmark_formats`) plus, where the protocol needs it, a split list (the video
ids of the test split, one per line) or a class list (Kinetics' class order). `build_benchmark` reads them into
`ClipSource`s for `write_shards` and returns the record the shards' manifest keeps: the benchmark name and the split
hash, `sha256` of each file's bytes cut to 12 hex digits (what `sha256sum FILE | cut -c1-12` prints), joined with `+`
in the order annotations, split list, class list. Evaluation copies that record onto every result
(`mvclip.eval_card`), so two numbers computed on different files never look comparable.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .annotations import AnnotationError, read_annotations
from .shard_format import safe_key
from .shard_writer import ClipSource
from .text_encoding import DEFAULT_ENCODING

__all__ = ["Benchmark", "BENCHMARKS", "file_hash", "split_hash", "read_id_list", "select_split", "read_class_list",
           "assign_labels", "build_benchmark"]

HASH_DIGITS = 12


@dataclass(frozen=True)
class Benchmark:
    """One evaluation protocol's data: the annotation format, whether a split list is required, the task."""

    name: str
    format: str
    task: str  # "retrieval" (text <-> video) or "zero_shot" (classification by class-name prompts)
    needs_split: bool
    files: str  # the published files it is built from, for messages and docs


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("msrvtt_1ka", "msrvtt_1ka", "retrieval", False, "MSRVTT_JSFUSION_test.csv"),
    Benchmark("msrvtt_full", "msrvtt", "retrieval", True, "MSRVTT_data.json + a split list such as test_list_full.txt"),
    Benchmark("didemo", "didemo", "retrieval", False, "test_data.json"),
    Benchmark("activitynet", "activitynet", "retrieval", False, "val_1.json"),
    Benchmark("msvd", "msvd", "retrieval", True, "AllVideoDescriptions.txt (or raw-captions as JSON) + test_list.txt"),
    Benchmark("kinetics400", "kinetics", "zero_shot", False, "validate.csv / kinetics_400_val.csv [+ a class list]"),
)}


def file_hash(path: str | os.PathLike[str]) -> str:
    """The first 12 hex digits of the sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:HASH_DIGITS]


def split_hash(paths: list[str | os.PathLike[str]]) -> str:
    """`hash(annotations)+hash(split list)+...`: each file's `file_hash`, in the order given."""
    return "+".join(file_hash(p) for p in paths)


def _lines(path: Path, encoding: str) -> list[str]:
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found")
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not valid {encoding} text ({err.reason} at byte {err.start})") from err
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def read_id_list(path: str | os.PathLike[str], encoding: str = DEFAULT_ENCODING) -> list[str]:
    """Video ids of a split list, one per line (`video7010`, `-4wsuPCjDBc_5_15`); blank and `#` lines skipped."""
    path = Path(path)
    ids = _lines(path, encoding)
    bad = next((i for i in ids if len(i.split()) != 1), None)
    if bad is not None:
        raise AnnotationError(f"{path}: expected one video id per line, got {bad[:60]!r}")
    if not ids:
        raise AnnotationError(f"{path}: no video id in it; expected one video id per line")
    return ids


def select_split(clips: list[ClipSource], ids: list[str], split_path: str | os.PathLike[str]) -> list[ClipSource]:
    """The clips of the split, in the split list's order. An id without annotation is an error naming the list."""
    by_key = {c.key: c for c in clips}
    keys = list(dict.fromkeys(safe_key(i) for i in ids))
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise AnnotationError(f"{split_path}: {len(missing)} of {len(keys)} video ids have no annotation "
                              f"(e.g. {missing[:3]}); expected the split list of this annotation file")
    return [by_key[k] for k in keys]


def read_class_list(path: str | os.PathLike[str], encoding: str = DEFAULT_ENCODING) -> list[str]:
    """Class names in index order: a text file with one name per line, or a CSV with a `name` column (ordered by
    its `id` column when there is one)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        lines = _lines(path, encoding)
        rows = list(csv.DictReader(lines))
        if not rows or "name" not in rows[0]:
            raise AnnotationError(f"{path}: expected a CSV with a 'name' column (and optionally 'id')")
        if "id" in rows[0]:
            try:
                rows.sort(key=lambda r: int(r["id"]))
            except ValueError as err:
                raise AnnotationError(f"{path}: the 'id' column must hold integers ({err})") from err
        names = [r["name"].strip() for r in rows]
    else:
        names = _lines(path, encoding)
    if not names:
        raise AnnotationError(f"{path}: no class name in it; expected one class name per line")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise AnnotationError(f"{path}: class names listed twice: {duplicated[:3]}")
    return names


def assign_labels(clips: list[ClipSource], class_names: list[str], class_path: str | os.PathLike[str]) -> list[ClipSource]:
    """Clips labelled by their class name's index in `class_names`; a name not in the list is an error naming it."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({c.label_name for c in clips if c.label_name not in index})
    if unknown:
        raise AnnotationError(f"{class_path}: {len(unknown)} class names of the annotations are not in it (e.g. {unknown[:3]})")
    return [replace(c, label=index[c.label_name]) for c in clips]


def build_benchmark(name: str, annotations: str | os.PathLike[str], videos_dir: str | os.PathLike[str], *,
                    split: str | os.PathLike[str] | None = None, classes: str | os.PathLike[str] | None = None,
                    encoding: str = DEFAULT_ENCODING) -> tuple[list[ClipSource], dict[str, Any]]:
    """The benchmark's samples and its record (`benchmark`, `split_hash`, `split_files`, counts[, `class_names`])."""
    if name not in BENCHMARKS:
        raise AnnotationError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    if bench.needs_split and split is None:
        raise AnnotationError(f"benchmark {name}: needs a split list (--split FILE, one video id per line); built from {bench.files}")
    clips = read_annotations(annotations, videos_dir, bench.format, encoding=encoding)
    files = [Path(annotations)]
    if split is not None:
        clips = select_split(clips, read_id_list(split, encoding), split)
        files.append(Path(split))
    class_names: list[str] | None = None
    if bench.task == "zero_shot":
        if classes is not None:
            class_names = read_class_list(classes, encoding)
            clips = assign_labels(clips, class_names, classes)
            files.append(Path(classes))
        else:
            class_names = sorted({c.label_name for c in clips if c.label_name})
    elif classes is not None:
        raise AnnotationError(f"benchmark {name}: a class list is only read by zero-shot benchmarks ({classes})")
    record: dict[str, Any] = {
        "benchmark": name,
        "split_hash": split_hash(files),
        "split_files": {p.name: file_hash(p) for p in files},
        "num_videos": len(clips),
        "num_captions": sum(len(c.captions) for c in clips),
    }
    if class_names is not None:
        record["class_names"] = class_names
    return clips, record
