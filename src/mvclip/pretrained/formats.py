"""The checkpoint layouts MobileCLIP weights are published in, as key-renaming rules into mvclip's names.

Each format is a list of rules between key templates (`{b}` a number, `{rest}` the remaining dotted path)
plus renames of path components inside `{rest}`. Rules work in both directions, so a key the model
expects but the file lacks can be named as the file would have spelled it. The layouts were written
down from the reference code (tests/fixtures/pretrained_formats/*.json hold every name and shape).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import torch

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _template_regex(template: str) -> re.Pattern[str]:
    parts, end = [], 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[end : match.start()]))
        name = match.group(1)
        parts.append(f"(?P<{name}>.+)" if name == "rest" else f"(?P<{name}>\\d+)")
        end = match.end()
    parts.append(re.escape(template[end:]))
    return re.compile("".join(parts) + "$")


def _rename_components(path: str, renames: tuple[tuple[str, str], ...]) -> str:
    """Replace whole dotted components (`conv_kxk` in `mixer.conv_kxk.0`, never inside `conv_kxk2`) in one pass,
    longest names first, so no replacement is renamed again."""
    if not renames:
        return path
    table = dict(renames)
    names = sorted(table, key=len, reverse=True)
    pattern = r"(^|\.)(" + "|".join(re.escape(n) for n in names) + r")(?=\.|$)"
    return re.sub(pattern, lambda m: m.group(1) + table[m.group(2)], path)


@dataclass(frozen=True)
class KeyRule:
    """`source` <-> `target` key templates; `renames` apply to `{rest}`; `transpose` flips a 2-D tensor
    (timm's Linear head holds `proj.T`); `reshape` lets a tensor take the target's shape when sizes agree."""

    source: str
    target: str
    renames: tuple[tuple[str, str], ...] = ()
    transpose: bool = False
    reshape: bool = False

    @cached_property
    def _source_re(self) -> re.Pattern[str]:
        return _template_regex(self.source)

    @cached_property
    def _target_re(self) -> re.Pattern[str]:
        return _template_regex(self.target)

    def _apply(self, key: str, pattern: re.Pattern[str], template: str, renames: tuple[tuple[str, str], ...]) -> str | None:
        match = pattern.match(key)
        if match is None:
            return None
        groups = match.groupdict()
        if "rest" in groups:
            groups["rest"] = _rename_components(groups["rest"], renames)
        return template.format(**groups)

    def to_target(self, key: str) -> str | None:
        return self._apply(key, self._source_re, self.target, self.renames)

    def to_source(self, key: str) -> str | None:
        return self._apply(key, self._target_re, self.source, tuple((new, old) for old, new in self.renames))

    def oriented(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor laid out as mvclip holds it (transposed for a Linear stored as a projection)."""
        return tensor.t() if self.transpose and tensor.dim() == 2 else tensor

    def convert(self, tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        tensor = self.oriented(tensor)
        if self.reshape and tensor.shape != shape and tensor.numel() == shape.numel():
            tensor = tensor.reshape(shape)
        return tensor.contiguous()


@dataclass(frozen=True)
class CheckpointFormat:
    """A published layout: how to recognise it, how its keys map, and which parts of a model it provides.

    `scope`: model key prefixes the format carries (an image-only format leaves the text tower as it is).
    `zero_only`: source keys mvclip has no place for, accepted only when all zero (timm's head bias, which
    its conversion of Apple's bias-free projection sets to zero); anything else there is a mismatch."""

    name: str
    description: str
    markers: tuple[str, ...]
    rules: tuple[KeyRule, ...]
    scope: tuple[str, ...]
    zero_only: tuple[str, ...] = ()

    def recognises(self, keys: list[str]) -> bool:
        return all(any(k.startswith(marker) for k in keys) for marker in self.markers)

    def target_of(self, key: str) -> tuple[str, KeyRule] | tuple[None, None]:
        for rule in self.rules:
            target = rule.to_target(key)
            if target is not None:
                return target, rule
        return None, None

    def source_of(self, model_key: str) -> str | None:
        for rule in self.rules:
            source = rule.to_source(model_key)
            if source is not None:
                return source
        return None

    def in_scope(self, model_key: str) -> bool:
        return any(model_key == p or model_key.startswith(p + ".") for p in self.scope)


# MobileOne branches, RepMixer norms, FFNs, downsampling and layer scales: timm's names -> mvclip's (Apple's).
_TIMM_COMPONENTS = (
    ("conv_kxk", "rbr_conv"),
    ("conv_scale", "rbr_scale"),
    ("identity", "rbr_skip"),
    ("large_conv", "lkb_origin"),
    ("mlp", "convffn"),
    ("pos_enc", "pe"),
    ("se.fc1", "se.reduce"),
    ("se.fc2", "se.expand"),
    ("layer_scale.gamma", "layer_scale"),
    ("layer_scale_1.gamma", "layer_scale_1"),
    ("layer_scale_2.gamma", "layer_scale_2"),
)
# Downsampling SE in Apple's replknet is timm's SqueezeExcite (fc1/fc2); the head's SE is MobileOne's (reduce/expand).
_APPLE_SE = (("se.fc1", "se.reduce"), ("se.fc2", "se.expand"))


def _timm_image_rules(prefix: str) -> tuple[KeyRule, ...]:
    return (
        KeyRule(prefix + "stem.{i}.{rest}", "video.stem.blocks.{i}.{rest}", _TIMM_COMPONENTS),
        KeyRule(prefix + "stages.{s}.downsample.{rest}", "video.stages.{s}.downsample.{rest}", _TIMM_COMPONENTS),
        KeyRule(prefix + "stages.{s}.pos_emb.{rest}", "video.stages.{s}.pos_embed.{rest}", _TIMM_COMPONENTS),
        KeyRule(prefix + "stages.{s}.blocks.{b}.{rest}", "video.stages.{s}.blocks.{b}.{rest}", _TIMM_COMPONENTS),
        KeyRule(prefix + "final_conv.{rest}", "video.head.conv_exp.{rest}", _TIMM_COMPONENTS),
        KeyRule(prefix + "head.fc.weight", "video.head.proj", transpose=True),
    )


# Apple's FastViT keeps stages, downsamplings and the RepCPE in one flat list (docs/design.md §4).
_APPLE_NETWORK = (("0", "stages.0.blocks"), ("1", "stages.1.downsample"), ("2", "stages.1.blocks"), ("3", "stages.2.downsample"),
                  ("4", "stages.2.blocks"), ("5", "stages.3.downsample"), ("6", "stages.3.pos_embed"), ("7", "stages.3.blocks"))

APPLE_MOBILECLIP = CheckpointFormat(
    name="apple_mobileclip",
    description="Apple's ml-mobileclip release (mobileclip_s0.pt, _s1, _s2): image_encoder.model.*, text_encoder.*, logit_scale",
    markers=("image_encoder.model.", "text_encoder."),
    rules=(
        KeyRule("logit_scale", "logit_scale"),
        KeyRule("image_encoder.model.patch_embed.{i}.{rest}", "video.stem.blocks.{i}.{rest}"),
        *(KeyRule(f"image_encoder.model.network.{n}.{{rest}}", f"video.{ours}.{{rest}}", _APPLE_SE) for n, ours in _APPLE_NETWORK),
        KeyRule("image_encoder.model.conv_exp.{rest}", "video.head.conv_exp.{rest}"),
        KeyRule("image_encoder.model.head.proj", "video.head.proj"),
        KeyRule("text_encoder.embedding_layer.weight", "text.token_embedding.weight"),
        KeyRule("text_encoder.positional_embedding.pos_embed.pos_embed", "text.positional_embedding", reshape=True),
        KeyRule(
            "text_encoder.transformer.{i}.{rest}", "text.blocks.{i}.{rest}",
            (("pre_norm_mha.0", "norm_attn"), ("pre_norm_mha.1.qkv_proj", "qkv"), ("pre_norm_mha.1.out_proj", "out_proj"),
             ("pre_norm_ffn.0", "norm_ffn"), ("pre_norm_ffn.1", "ffn.0"), ("pre_norm_ffn.4", "ffn.2")),
        ),
        KeyRule("text_encoder.final_layer_norm.{rest}", "text.final_norm.{rest}"),
        KeyRule("text_encoder.projection_layer", "text.projection"),
    ),
    scope=("logit_scale", "video", "text"),
)

TIMM_FASTVIT = CheckpointFormat(
    name="timm_fastvit",
    description="timm's fastvit_mci0/1/2 (image tower only): stem.*, stages.*, final_conv.*, head.fc.*",
    markers=("stem.0.", "stages.", "final_conv."),
    rules=_timm_image_rules(""),
    scope=("video",),
    zero_only=("head.fc.bias",),
)

OPEN_CLIP_MOBILECLIP = CheckpointFormat(
    name="open_clip",
    description="open_clip's MobileCLIP-S1/S2 (custom text): visual.trunk.* (timm naming), text.*, logit_scale",
    markers=("visual.trunk.", "text.transformer.resblocks."),
    rules=(
        KeyRule("logit_scale", "logit_scale"),
        *_timm_image_rules("visual.trunk."),
        KeyRule("text.token_embedding.weight", "text.token_embedding.weight"),
        KeyRule("text.positional_embedding", "text.positional_embedding"),
        KeyRule(
            "text.transformer.resblocks.{i}.{rest}", "text.blocks.{i}.{rest}",
            (("ln_1", "norm_attn"), ("attn.in_proj_weight", "qkv.weight"), ("attn.in_proj_bias", "qkv.bias"),
             ("attn.out_proj", "out_proj"), ("ln_2", "norm_ffn"), ("mlp.c_fc", "ffn.0"), ("mlp.c_proj", "ffn.2")),
        ),
        KeyRule("text.ln_final.{rest}", "text.final_norm.{rest}"),
        KeyRule("text.text_projection", "text.projection"),
    ),
    scope=("logit_scale", "video", "text"),
    zero_only=("visual.trunk.head.fc.bias",),
)

MVCLIP = CheckpointFormat(
    name="mvclip",
    description="mvclip's own names (a state dict, safetensors file or Lightning checkpoint of a VideoTextModel)",
    markers=("video.",),
    rules=(KeyRule("{rest}", "{rest}"),),
    scope=("logit_scale", "video", "text"),
)

FORMATS: dict[str, CheckpointFormat] = {f.name: f for f in (APPLE_MOBILECLIP, TIMM_FASTVIT, OPEN_CLIP_MOBILECLIP, MVCLIP)}
