"""The video-text model: a video encoder and a text encoder of registered blocks, plus the logit scale.

The structure is generic (stem -> stages -> head; embeddings -> stages -> projection); which
blocks fill it comes from YAML through `mvclip.builder.build_model`.
"""
from __future__ import annotations

import inspect
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mvclip.checkpointing import run_checkpointed
from mvclip.input_spec import InputSpec


class Stage(nn.Module):
    """One resolution of the video encoder: optional downsampling, optional positional encoding, blocks.

    `grad_checkpoint` (set by `mvclip.checkpointing.checkpoint_stages`): while training with gradients, each block's
    activations are recomputed in the backward instead of stored."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None = None, pos_embed: nn.Module | None = None) -> None:
        super().__init__()
        self.downsample = downsample
        self.pos_embed = pos_embed
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpoint = False

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x, frames)
        if self.pos_embed is not None:
            x = self.pos_embed(x, frames)
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            for block in self.blocks:
                x = run_checkpointed(block, x, frames)
            return x
        for block in self.blocks:
            x = block(x, frames)
        return x


class VideoEncoder(nn.Module):
    """Clips (B, T, 3, H, W) -> (B, D): per-frame stem/stages/head on (B*T, C, H, W), then the temporal mean."""

    def __init__(self, stem: nn.Module, stages: list[Stage], head: nn.Module, num_frames: int = 8) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head
        self.num_frames = num_frames

    def steps(self) -> list[tuple[str, nn.Module]]:
        """The sequential parts in order, for summaries and per-stage measurements."""
        return [("stem", self.stem)] + [(f"stages[{i}]", s) for i, s in enumerate(self.stages)] + [("head", self.head)]

    def forward_frames(self, frames_nchw: torch.Tensor, frames: int) -> torch.Tensor:
        """(B*T, 3, H, W) -> per-frame embeddings (B*T, D)."""
        x = frames_nchw
        for _, step in self.steps():
            x = step(x, frames)
        return x

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() == 4:  # an image is a clip of one frame
            video = video.unsqueeze(1)
        if video.dim() != 5:
            raise ValueError(f"expected video of shape (B, T, C, H, W), got {tuple(video.shape)}")
        batch, frames = video.shape[:2]
        per_frame = self.forward_frames(video.flatten(0, 1), frames)
        return per_frame.reshape(batch, frames, -1).mean(dim=1)


TEXT_ATTENTION_MASKS = ("none", "padding", "causal")


def text_attention_mask(tokens: torch.Tensor, kind: str) -> torch.Tensor | None:
    """Boolean mask (True = may attend) for the text blocks that take one, from (B, L) token ids.

    `padding`: every token attends to the caption up to its end token, never to the padding after it (a caption's
    embedding then depends on its words alone); `causal`: each token attends to itself and earlier tokens, as in
    OpenAI's CLIP, so the end token still sees the whole caption; `none`: MobileCLIP's MCt, which attends to all 77
    positions, padding included."""
    if kind == "none":
        return None
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    if kind == "padding":
        return (positions[None, :] <= tokens.argmax(dim=-1)[:, None])[:, None, None, :]
    if kind == "causal":
        return (positions[None, :] <= positions[:, None])[None, None]
    raise ValueError(f"attention_mask must be one of {TEXT_ATTENTION_MASKS}, got {kind!r}")


TEXT_POOLS = ("eot", "mean")


def pool_text(x: torch.Tensor, tokens: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, L, W) token features -> (B, W).

    `eot`: CLIP's read-out at the end token (the largest id in every row). `mean`: the mean over the caption's word
    tokens (after the start token, before the end token), so every word has a direct path to the embedding; a text
    tower trained from scratch on a few thousand captions separates captions that differ in one word far sooner this
    way (docs/blocks.md, "Starting the temporal branch"). An empty caption falls back to its end token."""
    eot = tokens.argmax(dim=-1)
    if kind == "eot":
        return x[torch.arange(x.shape[0], device=x.device), eot]
    if kind != "mean":
        raise ValueError(f"pool must be one of {TEXT_POOLS}, got {kind!r}")
    positions = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    words = (positions >= 1) & (positions < eot[:, None])
    empty = ~words.any(dim=1, keepdim=True)
    keep = (words | (empty & (positions == eot[:, None]))).to(x.dtype)
    return (x * keep[..., None]).sum(dim=1) / keep.sum(dim=1, keepdim=True)


class TextEncoder(nn.Module):
    """Token ids (B, L) -> (B, D): token + position embeddings, blocks, LayerNorm, pooling, projection.

    `attention_mask` (see `text_attention_mask`) reaches the blocks whose forward takes an `attn_mask` argument;
    `pool` (see `pool_text`) reads the end token (CLIP, MobileCLIP) or averages the caption's words."""

    no_decay_state: ClassVar[tuple[str, ...]] = ("positional_embedding",)

    def __init__(
        self,
        blocks: list[nn.Module],
        vocab_size: int = 49408,
        context_length: int = 77,
        width: int = 512,
        embed_dim: int = 512,
        attention_mask: str = "none",
        pool: str = "eot",
    ) -> None:
        super().__init__()
        if attention_mask not in TEXT_ATTENTION_MASKS:
            raise ValueError(f"attention_mask must be one of {TEXT_ATTENTION_MASKS}, got {attention_mask!r}")
        if pool not in TEXT_POOLS:
            raise ValueError(f"pool must be one of {TEXT_POOLS}, got {pool!r}")
        self.attention_mask, self.pool = attention_mask, pool
        self._takes_mask = [("attn_mask" in inspect.signature(b.forward).parameters) for b in blocks]
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = nn.LayerNorm(width)
        self.projection = nn.Parameter(torch.empty(width, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.projection, std=width**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(f"expected token ids of shape (B, L<={self.context_length}), got {tuple(tokens.shape)}")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        mask = text_attention_mask(tokens, self.attention_mask)
        for block, takes_mask in zip(self.blocks, self._takes_mask):
            x = block(x, attn_mask=mask) if takes_mask and mask is not None else block(x)
        return pool_text(self.final_norm(x), tokens, self.pool) @ self.projection


class VideoTextModel(nn.Module):
    """Video and text encoders in one embedding space, with CLIP's learnable logit scale (log of 1/temperature)."""

    no_decay_state: ClassVar[tuple[str, ...]] = ("logit_scale",)

    def __init__(self, video: VideoEncoder, text: TextEncoder | None, logit_scale: float = math.log(1 / 0.07),
                 input_spec: InputSpec | None = None) -> None:
        super().__init__()
        self.video = video
        self.text = text
        # the input clips this model expects (the builder sets it from the config's `input` section)
        self.input_spec = input_spec or InputSpec(frames=getattr(video, "num_frames", 8))
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    def encode_video(self, video: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, T, 3, H, W) floats (or (B, 3, H, W) images) -> (B, D)."""
        out = self.video(video)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, L) token ids -> (B, D)."""
        if self.text is None:
            raise RuntimeError("this model has no text encoder (its config has no `text` section)")
        out = self.text(tokens)
        return F.normalize(out, dim=-1) if normalize else out

    def forward(self, video: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit-norm video and text embeddings and the (exponentiated) logit scale."""
        return self.encode_video(video, normalize=True), self.encode_text(tokens, normalize=True), self.logit_scale.exp()
