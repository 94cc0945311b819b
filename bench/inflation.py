"""How far a freshly inflated MobileViCLIP is from MobileCLIP applied frame by frame, on real clips.

With per-frame attention the start is exact on any clip, and with joint space-time attention exact on a clip
of repeated frames (tests/test_pretrained.py checks both); on real clips joint attention mixes frames from the
first step, so the start is only close. This script measures how close: it loads the same weights into the
frame-mean baseline (mobileclip_s0_frames) and into mobileviclip_tiny (joint and per-frame attention), decodes
the real clips in ../shared/data/videos as evaluation does (8 segment centres, short side to 256, centre crop),
and compares clip embeddings with the mean of per-frame image embeddings, unfused and fused.

    python bench/inflation.py --ckpt checkpoints/mobileclip_s0.pt   # Apple's S0 weights (any supported layout)
    python bench/inflation.py                                      # no file: random weights from the S0 fixture

Random weights only show the mechanism; the section says which weights were used.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, today, write_section  # noqa: E402

import mvclip  # noqa: E402
from mvclip.builder import apply_overrides  # noqa: E402
from mvclip.datamodules.decode import VideoReader  # noqa: E402
from mvclip.datamodules.sampling import segment_indices  # noqa: E402
from mvclip.datamodules.transforms import VideoTransform  # noqa: E402
from mvclip.testing import random_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
FIXTURE = ROOT / "tests" / "fixtures" / "pretrained_formats" / "apple_mobileclip_s0.json"
PRESETS = ROOT / "recipes" / "models"


def load_clip(path: Path, frames: int, resolution: int) -> torch.Tensor:
    """(1, T, 3, R, R) in [0, 1], sampled and resized as at evaluation."""
    data = path.read_bytes()
    with VideoReader(data, name=path.name) as reader:
        indices = segment_indices(reader.info.num_frames, frames, train=False)
        raw = reader.frames(indices, layout="tchw")
    return VideoTransform(resolution, train=False)(raw).unsqueeze(0)


def build(preset: str, weights: dict[str, torch.Tensor], **overrides) -> mvclip.VideoTextModel:
    cfg = apply_overrides(OmegaConf.load(PRESETS / f"{preset}.yaml"), overrides, new_keys=True)
    model = mvclip.build_model(cfg).eval()
    mvclip.load_pretrained(model, weights)
    return model


def compare(model: mvclip.VideoTextModel, image: mvclip.VideoTextModel, clip: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        expected = torch.stack([image.encode_video(clip[:, t]) for t in range(clip.shape[1])], dim=1).mean(dim=1)
        out = model.encode_video(clip)
    return {
        "max_abs_diff": (out - expected).abs().max().item(),
        "relative": ((out - expected).norm() / expected.norm()).item(),
        "cosine": F.cosine_similarity(out, expected).min().item(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None, help="MobileCLIP-S0 weights (default: random weights from the fixture)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    if args.ckpt:
        from mvclip.checkpoints import read_state_dict

        weights, label = read_state_dict(args.ckpt), f"`{Path(args.ckpt).name}`"
    else:
        weights = random_checkpoint(json.loads(FIXTURE.read_text())["tensors"], seed=0)
        label = "random weights in Apple's S0 layout (`random_checkpoint` on the fixture; no real weights on this machine)"
    image = build("mobileclip_s0_frames", weights)
    variants = {
        "mobileviclip_tiny, joint attention": build("mobileviclip_tiny", weights),
        "mobileviclip_tiny, per-frame attention": build("mobileviclip_tiny", weights, **{"video.stages.3.attention_mode": "frame"}),
    }
    clips = {p.name: load_clip(p, args.frames, args.resolution) for p in sorted(VIDEOS.glob("*.mp4"))}
    clips["bikes.mp4, first frame repeated"] = clips["bikes.mp4"][:, :1].expand_as(clips["bikes.mp4"])

    rows = []
    for name, model in variants.items():
        fused = mvclip.fuse(model)
        for clip_name, clip in clips.items():
            for form, m in (("unfused", model), ("fused", fused)):
                r = compare(m, image, clip)
                rows.append(f"| {name} | {clip_name} | {form} | {r['max_abs_diff']:.2e} | {r['relative']:.2e} | {r['cosine']:.6f} |")
                print(rows[-1], flush=True)
    body = "\n".join([
        f"`python bench/inflation.py{' --ckpt ' + args.ckpt if args.ckpt else ''}` ({today()}; {machine()}). Weights: {label}.",
        f"Clip embedding of the freshly loaded video model vs the mean of the image model's per-frame embeddings, "
        f"{args.frames} frames at {args.resolution} px from the real clips in ../shared/data/videos. Relative = "
        "||difference|| / ||frame mean||.",
        "",
        "| model | clip | form | max abs diff | relative | cosine |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    if not args.no_docs:
        write_section("Inflation: a video model loaded from MobileCLIP vs MobileCLIP per frame (bench/inflation.py)", body)
        print("wrote docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
