"""Deprecated: the folding primitives moved to `mvclip.layers.reparam` (importable without registering blocks).

This module only re-exports them, so plugins written against `mvclip.blocks.reparam` keep working; import from
`mvclip.layers` instead. It will be removed in a later release.
"""
import warnings

from mvclip.layers.reparam import (  # noqa: F401
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

warnings.warn("mvclip.blocks.reparam is deprecated: import from mvclip.layers.reparam", DeprecationWarning, stacklevel=2)
