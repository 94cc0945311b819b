"""`python -m mvclip shards`: build shards from annotated videos, or the synthetic dataset (`mvclip.datamodules`).

    python -m mvclip shards --videos DIR --annotations FILE --out DIR [--format msrvtt|...]
    python -m mvclip shards --benchmark msrvtt_full --videos DIR --annotations MSRVTT_data.json --split test_list_full.txt --out DIR
    python -m mvclip shards --synthetic 2000 --out DIR [--seed 0]
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from mvclip.commands.options import CommandParser
from mvclip.datamodules.annotations import FORMATS, AnnotationError, detect_format, read_annotations
from mvclip.datamodules.benchmarks import BENCHMARKS, build_benchmark, split_hash
from mvclip.datamodules.shard_writer import DEFAULT_SAMPLES_PER_SHARD, summary_line, write_shards
from mvclip.datamodules.text_encoding import DEFAULT_ENCODING


def _parser() -> argparse.ArgumentParser:
    p = CommandParser(
        "shards",
        description="Build WebDataset shards (tar + manifest.json) from videos with captions, "
                    "or generate the synthetic temporal dataset. See docs/data.md.")
    src = p.add_argument_group("real videos")
    src.add_argument("--videos", type=Path, help="folder holding the video files")
    src.add_argument("--annotations", type=Path, help="caption file (JSON, CSV or JSONL)")
    src.add_argument("--format", choices=list(FORMATS),
                     help="annotation format (default: detected from the file)")
    src.add_argument("--benchmark", choices=list(BENCHMARKS),
                     help="build an evaluation benchmark from its published files (docs/evaluation.md)")
    src.add_argument("--split", type=Path, help="split list of a benchmark: one video id per line (e.g. test_list_full.txt)")
    src.add_argument("--classes", type=Path, help="class list of a zero-shot benchmark (default: its sorted class names)")
    src.add_argument("--encoding", default=DEFAULT_ENCODING,
                     help="text encoding of the annotation file (default: UTF-8, with or without a BOM; "
                          "e.g. latin-1, cp1252)")
    p.add_argument("--out", type=Path, required=True, help="output folder for the shards")
    p.add_argument("--prefix", default="shard", help="shard names: PREFIX-000000.tar, ...")
    p.add_argument("--samples_per_shard", type=int, default=DEFAULT_SAMPLES_PER_SHARD,
                   help=f"samples per shard (default {DEFAULT_SAMPLES_PER_SHARD})")
    p.add_argument("--max_shard_bytes", type=int, default=None,
                   help="also start a new shard before one would grow past this size")
    p.add_argument("--workers", type=int, default=0,
                   help="processes probing/re-encoding in parallel (0: in this process)")
    p.add_argument("--reencode_short_side", type=int, default=None, metavar="PX",
                   help="re-encode to H.264 with this short side (default: store the original "
                        "bytes untouched; trimmed clips are always re-encoded)")
    p.add_argument("--keyframe_interval", type=int, default=None, metavar="N",
                   help="GOP length of re-encoded clips (default 8); implies re-encoding")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    syn = p.add_argument_group("synthetic dataset")
    syn.add_argument("--synthetic", type=int, default=None, metavar="N",
                     help="generate the synthetic set with N training clips into --out")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--num_val", type=int, default=None, help="default: max(32, N/8)")
    syn.add_argument("--num_test", type=int, default=None, help="default: max(32, N/8)")
    syn.add_argument("--frames", type=int, default=None, help="frames per synthetic clip")
    syn.add_argument("--size", type=int, default=None, help="side of synthetic frames in pixels")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    if args.synthetic is not None:
        if args.videos or args.annotations:
            parser.error("--synthetic generates its own videos; drop --videos/--annotations")
        from mvclip.datamodules.synthetic import ensure_synthetic_dataset, synthetic_summary

        kwargs = {k: v for k, v in (("frames", args.frames), ("size", args.size)) if v}
        root = ensure_synthetic_dataset(
            args.out, num_train=args.synthetic, num_val=args.num_val, num_test=args.num_test,
            seed=args.seed, workers=args.workers or None, progress=not args.no_progress, **kwargs)
        print(f"{synthetic_summary(root)} in {time.perf_counter() - start:.1f} s")
        return 0

    if args.videos is None or args.annotations is None:
        parser.error("give --videos and --annotations (or --synthetic N)")
    if not args.videos.is_dir():
        print(f"error: --videos {args.videos} is not a folder", file=sys.stderr)
        return 2
    if (args.split or args.classes) and not args.benchmark:
        parser.error("--split and --classes belong to a benchmark: add --benchmark NAME")
    if args.benchmark and args.format:
        parser.error("--benchmark names its own format: drop --format")
    try:
        if args.benchmark:
            clips, record = build_benchmark(args.benchmark, args.annotations, args.videos, split=args.split,
                                            classes=args.classes, encoding=args.encoding)
        else:
            clips = read_annotations(args.annotations, args.videos, args.format, encoding=args.encoding)
            record = {"split_hash": split_hash([args.annotations])}
    except AnnotationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        manifest = write_shards(
            clips, args.out, prefix=args.prefix, samples_per_shard=args.samples_per_shard,
            max_shard_bytes=args.max_shard_bytes, workers=args.workers,
            reencode_short_side=args.reencode_short_side,
            keyframe_interval=args.keyframe_interval, progress=not args.no_progress,
            extra_options={"annotations": str(args.annotations.resolve()),
                           "format": BENCHMARKS[args.benchmark].format if args.benchmark
                           else args.format or detect_format(args.annotations, args.encoding), **record})
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{summary_line(manifest, args.out)} in {time.perf_counter() - start:.1f} s")
    if manifest["total_samples"] == 0:  # an empty dataset is not a successful build
        print(f"error: no sample was written to {args.out}: every input was skipped (reasons in "
              f"{args.out / 'manifest.json'})", file=sys.stderr)
        return 1
    return 0
