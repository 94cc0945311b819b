"""Shared fixtures: an isolated block registry (tests that register blocks leave no trace), a small synthetic set."""
import copy

import pytest

from mvclip.datamodules.synthetic import ensure_synthetic_dataset
from mvclip.registry import REGISTRY


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic set (64 train clips) shared by the training tests."""
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_train=64, num_val=32, num_test=32,
                                    seed=0, frames=8, size=64, progress=False)


@pytest.fixture
def isolated_registry():
    """Snapshot the global registry and restore it afterwards (tests register throwaway blocks)."""
    REGISTRY.load()
    saved = (dict(REGISTRY._entries), REGISTRY._loaded, list(REGISTRY.plugin_failures), dict(REGISTRY._imported))
    try:
        yield REGISTRY
    finally:
        REGISTRY._entries, REGISTRY._loaded = saved[0], saved[1]
        REGISTRY.plugin_failures, REGISTRY._imported = saved[2], saved[3]


@pytest.fixture
def tiny_model_config():
    """A very small model config with the tiny preset's structure, as a plain dict."""
    return copy.deepcopy(
        {
            "embed_dim": 32,
            "input": {"resolution": 64},  # the clips the tests feed it: 4 frames (video.num_frames) at 64 px
            "video": {
                "num_frames": 4,
                "stem": {"block": "mobileone_stem"},
                "stages": [
                    {"block": "st_repmixer", "depth": 1, "dim": 16},
                    {"block": "st_repmixer", "depth": 1, "dim": 32, "downsample": {"block": "patch_embed"}},
                    {"block": "tpe_attention", "depth": 1, "dim": 64, "downsample": {"block": "patch_embed", "use_se": True}},
                ],
                "head": {"block": "mci_head"},
            },
            "text": {
                "width": 32,
                "context_length": 77,
                "stages": [
                    {"block": "text_repmixer"},
                    {"block": "text_transformer", "depth": 1, "num_heads": 2},
                ],
            },
        }
    )
