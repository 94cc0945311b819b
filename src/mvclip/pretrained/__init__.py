"""Starting from MobileCLIP: load published image-text checkpoints into mvclip models (see docs/weights.md).

Formats: Apple's ml-mobileclip release, timm's fastvit_mci0/1/2 (image tower), open_clip's MobileCLIP-S1/S2,
and mvclip's own names; the format is detected from the keys.
"""
from mvclip.pretrained.architecture import frame_mean_config
from mvclip.pretrained.formats import FORMATS, CheckpointFormat, KeyRule
from mvclip.pretrained.loading import PretrainedReport, declared_keys, detect_format, load_pretrained, map_state_dict

__all__ = ["FORMATS", "CheckpointFormat", "KeyRule", "PretrainedReport", "declared_keys", "detect_format", "frame_mean_config", "load_pretrained", "map_state_dict"]
