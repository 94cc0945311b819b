"""SideVideoEncoder: a frozen backbone (stem -> stages -> head) with a side network learning beside it."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from mvclip.contracts import SyncsFromBackbone
from mvclip.model import Stage, VideoEncoder
from mvclip.side.network import FUSION_POINTS, SideNetwork

BACKBONE_PARTS = ("stem", "stages", "head")


class SideVideoEncoder(VideoEncoder):
    """Clips (B, T, 3, H, W) -> (B, D) (retrieval) or (B, classes) (classification).

    The backbone keeps VideoEncoder's names (`stem`, `stages`, `head`), so an image or video checkpoint loads
    into it unchanged. It never trains: its parameters have `requires_grad=False`, it stays in eval mode
    whatever `train()` is asked, and it runs under `torch.no_grad()`, so none of its activations are kept for
    a backward pass. Backbone and side network run interleaved (one backbone step, then the side blocks of
    that fusion point), so at most one backbone feature is alive at a time.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: list[Stage],
        head: nn.Module,
        num_frames: int,
        side: SideNetwork,
        side_head: nn.Module,
        fusion_points: str,
        fusion_layers: list[int],
    ) -> None:
        super().__init__(stem, stages, head, num_frames)
        if fusion_points not in FUSION_POINTS:
            raise ValueError(f"fusion_points must be one of {FUSION_POINTS}, got {fusion_points!r}")
        if len(fusion_layers) != len(side.fusions):
            raise ValueError(f"{len(fusion_layers)} fusion layers for {len(side.fusions)} fusion modules")
        self.side = side
        self.side_head = side_head
        self.fusion_points = fusion_points
        self.fusion_layers = list(fusion_layers)
        for p in self.backbone_parameters():
            p.requires_grad_(False)
        self.register_load_state_dict_post_hook(_sync_head_after_load)

    # -- the frozen backbone ---------------------------------------------------------------------
    def backbone_modules(self) -> list[nn.Module]:
        return [getattr(self, part) for part in BACKBONE_PARTS]

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        for module in self.backbone_modules():
            yield from module.parameters()

    def frozen_parameter_names(self) -> list[str]:
        """Names (relative to this encoder) that never train, for `mvclip.freezing`."""
        return [f"{part}.{name}" for part in BACKBONE_PARTS for name, _ in getattr(self, part).named_parameters()]

    def train(self, mode: bool = True) -> SideVideoEncoder:
        super().train(mode)
        for module in self.backbone_modules():
            module.eval()  # BatchNorm statistics of the backbone never move
        return self

    def num_fusion_points(self) -> int:
        return sum(len(stage.blocks) for stage in self.stages) if self.fusion_points == "blocks" else len(self.stages)

    def _backbone_walk(self, x: torch.Tensor, frames: int) -> Iterator[torch.Tensor]:
        """Backbone outputs at every candidate fusion point, each step computed without autograd."""
        with torch.no_grad():
            x = self.stem(x, frames)
        for stage in self.stages:
            if self.fusion_points == "stages":
                with torch.no_grad():
                    x = stage(x, frames)
                yield x
                continue
            with torch.no_grad():
                if stage.downsample is not None:
                    x = stage.downsample(x, frames)
                if stage.pos_embed is not None:
                    x = stage.pos_embed(x, frames)
            for block in stage.blocks:
                with torch.no_grad():
                    x = block(x, frames)
                yield x

    def backbone_embedding(self, video: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's own clip embedding: per-frame embeddings averaged over time (no side network)."""
        with torch.no_grad():
            return super().forward(video)

    # -- backbone + side -------------------------------------------------------------------------
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() == 4:
            video = video.unsqueeze(1)
        if video.dim() != 5:
            raise ValueError(f"expected video of shape (B, T, C, H, W), got {tuple(video.shape)}")
        frames = video.shape[1]
        pixels = video.flatten(0, 1)
        side, grid = self.side.start(pixels, frames)
        wanted = {layer: i for i, layer in enumerate(self.fusion_layers)}
        x = pixels
        for point, x in enumerate(self._backbone_walk(pixels, frames)):
            if point in wanted:
                side = self.side.fuse_step(wanted[point], side, x, grid, frames)
        with torch.no_grad():
            feature = self.head.features(x, frames)
        return self.side_head(side, feature, frames)


def _sync_head_after_load(module: SideVideoEncoder, incompatible: nn.modules.module._IncompatibleKeys) -> None:
    """A backbone-only state dict (an image or frame-mean checkpoint) loads with the retrieval head's copies of
    the backbone's norm and projection missing: take them from the freshly loaded backbone head."""
    head = module.side_head
    if not isinstance(head, SyncsFromBackbone):
        return
    copies = [k for k in incompatible.missing_keys if k.endswith("side_head.proj") or "side_head.norm." in k]
    if copies:
        head.sync_from(module.head)
        for key in copies:
            incompatible.missing_keys.remove(key)
