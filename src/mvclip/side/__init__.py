"""Side networks (Side4Video): a light spatiotemporal network that learns beside a frozen image backbone.

The backbone runs without autograd and stays in eval mode; at chosen fusion points its features are
normalized, projected down to the side width and averaged into the side stream (`0.5 s + 0.5 Down(Norm(Z_l))`),
which side blocks from the registry (`kind="side"`) then process. A head turns the side stream into the output:
retrieval adds it to the backbone's own pre-projection feature (`Proj(Norm(Z_t + Up(mean s_t)))`, Up zero at
the start), classification pools it into a linear classifier. Built from the `video.side` section of a model YAML.
"""
from mvclip.side.encoder import SideVideoEncoder
from mvclip.side.heads import SideClassificationHead, SideRetrievalHead
from mvclip.side.network import FUSION_LAYERS, FUSION_POINTS, SideNetwork, SideStem, fusion_indices

__all__ = [
    "FUSION_LAYERS",
    "FUSION_POINTS",
    "SideClassificationHead",
    "SideNetwork",
    "SideRetrievalHead",
    "SideStem",
    "SideVideoEncoder",
    "fusion_indices",
]
