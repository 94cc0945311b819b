"""Training losses a recipe chooses with `model.loss` (docs/losses.md): one class per file, one contract (`base`)."""
from __future__ import annotations

from mvclip.losses.base import ModelOutputs, TrainingLoss
from mvclip.losses.build import build_loss
from mvclip.losses.distillation import DistillationLoss
from mvclip.losses.gather import gather_features, gather_rows
from mvclip.losses.siglip import SigLIPLoss
from mvclip.losses.vtc import VideoTextContrastiveLoss, clamp_logit_scale_

__all__ = [
    "ModelOutputs", "TrainingLoss", "build_loss", "DistillationLoss", "SigLIPLoss", "VideoTextContrastiveLoss",
    "clamp_logit_scale_", "gather_features", "gather_rows",
]
