"""The VTC loss under its first name: the losses now live in `mvclip.losses`; this module re-exports them."""
from __future__ import annotations

from mvclip.losses.gather import gather_features, gather_rows
from mvclip.losses.vtc import VideoTextContrastiveLoss, clamp_logit_scale_

__all__ = ["VideoTextContrastiveLoss", "gather_features", "gather_rows", "clamp_logit_scale_"]
