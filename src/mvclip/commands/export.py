"""`python -m mvclip export --ckpt PATH [--out DIR]`: a checkpoint -> a fused, verified, deployable folder.

The same export the `FuseExport` callback writes at the end of fit (see `mvclip.export`), for any
checkpoint. It is verified on a seeded random batch at the checkpoint's input size (checkpoints
record their input pipeline; `--frames`/`--resolution` otherwise), since no data is needed here.
"""
from __future__ import annotations

import argparse
import json
import sys

from mvclip.export import ExportError, export_checkpoint, export_dir_for, random_inputs, read_checkpoint


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvclip export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by `python -m mvclip fit`")
    parser.add_argument("--out", default=None, help="export folder (default: <checkpoint>.export beside it)")
    parser.add_argument("--frames", type=int, default=None, help="clip length to verify and time at (default: the checkpoint's)")
    parser.add_argument("--resolution", type=int, default=None, help="frame size to verify and time at (default: the checkpoint's, else 256)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX graphs")
    parser.add_argument("--latency-repeats", type=int, default=10, help="timed runs per model for the latency median")
    args = parser.parse_args(argv)

    from mvclip.lightning_module import VideoTextModule

    try:
        ckpt = read_checkpoint(args.ckpt)
    except (FileNotFoundError, ValueError) as error:
        print(f"mvclip export: {error}", file=sys.stderr)
        return 2
    hparams = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    if "model" not in hparams:
        print(f"mvclip export: {args.ckpt}: no model hyperparameters; was it written by `python -m mvclip fit`?", file=sys.stderr)
        return 2
    module = VideoTextModule(**hparams)
    preprocess = ckpt.get("mvclip_preprocess") or {}
    frames = args.frames or preprocess.get("frames") or module.model.video.num_frames
    resolution = args.resolution or preprocess.get("resolution") or 256
    try:
        out, metrics = export_checkpoint(
            module, args.ckpt, random_inputs(frames, resolution), out_dir=args.out or export_dir_for(args.ckpt),
            onnx=not args.no_onnx, latency_repeats=args.latency_repeats,
        )
    except ExportError as error:
        print(f"mvclip export: {args.ckpt}: {error}; nothing was written", file=sys.stderr)
        return 1
    latency = metrics["latency_ms"]
    print(json.dumps({"params": metrics["params"], "flops": metrics["flops"], "latency_ms": latency}, indent=2))
    print(f"wrote {out}: {', '.join(metrics['files'] + ['metrics.json'])}")
    return 0
