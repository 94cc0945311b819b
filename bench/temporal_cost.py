"""What fused MobileViCLIP-Tiny's time over fused MobileCLIP-S0 (applied per frame) is made of, part by part.

Tiny is S0 plus three things: a temporal depthwise conv before every RepMixer (18 of them), joint space-time attention
instead of per-frame attention in stage 3 (2 blocks), and the TPE addition before stage 3. This times, interleaved in
one process on one 8x3x256x256 clip, the fused S0, the fused Tiny, and Tiny with each addition taken out (the temporal
convs replaced by the identity; the joint attention run per frame; both), in the default layout and in channels_last
(`to_channels_last(model, forward_only=True)`). The take-outs change what the model computes: they are measuring
devices, never models to use. Beside the table, the floor no kernel can go under: the joint attentions' extra
multiply-adds (QK^T and AV over T*N tokens instead of T times over N) at this machine's measured fp32 matmul rate.

    python bench/temporal_cost.py [--repeats 20] [--threads 2] [--no-write]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mvclip  # noqa: E402
from fuse import matmul_peak_gflops, time_interleaved  # noqa: E402
from report import machine, today, write_section  # noqa: E402

from mvclip.allocator import keep_freed_memory  # noqa: E402
from mvclip.blocks.attention import AttentionBlock  # noqa: E402
from mvclip.layers.memory_format import to_channels_last  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class PassFrames(nn.Module):
    """Stands in for a temporal mixer: the map unchanged."""

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return x


def variant(model: nn.Module, temporal_convs: bool, joint_attention: bool) -> nn.Module:
    model = copy.deepcopy(model)
    for module in model.modules():
        if not temporal_convs and hasattr(module, "temporal_mixer"):
            module.temporal_mixer = PassFrames()
        if not joint_attention and isinstance(module, AttentionBlock) and module.attention_mode == "joint":
            module.attention_mode = "frame"
    return model


def joint_attention_shapes(model: nn.Module, clip: torch.Tensor) -> list[tuple[int, ...]]:
    """The (B*T, C, H, W) input of every joint attention block, from one forward."""
    shapes, hooks = [], []
    for module in model.modules():
        if isinstance(module, AttentionBlock) and module.attention_mode == "joint":
            hooks.append(module.register_forward_hook(lambda m, inputs, out: shapes.append(tuple(inputs[0].shape))))
    with torch.inference_mode():
        model.encode_video(clip)
    for hook in hooks:
        hook.remove()
    return shapes


def extra_attention_flop(shapes: list[tuple[int, ...]], frames: int) -> int:
    """QK^T and AV cost 4 * L^2 * C multiply-adds-as-FLOP per attention over L tokens of width C: joint over T*N tokens
    against T attentions over N each, the difference summed over blocks."""
    total = 0
    for n, channels, height, width in shapes:
        clips, tokens = n // frames, frames * height * width
        total += clips * 4 * channels * (tokens**2 - frames * (height * width) ** 2)
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    for name, least in (("repeats", 1), ("threads", 1), ("resolution", 32)):
        if getattr(args, name) is not None and getattr(args, name) < least:
            parser.error(f"--{name}: expected an integer >= {least}, got {getattr(args, name)}")
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frames = 8
    clip = torch.rand(1, frames, 3, args.resolution, args.resolution)
    image = mvclip.fuse(mvclip.build_model(ROOT / "recipes" / "models" / "mobileclip_s0_frames.yaml").eval())
    video = mvclip.fuse(mvclip.build_model(ROOT / "recipes" / "models" / "mobileviclip_tiny.yaml").eval())
    rows = {
        "S0 per frame": image,
        "Tiny": video,
        "Tiny, temporal convs taken out": variant(video, temporal_convs=False, joint_attention=True),
        "Tiny, attention per frame": variant(video, temporal_convs=True, joint_attention=False),
        "Tiny, both taken out": variant(video, temporal_convs=False, joint_attention=False),
    }
    runners = {}
    for name, model in rows.items():
        runners[(name, "default")] = lambda m=model: m.encode_video(clip)
        last = to_channels_last(copy.deepcopy(model), forward_only=True)
        runners[(name, "channels_last")] = lambda m=last: m.encode_video(clip)
    peak = matmul_peak_gflops()
    times = {key: statistics.median(t) * 1e3 for key, t in time_interleaved(runners, args.repeats).items()}
    peak = max(peak, matmul_peak_gflops())
    extra_flop = extra_attention_flop(joint_attention_shapes(video, clip), frames)
    floor_ms = extra_flop / (peak * 1e9) * 1e3

    body = [
        f"Fused encoders, one clip of {frames}x3x{args.resolution}x{args.resolution}, CPU, eager, `torch.inference_mode`, "
        f"freed memory kept; median of {args.repeats} interleaved runs of every cell after 2 warm-up runs.",
        "",
        f"- command: `{('python bench/temporal_cost.py ' + ' '.join(sys.argv[1:] if argv is None else argv)).strip()}`",
        f"- machine: {machine()}",
        f"- date: {today()}",
        f"- fp32 matmul peak (2048^3 `torch.mm`, best of the runs before and after): {peak:.1f} GFLOP/s",
        "",
        "| fused model | default (ms) | vs S0 | channels_last (ms) | vs S0 |",
        "|---|---|---|---|---|",
    ]
    for name in rows:
        cells = []
        for layout in ("default", "channels_last"):
            ms = times[(name, layout)]
            cells += [f"{ms:.1f}", f"{ms / times[('S0 per frame', layout)]:.3f}x"]
        body.append(f"| {name} | {' | '.join(cells)} |")
    body.append("")
    for layout in ("default", "channels_last"):
        tiny, s0 = times[("Tiny", layout)], times[("S0 per frame", layout)]
        convs = tiny - times[("Tiny, temporal convs taken out", layout)]
        attention = tiny - times[("Tiny, attention per frame", layout)]
        rest = times[("Tiny, both taken out", layout)] - s0
        body.append(f"- {layout}: Tiny - S0 = {tiny - s0:.1f} ms, of which the temporal convs {convs:.1f} ms, the joint "
                    f"attention {attention:.1f} ms, the rest (TPE addition; noise) {rest:.1f} ms.")
    body.append(f"- The joint attentions' extra QK^T and AV work is {extra_flop / 1e9:.2f} GFLOP per clip: at the matmul "
                f"peak alone that is {floor_ms:.1f} ms, {100 * floor_ms / times[('S0 per frame', 'channels_last')]:.1f} % of "
                f"S0 in channels_last and {100 * floor_ms / times[('S0 per frame', 'default')]:.1f} % in the default layout.")
    text = "\n".join(body)
    if not args.no_write:
        write_section("What the temporal additions cost, part by part (bench/temporal_cost.py)", text)
    print(text)


if __name__ == "__main__":
    main()
