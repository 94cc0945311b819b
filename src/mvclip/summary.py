"""Per-stage output shapes, parameters and FLOPs of a model, unfused and fused (what `mvclip summary` prints)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mvclip.contracts import block_name
from mvclip.fusion import fuse
from mvclip.model import VideoTextModel


@dataclass(frozen=True)
class StageRow:
    """One sequential part of an encoder. FLOPs count a multiply-add as 2 (torch's flop counter)."""

    encoder: str
    name: str
    blocks: str
    output_shape: tuple[int, ...]
    params: int
    params_fused: int
    flops: int
    flops_fused: int


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _describe(module: nn.Module) -> str:
    names = [block_name(m) for m in module.modules()]
    seen: dict[str, int] = {}
    for name in names:
        if name:
            seen[name] = seen.get(name, 0) + 1
    return ", ".join(f"{n} x{c}" if c > 1 else n for n, c in seen.items())


@torch.no_grad()
def _stage_rows(encoder: str, steps: list[tuple[str, nn.Module]], fused_steps: list[tuple[str, nn.Module]], x: torch.Tensor, call) -> list[StageRow]:
    """Feed `x` through the unfused and the fused steps side by side, one row per step."""
    rows, fx = [], x
    for (name, step), (_, fstep) in zip(steps, fused_steps):
        with FlopCounterMode(display=False) as counter:
            x = call(step, x)
        with FlopCounterMode(display=False) as fused_counter:
            fx = call(fstep, fx)
        rows.append(StageRow(encoder, name, _describe(step), tuple(x.shape), count_params(step), count_params(fstep),
                             counter.get_total_flops(), fused_counter.get_total_flops()))
    return rows


def _side_row(model: VideoTextModel, fused: VideoTextModel, clip: torch.Tensor, backbone_rows: list[StageRow]) -> StageRow:
    """The side network and its head as one row: its FLOPs are the whole encoder's minus the backbone rows'."""

    def flops(encoder: nn.Module) -> tuple[int, torch.Tensor]:
        with FlopCounterMode(display=False) as counter:
            out = encoder(clip)
        return counter.get_total_flops(), out

    total, out = flops(model.video)
    total_fused, _ = flops(fused.video)
    side = [model.video.side, model.video.side_head]
    side_fused = [fused.video.side, fused.video.side_head]
    return StageRow(
        "video", "side network", _describe(model.video.side) or "side blocks", tuple(out.shape),
        sum(count_params(m) for m in side), sum(count_params(m) for m in side_fused),
        total - sum(r.flops for r in backbone_rows), total_fused - sum(r.flops_fused for r in backbone_rows),
    )


def _text_steps(model: VideoTextModel) -> list[tuple[str, nn.Module]]:
    text = model.text
    return [(f"blocks[{i}]", b) for i, b in enumerate(text.blocks)]


@torch.no_grad()
def summarize(model: VideoTextModel, frames: int = 8, resolution: int = 256, batch: int = 1) -> list[StageRow]:
    """Run one clip (and one caption) through the unfused and fused model, stage by stage."""
    model = model.eval()
    fused = fuse(model)
    video = torch.rand(batch * frames, 3, resolution, resolution)
    rows = _stage_rows("video", model.video.steps(), fused.video.steps(), video, lambda step, x: step(x, frames))
    if hasattr(model.video, "side"):
        rows.append(_side_row(model, fused, video.reshape(batch, frames, *video.shape[1:]), rows))
    if model.text is not None:
        text = model.text
        tokens = torch.randint(0, text.token_embedding.num_embeddings - 2, (batch, text.context_length))
        x = text.token_embedding(tokens) + text.positional_embedding
        embed_params = text.token_embedding.weight.numel() + text.positional_embedding.numel()
        rows.append(StageRow("text", "embeddings", "token + position", tuple(x.shape), embed_params, embed_params, 0, 0))
        rows += _stage_rows("text", _text_steps(model), _text_steps(fused), x, lambda step, x: step(x))
        proj_params = text.final_norm.weight.numel() * 2 + text.projection.numel()
        proj_flops = 2 * batch * text.projection.numel()
        rows.append(StageRow("text", "norm + projection", "LayerNorm, EOT pool, linear", (batch, text.projection.shape[1]), proj_params, proj_params, proj_flops, proj_flops))
    return rows


def format_table(rows: list[StageRow], frames: int, resolution: int) -> str:
    """A Markdown table plus totals; FLOPs in GFLOPs (1 multiply-add = 2 FLOPs)."""
    head = "| encoder | part | blocks | output shape | params (M) | fused params (M) | GFLOPs | fused GFLOPs |"
    lines = [f"Clip: {frames} frames at {resolution}x{resolution}; text: one caption of 77 tokens.", "", head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r.encoder} | {r.name} | {r.blocks} | {'x'.join(map(str, r.output_shape))} | {r.params / 1e6:.4f} | "
            f"{r.params_fused / 1e6:.4f} | {r.flops / 1e9:.3f} | {r.flops_fused / 1e9:.3f} |"
        )
    for enc in ("video", "text"):
        part = [r for r in rows if r.encoder == enc]
        if part:
            lines.append(
                f"| **{enc} total** | | | | {sum(r.params for r in part) / 1e6:.4f} | {sum(r.params_fused for r in part) / 1e6:.4f} | "
                f"{sum(r.flops for r in part) / 1e9:.3f} | {sum(r.flops_fused for r in part) / 1e9:.3f} |"
            )
    return "\n".join(lines)
