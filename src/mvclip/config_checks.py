"""Checks that make a model config fail while it is built, naming the YAML key, instead of deep inside a forward pass.

A config can build every module and still be unusable: an interpolation that refers back to itself, an even or
non-positive convolution kernel (a "same"-padded conv then changes the feature map size, and a residual add fails
later), a non-number logit scale. Each check raises `ConfigError` with the config path and the accepted values.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mvclip.errors import ConfigError

# Block arguments that size a centred ("same"-padded, k // 2 on each side) convolution kernel.
_KERNEL_SIZE_ARG = re.compile(r"(.+_)?kernel_size")
# `small_kernel`-style arguments: a kernel size, or 0 / null to leave that branch out.
_OPTIONAL_KERNEL_ARG = re.compile(r".+_kernel")


def resolve_interpolations(cfg: DictConfig, path: str) -> DictConfig:
    """The config with every `${...}` resolved, so a cycle or a dangling reference is reported here, by key."""
    try:
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        reason = str(getattr(error, "msg", None) or error).splitlines()[0]
        if "Recursive interpolation" in reason:
            reason = "the interpolation refers back to itself (a cycle)"
        raise ConfigError(
            f"{path}.{key}: cannot resolve the interpolation: {reason}; expected a value, or a ${{...}} reference "
            "to another key that does not lead back to this one"
        ) from error


def is_real(value: Any) -> bool:
    """An int or a float, not a bool (YAML's `true` is an int to Python) and not a numeric string."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_real(value: Any) -> bool:
    """`is_real` and finite: what every numeric config value must be before its range is checked."""
    return is_real(value) and math.isfinite(value)


def finite_number(value: Any, path: str, meaning: str) -> float:
    """A real number (int or float, not a bool or a string), finite."""
    if not is_finite_real(value):
        raise ConfigError(f"{path}: expected a finite number ({meaning}), got {value!r}")
    return float(value)


def _odd_kernel_values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_kernel_sizes(block: str, kwargs: Mapping[str, Any], path: str, *, allow_even: bool = False) -> None:
    """Every `kernel_size` / `*_kernel_size` argument a config sets is a positive odd integer (or a list of them);
    a `*_kernel` argument (an optional branch, e.g. `small_kernel`) may also be 0 to leave the branch out.

    A block that pads differently and accepts even kernels sets `allow_even_kernels = True` on its class.
    """
    for name, value in kwargs.items():
        optional = _OPTIONAL_KERNEL_ARG.fullmatch(name) is not None
        if value is None or not (optional or _KERNEL_SIZE_ARG.fullmatch(name)):
            continue
        for item in _odd_kernel_values(value):
            valid_int = isinstance(item, int) and not isinstance(item, bool)
            if valid_int and optional and item == 0:
                continue
            if valid_int and item > 0 and (allow_even or item % 2 == 1):
                continue
            accepted = "a positive odd integer (1, 3, 5, ...)" if not allow_even else "a positive integer"
            if optional:
                accepted += ", or 0 to leave the branch out"
            raise ConfigError(
                f"{path}.{name}: block {block!r} got {value!r}; expected {accepted}: the convolution pads "
                "kernel // 2 on each side, so any other size changes the feature map and fails later"
            )
