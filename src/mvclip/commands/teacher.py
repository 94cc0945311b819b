"""`python -m mvclip teacher`: reinforce shards with teacher embeddings of K augmented views (docs/distillation.md).

    python -m mvclip teacher --model TEACHER [--model NAME=TEACHER2 ...] --shards IN --out OUT [--views K] [--seed S]

TEACHER: an mvclip checkpoint (.ckpt), an export folder, or a MobileCLIP file (.pt/.pth/.bin/.safetensors or
hf-hub:owner/repo/file from the local hub cache). IN is read, never written; OUT gets the reinforced shards and a
manifest naming the teachers with fingerprints. An interrupted run resumes: finished shards are kept untouched.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from mvclip.commands.options import CommandParser


def _parser() -> argparse.ArgumentParser:
    p = CommandParser("teacher", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]TEACHER",
                   help="a teacher (repeat for an ensemble); NAME (lowercase letters, digits, _ and -) keys its "
                        "embeddings in training batches; default: the file's name")
    p.add_argument("--shards", type=Path, required=True, help="folder of input shards (with manifest.json)")
    p.add_argument("--out", type=Path, required=True, help="output folder for the reinforced shards")
    p.add_argument("--views", type=int, default=4, help="augmented views stored per clip (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seeds the views (per clip key)")
    p.add_argument("--frames", type=int, default=None, help="frames per view (default: the teachers' clip length)")
    p.add_argument("--short_side", type=int, default=None, metavar="PX",
                   help="short side frames are decoded to before the crop; train with the same data.short_side "
                        "(or resolution) for exact replay (default: the first teacher's)")
    p.add_argument("--sampling", choices=("segments", "fps", "consecutive"), default=None,
                   help="frame sampling of the views (default: the first teacher's)")
    p.add_argument("--sampling_fps", type=float, default=None, help="rate of fps sampling (default: the first teacher's)")
    p.add_argument("--stride", type=int, default=None, help="step of consecutive sampling (default: the first teacher's)")
    p.add_argument("--crop_scale", type=float, nargs=2, default=(0.5, 1.0), metavar=("MIN", "MAX"),
                   help="area range of the random resized crop (default 0.5 1.0, as data.crop_scale)")
    p.add_argument("--hflip", action="store_true", help="also flip views at random (off: captions name directions)")
    p.add_argument("--device", default="cpu", help="where teachers run (cpu, cuda, cuda:1, ...)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    from mvclip.errors import CheckpointError, ConfigError
    from mvclip.reinforce import ViewRecipe, reinforce_shards
    from mvclip.teachers import load_teacher

    try:
        teachers = [load_teacher(m, frames=args.frames) for m in args.model]
        for t in teachers:
            t.embedder.model.to(args.device)
        first = teachers[0].input_spec
        recipe = ViewRecipe(
            views=args.views, seed=args.seed, frames=args.frames or first.frames,
            short_side=args.short_side or first.short_side or first.resolution,
            sampling=args.sampling or first.sampling,
            sampling_fps=args.sampling_fps if args.sampling_fps is not None else first.sampling_fps,
            stride=args.stride if args.stride is not None else first.stride,
            crop_scale=tuple(args.crop_scale), hflip=args.hflip)
        manifest = reinforce_shards(args.shards, args.out, teachers, recipe, device=args.device,
                                    progress=not args.no_progress)
    except (FileNotFoundError, ValueError, ConfigError, CheckpointError) as err:
        print(f"mvclip teacher: {err}", file=sys.stderr)
        return 2
    names = ", ".join(f"{n} ({r['embed_dim']}-d)" for n, r in manifest["teachers"].items())
    print(f"reinforced {manifest['total_samples']} samples in {len(manifest['shards'])} shard(s) to {args.out} with "
          f"{names}, {recipe.views} views each; skipped {len(manifest['skipped'])} in {time.perf_counter() - start:.1f} s")
    return 0 if manifest["total_samples"] else 1
