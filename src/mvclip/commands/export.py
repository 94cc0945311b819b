"""`python -m mvclip export --ckpt_path PATH [--out DIR] [--format onnx,executorch,coreml] [--clip_lengths 4,8]`:
a checkpoint -> a fused, verified, deployable folder.

The same export the `FuseExport` callback writes at the end of fit (see `mvclip.export`), for any
checkpoint. It is verified on a seeded random batch at the checkpoint's input size (checkpoints
record their input pipeline; `--frames`/`--resolution` otherwise), since no data is needed here.
The model is rebuilt from the config stored in the checkpoint, not from the YAML on disk. `--out`
must be a new or empty folder or an earlier export: an export never deletes what it did not write.
`--format` names the deployment targets (default: onnx, skipped with a note without `mvclip[onnx]`; docs/deploy.md);
each is checked in its runtime against the PyTorch fused model, and a failing one writes nothing.
"""
from __future__ import annotations

import argparse
import json
import sys

from mvclip.commands.options import CommandParser
from mvclip.errors import ConfigError, MissingExtraError, RegistryError
from mvclip.export import ExportError, export_checkpoint, export_dir_for, random_inputs, read_checkpoint
from mvclip.export_folder import ExportTargetError, check_export_target


def main(argv: list[str]) -> int:
    parser = CommandParser("export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", "--ckpt", required=True, help="a checkpoint written by `python -m mvclip fit`")
    parser.add_argument("--out", default=None, help="export folder: new, empty, or an earlier export (default: <checkpoint>.export beside it)")
    parser.add_argument("--frames", type=int, default=None, help="clip length to verify and time at (default: the checkpoint's)")
    parser.add_argument("--resolution", type=int, default=None, help="frame size to verify and time at (default: the checkpoint's, else 256)")
    parser.add_argument("--no_onnx", action="store_true", help="skip the ONNX graphs (the default format)")
    parser.add_argument("--format", default=None, type=_names, help="comma-separated deployment targets: onnx, executorch, coreml (docs/deploy.md)")
    parser.add_argument("--clip_lengths", default=None, type=_lengths, help="comma-separated clip lengths the video graphs are exported for and checked at (default: --frames)")
    parser.add_argument("--quantize", choices=["int8"], default=None, help="add int8 graphs (onnx, executorch), calibrated and gated on --val_data")
    parser.add_argument("--val_data", default=None, help="validation shards (folder or pattern) to calibrate int8 on and evaluate the gate with")
    parser.add_argument("--calibration_clips", type=int, default=256, help="validation clips int8 is calibrated on")
    parser.add_argument("--eval_clips", type=int, default=512, help="validation clips the int8 gate evaluates on")
    parser.add_argument("--max_r1_drop", type=float, default=1.0, help="int8 gate: largest T2V/V2T R@1 drop allowed, in points")
    parser.add_argument("--min_cosine", type=float, default=0.99, help="int8 gate: smallest mean embedding cosine to float allowed")
    parser.add_argument("--allow_accuracy_loss", action="store_true", help="keep int8 graphs that fail the gate (recorded as failed in metrics.json)")
    parser.add_argument("--latency_repeats", type=int, default=10, help="timed runs per model for the latency median")
    args = parser.parse_args(argv)
    if args.format is not None and args.no_onnx:
        parser.error("--no_onnx and --format exclude each other: name the formats you want")
    if args.quantize and not args.val_data:
        parser.error("--quantize int8 needs --val_data: the validation shards it is calibrated on and gated with")

    from mvclip.resume import module_from_checkpoint

    out_dir = args.out or export_dir_for(args.ckpt_path)
    try:
        check_export_target(out_dir, [args.ckpt_path])  # refuse before spending minutes on verification
        ckpt = read_checkpoint(args.ckpt_path)
        module = module_from_checkpoint(ckpt, args.ckpt_path, warn=lambda line: print(f"mvclip export: warning: {line}", file=sys.stderr))
    except (FileNotFoundError, ValueError, RegistryError) as error:
        print(f"mvclip export: {error}", file=sys.stderr)
        return 2
    preprocess = ckpt.get("mvclip_preprocess") or {}
    frames = args.frames or preprocess.get("frames") or module.model.input_spec.frames
    resolution = args.resolution or preprocess.get("resolution") or module.model.input_spec.resolution
    try:
        quantize = _quantize(args, frames, resolution) if args.quantize else None
        out, metrics = export_checkpoint(
            module, args.ckpt_path, random_inputs(frames, resolution), out_dir=out_dir,
            onnx=not args.no_onnx, latency_repeats=args.latency_repeats, formats=args.format, clip_lengths=args.clip_lengths,
            quantize=quantize,
        )
    except ExportError as error:
        tail = "" if "nothing was written" in str(error) else "; nothing was written"
        print(f"mvclip export: {args.ckpt_path}: {error}{tail}", file=sys.stderr)
        return 1
    except (ExportTargetError, ConfigError, MissingExtraError, ValueError) as error:
        print(f"mvclip export: {error}", file=sys.stderr)
        return 2
    latency = metrics["latency_ms"]
    print(json.dumps({"params": metrics["params"], "flops": metrics["flops"], "latency_ms": latency}, indent=2))
    print(f"wrote {out}: {', '.join(metrics['files'] + ['metrics.json'])}")
    return 0


def _names(text: str) -> list[str]:
    from mvclip.export_targets import FORMATS

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(FORMATS)}, got {text!r}")
    return names


def _lengths(text: str) -> list[int]:
    try:
        lengths = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive clip lengths such as 4,8, got {text!r}")
    return lengths


def _quantize(args: argparse.Namespace, frames: int, resolution: int):
    """The calibration and gate set of `--quantize int8`, read from `--val_data` as validation reads it."""
    from mvclip.datamodules.datamodule import VideoTextDataModule
    from mvclip.export import Quantize
    from mvclip.export_gate import EvalSet, Gate
    from mvclip.export_quantize import default_calibration

    data = VideoTextDataModule(val=args.val_data, frames=frames, resolution=resolution, eval_batch_size=16, num_workers=0)
    data.setup("validate")
    evaluation = EvalSet.from_batches(data.val_dataloader(), max(args.eval_clips, args.calibration_clips))
    gate = Gate(max_r1_drop=args.max_r1_drop, min_mean_cosine=args.min_cosine, override=args.allow_accuracy_loss)
    return Quantize(evaluation, default_calibration(evaluation, args.calibration_clips), gate)
