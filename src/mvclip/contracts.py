"""The block contract: everything mvclip asks of a block, written down once.

Fusion, export, the summary, weight loading, the optimizer's parameter groups, freezing, the side network
and `mvclip.testing` read blocks only through the names here, so a block from a plugin gets the same
treatment as a built-in one without editing mvclip. A block is any `nn.Module`; all of this is optional.

Methods (checked with `isinstance`/`issubclass` against the protocols below):
    reparameterize()            fold into the inference form in place (eval mode, idempotent)
    features(x, frames)         a head's pre-projection feature, with `norm` and `proj` beside it (side networks)
    frozen_parameter_names()    parameter names (relative to the module) that never train
    sync_from(backbone_head)    a side head refreshing its copies of the backbone head after weights load

Class attributes (read by `block_traits`; defaults in brackets):
    block_kind          registry kind when an entry point names the class directly ["video"]
    input_layout        "map" (B*T, C, H, W) or "tokens" (B*T, 1 + N, C) ["map"]
    stage_pos_embed     block name of the positional encoding the block's stage gets by default [None]
    allow_even_kernels  the block pads even kernels correctly itself [False]

State declarations (class attributes: tuples of state names relative to the module, "" = all of its state;
collected over a whole model by `declared_keys`):
    temporal_state      additions an image checkpoint never has (temporal convs, TPE, side networks): loading
                        leaves them at their identity start, and `temporal_lr_mult` scales their learning rate
    derived_state       copies a load hook fills from loaded weights (a side head's copy of the backbone head)
    no_decay_state      parameters AdamW must not decay (layer scales, positional tables), besides every
                        parameter of fewer than two dimensions (biases, norms), which never decays
    zero_init_state     parameters that start at or near zero (layer scales, TPE): fusion checks randomize them,
                        since a branch scaled by zero would hide a wrong fold

Kinds (`BLOCK_KINDS`, the `kind=` of `register_block`), each called as its protocol below says: video (`VideoBlock`),
text (`TextBlock`), and a side network's parts: side (`SideStreamBlock`), side_stem (`SideStemBlock`), side_fusion
(`SideFusionBlock`), side_head (`SideHeadBlock`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

INPUT_LAYOUTS = ("map", "tokens")
# what a registered block is for, each kind with its call signature below (VideoBlock, TextBlock, SideStreamBlock, ...)
BLOCK_KINDS = ("video", "text", "side", "side_stem", "side_fusion", "side_head")
STATE_DECLARATIONS = ("temporal_state", "derived_state", "no_decay_state", "zero_init_state")


@runtime_checkable
class Reparameterizable(Protocol):
    """A block with an inference form: `reparameterize()` replaces its branches by plain convs/linears in place."""

    def reparameterize(self) -> None: ...


@runtime_checkable
class FeatureHead(Protocol):
    """A head a side network can read: `features(x, frames)` is what `norm` and then `proj` turn into the embedding."""

    def features(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor: ...


@runtime_checkable
class DeclaresFrozen(Protocol):
    """A module some of whose parameters never train (a side network's backbone)."""

    def frozen_parameter_names(self) -> list[str]: ...


@runtime_checkable
class SyncsFromBackbone(Protocol):
    """A side head holding copies of the backbone head's weights, refreshed after the backbone's weights load."""

    def sync_from(self, backbone_head: nn.Module) -> None: ...


class VideoBlock(Protocol):
    """`kind="video"`: `(B*T, C, H, W)` (or tokens, see `input_layout`) with the clip length -> the same layout."""

    def __call__(self, x: torch.Tensor, frames: int) -> torch.Tensor: ...


class TextBlock(Protocol):
    """`kind="text"`: `(B, L, C)` tokens -> `(B, L, C)`."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class SideStreamBlock(Protocol):
    """`kind="side"`: side tokens `(B*T, N, C)`, the clip length and the backbone's global token `(B*T, C)` or None."""

    def __call__(self, x: torch.Tensor, frames: int, token: torch.Tensor | None) -> torch.Tensor: ...


class SideStemBlock(Protocol):
    """`kind="side_stem"`: a side network's own input, pixels `(B*T, C, H, W)` -> side tokens `(B*T, h*w, dim)` and
    the grid `(h, w)` that backbone features are pooled to. Built with `dim` (the side width) and `in_channels`."""

    def __call__(self, pixels: torch.Tensor, frames: int) -> tuple[torch.Tensor, tuple[int, int]]: ...


class SideFusionBlock(Protocol):
    """`kind="side_fusion"`: a backbone feature `(..., in_dim)` -> the side width `(..., dim)`, one per fusion point."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class SideHeadBlock(Protocol):
    """`kind="side_head"`: the side tokens `(B*T, N, dim)`, the frozen backbone head's pre-projection feature
    `(B*T, F)` and the clip length -> the encoder's output `(B, out)`. May take `backbone_head` (the built head)."""

    def __call__(self, side: torch.Tensor, feature: torch.Tensor, frames: int) -> torch.Tensor: ...


class BlockDeclarations:
    """The class attributes above with their defaults, for blocks that want them spelled out (inheriting is optional)."""

    block_kind: ClassVar[str] = "video"
    input_layout: ClassVar[str] = "map"
    stage_pos_embed: ClassVar[str | None] = None
    allow_even_kernels: ClassVar[bool] = False
    temporal_state: ClassVar[tuple[str, ...]] = ()
    derived_state: ClassVar[tuple[str, ...]] = ()
    no_decay_state: ClassVar[tuple[str, ...]] = ()
    zero_init_state: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True)
class BlockTraits:
    """What a block class declares about itself, with the contract's defaults filled in."""

    kind: str
    input_layout: str
    stage_pos_embed: str | None
    allow_even_kernels: bool
    reparameterizable: bool
    has_features: bool


def block_traits(cls: type) -> BlockTraits:
    """Read a block class's declarations; a value of the wrong kind is an error naming the class and attribute."""
    defaults = BlockDeclarations
    layout = getattr(cls, "input_layout", defaults.input_layout)
    if layout not in INPUT_LAYOUTS:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__}.input_layout: expected one of {INPUT_LAYOUTS}, got {layout!r}")
    return BlockTraits(
        kind=getattr(cls, "block_kind", defaults.block_kind),
        input_layout=layout,
        stage_pos_embed=getattr(cls, "stage_pos_embed", defaults.stage_pos_embed),
        allow_even_kernels=bool(getattr(cls, "allow_even_kernels", defaults.allow_even_kernels)),
        reparameterizable=issubclass(cls, Reparameterizable),
        has_features=issubclass(cls, FeatureHead),
    )


def is_reparameterizable(module: nn.Module) -> bool:
    return isinstance(module, Reparameterizable)


def block_name(module: nn.Module) -> str | None:
    """The registry name a module was built under (`{block: name}` in YAML), or None for an unregistered part."""
    return getattr(module, "block_name", None)


def block_width(block: nn.Module, default: int) -> int:
    """The channel count a built block works at (`self.dim`), for blocks whose width differs from what was asked."""
    return getattr(block, "dim", default)


def declared_keys(model: nn.Module, attribute: str = "temporal_state") -> set[str]:
    """State keys of `model` that its modules declare under `attribute` (one of STATE_DECLARATIONS)."""
    if attribute not in STATE_DECLARATIONS:
        raise ValueError(f"unknown state declaration {attribute!r}; expected one of {STATE_DECLARATIONS}")
    keys = set(model.state_dict())
    found: set[str] = set()
    for name, module in model.named_modules():
        declared = getattr(type(module), attribute, ())
        if isinstance(declared, str) or not all(isinstance(prefix, str) for prefix in declared):
            raise TypeError(f"{type(module).__qualname__}.{attribute}: expected a tuple of state names, got {declared!r}")
        for prefix in declared:
            full = ".".join(p for p in (name, prefix) if p)
            found |= {k for k in keys if not full or k == full or k.startswith(full + ".")}
    return found


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameter names AdamW must not decay: every parameter of fewer than two dimensions, plus `no_decay_state`."""
    declared = declared_keys(model, "no_decay_state")
    return {name for name, param in model.named_parameters() if param.ndim < 2 or name in declared}
