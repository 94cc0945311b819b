"""`load_pretrained(model, path)`: image-text weights (Apple, timm, open_clip or mvclip names) into a video model.

Spatial weights, the text tower and the logit scale come from the file; the temporal additions (state a
module declares in its `temporal_state`) keep their identity initialization, so the fresh video model
embeds a clip as the mean of the image model's per-frame embeddings. Loading is safe (`weights_only=True`
or safetensors, via `mvclip.checkpoints.read_state_dict`) and strict unless told otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mvclip.checkpoints import read_state_dict
from mvclip.contracts import declared_keys
from mvclip.errors import ConfigError
from mvclip.pretrained.formats import FORMATS, CheckpointFormat

SHOWN = 5  # keys named in messages before "... (N in all)"
DDP_PREFIX = "module."


def _head(items: list[str], shown: int = SHOWN) -> str:
    lines = [f"\n    {item}" for item in items[:shown]]
    return "".join(lines) + (f"\n    ... ({len(items)} in all)" if len(items) > shown else "")


@dataclass
class PretrainedReport:
    """What a pretrained file did to a model.

    loaded: model keys filled from the file. new: model keys left as initialized, split into `temporal`
    (declared temporal additions) and `outside` (parts the format does not carry, e.g. the text tower for
    timm). derived: copies filled by load hooks. unmapped / mismatched / missing: problems, each a readable line naming both spellings.
    """

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    temporal: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    derived: list[str] = field(default_factory=list)
    dropped_zero: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def newly_initialized(self) -> list[str]:
        return self.temporal + self.outside

    @property
    def ok(self) -> bool:
        return not (self.unmapped or self.mismatched or self.missing)

    def problems(self) -> str:
        parts = []
        for label, items in (("did not map", self.unmapped), ("shape mismatch", self.mismatched), ("missing from the file", self.missing)):
            if items:
                parts.append(f"{len(items)} {label}:{_head(items)}")
        return "\n  ".join(parts)

    def __str__(self) -> str:
        lines = [f"{self.source} ({self.format}): loaded {len(self.loaded)} tensors; newly initialized {len(self.newly_initialized)} "
                 f"({len(self.temporal)} temporal, {len(self.outside)} outside the format)"
                 + (f"; {len(self.derived)} copied from loaded weights" if self.derived else "")]
        if self.dropped_zero:
            lines.append(f"  dropped (all zero, no place in mvclip):{_head(self.dropped_zero)}")
        if not self.ok:
            lines.append("  " + self.problems())
        return "\n".join(lines)


def strip_ddp_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop the `module.` a DistributedDataParallel-wrapped model puts before every key (open_clip's training saves)."""
    if state and all(k.startswith(DDP_PREFIX) for k in state):
        return {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    return state


def detect_format(keys: list[str], source: str = "state dict") -> CheckpointFormat:
    """The format whose marker prefixes all occur in `keys` (after stripping a DDP `module.` prefix)."""
    stripped = list(strip_ddp_prefix(dict.fromkeys(keys)))
    for fmt in FORMATS.values():
        if fmt.recognises(stripped):
            return fmt
    known = "; ".join(f"{f.name}: keys starting {', '.join(f.markers)}" for f in FORMATS.values())
    raise ConfigError(f"{source}: not a known checkpoint format (first keys: {', '.join(keys[:4])}). Known formats: {known}")


def map_state_dict(
    state: dict[str, torch.Tensor], model: nn.Module, fmt: CheckpointFormat, source: str = "state dict"
) -> tuple[dict[str, torch.Tensor], PretrainedReport]:
    """Translate `state` into `model`'s names; nothing is loaded. The report lists every problem."""
    state = strip_ddp_prefix(state)
    own = model.state_dict()
    report = PretrainedReport(source=source, format=fmt.name)
    mapped: dict[str, torch.Tensor] = {}
    mismatched_targets: set[str] = set()
    for key, tensor in state.items():
        if key in fmt.zero_only:
            if tensor.is_meta or not tensor.any():  # meta: a shape-only dry run, values unknown
                report.dropped_zero.append(key)
            else:
                report.unmapped.append(f"{key}: non-zero; mvclip has no place for it, so it must be all zeros "
                                       "(as timm and open_clip write Apple's bias-free projection)")
            continue
        target, rule = fmt.target_of(key)
        if target is None:
            report.unmapped.append(f"{key}: matches no rule of the {fmt.name} format")
        elif target not in own:
            report.unmapped.append(f"{key}: would be {target}, which this model does not have")
        else:
            value = rule.convert(tensor, own[target].shape)
            if value.shape != own[target].shape:
                report.mismatched.append(f"{key} {list(tensor.shape)}: {target} expects {list(own[target].shape)}")
                mismatched_targets.add(target)
            else:
                mapped[target] = value
    temporal, derived = declared_keys(model, "temporal_state"), declared_keys(model, "derived_state")
    for key in own:
        if key in mapped:
            report.loaded.append(key)
        elif key in derived:
            report.derived.append(key)
        elif key in temporal:
            report.temporal.append(key)
        elif not fmt.in_scope(key):
            report.outside.append(key)
        elif key not in mismatched_targets:
            report.missing.append(f"{key} (expected in the file as {fmt.source_of(key) or '?'})")
    return mapped, report


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str] | dict[str, torch.Tensor],
    *,
    format: str | None = None,
    strict: bool = True,
    source: str | None = None,
) -> PretrainedReport:
    """Load MobileCLIP-family weights into `model` (a `VideoTextModel`); returns what was loaded and what is new.

    `path`: a `.pt`/`.pth`/`.bin` state dict (read with `weights_only=True`), a `.safetensors` file, a
    Lightning checkpoint, or a state dict. `format`: one of `mvclip.pretrained.FORMATS`, detected from the
    keys when omitted. `source`: the name used in messages (default: the path). Strict: every tensor in the file must land in the model with its shape, and every
    model tensor the format carries must be in the file; otherwise a ConfigError names the first keys
    that failed and what they were expected to be, and the model is left untouched.
    """
    source = source or (str(path) if not isinstance(path, dict) else "state dict")
    state = dict(path) if isinstance(path, dict) else read_state_dict(path)
    if format is not None and format not in FORMATS:
        raise ConfigError(f"{source}: unknown format {format!r}; known: {', '.join(FORMATS)}")
    fmt = FORMATS[format] if format else detect_format(list(state), source)
    mapped, report = map_state_dict(state, model, fmt, source)
    if strict and not report.ok:
        raise ConfigError(
            f"{source}: does not fit this model as {fmt.name} (strict loading):\n  {report.problems()}\n"
            f"Check the preset matches the checkpoint (e.g. S0 -> mobileviclip_tiny, S2 -> mobileviclip_small), "
            f"or pass strict=False (`init_strict: false` in a recipe) to load what fits."
        )
    # through load_state_dict, so load hooks run (a side network's head copies follow the backbone)
    model.load_state_dict(mapped, strict=False)
    return report
