"""`model.loss` of a recipe -> the training loss, checked while the module is built (before the first step).

    loss: {class_path: mvclip.losses.DistillationLoss, init_args: {weight: 0.5}}

`class_path` is a dotted import path to a `TrainingLoss` subclass (a bare name means one of `mvclip.losses`), and
`init_args` its keyword arguments, as LightningCLI spells other objects. Absent (null), the loss is VTC.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from mvclip.errors import ConfigError
from mvclip.losses.base import TrainingLoss
from mvclip.losses.vtc import VideoTextContrastiveLoss

__all__ = ["build_loss", "BUILT_IN_LOSSES"]

BUILT_IN_LOSSES = ("VideoTextContrastiveLoss", "DistillationLoss", "SigLIPLoss")
_EXAMPLE = "{class_path: mvclip.losses.DistillationLoss, init_args: {weight: 0.5}}"


def _loss_class(class_path: Any, path: str) -> type[TrainingLoss]:
    if not isinstance(class_path, str) or not class_path.strip():
        raise ConfigError(f"{path}.class_path: expected a dotted class path (e.g. mvclip.losses.SigLIPLoss), got {class_path!r}")
    module_name, _, attr = class_path.rpartition(".")
    module_name = module_name or "mvclip.losses"
    built_in = ", ".join(f"mvclip.losses.{name}" for name in BUILT_IN_LOSSES)
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"{path}.class_path: cannot import {class_path!r} ({error}); built-in losses: {built_in}") from error
    if not (inspect.isclass(cls) and issubclass(cls, TrainingLoss)):
        raise ConfigError(f"{path}.class_path: {class_path!r} is not a mvclip.losses.TrainingLoss subclass; built-in losses: {built_in}")
    return cls


def build_loss(spec: Any = None, *, gather_with_grad: bool = True, path: str = "model.loss") -> TrainingLoss:
    """The loss `spec` describes: None -> VTC; `{class_path, init_args}` (or a bare class path) -> that class.

    `gather_with_grad` (the module's own argument) is passed on to a loss that takes it when `init_args` does not set
    it. Every problem is a one-line `ConfigError` naming `path`.
    """
    if spec is None:
        return VideoTextContrastiveLoss(gather_with_grad=gather_with_grad)
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{path}: expected {_EXAMPLE}, got {spec!r}")
    unknown = sorted(set(spec) - {"class_path", "init_args"})
    if unknown or "class_path" not in spec:
        raise ConfigError(f"{path}: expected the keys class_path and init_args, got {sorted(spec)} (e.g. {_EXAMPLE})")
    cls = _loss_class(spec["class_path"], path)
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise ConfigError(f"{path}.init_args: expected a mapping of {cls.__name__}'s arguments, got {init_args!r}")
    kwargs = {str(k): v for k, v in init_args.items()}
    signature = inspect.signature(cls)
    if "gather_with_grad" in signature.parameters and "gather_with_grad" not in kwargs:
        kwargs["gather_with_grad"] = gather_with_grad
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        accepted = ", ".join(signature.parameters) or "none"
        raise ConfigError(f"{path}.init_args: {cls.__name__} {error} (it accepts: {accepted})") from error
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{path}.init_args: {cls.__name__}: {error}") from error
