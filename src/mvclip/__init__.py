"""mvclip: mobile video-text models of the MobileViCLIP family.

The public API is small: create a model by name with its preprocessing (or build one from YAML), encode clips
and text, fuse for inference, search videos by text, and register blocks of your own.
"""
from mvclip.builder import build_model
from mvclip.errors import ConfigError, RegistryError
from mvclip.fusion import fuse, verify
from mvclip.input_spec import InputSpec
from mvclip.model import VideoTextModel
from mvclip.pretrained import load_pretrained
from mvclip.registry import build_block, list_blocks, register_block
from mvclip.tokenizer import tokenize

__version__ = "0.1.0"


def __getattr__(name: str):
    """The heavier parts load on first use, so `import mvclip` stays light (commands, block plugins)."""
    lazy = {"create_model": "mvclip.models", "list_models": "mvclip.models", "Preprocess": "mvclip.preprocess",
            "VideoIndex": "mvclip.video_index"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'mvclip' has no attribute {name!r}")

__all__ = [
    "ConfigError",
    "InputSpec",
    "Preprocess",
    "VideoIndex",
    "create_model",
    "list_models",
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
