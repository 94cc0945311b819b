"""Fused vs unfused CPU latency of the video encoders on one clip (8 x 3 x 256 x 256), side by side.

Every form of every model runs in the same process, interleaved (S0 unfused, S0 fused, Tiny unfused, ...), so drift in
machine load hits all alike; the table reports medians and the ratios the project's goals are stated in:
- fused / unfused for each model (the branched training form against its plain-conv inference form);
- fused MobileViCLIP-Tiny / fused MobileCLIP-S0 applied frame by frame (what the temporal additions cost);
- the fused S0's achieved GFLOP/s (PyTorch's FLOP counter on one forward) against this machine's fp32 matmul peak,
  measured in the same run (a 2048^3 `torch.mm`), i.e. how close the frame-wise model runs to the hardware.
`--channels-last` adds each model, unfused and fused, in `torch.channels_last` (every conv, the RGB stem's too:
`to_channels_last(model, forward_only=True)`) as further interleaved rows; their speed-up is read within that layout. `--compile` adds each
fused video encoder under `torch.compile` (inductor) as a row; its first call, which compiles, is timed apart, and a
compilation that fails is reported with its error instead of a row. `--allocator keep` (default) times the models as
`python -m mvclip` runs them, with freed memory kept for reuse (`mvclip.allocator`); `--allocator system` with glibc's
defaults, as a program that imports mvclip does unless it asks.

    python bench/fuse.py [--repeats 10] [--threads N] [--channels-last] [--compile] [--allocator keep|system] [--no-write]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mvclip  # noqa: E402
from report import machine, today, write_section  # noqa: E402

from mvclip.allocator import keep_freed_memory  # noqa: E402
from mvclip.fusion import compare_outputs  # noqa: E402
from mvclip.layers.memory_format import to_channels_last  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["mobileclip_s0_frames", "mobileviclip_tiny", "mobileviclip_small"]
IMAGE_MODEL, VIDEO_MODEL = "mobileclip_s0_frames", "mobileviclip_tiny"


@torch.inference_mode()
def time_interleaved(runners: dict[str, callable], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    for _ in range(warmup):
        for run in runners.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


@torch.inference_mode()
def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 `torch.mm` rate, the best of `repeats` (the peak the encoders are compared with)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def compile_encoder(encoder: torch.nn.Module, clip: torch.Tensor) -> tuple[torch.nn.Module | None, str]:
    """`torch.compile(encoder)`, compiled by one call on `clip` (timed) and compared with the eager encoder; None and
    the error where compilation fails."""
    compiled = torch.compile(encoder, dynamic=False)
    with torch.inference_mode():
        reference = encoder(clip)
        start = time.perf_counter()
        try:
            out = compiled(clip)
        except Exception as error:  # noqa: BLE001 - a missing C++ compiler and the like: reported, not fatal
            return None, f"torch.compile failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    seconds = time.perf_counter() - start
    diff = compare_outputs(reference, out).max_rel_diff
    return compiled, f"compiled in {seconds:.1f} s (first call), max relative difference to eager {diff:.1e}"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.inference_mode()
def forward_flops(model: torch.nn.Module, clip: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        model.encode_video(clip)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--channels-last", action="store_true", help="also time each fused model in channels_last")
    parser.add_argument("--compile", action="store_true", help="also time each fused model under torch.compile")
    parser.add_argument("--allocator", choices=("keep", "system"), default="keep",
                        help="keep freed memory for reuse, as the CLI does (default), or glibc's defaults")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    kept = args.allocator == "keep" and keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = torch.rand(1, args.frames, 3, args.resolution, args.resolution)
    runners, diffs, flops = {}, {}, {}
    compile_notes: list[str] = []
    for preset in args.presets:
        model = mvclip.build_model(ROOT / "recipes" / "models" / f"{preset}.yaml").eval()
        fused = mvclip.fuse(model)
        diffs[preset] = mvclip.verify(model, clip, fused=fused, forward=lambda m, x: m.encode_video(x)).max_rel_diff
        flops[preset] = forward_flops(fused, clip)
        runners[f"{preset} unfused"] = lambda m=model: m.encode_video(clip)
        runners[f"{preset} fused"] = lambda m=fused: m.encode_video(clip)
        if args.channels_last:  # both forms, so the fused speed-up is also read within one layout
            unfused_last = to_channels_last(copy.deepcopy(model), forward_only=True)
            runners[f"{preset} unfused, channels_last"] = lambda m=unfused_last: m.encode_video(clip)
            last = to_channels_last(mvclip.fuse(model), forward_only=True)
            runners[f"{preset} fused, channels_last"] = lambda m=last: m.encode_video(clip)
        if args.compile:
            compiled, note = compile_encoder(fused.video, clip)
            compile_notes.append(f"{preset}: {note}")
            if compiled is not None:
                runners[f"{preset} fused, compile"] = lambda m=compiled: m(clip)
    peak = matmul_peak_gflops()
    times = {name: statistics.median(t) * 1e3 for name, t in time_interleaved(runners, args.repeats).items()}
    peak_after = matmul_peak_gflops()  # the peak before and after: a busy machine shows as a spread here
    command = ("python bench/fuse.py " + " ".join(sys.argv[1:])).strip()
    body = [
        f"Video encoder, one clip of {args.frames}x3x{args.resolution}x{args.resolution}, CPU, eager PyTorch, `torch.inference_mode`; "
        f"median of {args.repeats} interleaved runs of every row after 2 warm-up runs each.",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        f"- date: {today()}",
        f"- allocator: {'freed memory kept for reuse (`mvclip.allocator`, as `python -m mvclip` runs)' if kept else 'glibc defaults'}",
        f"- fp32 matmul peak (2048^3 `torch.mm`, best of 5, before / after the timings): {peak:.1f} / {peak_after:.1f} GFLOP/s",
        "",
        "| model | form | median (ms) | fused speed-up (unfused / fused, same layout) | GFLOP per clip | GFLOP/s | of matmul peak | fused vs unfused, max relative difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    best_peak = max(peak, peak_after)
    for preset in args.presets:
        fused_ms = times[f"{preset} fused"]
        for name, ms in times.items():
            if not name.startswith(preset + " "):
                continue
            form = name[len(preset) + 1:]
            rate = flops[preset] / (ms / 1e3) / 1e9
            same_layout = f"{preset} unfused, channels_last" if form == "fused, channels_last" else f"{preset} unfused"
            speedup = "" if form.startswith("unfused") else f"{times[same_layout] / ms:.2f}x"
            diff = f"{diffs[preset]:.1e}" if form == "fused" else ""
            body.append(f"| {preset} | {form} | {ms:.1f} | {speedup} | {flops[preset] / 1e9:.2f} | {rate:.1f} | "
                        f"{100 * rate / best_peak:.0f} % | {diff} |")
        print(f"{preset}: fused {fused_ms:.1f} ms, unfused {times[f'{preset} unfused']:.1f} ms", flush=True)
    if compile_notes:
        body += ["", "torch.compile: " + "; ".join(compile_notes) + "."]
    if IMAGE_MODEL in args.presets and VIDEO_MODEL in args.presets:
        ratios = [f"**{times[f'{VIDEO_MODEL} {form}'] / times[f'{IMAGE_MODEL} {form}']:.2f}x** ({form})"
                  for form in ("fused", "fused, channels_last", "fused, compile")
                  if f"{VIDEO_MODEL} {form}" in times and f"{IMAGE_MODEL} {form}" in times]
        body += ["", f"What the temporal additions cost: fused {VIDEO_MODEL} / fused {IMAGE_MODEL} = {', '.join(ratios)} "
                     f"(same run; {IMAGE_MODEL} is MobileCLIP-S0's image encoder applied frame by frame, then averaged)."]
    if not args.no_write:
        write_section("Fused vs unfused latency (bench/fuse.py)", "\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
