"""Models by name, as open_clip and timm users expect: `list_models()` and `create_model(name, pretrained=...)`.

Presets ship inside the package (`mvclip/presets/*.yaml`), so a wheel install lists and builds them. `create_model`
returns the model and its `Preprocess` (`mvclip.preprocess`), built from the model's input description, which the
loaded weights may change (a preset's `weights.<name>.input`: the normalization those weights were trained with).
"""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mvclip.builder import PRESETS_DIR, apply_input, build_model, list_presets, load_config
from mvclip.errors import ConfigError
from mvclip.hub import HUB_PREFIX, HubFile, cached_hub_file, parse_hub_reference
from mvclip.model import VideoTextModel
from mvclip.preprocess import Preprocess
from mvclip.pretrained import load_pretrained


@dataclass(frozen=True)
class ModelInfo:
    """A preset as `python -m mvclip models` lists it."""

    name: str
    description: str
    weights: dict[str, HubFile]
    input: dict[str, Any]


def list_models() -> list[str]:
    """Names of the presets shipped with mvclip (`create_model` and `build_model` take them)."""
    return list_presets()


def model_info(name: str) -> ModelInfo:
    """A preset's first comment line, its published weights and its input description (nothing is built)."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset named {name!r} (presets: {', '.join(list_presets())})")
    cfg = OmegaConf.load(path)
    first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
    weights = {tag: HubFile(str(w.hub), str(w.file), w.get("revision")) for tag, w in (cfg.get("weights") or {}).items()}
    section = OmegaConf.to_container(cfg.get("input") or OmegaConf.create({}))
    return ModelInfo(name, first, weights, {"frames": cfg.video.get("num_frames", 8), **section})


def create_model(
    name_or_path: str | os.PathLike[str] | Mapping[str, Any] | DictConfig,
    pretrained: str | os.PathLike[str] | None = None,
    frames: int | None = None,
    *,
    input: Mapping[str, Any] | None = None,
    strict: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[VideoTextModel, Preprocess]:
    """Build a model (a preset name, a model YAML path or mapping) in eval mode, with its preprocessing.

    pretrained: a local weight file (every layout `load_pretrained` knows), a weight name the preset lists under
        `weights:` (`mobileclip_s0`), or `hf-hub:owner/repo/file`; hub files are read from the Hugging Face cache
        (`cache_dir`, default the hub's), never downloaded.
    frames: clip length (T) other than the preset's.
    input: other changes to the input description (`{resolution: 224}`).
    strict: every tensor of the file must fit the model (see `load_pretrained`).
    """
    cfg, base_dir = load_config(name_or_path if isinstance(name_or_path, (str, Path, DictConfig)) else dict(name_or_path))
    cfg = copy.deepcopy(cfg)
    weights_file, weights_input = _resolve_pretrained(cfg, pretrained, cache_dir)
    cfg = apply_input(cfg, weights_input, "pretrained weights' input")
    cfg = apply_input(cfg, {**(dict(input) if input else {}), **({"frames": frames} if frames is not None else {})}, "create_model(input=...)")
    model = build_model(cfg, base_dir=base_dir)
    if weights_file is not None:
        load_pretrained(model, weights_file, strict=strict)
    return model.eval(), Preprocess(model.input_spec)


def _resolve_pretrained(cfg: DictConfig, pretrained: str | os.PathLike[str] | None,
                        cache_dir: str | os.PathLike[str] | None) -> tuple[Path | None, dict[str, Any]]:
    """(the weight file, the input changes those weights bring)."""
    if pretrained is None:
        return None, {}
    listed = cfg.get("weights") or {}
    text = str(pretrained)
    if text in listed:
        entry = listed[text]
        ref = HubFile(str(entry.hub), str(entry.file), entry.get("revision"))
        return cached_hub_file(ref, cache_dir), _plain(entry.get("input"))
    if text.startswith(HUB_PREFIX):
        repo_files = {str(w.hub): w for w in listed.values()}
        probe = parse_hub_reference(text, default_file="?")
        entry = repo_files.get(probe.repo)
        ref = parse_hub_reference(text, default_file=str(entry.file) if entry is not None else None)
        same = entry is not None and str(entry.file) == ref.file
        return cached_hub_file(ref, cache_dir), _plain(entry.get("input")) if same else {}
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path, {}
    names = f"; this model's published weights: {', '.join(listed)}" if listed else ""
    raise FileNotFoundError(f"pretrained={text!r}: no such file, and not a weight name or hf-hub:owner/repo/file{names}")


def _plain(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    return OmegaConf.to_container(value) if isinstance(value, DictConfig) else dict(value)
