"""mvclip: mobile video-text models of the MobileViCLIP family.

The public API is small: build a model from YAML, encode clips and text, fuse for inference,
and register blocks of your own.
"""
from mvclip.builder import build_model
from mvclip.errors import ConfigError, RegistryError
from mvclip.fusion import fuse, verify
from mvclip.model import VideoTextModel
from mvclip.pretrained import load_pretrained
from mvclip.registry import build_block, list_blocks, register_block
from mvclip.tokenizer import tokenize

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "RegistryError",
    "VideoTextModel",
    "build_block",
    "build_model",
    "fuse",
    "list_blocks",
    "load_pretrained",
    "register_block",
    "tokenize",
    "verify",
]
