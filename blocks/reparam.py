"""Deprecated: the folding primitives moved to `mvclip.layers.reparam` (importable without registering blocks).

This module only re-exports them, so plugins written against `mvclip.blocks.reparam` keep working; import from
`mvclip.layers` instead. It will be removed in a later release.
"""
import warnings

from mvclip.layers.reparam import *  # noqa: F401,F403

warnings.warn("mvclip.blocks.reparam is deprecated: import from mvclip.layers.reparam", DeprecationWarning, stacklevel=2)
