"""The frame-mean MobileCLIP model a checkpoint holds, read off its tensor names and shapes.

`python -m mvclip convert` uses it so any MobileCLIP file (S0, S1, S2, in any supported layout) becomes a
zero-shot video baseline without naming a preset: depths from the block indices, widths from the shapes,
the last stage's kind from its tensors, the text tower's layer kinds from theirs. Head counts are not in
the weights; they are MobileCLIP's (32-d heads in the image attention stage, 8 heads in the text layers).
"""
from __future__ import annotations

import math
import re
from typing import Any

import torch

from mvclip.errors import ConfigError
from mvclip.pretrained.formats import CheckpointFormat

TEXT_HEADS = 8  # MobileCLIP's text configs (n_heads_per_layer); not recoverable from the weights


def _renamed_shapes(state: dict[str, torch.Tensor], fmt: CheckpointFormat) -> dict[str, torch.Size]:
    shapes = {}
    for key, tensor in state.items():
        target, rule = fmt.target_of(key)
        if target is not None:
            shapes[target] = rule.oriented(tensor).shape
    return shapes


def _max_index(shapes: dict[str, torch.Size], pattern: str) -> int:
    found = [int(m.group(1)) for k in shapes if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


def frame_mean_config(state: dict[str, torch.Tensor], fmt: CheckpointFormat, source: str = "checkpoint", frames: int = 8) -> dict[str, Any]:
    """A model config (as in recipes/models/mobileclip_s0_frames.yaml) that `state` loads into strictly."""
    shapes = _renamed_shapes(state, fmt)
    if "video.head.proj" not in shapes:
        raise ConfigError(f"{source}: no image projection ({fmt.source_of('video.head.proj')}); not a MobileCLIP image tower")
    stages = []
    for s in range(_max_index(shapes, r"video\.stages\.(\d+)\.")):
        prefix = f"video.stages.{s}."
        depth = _max_index(shapes, re.escape(prefix) + r"blocks\.(\d+)\.")
        attention = f"{prefix}blocks.0.token_mixer.qkv.weight" in shapes
        stage: dict[str, Any] = {"block": "attention" if attention else "repmixer", "depth": depth, "dim": shapes[f"{prefix}blocks.0.convffn.fc2.bias"][0]}
        if any(k.startswith(prefix + "downsample.") for k in shapes):
            stage["downsample"] = {"block": "patch_embed", **({"use_se": True} if f"{prefix}downsample.proj.0.se.reduce.weight" in shapes else {})}
        stages.append(stage)
    hidden, embed_dim = shapes["video.head.proj"]
    config: dict[str, Any] = {
        "name": "mobileclip_frames",
        "embed_dim": int(embed_dim),
        "logit_scale": math.log(1 / 0.07),
        "video": {"num_frames": frames, "stem": {"block": "mobileone_stem"}, "stages": stages,
                  "head": {"block": "mci_head", "expansion": hidden / stages[-1]["dim"]}},
    }
    if "text.token_embedding.weight" in shapes:
        text_stages: list[dict[str, Any]] = []
        for i in range(_max_index(shapes, r"text\.blocks\.(\d+)\.")):
            if f"text.blocks.{i}.qkv.weight" in shapes:
                if text_stages and text_stages[-1]["block"] == "text_transformer":
                    text_stages[-1]["depth"] += 1
                else:
                    text_stages.append({"block": "text_transformer", "depth": 1, "num_heads": TEXT_HEADS})
            else:
                text_stages.append({"block": "text_repmixer", "kernel_size": shapes[f"text.blocks.{i}.convffn.conv.conv.weight"][-1]})
        vocab_size, width = shapes["text.token_embedding.weight"]
        context_length = shapes["text.positional_embedding"].numel() // width
        config["text"] = {"vocab_size": vocab_size, "context_length": context_length, "width": width, "stages": text_stages}
    return config
