"""`python -m mvclip convert --from mobileclip --ckpt_path PATH --out DIR`: MobileCLIP weights -> an mvclip checkpoint and
a fused, verified export.

The file's layout (Apple, timm fastvit_mci*, open_clip) is detected from its keys. By default the model is
MobileCLIP applied frame by frame and averaged over time, read off the file's shapes: a zero-shot video
baseline. `--model PRESET.yaml` loads the same weights into another preset instead (e.g.
recipes/models/mobileviclip_tiny.yaml: the temporal additions start as the identity). DIR gets:
  model.ckpt   an mvclip checkpoint (`model.init_from`, `python -m mvclip export`, `validate --ckpt_path`)
  export/      the fused deployable folder (safetensors, YAML, ONNX, metrics.json; see docs/export.md)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mvclip.commands.options import CommandParser

if TYPE_CHECKING:
    from mvclip.lightning_module import VideoTextModule

SOURCES = {"mobileclip": ("apple_mobileclip", "timm_fastvit", "open_clip")}


def main(argv: list[str]) -> int:
    parser = CommandParser("convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, choices=sorted(SOURCES), help="the model family of the checkpoint")
    parser.add_argument("--ckpt_path", "--ckpt", required=True, help="the published weights (.pt/.pth/.bin state dict or .safetensors)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--model", default=None, help="model YAML to load into (default: the frame-mean model the file holds)")
    parser.add_argument("--frames", type=int, default=8, help="clip length the export is verified and timed at")
    parser.add_argument("--resolution", type=int, default=256, help="frame size (MobileCLIP: 256)")
    parser.add_argument("--no_onnx", action="store_true", help="skip the ONNX graphs")
    parser.add_argument("--latency_repeats", type=int, default=10, help="timed runs per model for the latency median")
    args = parser.parse_args(argv)

    from mvclip.checkpoints import read_state_dict
    from mvclip.errors import ConfigError
    from mvclip.export import ExportError, export_checkpoint, random_inputs
    from mvclip.export_folder import ExportTargetError
    from mvclip.lightning_module import VideoTextModule
    from mvclip.pretrained import detect_format, frame_mean_config, load_pretrained

    ckpt_path = Path(args.out) / "model.ckpt"
    if ckpt_path.exists() and not _written_by_convert(ckpt_path):
        print(f"mvclip convert: {ckpt_path} exists and was not written by convert; refusing to overwrite it "
              "(choose another --out)", file=sys.stderr)
        return 2
    try:
        state = read_state_dict(args.ckpt_path)
        fmt = detect_format(list(state), args.ckpt_path)
        if fmt.name not in SOURCES[args.source]:
            raise ConfigError(f"{args.ckpt_path}: {fmt.name} layout, not a {args.source} checkpoint ({', '.join(SOURCES[args.source])})")
        model_cfg = args.model or frame_mean_config(state, fmt, args.ckpt_path, frames=args.frames)
        module = VideoTextModule(model=model_cfg)
        report = load_pretrained(module.model, state, format=fmt.name, source=args.ckpt_path)
    except ConfigError as error:
        print(f"mvclip convert: {error}", file=sys.stderr)
        return 2
    print(report)
    if module.model.text is None:
        print("note: the file has no text tower (timm's fastvit_mci* are image towers); the model embeds videos only")

    out = Path(args.out)
    write_checkpoint(module, ckpt_path, source=args.ckpt_path, format_name=fmt.name, frames=args.frames, resolution=args.resolution)
    try:
        export_dir, metrics = export_checkpoint(
            module, ckpt_path, random_inputs(args.frames, args.resolution), out_dir=out / "export", kind="converted",
            onnx=not args.no_onnx, latency_repeats=args.latency_repeats,
        )
    except (ExportError, ExportTargetError) as error:
        print(f"mvclip convert: {error}; the checkpoint {ckpt_path} was written, the export was not", file=sys.stderr)
        return 1
    latency = metrics["latency_ms"]
    print(f"wrote {ckpt_path}")
    print(f"wrote {export_dir}: {', '.join(metrics['files'] + ['metrics.json'])} (fused {latency['video_fused']:.1f} ms vs unfused {latency['video_unfused']:.1f} ms per clip)")
    return 0


def _written_by_convert(path: Path) -> bool:
    """Whether `path` is a checkpoint an earlier convert wrote (which it may replace), not someone else's file."""
    from mvclip.checkpoints import load_torch_file
    from mvclip.errors import CheckpointError

    try:
        checkpoint = load_torch_file(path)
    except (CheckpointError, OSError):
        return False
    return isinstance(checkpoint, dict) and "mvclip_pretrained" in checkpoint


def write_checkpoint(module: VideoTextModule, path: Path, *, source: str, format_name: str, frames: int, resolution: int) -> None:
    """A checkpoint in the shape `python -m mvclip fit` writes: `model.`-prefixed state, the model config as the
    module's hyperparameters (self-contained: no recipe path), and the input pipeline the weights expect."""
    import lightning

    from mvclip.atomic import atomic_write
    from mvclip.portable_config import CHECKPOINT_KEY

    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
        "hyper_parameters": {"model": module.model_config},
        CHECKPOINT_KEY: module.portable_model_config,
        "mvclip_preprocess": {
            "frames": frames, "sampling": "segments", "resolution": resolution, "mean": None, "std": None,
            "resize": "bilinear, short side to resolution, centre crop", "pixels": "RGB in [0, 1]",
        },
        "mvclip_pretrained": {"source": source, "format": format_name},
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": lightning.__version__,
    }
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
