"""Loading weights safely (safetensors, or torch.load with weights_only=True)."""
from __future__ import annotations

import importlib
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mvclip.errors import CheckpointError, ConfigError

MODULE_PREFIX = "model."  # VideoTextModule keeps the VideoTextModel as `self.model`


def load_torch_file(path: str | os.PathLike[str]) -> Any:
    """`torch.load(weights_only=True)` with errors that say what is wrong with the file: truncated or corrupted
    (empty, cut short, not a checkpoint at all), or refused because it holds Python objects that could run code."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: truncated or corrupted (the file is empty, 0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_global(str(error))
        if refused is not None and (zipfile.is_zipfile(path) or _importable(refused)):
            raise CheckpointError(
                f"{path}: refused: it holds a Python object ({refused}) that loading could execute; mvclip loads "
                "weights with weights_only=True and never runs code from a file (save tensors, or use safetensors)"
            ) from error
        raise CheckpointError(f"{path}: truncated or corrupted ({path.stat().st_size} bytes): its data cannot be unpickled") from error
    except Exception as error:  # zip without its directory, EOF, a pickle of garbage
        raise CheckpointError(
            f"{path}: truncated or corrupted ({path.stat().st_size} bytes): {type(error).__name__}: {_first_line(error)}"
        ) from error


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a cut or damaged file is reported as such, with its name."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError (not an OSError)
        if isinstance(error, OSError):
            raise
        raise CheckpointError(f"{path}: truncated or corrupted safetensors file: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    """The first sentence of an error message (torch's go on for a paragraph)."""
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(error).__name__


def _refused_global(message: str) -> str | None:
    """The `module.name` a weights-only unpickler refused, from torch's message."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def _importable(qualified: str) -> bool:
    """Whether `module.attr` names something real: a refusal of a name cut in half means a cut file, not a threat."""
    module, _, attr = qualified.rpartition(".")
    try:
        return hasattr(importlib.import_module(module), attr)
    except Exception:
        return False


def read_state_dict(path: str | os.PathLike[str], *, _depth: int = 0) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, a plain state dict, or a Lightning checkpoint (its `state_dict`, `model.` stripped).

    A Lightning checkpoint of ours does not store frozen weights it loaded from its own `init_from`
    (`mvclip_omitted_frozen`): they are read back from that file here, following the chain, so a run started from
    such a checkpoint gets them (before, `init_strict: false` left them silently at their random init)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    checkpoint = obj = load_torch_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
        if any(k.startswith(MODULE_PREFIX) for k in obj):
            obj = {k[len(MODULE_PREFIX):]: v for k, v in obj.items() if k.startswith(MODULE_PREFIX)}
        obj = {**_omitted_frozen(checkpoint, path, _depth), **obj}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path}: expected a state dict of tensors (or a Lightning checkpoint with one)")
    return obj


_MAX_CHAIN = 8  # init_from -> init_from -> ...: deeper than this is a loop


def _omitted_frozen(checkpoint: dict, path: Path, depth: int) -> dict[str, torch.Tensor]:
    """The frozen tensors a checkpoint left out, from the `init_from` it was trained with (those that file holds;
    weights from `pretrained` are not files of ours and stay missing, as the load report then says)."""
    omitted = [k[len(MODULE_PREFIX):] for k in checkpoint.get("mvclip_omitted_frozen") or [] if k.startswith(MODULE_PREFIX)]
    hparams = checkpoint.get("hyper_parameters")
    source = hparams.get("init_from") if isinstance(hparams, dict) else None
    if not omitted or not source:
        return {}
    if depth >= _MAX_CHAIN:
        raise ConfigError(f"{path}: its init_from chain is longer than {_MAX_CHAIN} checkpoints (a loop?)")
    if not Path(source).is_file():
        raise ConfigError(f"{path}: {len(omitted)} frozen tensors (e.g. {omitted[0]}) were not saved in it; they come "
                          f"from its init_from {source}, which is not found (run from the folder it was trained in)")
    state = read_state_dict(source, _depth=depth + 1)
    return {k: state[k] for k in omitted if k in state}


@dataclass
class LoadReport:
    """What a weight file did to a model: loaded keys, keys the model has but the file lacks, and extras."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")

        parts = [f"loaded {len(self.loaded)} tensors"]
        for label, keys in (("missing (kept as initialized)", self.missing), ("unexpected (ignored)", self.unexpected), ("shape mismatch", self.mismatched)):
            if keys:
                parts.append(f"{label}: {head(keys)}")
        return "; ".join(parts)


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True,
                 include: Callable[[str], bool] | None = None) -> LoadReport:
    """Load an mvclip checkpoint into `model`; strict unless told otherwise, with a report either way. `include`
    keeps only the tensors it accepts, on both sides (a part of the model from another run: its text tower, say)."""
    state = read_state_dict(path)
    own = model.state_dict()
    if include is not None:
        state = {k: v for k, v in state.items() if include(k)}
        own = {k: v for k, v in own.items() if include(k)}
    report = LoadReport()
    usable, mismatched = {}, set()
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
            mismatched.add(key)
        else:
            usable[key] = value
            report.loaded.append(key)
    # load first: a module's load hook may fill keys the file lacks (a side network's copy of the backbone head)
    result = model.load_state_dict(usable, strict=False)
    report.missing = [k for k in result.missing_keys if k not in mismatched and k in own]
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise ConfigError(f"{path}: does not match the model (strict loading): {report}. Pass strict=False (init_strict: false) to load what fits.")
    return report
