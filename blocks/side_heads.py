"""Side network heads: retrieval (starts exactly at the frozen backbone's embedding) and classification.

Registered as `side_retrieval_head` and `side_classification_head` (kind `side_head`, called as
`head(side, feature, frames)`): `video.side.head` in a model YAML names one (`retrieval` and `classification` are
short for them). The builder supplies `dim` (the side width), `inference_mode`, the model's `backbone_head` and the
YAML's `num_classes` and `train_projection` shorthands.
"""
from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import nn

from mvclip.layers.reparam import detach_parameters, linear_after_batchnorm
from mvclip.layers.tokens import batchnorm_tokens
from mvclip.registry import register_block


@register_block("side_retrieval_head", kind="side_head")
class SideRetrievalHead(nn.Module):
    """`v = mean_t Proj(Norm(Z_t + Up(mean_n BN(s_t))))`, Z_t the backbone head's pre-projection feature of frame t.

    `Up` starts at zero, so before training the output is exactly the frozen model's frame-mean embedding.
    `Norm` and `Proj` are copies of the backbone head's (its ln_post and projection; MCi has no norm), so the
    backbone itself never enters the autograd graph; `sync_from` refreshes them when backbone weights load.
    `train_projection` lets them learn too (Side4Video keeps them frozen). BN folds into Up at export.
    """

    temporal_state: ClassVar[tuple[str, ...]] = ("up", "post_norm")  # new beside pretrained weights
    derived_state: ClassVar[tuple[str, ...]] = ("norm", "proj")  # copies the load hook takes from the backbone head
    zero_init_state: ClassVar[tuple[str, ...]] = ("up",)  # fusion checks randomize it, or the BatchNorm fold would not show

    def __init__(self, dim: int, backbone_head: nn.Module, train_projection: bool = False, inference_mode: bool = False) -> None:
        super().__init__()
        feature_dim, embed_dim = backbone_head.proj.shape
        self.post_norm: nn.BatchNorm1d | None = None if inference_mode else nn.BatchNorm1d(dim)
        self.up = nn.Linear(dim, feature_dim, bias=inference_mode)
        nn.init.zeros_(self.up.weight)
        self.norm = copy.deepcopy(backbone_head.norm)
        self.proj = nn.Parameter(torch.empty(feature_dim, embed_dim))
        self.sync_from(backbone_head)
        for p in [*self.norm.parameters(), self.proj]:
            p.requires_grad_(train_projection)

    @torch.no_grad()
    def sync_from(self, backbone_head: nn.Module) -> None:
        """Copy the backbone head's norm and projection (after the backbone's weights were loaded)."""
        self.norm.load_state_dict(backbone_head.norm.state_dict())
        self.proj.copy_(backbone_head.proj)

    def forward(self, side: torch.Tensor, feature: torch.Tensor, frames: int) -> torch.Tensor:
        """side (B*T, N, W), feature Z_t (B*T, F) -> (B, D)."""
        side = batchnorm_tokens(self.post_norm, side)
        per_frame = self.norm(feature + self.up(side.mean(dim=1))) @ self.proj
        return per_frame.reshape(-1, frames, per_frame.shape[-1]).mean(dim=1)

    def reparameterize(self) -> None:
        """BN is per-channel affine, so it commutes with the token mean and folds into Up (which gains a bias)."""
        if self.post_norm is not None:
            self.up = linear_after_batchnorm(self.up, self.post_norm)
            self.post_norm = None
        detach_parameters(self)


@register_block("side_classification_head", kind="side_head")
class SideClassificationHead(nn.Module):
    """Global average pooling of the side output over tokens and frames, then a linear classifier: (B, classes)."""

    temporal_state: ClassVar[tuple[str, ...]] = ("",)

    def __init__(self, dim: int, num_classes: int, inference_mode: bool = False) -> None:
        super().__init__()
        self.post_norm: nn.BatchNorm1d | None = None if inference_mode else nn.BatchNorm1d(dim)
        self.classifier = nn.Linear(dim, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, side: torch.Tensor, feature: torch.Tensor, frames: int) -> torch.Tensor:
        side = batchnorm_tokens(self.post_norm, side)
        pooled = side.mean(dim=1).reshape(-1, frames, side.shape[-1]).mean(dim=1)
        return self.classifier(pooled)

    def reparameterize(self) -> None:
        if self.post_norm is not None:
            self.classifier = linear_after_batchnorm(self.classifier, self.post_norm)
            self.post_norm = None
        detach_parameters(self)
