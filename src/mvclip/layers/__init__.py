"""Primitives that blocks are built from, importable without importing (and so registering) any block.

The core (`mvclip.export`, `mvclip.testing`, `mvclip.side`) and blocks both use these; blocks live in
`mvclip.blocks` and are registered by name. A block of your own can build on them the same way
(`docs/blocks.md`). `reparam`: conv + BatchNorm units and the folding arithmetic; `temporal_conv`: a depthwise
conv over frames on the per-frame layout; `resample`: position tables at other sizes; `tokens`: BatchNorm over
token sequences.
"""
from mvclip.layers.reparam import (
    ConvNorm,
    bn_affine,
    conv_like,
    conv_norm,
    detach_parameters,
    fold_bn,
    identity_kernel,
    is_batchnorm,
    linear_after_affine,
    linear_after_batchnorm,
    make_conv,
    pad_kernel,
    to_tuple,
)
from mvclip.layers.resample import resample_frames, resample_grid, token_grid
from mvclip.layers.temporal_conv import temporal_depthwise_conv
from mvclip.layers.tokens import batchnorm_tokens

__all__ = [
    "ConvNorm",
    "batchnorm_tokens",
    "bn_affine",
    "conv_like",
    "conv_norm",
    "detach_parameters",
    "fold_bn",
    "identity_kernel",
    "is_batchnorm",
    "linear_after_affine",
    "linear_after_batchnorm",
    "make_conv",
    "pad_kernel",
    "resample_frames",
    "resample_grid",
    "temporal_depthwise_conv",
    "to_tuple",
    "token_grid",
]
