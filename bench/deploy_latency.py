"""CPU latency of one clip through each deployment runtime: PyTorch eager (fused), onnxruntime (fp32, int8) and
ExecuTorch with XNNPACK (fp32, int8), all at the same thread count, written as a section of docs/deploy.md.

Every candidate is the fused video encoder of `--model` at batch 1, `--frames` x `--resolution`, random weights (the
latency of these graphs does not depend on the values). The int8 graphs are calibrated on a few random clips: fine
for timing, not for accuracy (accuracy is the export's gate, docs/deploy.md). Candidates run round-robin, so load
drift hits all alike; the table reports medians. The machine line records the CPU, the thread count and the load
average, because a shared machine's numbers are only comparable within one run.

    nice -n 19 env OMP_NUM_THREADS=1 python bench/deploy_latency.py [--model mobileviclip_tiny] [--frames 8]
        [--resolution 256] [--threads 1] [--repeats 10] [--skip executorch_int8,...] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, today  # noqa: E402

from mvclip import markdown  # noqa: E402

DEPLOY_MD = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
HEADING = "Measured latency (bench/deploy_latency.py)"
CANDIDATES = ("pytorch", "onnx", "onnx_int8", "executorch", "executorch_int8")


def build(args: argparse.Namespace, folder: Path) -> dict[str, object]:
    """Each candidate as a function of one clip, and how long building it took."""
    from mvclip.export_graph import Encoder, export_encoder
    from mvclip.fusion import fuse
    from mvclip.models import create_model

    model, _ = create_model(args.model, frames=args.frames)
    fused = fuse(model.eval())
    encoder = Encoder(fused, "video").eval()
    clip = torch.rand(1, args.frames, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(0))
    calibration = torch.rand(4, args.frames, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(1))
    runs: dict[str, object] = {"pytorch": lambda: encoder(clip)}
    built: dict[str, float] = {}
    wanted = [c for c in CANDIDATES if c not in args.skip]
    if {"onnx", "onnx_int8"} & set(wanted):
        import onnxruntime as ort

        from mvclip.export_onnx import write_onnx
        from mvclip.export_quantize import _onnx_int8

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = args.threads
        start = time.perf_counter()
        write_onnx(fused, "video", clip, folder / "video.onnx", dynamic_frames=True)
        built["onnx"] = time.perf_counter() - start
        feeds = {"video": clip.numpy()}
        if "onnx" in wanted:
            session = ort.InferenceSession(str(folder / "video.onnx"), options, providers=["CPUExecutionProvider"])
            runs["onnx"] = lambda s=session: s.run(None, feeds)
        if "onnx_int8" in wanted:
            start = time.perf_counter()
            _onnx_int8(folder / "video.onnx", folder / "video.int8.onnx", "video", calibration)
            built["onnx_int8"] = time.perf_counter() - start
            session8 = ort.InferenceSession(str(folder / "video.int8.onnx"), options, providers=["CPUExecutionProvider"])
            runs["onnx_int8"] = lambda s=session8: s.run(None, feeds)
    if {"executorch", "executorch_int8"} & set(wanted):
        from mvclip.export_executorch import load, set_threads, thread_count, write_pte
        from mvclip.export_quantize import _executorch_int8

        args.et_default_threads = thread_count()
        set_threads(args.threads)
        if "executorch" in wanted:
            start = time.perf_counter()
            write_pte(export_encoder(fused, "video", clip, batch=False), folder / "video.pte")
            built["executorch"] = time.perf_counter() - start
            runs["executorch"] = lambda r=load(folder / "video.pte"): r(clip)
        if "executorch_int8" in wanted:
            start = time.perf_counter()
            write_pte(_executorch_int8(fused, "video", clip, calibration), folder / "video.int8.pte")
            built["executorch_int8"] = time.perf_counter() - start
            runs["executorch_int8"] = lambda r=load(folder / "video.int8.pte"): r(clip)
    args.built = built
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobileviclip_tiny")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip", default="", type=lambda s: [x for x in s.split(",") if x])
    parser.add_argument("--out", type=Path, default=DEPLOY_MD)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    unknown = set(args.skip) - set(CANDIDATES)
    if unknown:
        parser.error(f"--skip: unknown candidates {sorted(unknown)}; choose from {', '.join(CANDIDATES)}")
    torch.set_num_threads(args.threads)
    from mvclip.export_measure import interleaved_latency_ms

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        runs = build(args, Path(tmp))
        load_before = os.getloadavg()[0]
        latency = interleaved_latency_ms(runs, repeats=args.repeats, warmup=2)
        load_after = os.getloadavg()[0]
    base = latency["pytorch"]
    rows = [[name, f"{ms:.1f}", f"{ms / base:.2f}x", f"{args.built[name]:.0f}" if name in args.built else "-"] for name, ms in latency.items()]
    et = getattr(args, "et_default_threads", None)
    body = "\n".join([
        f"`{args.model}` video encoder, fused, batch 1, {args.frames} x {args.resolution} x {args.resolution}, "
        f"median of {args.repeats} interleaved runs, {args.threads} thread(s) in every runtime "
        f"(torch.set_num_threads, onnxruntime intra/inter-op threads, ExecuTorch's threadpool"
        + (f", which starts at {et} threads here" if et is not None else "") + "). "
        f"Measured {today()} on {machine()}, under `nice -n 19` on a machine shared with training jobs "
        f"(load average {load_before:.1f} before timing, {load_after:.1f} after): compare rows within this table, "
        "not with other machines. int8 graphs are calibrated on 4 random clips (timing only).",
        "",
        *markdown.table(["runtime", "ms / clip", "vs PyTorch fused", "build s"], rows),
        "",
        f"`python bench/deploy_latency.py --model {args.model} --frames {args.frames} --resolution {args.resolution} "
        f"--threads {args.threads} --repeats {args.repeats}" + (f" --skip {','.join(args.skip)}" if args.skip else "") + "`",
    ])
    print(body)
    if not args.no_write:
        markdown.write_section(args.out, HEADING, body, header="# Deploying on phones\n")
        print(f"wrote the section '{HEADING}' of {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
