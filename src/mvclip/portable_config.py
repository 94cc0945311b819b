"""The model config a checkpoint carries, so that it rebuilds its own model whatever happened to the YAML it came from.

A checkpoint that only named `recipes/models/x.yaml` would rebuild whatever that file says today: an edited file
changes the meaning of the weights, a moved one makes the checkpoint unusable. So `VideoTextModule` writes the fully
resolved config (interpolations resolved, `overrides` applied, relative `.py` plugin imports made absolute) into every
checkpoint under `CHECKPOINT_KEY`, and everything that rebuilds from a checkpoint (resume, validate/test/predict,
export) uses it. Plugin code itself is not stored: a checkpoint is data, and loading one never runs code from it.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mvclip.config_checks import is_real

CHECKPOINT_KEY = "mvclip_model_config"


def portable_config(model_config: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The config as plain data, interpolations resolved, relative `.py` imports made absolute against `base_dir`."""
    cfg = OmegaConf.to_container(OmegaConf.create(dict(model_config)), resolve=True)
    imports = []
    for target in cfg.get("imports") or []:
        target = str(target)
        if target.endswith(".py") and base_dir is not None and not Path(target).expanduser().is_absolute():
            target = str((Path(base_dir) / target).resolve())
        imports.append(target)
    if imports:
        cfg["imports"] = imports
    return cfg


def plain_data(value: Any) -> Any:
    """OmegaConf nodes and nested mappings as plain dicts and lists (what `weights_only` loading accepts)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=False)
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return value


def resolve_model_spec(model: str | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The portable config a `VideoTextModule(model=..., overrides=...)` builds, without building it."""
    from mvclip.builder import apply_overrides, load_config

    cfg, base_dir = load_config(model if isinstance(model, (str, Path)) else dict(model))
    cfg = apply_overrides(copy.deepcopy(cfg), overrides)
    return portable_config(OmegaConf.to_container(cfg, resolve=True), base_dir)


def checkpoint_model_config(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The config a checkpoint carries; None for checkpoints written before configs were embedded."""
    config = checkpoint.get(CHECKPOINT_KEY)
    return dict(config) if isinstance(config, Mapping) else None


def config_differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where two configs differ, as `video.stages[0].dim: 16 (checkpoint) vs 32` lines; [] when equal.

    Lists and tuples compare alike (YAML has no tuples)."""
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        out = []
        for key in sorted(set(expected) | set(actual), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in actual:
                out.append(f"{sub}: {expected[key]!r} in the checkpoint, absent here")
            elif key not in expected:
                out.append(f"{sub}: absent in the checkpoint, {actual[key]!r} here")
            else:
                out += config_differences(expected[key], actual[key], sub)
        return out
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)) and len(expected) == len(actual):
        return [d for i, (a, b) in enumerate(zip(expected, actual)) for d in config_differences(a, b, f"{path}[{i}]")]
    if expected == actual and type(expected) is type(actual) or (is_real(expected) and is_real(actual) and expected == actual):
        return []
    return [f"{path or '(top level)'}: {expected!r} in the checkpoint, {actual!r} here"]

