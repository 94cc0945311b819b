"""Peak training memory of one optimizer step: full fine-tuning vs parameter-efficient (temporal blocks only)
vs a side network, on a ViT-B/16-shaped and an MCi0 backbone. Writes a section of docs/benchmarks.md.

    python bench/memory.py                 # every configuration, each in a fresh process
    python bench/memory.py --only vit_b16/side --no-docs

Method: each configuration runs in its own Python process (so no allocator cache or earlier peak carries
over). The process builds the video encoder, its optimizer and a batch, then resets the kernel's peak-RSS
counter (`/proc/self/clear_refs` <- 5) and reads the resident size; it runs one step (forward, VTC loss
against fixed unit-norm text embeddings, i.e. a frozen text tower's cached output, backward, AdamW step)
and reads the peak (`VmHWM`). "Step memory" is peak minus the resident size before the step: activations
kept for backward, gradients, and the optimizer state AdamW allocates on its first step.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

# name -> (model config, dotted-key edits, trainable patterns or None for everything, resolution, what it is)
VIT_TEMPORAL = {"video.stages.0.temporal_kernel_size": 3}
CONFIGS: dict[str, tuple[str, dict, list[str] | None, int, str]] = {
    "vit_b16/full": ("recipes/models/vit_b16.yaml", VIT_TEMPORAL, None, 224,
                     "full fine-tuning (ViT-B/16 with a temporal depthwise conv in every block)"),
    "vit_b16/peft": ("recipes/models/vit_b16.yaml", VIT_TEMPORAL, ["temporal"], 224,
                     "temporal convs only; backpropagates through the whole ViT"),
    "vit_b16/side": ("recipes/models/side4video_vit_b16.yaml", {}, None, 224,
                     "side network (width 320, all 12 layers fused); backbone frozen, no autograd"),
    "vit_b16/full_checkpointed": ("recipes/models/vit_b16.yaml", VIT_TEMPORAL, None, 224,
                                  "full fine-tuning with every block checkpointed (`model.checkpointing: all`)"),
    "vit_b16/side_checkpointed": ("recipes/models/side4video_vit_b16.yaml", {}, None, 224,
                                  "side network as `side`, each fusion point recomputed in the backward "
                                  "(`model.checkpointing: side`)"),
    "vit_b16/side_interval": ("recipes/models/side4video_vit_b16.yaml", {"video.side.fusion": "interval"}, None, 224,
                              "side network fused with every 2nd layer (6 side blocks)"),
    "vit_b16/side_w128": ("recipes/models/side4video_vit_b16.yaml", {"video.side.width": 128}, None, 224,
                          "side network of width 128, all 12 layers fused"),
    "mci0/full": ("recipes/models/mobileviclip_tiny.yaml", {}, None, 256,
                  "full fine-tuning (MobileViCLIP-Tiny: ST-RepMixer + TPE attention)"),
    "mci0/peft": ("recipes/models/mobileviclip_tiny.yaml", {}, ["temporal"], 256,
                  "temporal blocks only (temporal convs, TPE); backpropagates through the whole MCi0"),
    "mci0/side": ("recipes/models/side4video_tiny.yaml", {}, None, 256,
                  "side network (width 320, 2 blocks x 4 stage outputs); MCi0 frozen, no autograd"),
}


# rows that train with gradient checkpointing: name -> the recipe's `model.checkpointing`
CHECKPOINTING = {"vit_b16/full_checkpointed": "all", "vit_b16/side_checkpointed": "side"}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _saved_for_backward_mib(model, forward) -> float:
    """Bytes autograd keeps for the backward pass of one forward: distinct storages, the model's own
    parameters and buffers (resident anyway) left out."""
    import torch

    resident = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in resident:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values()) / 2**20


def measure_one(name: str, batch: int, frames: int) -> dict:
    """Runs in the child process: one optimizer step of configuration `name`, memory in MiB."""
    import torch
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from mvclip.builder import apply_overrides, build_model
    from mvclip.checkpointing import checkpoint_stages
    from mvclip.freezing import apply_freezing, plan_freezing
    from mvclip.loss import VideoTextContrastiveLoss

    path, edits, trainable, resolution, _ = CONFIGS[name]
    cfg = OmegaConf.to_container(apply_overrides(OmegaConf.load(ROOT / path), edits, new_keys=True))
    cfg.pop("text", None)  # video tower only: the text side is a frozen tower's cached embeddings
    torch.manual_seed(0)
    model = build_model(cfg)
    checkpoint_stages(model.video, CHECKPOINTING.get(name))
    plan = plan_freezing(model, [], trainable)
    model.train()
    apply_freezing(model, plan)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = VideoTextContrastiveLoss()
    video = torch.rand(batch, frames, 3, resolution, resolution)
    text = F.normalize(torch.randn(batch, cfg.get("embed_dim", 512)), dim=-1)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size to the current one
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model.encode_video(video, normalize=True), text, torch.tensor(100.0))
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    saved = _saved_for_backward_mib(model, lambda: loss_fn(model.encode_video(video, normalize=True), text, torch.tensor(100.0)))
    return {
        "name": name,
        "trainable_m": sum(p.numel() for p in params) / 1e6,
        "total_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "before_mib": before / 1024,
        "peak_mib": peak / 1024,
        "step_mib": (peak - before) / 1024,
        "step_s": seconds,
        "saved_mib": saved,
        "batch": batch,
        "frames": frames,
        "resolution": resolution,
        "loss": loss.item(),
    }


def run_all(names: list[str], batch: int, frames: int) -> list[dict]:
    rows = []
    for name in names:
        out = subprocess.run(
            [sys.executable, __file__, "--child", name, "--batch", str(batch), "--frames", str(frames)],
            capture_output=True, text=True, cwd=ROOT,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:14s} step memory {row['step_mib']:8.0f} MiB  peak {row['peak_mib']:8.0f} MiB  "
              f"trainable {row['trainable_m']:6.2f}M  {row['step_s']:.1f} s", flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    from report import machine, today

    by_name = {r["name"]: r for r in rows}
    lines = [
        f"Measured {today()} on {machine()} by `python bench/memory.py`.",
        "",
        "One optimizer step (forward, VTC loss, backward, AdamW step) on a batch of "
        f"{rows[0]['batch']} clips of {rows[0]['frames']} frames, ViT-B/16 at 224 px and MCi0 at 256 px; the video "
        "tower only (the text side is fixed unit-norm embeddings, as from a frozen, cached text tower). Each row "
        "is a fresh Python process: it builds the model, optimizer and batch, resets the kernel's peak-RSS "
        "counter (`/proc/self/clear_refs`), runs the step and reads `VmHWM`. **Step memory** = peak minus the "
        "resident size just before the step: activations kept for backward, gradients and AdamW's state. "
        "**Kept for backward** is what autograd saved during a second forward of the same batch (distinct "
        "storages, counted with `torch.autograd.graph.saved_tensors_hooks`, the model's own weights left out): "
        "the activation part of step memory. "
        "Step time is informational (other jobs may have shared the cores).",
        "",
        "| backbone | training | trainable params (M) | step memory (MiB) | vs full fine-tuning | kept for backward (MiB) | peak RSS (MiB) | step time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in by_name.items():
        backbone, method = name.split("/")
        full = by_name.get(f"{backbone}/full")
        ratio = f"{row['step_mib'] / full['step_mib']:.2f}x" if full else "-"
        lines.append(
            f"| {backbone} | {method}: {CONFIGS[name][4]} | {row['trainable_m']:.2f} | {row['step_mib']:.0f} | {ratio} | "
            f"{row['saved_mib']:.0f} | {row['peak_mib']:.0f} | {row['step_s']:.1f} |"
        )
    lines.append("")
    for backbone in dict.fromkeys(n.split("/")[0] for n in by_name):
        full, peft, side = (by_name.get(f"{backbone}/{m}") for m in ("full", "peft", "side"))
        if full and peft and side:
            half = side["step_mib"] <= 0.5 * full["step_mib"]
            below = side["step_mib"] < peft["step_mib"]
            lines.append(
                f"- {backbone}: side network {side['step_mib']:.0f} MiB = {side['step_mib'] / full['step_mib']:.2f}x full "
                f"fine-tuning ({'meets' if half else 'misses'} the at-most-half goal) and "
                f"{side['step_mib'] / peft['step_mib']:.2f}x the temporal-only run ({'below' if below else 'NOT below'} it)."
            )
        side_ckpt, full_ckpt = by_name.get(f"{backbone}/side_checkpointed"), by_name.get(f"{backbone}/full_checkpointed")
        if full and side_ckpt:
            against = f", {side_ckpt['step_mib'] / full_ckpt['step_mib']:.2f}x full fine-tuning checkpointed too" if full_ckpt else ""
            lines.append(
                f"- {backbone}: side network checkpointed {side_ckpt['step_mib']:.0f} MiB = "
                f"{side_ckpt['step_mib'] / full['step_mib']:.2f}x full fine-tuning{against}."
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_one(args.child, args.batch, args.frames)))
        return
    rows = run_all(args.only, args.batch, args.frames)
    body = table(rows)
    print(body)
    if not args.no_docs:
        from report import write_section

        write_section("Peak training memory: side network vs fine-tuning (bench/memory.py)", body)


if __name__ == "__main__":
    main()
