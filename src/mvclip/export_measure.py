"""What an export costs: parameters, FLOPs of one clip and one caption, CPU latency unfused vs fused (and fused in
channels_last), with the settings the latency was measured under."""
from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mvclip.allocator import freed_memory_kept
from mvclip.export_verify import unfolded_layers
from mvclip.layers.memory_format import memory_format_of, to_channels_last
from mvclip.model import VideoTextModel
from mvclip.summary import count_params


@torch.no_grad()
def count_flops(run: Callable[[], Any]) -> int:
    """FLOPs of one call (torch's flop counter: a multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def interleaved_latency_ms(candidates: Mapping[str, Callable[[], Any]], repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median wall time of each candidate, run round-robin so that machine load hits all of them alike."""
    for _ in range(warmup):
        for run in candidates.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(model: VideoTextModel, fused: VideoTextModel, video: torch.Tensor, tokens: torch.Tensor | None, repeats: int = 10) -> dict[str, Any]:
    """Parameters, FLOPs of one clip / one caption (fused), and CPU latency of one clip unfused vs fused, and fused in
    channels_last (what `load_embedder` serves with), interleaved; `latency_setup` records threads, allocator, layout.

    Both models must be on the CPU and in eval mode.
    """
    clip = video[:1]
    params = {
        "total": count_params(model),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "video": count_params(model.video),
        "text": count_params(model.text) if model.text is not None else 0,
        "video_fused": count_params(fused.video),
    }
    flops = {"video_clip": count_flops(lambda: fused.encode_video(clip))}
    if tokens is not None and fused.text is not None:
        flops["text"] = count_flops(lambda: fused.encode_text(tokens[:1]))
    fused_last = to_channels_last(copy.deepcopy(fused), forward_only=True)
    with torch.no_grad():
        latency = interleaved_latency_ms({
            "video_unfused": lambda: model.encode_video(clip),
            "video_fused": lambda: fused.encode_video(clip),
            "video_fused_channels_last": lambda: fused_last.encode_video(clip),
        }, repeats)
    # within one layout: a model trained in channels_last is timed unfused as it is, against the fused channels_last row
    same_layout = "video_fused_channels_last" if memory_format_of(model) != "contiguous" else "video_fused"
    latency["fused_speedup"] = latency["video_unfused"] / latency[same_layout]
    return {
        "params": params,
        "flops": flops,
        "latency_ms": latency,
        "latency_threads": torch.get_num_threads(),
        "latency_setup": {  # what the figures were measured under, so a deployer can reproduce them
            "threads": torch.get_num_threads(),
            "allocator": "freed memory kept (mvclip.allocator)" if freed_memory_kept() else "C library defaults",
            "compiled": False,
            "fused_speedup": f"video_unfused / {same_layout}",
            "memory_format": {name: memory_format_of(m) for name, m in
                              (("video_unfused", model), ("video_fused", fused), ("video_fused_channels_last", fused_last))},
            "torch": torch.__version__,
        },
        "unfolded": unfolded_layers(fused),
    }
