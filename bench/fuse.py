"""Unfused vs fused CPU latency of the video encoders on one clip (8 x 3 x 256 x 256).

Both forms run in the same process, interleaved (unfused, fused, unfused, ...), so drift in
machine load hits both alike; the table reports medians and the speed-up ratio.

    python bench/fuse.py [--repeats 10] [--threads N] [--no-write]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mvclip  # noqa: E402
from report import machine, today, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["mobileviclip_tiny", "mobileviclip_small"]


@torch.inference_mode()
def time_interleaved(models: dict[str, torch.nn.Module], clip: torch.Tensor, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    for _ in range(warmup):
        for model in models.values():
            model.encode_video(clip)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.encode_video(clip)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = torch.rand(1, args.frames, 3, args.resolution, args.resolution)
    rows = []
    for preset in PRESETS:
        model = mvclip.build_model(ROOT / "recipes" / "models" / f"{preset}.yaml").eval()
        fused = mvclip.fuse(model)
        report = mvclip.verify(model, clip, fused=fused, forward=lambda m, x: m.encode_video(x))
        times = time_interleaved({"unfused": model, "fused": fused}, clip, args.repeats)
        unfused_ms = statistics.median(times["unfused"]) * 1e3
        fused_ms = statistics.median(times["fused"]) * 1e3
        rows.append((preset, unfused_ms, fused_ms, unfused_ms / fused_ms, report.max_rel_diff))
        print(f"{preset}: unfused {unfused_ms:.1f} ms, fused {fused_ms:.1f} ms, speed-up {unfused_ms / fused_ms:.2f}x, max rel diff {report.max_rel_diff:.1e}", flush=True)
    command = "python bench/fuse.py " + " ".join(sys.argv[1:])
    body = [
        f"Video encoder, one clip of {args.frames}x3x{args.resolution}x{args.resolution}, CPU, eager PyTorch, `torch.inference_mode`; "
        f"median of {args.repeats} interleaved runs after 2 warm-up runs each.",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {machine()}",
        f"- date: {today()}",
        "",
        "| model | unfused (ms) | fused (ms) | speed-up (unfused / fused) | fused vs unfused, max relative difference |",
        "|---|---|---|---|---|",
    ]
    body += [f"| {p} | {u:.1f} | {f:.1f} | {r:.2f}x | {d:.1e} |" for p, u, f, r, d in rows]
    if not args.no_write:
        write_section("Fused vs unfused latency (bench/fuse.py)", "\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
