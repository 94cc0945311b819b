"""Loader throughput: decoded training clips per second from shards, with 1 and 2 workers.

Measures what training would get from ``VideoTextDataModule`` (8 frames, 256x256 random resized
crops, segment sampling, tokenised captions) on

* the real clips in ``../shared/data/videos`` and the synthetic training split,
* each as shipped and re-encoded by ``write_shards(reencode_short_side=256, keyframe_interval=8)``.

Clips/s is counted after the first batch (worker start-up and the first decode are reported
separately), in resampled mode so that a tiny set does not end the epoch. Results go into
``docs/benchmarks.md`` under ``## Loader throughput`` (other sections are left alone).

    .venv/bin/python bench/loader.py [--seconds 12] [--synthetic-train 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, today, write_section  # noqa: E402

from mvclip.allocator import keep_freed_memory
from mvclip.datamodules.datamodule import VideoTextDataModule
from mvclip.datamodules.decode import probe
from mvclip.datamodules.pipeline import iter_tar, list_shards
from mvclip.datamodules.bad_samples import BadSampleCounter
from mvclip.datamodules.shard_format import video_member
from mvclip.datamodules.shard_writer import ClipSource, write_shards
from mvclip.input_spec import InputSpec

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "videos"


def describe(shard_dir: Path) -> str:
    """Clip count, sizes, codecs and mean keyframe interval of a shard set."""
    sizes, gops, n = set(), [], 0
    for shard in list_shards(str(shard_dir)):
        for raw in iter_tar(shard.url, BadSampleCounter()):
            ext = video_member(raw)
            if ext:
                info = probe(raw[ext])
                n += 1
                sizes.add(f"{info.width}x{info.height} {info.codec}")
                gops.append(info.num_frames / max(1, len(info.keyframes)))
    shown = ", ".join(sorted(sizes)[:3]) + (", ..." if len(sizes) > 3 else "")
    return f"{n} clips: {shown}; keyframe every ~{sum(gops) / max(1, len(gops)):.0f} frames"


def reencode(src_dir: Path, out_dir: Path, tmp: Path) -> Path:
    """Re-encode every clip of a shard set with a short GOP at 256 short side, via write_shards."""
    clips = []
    for shard in list_shards(str(src_dir)):
        for raw in iter_tar(shard.url, BadSampleCounter()):
            ext = video_member(raw)
            meta = json.loads(raw["json"])
            path = tmp / f"{raw['__key__']}.{ext}"
            path.write_bytes(raw[ext])
            clips.append(ClipSource(key=raw["__key__"], path=path, captions=meta["captions"]))
    write_shards(clips, out_dir, prefix="train", samples_per_shard=max(1, len(clips) // 8),
                 reencode_short_side=256, keyframe_interval=8, progress=False)
    return out_dir


def measure(shard_dir: Path, workers: int, seconds: float, batch_size: int, frames: int = 8, resolution: int = 256) -> dict[str, float]:
    dm = VideoTextDataModule(
        train=str(shard_dir), frames=frames, resolution=resolution, batch_size=batch_size, num_workers=workers,
        resampled=True, epoch_samples=10**6, shuffle_buffer=16, seed=0,
    )
    t0 = time.perf_counter()
    it = iter(dm.train_dataloader())
    first = next(it)
    assert first["video"].shape[1:] == (frames, 3, resolution, resolution), first["video"].shape
    t_first = time.perf_counter()
    clips = 0
    while time.perf_counter() - t_first < seconds:
        clips += next(it)["video"].shape[0]
    elapsed = time.perf_counter() - t_first
    del it
    return {"clips_per_s": clips / elapsed, "first_batch_s": t_first - t0, "clips": clips}


def training_clips_per_second(frames: int, resolution: int, batch_size: int, channels_last: bool, steps: int = 6) -> float:
    """Clips/s that training the demo's tiny_cpu model consumes (forward, loss, backward, AdamW step), no loader,
    in the demo's layout and with the AdamW kernel `fit` picks."""
    from mvclip.lightning_module import VideoTextModule, fused_adamw_applies

    torch.set_num_threads(os.cpu_count() or 1)
    module = VideoTextModule(model=str(ROOT / "recipes" / "models" / "tiny_cpu.yaml"), channels_last=channels_last)
    groups = module.parameter_groups()
    optimizer = torch.optim.AdamW(groups, lr=1e-4, fused=fused_adamw_applies(groups))
    video = torch.rand(batch_size, frames, 3, resolution, resolution)
    text = torch.randint(0, 49406, (batch_size, 77))
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        v, t, scale = module.model(video, text)
        module.loss(v, t, scale).backward()
        optimizer.step()
        optimizer.zero_grad()
        if step >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    torch.set_num_threads(1)
    return batch_size / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="measuring window per configuration")
    ap.add_argument("--synthetic-train", type=int, default=128, help="synthetic training clips")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the main process only receives batches
    keep_freed_memory()  # as `python -m mvclip fit` runs (forked loader workers inherit it)

    tmp = Path(tempfile.mkdtemp(prefix="mvclip-bench-loader-"))
    sets: list[tuple[str, Path]] = []
    if REAL.is_dir() and list(REAL.glob("*.mp4")):
        real = sorted(REAL.glob("*.mp4"))
        write_shards([ClipSource(key=p.stem, path=p, captions=[p.stem]) for p in real], tmp / "real",
                     prefix="train", samples_per_shard=1, progress=False)
        sets.append(("real clips, as shipped", tmp / "real"))
        (tmp / "real_src").mkdir()
        sets.append(("real clips, re-encoded", reencode(tmp / "real", tmp / "real_re", tmp / "real_src")))
    else:
        print(f"real clips not found in {REAL}; skipping them", file=sys.stderr)
    try:
        from mvclip.datamodules.synthetic import ensure_synthetic_dataset

        n = args.synthetic_train
        root = ensure_synthetic_dataset(tmp / "synth", num_train=n, num_val=2, num_test=2, progress=False)
        sets.append(("synthetic, as shipped", root / "train"))
        (tmp / "synth_src").mkdir()
        sets.append(("synthetic, re-encoded", reencode(root / "train", tmp / "synth_re", tmp / "synth_src")))
    except ImportError:
        print("mvclip.datamodules.synthetic not available; skipping synthetic shards", file=sys.stderr)

    load_before = os.getloadavg()[0]
    rows = []
    for name, path in sets:
        desc = describe(path)
        for workers in (1, 2):
            r = measure(path, workers, args.seconds, args.batch_size)
            print(f"{name:28s} {workers} worker(s): {r['clips_per_s']:6.1f} clips/s "
                  f"(first batch {r['first_batch_s']:.1f} s) [{desc}]", flush=True)
            rows.append((name, desc, workers, r))

    # The goal, side by side in this run: the loader at the demo's settings vs what training consumes.
    recipe = OmegaConf.load(ROOT / "recipes" / "small.yaml")
    demo = recipe.data
    spec = InputSpec.from_model_config(OmegaConf.to_container(OmegaConf.load(ROOT / recipe.model.model)))
    demo_loader = None
    synthetic = [path for name, path in sets if name == "synthetic, as shipped"]
    if synthetic:
        demo_loader = measure(synthetic[0], 2, args.seconds, demo.batch_size, spec.frames, spec.resolution)["clips_per_s"]
    consumed = training_clips_per_second(spec.frames, spec.resolution, demo.batch_size,
                                         bool(recipe.model.get("channels_last", False)))
    print(f"demo settings: loader (2 workers) {demo_loader} clips/s, training consumes {consumed:.1f} clips/s", flush=True)
    load_after = os.getloadavg()[0]

    command = "python bench/loader.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"- command: `{command.strip()}`",
        f"- machine: {machine()}",
        f"- date: {today()}",
        f"- 1-minute load average before / after: {load_before:.1f} / {load_after:.1f} (above the core count means "
        "other processes took CPU and the numbers are low)",
        "",
        "Decoded training clips per second from `VideoTextDataModule` (8 frames, segment sampling, "
        "decode at short side 256 + 256x256 random resized crop, caption tokenised), batch "
        f"{args.batch_size}, decoder threads = cores // workers, measured for {args.seconds:.0f} s "
        "after the first batch.",
        "",
        "| shards | content | workers | clips/s | first batch (s) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, desc, workers, r in rows:
        lines.append(f"| {name} | {desc} | {workers} | {r['clips_per_s']:.1f} | {r['first_batch_s']:.1f} |")
    lines += [
        "",
        f"**Goal: loader >= 2x what training consumes**, at the demo's settings (`recipes/small.yaml`: "
        f"{spec.frames} frames at {spec.resolution}x{spec.resolution}, the model's input; batch {demo.batch_size}, synthetic shards), measured in this run:",
        "",
        "| loader, 2 workers (clips/s) | training tiny_cpu, no loader (clips/s) | ratio |",
        "| ---: | ---: | ---: |",
        f"| {demo_loader or float('nan'):.1f} | {consumed:.1f} | {(demo_loader or float('nan')) / consumed:.1f}x |",
        "",
        "Training consumption is the median of 6 timed optimizer steps (forward, loss, backward, AdamW) on "
        "random tensors of the batch's shape, using all cores, in the recipe's layout with `fit`'s AdamW kernel; "
        "the whole run keeps freed memory, as `python -m mvclip` does. The two are measured one after the other, "
        "each with the machine to itself; during real training they share the cores.",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        write_section("Loader throughput (bench/loader.py)", text)
        print("wrote docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
