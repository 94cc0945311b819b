"""Side networks (Side4Video): a light spatiotemporal network that learns beside a frozen image backbone.

The backbone runs without autograd and stays in eval mode; at chosen fusion points its features are
normalized, projected down to the side width and averaged into the side stream (`0.5 s + 0.5 Down(Norm(Z_l))`),
which side blocks from the registry (`kind="side"`) then process. A head turns the side stream into the output:
retrieval adds it to the backbone's own pre-projection feature (`Proj(Norm(Z_t + Up(mean s_t)))`, Up zero at
the start), classification pools it into a linear classifier. Built from the `video.side` section of a model YAML.

Every part is a registered block the YAML names (kinds `side_stem`, `side_fusion`, `side`, `side_head`; the built-in
ones are in `mvclip.blocks`); this package holds the wiring (`SideNetwork`, `SideVideoEncoder`), which reaches
them only through the registry and `mvclip.contracts`.
"""
from typing import Any

from mvclip.registry import REGISTRY
from mvclip.side.encoder import SideVideoEncoder
from mvclip.side.network import FUSION_LAYERS, FUSION_POINTS, SideNetwork, fusion_indices

# parts that moved to `mvclip.blocks` when they became registered blocks: still importable from here by class name
MOVED_TO_BLOCKS = {
    "SideStem": "side_stem",
    "FusionLayer": "side_fusion",
    "SideRetrievalHead": "side_retrieval_head",
    "SideClassificationHead": "side_classification_head",
}


def __getattr__(name: str) -> Any:
    if name in MOVED_TO_BLOCKS:
        return REGISTRY.get(MOVED_TO_BLOCKS[name]).cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FUSION_LAYERS",
    "FUSION_POINTS",
    "SideNetwork",
    "SideVideoEncoder",
    "fusion_indices",
]
