"""GPU training throughput and memory of MobileViCLIP-Tiny and -Small, beside fused inference and the data loader.

For each preset, at 8x256x256 clips, bf16 autocast, 2-D conv weights in `channels_last`, text tower frozen (as in
the recipes), AdamW:
- `eager`: whole training steps (video + text forward, contrastive loss, backward, optimizer step) at batch sizes
  doubling from `--start-batch` until one runs out of memory (or `--max-batch`); clips/s and peak allocated memory
  per batch, and the largest batch that fits;
- `checkpointing`: the same with every video stage checkpointed (`model.checkpointing: all`), from the largest
  batch eager fitted upwards: what recomputation costs at the same batch and how far it moves the limit;
- `compile`: `torch.compile` of the model's forward, timed at the largest batch eager fitted (one compilation;
  halved on an out-of-memory error);
- fused inference: `mvclip.fuse`d video encoder, `torch.inference_mode`, eager (and compiled with `compile`);
- the data loader (`bench/loader.py`'s measurement) with as many workers as the machine has cores, beside the
  training rate it would have to feed.
The goal, stated in the section: at least 100 training clips/s for Tiny at 8x256x256 on an H100/H200-class GPU.

On a GPU the section `GPU training throughput (bench/gpu.py)` of docs/benchmarks.md is replaced. `--tiny` is a
CPU smoke run (tiny_cpu model, 2 frames, 32 px, batch 2, 2 steps, fp32) that writes only to `--docs PATH`.
`--budget-s` skips what would start after that many seconds (compilation is last), so one run fits a time limit.

    python bench/gpu.py [--settings eager checkpointing compile] [--presets ...] [--budget-s 540] [--no-write]
    python bench/gpu.py --tiny --settings eager checkpointing --docs /tmp/bench.md
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import BENCHMARKS_MD, today, write_section  # noqa: E402

import mvclip  # noqa: E402
from mvclip.layers.memory_format import to_channels_last  # noqa: E402
from mvclip.lightning_module import VideoTextModule  # noqa: E402
from mvclip.tokenizer import tokenize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "GPU training throughput (bench/gpu.py)"
PRESETS = ("mobileviclip_tiny", "mobileviclip_small")
SETTINGS = ("eager", "checkpointing", "compile")
GOAL_PRESET, GOAL_CLIPS_PER_S = "mobileviclip_tiny", 100.0
REAL_CLIPS = ROOT.parent / "shared" / "data" / "videos"


@dataclass
class Row:
    """One measurement: `clips_per_s` and `peak_gib` are None where it did not run (`note` says why)."""

    preset: str
    setting: str
    batch: int
    clips_per_s: float | None = None
    peak_gib: float | None = None
    note: str = ""


class Deadline:
    """What may still start: measurements are skipped, not cut, once `seconds` have passed."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def passed(self) -> bool:
        return time.monotonic() > self.end


def mixed_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU; fp32 on a CPU, where bf16 without native units is several times slower."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's allocator error, or a library's (cuDNN, cuBLAS) failing to allocate its workspace."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text.lower() or "ALLOC_FAILED" in text


def free_memory(device: torch.device) -> None:
    """Give the CUDA allocator's cached blocks back (after a model or an out-of-memory error); nothing on a CPU."""
    if device.type == "cuda":
        gc.collect()  # tensors held by reference cycles (an exception's traceback frames) first
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """Peak allocated CUDA memory since `reset_peak`; on CPU the process's peak resident set (never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(run: Callable[[], None], batch: int, steps: int, warmup: int, device: torch.device) -> float:
    """Clips per second over `steps` calls of `run` after `warmup` untimed ones (compilation happens there)."""
    for _ in range(warmup):
        run()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def sweep_batches(measure: Callable[[int], Row], start: int, max_batch: int, deadline: Deadline | None = None,
                  device: torch.device = torch.device("cpu")) -> tuple[list[Row], int | None]:
    """`measure(batch)` for batch = start, 2*start, ... up to `max_batch`, stopping at the first out-of-memory
    error (recorded as a row with its note). Returns the rows and the largest batch that fitted (None: not even
    `start`)."""
    rows: list[Row] = []
    largest = None
    batch = start
    while batch <= max_batch:
        if deadline is not None and deadline.passed():
            break
        try:
            row = measure(batch)
        except Exception as error:  # noqa: BLE001 - only out-of-memory errors end the sweep quietly
            if not is_out_of_memory(error):
                raise
            row = None
        free_memory(device)
        if row is None:
            rows.append(Row("", "", batch, note="out of memory"))
            break
        rows.append(row)
        largest = batch
        batch *= 2
    return rows, largest


class Trainer:
    """One preset's training module and optimizer on the device, with the step `sweep_batches` times."""

    def __init__(self, preset: str, frames: int, resolution: int, device: torch.device, checkpointing: bool, compile_model: bool) -> None:
        torch.manual_seed(0)
        self.module = VideoTextModule(model=preset, input={"resolution": resolution, "frames": frames}, freeze=["text"],
                                      channels_last=True, checkpointing="all" if checkpointing else None).to(device).train()
        if compile_model and device.type == "cpu":  # its channels_last convs crash the CPU backward (bench/train_speed.py)
            torch._inductor.config.layout_optimization = False
        self.forward = torch.compile(self.module.model, dynamic=False) if compile_model else self.module.model
        self.optimizer = torch.optim.AdamW(self.module.parameter_groups(), lr=1e-4)
        self.frames, self.resolution, self.device = frames, resolution, device

    def inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        video = torch.rand(batch, self.frames, 3, self.resolution, self.resolution, device=self.device)
        text = tokenize([f"a person does thing number {i} in a room" for i in range(batch)]).to(self.device)
        return video, text

    def step(self, video: torch.Tensor, text: torch.Tensor) -> None:
        with mixed_precision(self.device):
            video_emb, text_emb, scale = self.forward(video, text)
        loss = self.module.loss(video_emb.float(), text_emb.float(), scale.float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def measure(self, preset: str, setting: str, steps: int, warmup: int) -> Callable[[int], Row]:
        def run(batch: int) -> Row:
            video, text = self.inputs(batch)
            try:
                reset_peak(self.device)
                rate = timed_rate(lambda: self.step(video, text), batch, steps, warmup, self.device)
                return Row(preset, setting, batch, rate, peak_gib(self.device))
            finally:
                self.optimizer.zero_grad(set_to_none=True)
        return run


def inference_rate(module: VideoTextModule, batch: int, steps: int, warmup: int, device: torch.device, compile_model: bool) -> float:
    """Clips/s of the fused (reparameterized) video encoder, channels_last, bf16 autocast, inference mode."""
    fused = to_channels_last(mvclip.fuse(module.model), forward_only=True)
    encoder = torch.compile(fused.video, dynamic=False) if compile_model else fused.video
    clip = torch.rand(batch, module.model.input_spec.frames, 3, module.model.input_spec.resolution,
                      module.model.input_spec.resolution, device=device)

    def run() -> None:
        with torch.inference_mode(), mixed_precision(device):
            encoder(clip)
    return timed_rate(run, batch, steps, warmup, device)


def loader_rate(shards: Path | None, frames: int, resolution: int, batch: int, workers: int, seconds: float, tiny: bool) -> tuple[float, str]:
    """Decoded training clips/s from `bench/loader.py`'s measurement, and which shards it read."""
    from loader import measure

    with tempfile.TemporaryDirectory(prefix="mvclip-bench-gpu-") as tmp:
        if shards is None:
            shards, what = _default_shards(Path(tmp), tiny)
        else:
            what = str(shards)
        return measure(shards, workers, seconds, batch, frames, resolution)["clips_per_s"], what


def _default_shards(tmp: Path, tiny: bool) -> tuple[Path, str]:
    """The project's real clips as shards when present, else a synthetic set made here."""
    from mvclip.datamodules.shard_writer import ClipSource, write_shards
    from mvclip.datamodules.synthetic import ensure_synthetic_dataset

    real = sorted(REAL_CLIPS.glob("*.mp4")) if REAL_CLIPS.is_dir() and not tiny else []
    if real:
        write_shards([ClipSource(key=p.stem, path=p, captions=[p.stem]) for p in real], tmp / "real",
                     prefix="train", samples_per_shard=1, progress=False)
        return tmp / "real", f"{len(real)} real clips (as shipped)"
    count, size = (4, 32) if tiny else (64, 112)
    root = ensure_synthetic_dataset(tmp / "synthetic", num_train=count, num_val=2, num_test=2, frames=4 if tiny else 16,
                                    size=size, progress=False)
    return root / "train", f"{count} synthetic clips of {size} px"


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return (f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
                f"{os.cpu_count()} CPU cores")
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads), torch {torch.__version__}"


def _fmt(value: float | None, digits: int = 1) -> str:
    """`digits` decimals, or three significant figures below 1 (a CPU smoke run's rates)."""
    if value is None:
        return ""
    return f"{value:.{digits}f}" if abs(value) >= 1 else f"{value:.3g}"


def report(rows: list[Row], inference: list[Row], loader: tuple[float, str, int] | None, args: argparse.Namespace,
           device: torch.device, command: str, skipped: list[str]) -> str:
    memory = "peak allocated (GiB)" if device.type == "cuda" else "process peak RSS (GiB, never reset)"
    precision = "bf16 autocast" if device.type == "cuda" else "fp32 (CPU: no autocast)"
    lines = [
        f"**Goal: at least {GOAL_CLIPS_PER_S:.0f} training clips/s for MobileViCLIP-Tiny at 8x256x256 on an H100/H200-class GPU.**",
        "",
        f"Training steps (video + text forward, contrastive loss, backward, AdamW; text tower frozen as in the recipes) "
        f"on random {args.frames}x3x{args.resolution}x{args.resolution} clips, {precision}, 2-D conv weights in "
        f"`channels_last`, {args.steps} timed steps after {args.warmup} warm-up steps per row. `checkpointing`: "
        "`model.checkpointing: all`; `compile`: `torch.compile(model)`, one compilation at the largest batch eager fitted.",
        "",
        f"- command: `{command}`",
        f"- device: {device_description(device)}",
        f"- date: {today()}",
    ]
    if args.tiny:
        lines.append("- `--tiny`: a CPU smoke run of the script at toy sizes; the goal does not apply to it")
    best = _best(rows, GOAL_PRESET)
    if best is not None and best.preset == GOAL_PRESET and not args.tiny:
        verdict = "met" if best.clips_per_s >= GOAL_CLIPS_PER_S else "not met"
        lines.append(f"- goal: {verdict}, best Tiny rate {_fmt(best.clips_per_s)} clips/s ({best.setting}, batch {best.batch})")
    for item in skipped:
        lines.append(f"- skipped: {item}")
    lines += ["", f"| model | setting | batch | clips / s | {memory} | note |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.preset} | {r.setting} | {r.batch} | {_fmt(r.clips_per_s)} | {_fmt(r.peak_gib, 2)} | {r.note} |")
    lines += ["", "Largest batch that fits, per model and setting (the first that did not: the row marked out of memory):", "",
              "| model | setting | largest batch | best clips / s |", "|---|---|---:|---:|"]
    for preset in dict.fromkeys(r.preset for r in rows):
        for setting in dict.fromkeys(r.setting for r in rows if r.preset == preset):
            done = [r for r in rows if r.preset == preset and r.setting == setting and r.clips_per_s is not None]
            if done:
                top = max(done, key=lambda r: r.clips_per_s)
                lines.append(f"| {preset} | {setting} | {max(r.batch for r in done)} | {_fmt(top.clips_per_s)} (batch {top.batch}) |")
    lines += ["", f"Fused inference (`mvclip.fuse`, `torch.inference_mode`, {precision}, channels_last), {args.steps} timed "
              "calls after the warm-up:", "", "| model | form | batch | clips / s |", "|---|---|---:|---:|"]
    for r in inference:
        lines.append(f"| {r.preset} | {r.setting} | {r.batch} | {_fmt(r.clips_per_s)} |")
    if loader is not None:
        rate, what, workers = loader
        train = _fmt(best.clips_per_s) if best is not None else "n/a"
        ratio = f"{rate / best.clips_per_s:.2f}x" if best is not None else "n/a"
        model = best.preset if best is not None else GOAL_PRESET
        lines += ["", f"Data loader (`bench/loader.py`'s measurement: `VideoTextDataModule`, {args.frames} frames, "
                  f"{args.resolution}x{args.resolution} random resized crops, batch {args.loader_batch}, {args.loader_seconds:g} s "
                  f"after the first batch; {what}) beside the best training rate of {model} above, measured one after the other:", "",
                  f"| loader workers | loader clips / s | {model} training clips / s | loader / training |", "|---:|---:|---:|---:|",
                  f"| {workers} | {_fmt(rate)} | {train} | {ratio} |"]
    return "\n".join(lines)


def _best(rows: list[Row], preset: str) -> Row | None:
    """The fastest training row of `preset`, else (a run without it, e.g. --tiny) of the first model measured."""
    done = [r for r in rows if r.clips_per_s is not None]
    mine = [r for r in done if r.preset == preset] or [r for r in done if done and r.preset == done[0].preset]
    return max(mine, key=lambda r: r.clips_per_s) if mine else None


def run(args: argparse.Namespace) -> tuple[list[Row], list[Row], tuple[float, str, int] | None, list[str]]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    deadline = Deadline(args.budget_s)
    rows: list[Row] = []
    inference: list[Row] = []
    skipped: list[str] = []
    largest: dict[str, int | None] = {}

    def trainer_rows(preset: str, setting: str, start: int, max_batch: int) -> tuple[list[Row], int | None]:
        trainer = Trainer(preset, args.frames, args.resolution, device, setting == "checkpointing", setting == "compile")
        try:
            found, fits = sweep_batches(trainer.measure(preset, setting, args.steps, args.warmup), start, max_batch, deadline, device)
        finally:
            del trainer
            free_memory(device)
        for r in found:
            r.preset, r.setting = preset, setting
        return found, fits

    def fused_row(preset: str, compiled: bool) -> Row:
        module = VideoTextModule(model=preset, input={"resolution": args.resolution, "frames": args.frames}).to(device)
        try:
            rate = inference_rate(module, args.infer_batch, args.steps, args.warmup, device, compiled)
        finally:
            del module
            free_memory(device)
        return Row(preset, "fused, compile" if compiled else "fused, eager", args.infer_batch, rate)

    for preset in args.presets:
        if deadline.passed():
            skipped.append(f"{preset} (time budget)")
            continue
        found, largest[preset] = trainer_rows(preset, "eager", args.start_batch, args.max_batch)
        rows += found
        print("\n".join(f"{r}" for r in found), flush=True)
        if "checkpointing" in args.settings and largest[preset] and not deadline.passed():
            found, _ = trainer_rows(preset, "checkpointing", largest[preset], args.max_batch)
            rows += found
            print("\n".join(f"{r}" for r in found), flush=True)
        if not deadline.passed():
            inference.append(fused_row(preset, compiled=False))
    loader = None
    if not args.no_loader and not deadline.passed():
        workers = args.loader_workers or os.cpu_count() or 1
        rate, what = loader_rate(args.shards, args.frames, args.resolution, args.loader_batch, workers, args.loader_seconds, args.tiny)
        loader = (rate, what, workers)
    if "compile" in args.settings:  # last: compilation takes minutes per model
        for preset in args.presets:
            batch = largest.get(preset)
            if not batch:
                continue
            if deadline.passed():
                skipped.append(f"{preset} compile (time budget)")
                continue
            while batch >= args.start_batch and not deadline.passed():  # compiled code may need more memory: halve
                found, fits = trainer_rows(preset, "compile", batch, batch)
                rows += found
                if fits is not None:
                    break
                batch //= 2
            if not deadline.passed():
                inference.append(fused_row(preset, compiled=True))
    return rows, inference, loader, skipped


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny_cpu, 2 frames, 32 px, batch 2, 2 steps")
    parser.add_argument("--presets", nargs="+", default=None)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS,
                        help="eager always runs (the others start from its largest batch)")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--start-batch", type=int, default=None)
    parser.add_argument("--max-batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per row (compilation happens there)")
    parser.add_argument("--infer-batch", type=int, default=None, help="clips per fused inference call")
    parser.add_argument("--budget-s", type=float, default=540.0, help="start nothing new after this many seconds")
    parser.add_argument("--shards", type=Path, default=None, help="training shards for the loader (default: real clips or synthetic)")
    parser.add_argument("--loader-workers", type=int, default=None, help="default: the machine's core count")
    parser.add_argument("--loader-batch", type=int, default=None)
    parser.add_argument("--loader-seconds", type=float, default=None)
    parser.add_argument("--no-loader", action="store_true")
    parser.add_argument("--docs", type=Path, default=None, help="the Markdown file to write the section to "
                        "(default: docs/benchmarks.md on a GPU; --tiny writes only here)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (--tiny: 1; else torch's choice)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    tiny = {"presets": ["tiny_cpu"], "frames": 2, "resolution": 32, "start_batch": 2, "max_batch": 2, "steps": 2,
            "warmup": 1, "infer_batch": 2, "loader_workers": min(2, os.cpu_count() or 1), "loader_batch": 2, "loader_seconds": 1.0, "threads": 1}
    full = {"presets": list(PRESETS), "frames": 8, "resolution": 256, "start_batch": 8, "max_batch": 1024, "steps": 10,
            "warmup": 3, "infer_batch": 64, "loader_workers": None, "loader_batch": 32, "loader_seconds": 15.0, "threads": None}
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device; full sizes are for a GPU (use --tiny for a CPU smoke run)", file=sys.stderr)
        return 2
    command = ("python bench/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows, inference, loader, skipped = run(args)
        text = report(rows, inference, loader, args, torch.device("cpu" if args.tiny else "cuda"), command, skipped)
    finally:
        torch.set_num_threads(threads)  # a caller's (the test's) process keeps its own
    print(text)
    target = args.docs if args.docs is not None else (None if args.tiny else BENCHMARKS_MD)
    if target is not None and not args.no_write:
        write_section(SECTION, text, path=target)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
