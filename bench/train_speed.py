"""Training throughput at the demo's settings: clips per second of full optimizer steps, settings side by side.

Each setting runs in its own worker process (spawned, so process-wide choices such as the allocator or inductor's
options stay with it), builds the demo's model with the same seed (so the same weights) and times whole training steps
(video and text forward, contrastive loss, backward, AdamW) on the same random batch. The parent asks the workers for
one step at a time in turn, so the settings interleave step by step, one computing while the others wait, and drift in
machine load hits all alike. Reported: median seconds per step, clips/s, and each setting's speed-up over the first.

A setting is one feature or several joined by `+` (`channels_last+keep_memory`); `default` is none of them:
- `channels_last`: every 2-D conv weight past the RGB stem in `torch.channels_last` (the activations follow the
  weights), the layout `model.channels_last: true` selects.
- `keep_memory`: glibc keeps freed memory for reuse (`mvclip.allocator`, what `python -m mvclip` does by default);
  without it the worker runs with glibc's defaults, as a program that imports mvclip does.
- `fused_adamw`: AdamW's fused kernel (one pass over all tensors), what `fit` uses on CPU and CUDA
  (`mvclip.lightning_module.fused_adamw_applies`); without it, PyTorch's per-tensor AdamW, as before.
- `bf16`: CPU autocast to bfloat16 around the forward pass (the loss in fp32).
- `compile` (or `--compile`, which adds it): `torch.compile` of the model's forward (video and text towers; the
  backward is compiled with it), the rest as `default`. Its first step compiles; that time is reported apart.
  Inductor's layout optimization is off (its channels_last convs crash the CPU backward, `mvclip.layers.memory_format`).

    python bench/train_speed.py [--steps 6] [--batch 32] [--resolution 64] [--threads N] [--settings ...] [--compile] [--no-write]
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, today, write_section  # noqa: E402

from mvclip.allocator import keep_freed_memory  # noqa: E402
from mvclip.lightning_module import VideoTextModule, fused_adamw_applies  # noqa: E402
from mvclip.tokenizer import tokenize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ("channels_last", "keep_memory", "fused_adamw", "bf16", "compile")
# the settings before the speed work, each change alone, and what `python -m mvclip fit` with the demo recipe runs now
DEFAULT_SETTINGS = ["default", "channels_last", "keep_memory", "fused_adamw", "channels_last+keep_memory+fused_adamw"]


def features_of(setting: str) -> set[str]:
    """`default` -> {}; `a+b` -> {a, b}; an unknown feature is refused, naming the choices."""
    if setting == "default":
        return set()
    features = set(setting.split("+"))
    unknown = features - set(FEATURES)
    if unknown:
        raise SystemExit(f"--settings: {setting!r} is not `default` or features joined by `+` from {', '.join(FEATURES)}")
    return features


def build(features: set[str], model: str, resolution: int, frames: int) -> tuple[VideoTextModule, torch.optim.Optimizer, Callable | None]:
    """The module, its optimizer and, for `compile`, the compiled forward of its model."""
    torch.manual_seed(0)
    module = VideoTextModule(model=model, input={"resolution": resolution, "frames": frames}, freeze=[], lr=2e-3,
                             lr_mult={"text": 0.1}, channels_last="channels_last" in features)
    module.train()
    groups = module.parameter_groups()
    fused = fused_adamw_applies(groups) if "fused_adamw" in features else None
    optimizer = torch.optim.AdamW(groups, lr=2e-3, betas=(0.9, 0.98), eps=1e-6, fused=fused)
    compiled = None
    if "compile" in features:
        # inductor's layout optimization turns convs channels_last, which hits the CPU heap corruption of
        # mvclip.layers.memory_format in the backward (`free(): invalid next size`, seen here with it on, not with it off)
        torch._inductor.config.layout_optimization = False
        compiled = torch.compile(module.model, dynamic=False)
    return module, optimizer, compiled


def step(module: VideoTextModule, optimizer: torch.optim.Optimizer, features: set[str], video: torch.Tensor, text: torch.Tensor,
         compiled: Callable | None = None) -> float:
    start = time.perf_counter()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in features else contextlib.nullcontext()
    with autocast:
        if compiled is not None:  # the model's forward: the same unit-norm embeddings and exp(logit scale)
            video_emb, text_emb, scale = compiled(video, text)
        else:
            video_emb = module.model.encode_video(video, normalize=True)
            text_emb = module.model.encode_text(text, normalize=True)
            scale = module.model.logit_scale.exp()
    loss = module.loss(video_emb.float(), text_emb.float(), scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def worker(connection, setting: str, args: argparse.Namespace) -> None:
    """One setting in its own process: build, then answer every `step` request with its seconds; `None` ends it."""
    features = features_of(setting)
    if "keep_memory" in features and not keep_freed_memory():
        raise SystemExit("keep_memory: this C library is not glibc; the setting does not apply here")
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(args.batch, args.frames, 3, args.resolution, args.resolution, generator=generator)
    text = tokenize([f"a red circle moves to the {'left' if i % 2 else 'right'} number {i}" for i in range(args.batch)])
    module, optimizer, compiled = build(features, args.model, args.resolution, args.frames)
    connection.send("ready")
    while connection.recv() is not None:
        connection.send(step(module, optimizer, features, video, text, compiled))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting (after 2 warm-up steps)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--model", default=str(ROOT / "recipes" / "models" / "tiny_cpu.yaml"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                        help="`default` or features joined by `+` (the first is the reference); bf16 is opt-in: without "
                             "native bf16 units it is several times slower")
    parser.add_argument("--compile", action="store_true", help="add the `compile` setting (torch.compile of the forward)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    if args.compile and "compile" not in args.settings:
        args.settings.append("compile")
    for setting in args.settings:
        features_of(setting)
    context = multiprocessing.get_context("spawn")
    workers = {}
    for setting in args.settings:
        mine, theirs = context.Pipe()
        process = context.Process(target=worker, args=(theirs, setting, args), daemon=True)
        process.start()
        workers[setting] = (process, mine)
    times: dict[str, list[float]] = {setting: [] for setting in args.settings}
    first: dict[str, float] = {}
    crashed: dict[str, str] = {}

    def ask(setting: str, message: str | None):
        """Send to a worker and wait for its answer; a worker that died is recorded with its exit code, not waited on."""
        process, connection = workers[setting]
        try:
            if message is not None:
                connection.send(message)
            return connection.recv()
        except (EOFError, BrokenPipeError):
            process.join()
            crashed[setting] = f"its process died (exit code {process.exitcode})"
            return None

    for setting in args.settings:
        ask(setting, None)  # "ready" once built
    for i in range(args.steps + 2):
        for setting in [s for s in args.settings if s not in crashed]:
            seconds = ask(setting, "step")
            if seconds is None:
                continue
            if i == 0:
                first[setting] = seconds
            if i >= 2:
                times[setting].append(seconds)
    for setting, (process, connection) in workers.items():
        if setting not in crashed:
            connection.send(None)
        process.join()
    if args.settings[0] in crashed:
        raise SystemExit(f"{args.settings[0]} (the reference): {crashed[args.settings[0]]}")
    base = statistics.median(times[args.settings[0]])
    command = ("python bench/train_speed.py " + " ".join(sys.argv[1:])).strip()
    body = [
        f"Whole training steps of `{Path(args.model).stem}` (video + text forward, loss, backward, AdamW), batch {args.batch}, "
        f"{args.frames}x3x{args.resolution}x{args.resolution} clips, CPU; one process per setting, median of {args.steps} "
        "interleaved steps per setting after 2 warm-up steps each.",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        f"- date: {today()}",
        "",
        f"| setting | s / step | clips / s | vs {args.settings[0]} |",
        "|---|---|---|---|",
    ]
    for setting in args.settings:
        if setting in crashed:
            body.append(f"| {setting} | {crashed[setting]} | | |")
            continue
        seconds = statistics.median(times[setting])
        body.append(f"| {setting} | {seconds:.2f} | {args.batch / seconds:.1f} | {base / seconds:.2f}x |")
    if "compile" in first:
        body += ["", f"First step of `compile` (compilation included): {first['compile']:.1f} s, against "
                     f"{first[args.settings[0]]:.1f} s for {args.settings[0]}'s first step."]
    if not args.no_write:
        write_section("Training step throughput (bench/train_speed.py)", "\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
