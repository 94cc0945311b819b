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
import datetime as dt
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from mvclip.datamodules.datamodule import VideoTextDataModule
from mvclip.datamodules.decode import probe
from mvclip.datamodules.pipeline import iter_tar, list_shards
from mvclip.datamodules.bad_samples import BadSampleCounter
from mvclip.datamodules.shard_format import video_member
from mvclip.datamodules.shard_writer import ClipSource, write_shards

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "videos"
SECTION = "## Loader throughput"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def measure(shard_dir: Path, workers: int, seconds: float, batch_size: int) -> dict[str, float]:
    dm = VideoTextDataModule(
        train=str(shard_dir), frames=8, resolution=256, batch_size=batch_size, num_workers=workers,
        resampled=True, epoch_samples=10**6, shuffle_buffer=16, seed=0,
    )
    t0 = time.perf_counter()
    it = iter(dm.train_dataloader())
    first = next(it)
    assert first["video"].shape[1:] == (8, 3, 256, 256), first["video"].shape
    t_first = time.perf_counter()
    clips = 0
    while time.perf_counter() - t_first < seconds:
        clips += next(it)["video"].shape[0]
    elapsed = time.perf_counter() - t_first
    del it
    return {"clips_per_s": clips / elapsed, "first_batch_s": t_first - t0, "clips": clips}


def write_section(text: str, path: Path) -> None:
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text, old)
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="measuring window per configuration")
    ap.add_argument("--synthetic-train", type=int, default=128, help="synthetic training clips")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the main process only receives batches

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

    load_after = os.getloadavg()[0]
    cmd = "`.venv/bin/python bench/loader.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`"
    lines = [
        SECTION,
        "",
        f"Command: {cmd.replace(' `', '`')}  ",
        f"Machine: {os.cpu_count()} cores (`nproc` = {len(os.sched_getaffinity(0))}), {cpu_model()}, "
        f"torch {torch.__version__}, no GPU  ",
        f"Date: {dt.date.today().isoformat()}  ",
        f"1-minute load average before / after: {load_before:.1f} / {load_after:.1f} (the machine is "
        "shared; a load above the core count means other processes took CPU and the numbers are low)",
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
        "Target: on 2 workers the loader should deliver at least twice the clips/s that a training "
        "step of the tiny CPU model consumes; that side is not measured here yet.",
        "",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_section(text, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
