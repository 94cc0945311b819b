"""Which parameters train: `freeze` patterns, or `trainable` patterns for parameter-efficient runs.

Patterns are matched against parameter names of the VideoTextModel (`text.blocks.0.qkv.weight`,
`video.stages.2.blocks.3.temporal_mixer.branch.conv.weight`, `logit_scale`): a pattern matches
a parameter if it equals the name or a prefix of it at a dot, or if it fnmatch-es it
(`video.stages.*.blocks.*.temporal_mixer`). `temporal` is shorthand for every temporal addition.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from mvclip.contracts import DeclaresFrozen
from mvclip.errors import ConfigError

ALIASES = {"temporal": ["*.temporal_mixer", "*.tpe"]}


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def _pattern_matches(name: str, pattern: str) -> bool:
    """Whether `name` is matched by `pattern`, an alias (`text`) counting as every pattern it stands for."""
    return any(_matches(name, p) for p in ALIASES.get(pattern, [pattern]))


def match_parameters(model: nn.Module, patterns: Sequence[str], *, path: str) -> set[str]:
    """Names of parameters matched by any pattern; a pattern matching nothing is a config error."""
    names = [n for n, _ in model.named_parameters()]
    matched: set[str] = set()
    for i, pattern in enumerate(patterns):
        hits = {n for n in names if _pattern_matches(n, pattern)}
        if not hits:
            tops = sorted({n.split(".")[0] for n in names})
            raise ConfigError(
                f"{path}[{i}]: pattern {pattern!r} matches no parameter of the model; "
                f"top-level parts are {', '.join(tops)} (see `python -m mvclip summary` for the structure)"
            )
        matched |= hits
    return matched


def parts_filter(patterns: Sequence[str], *, path: str) -> Callable[[str], bool]:
    """A predicate on state-dict keys (parameters and buffers) for `patterns` in `freeze`'s syntax (`[text]`)."""
    if not isinstance(patterns, (list, tuple)) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError(f"{path}: expected a non-empty list of parameter patterns such as [text], got {patterns!r}")
    return lambda key: any(_pattern_matches(key, p) for p in patterns)


def frozen_by_design(model: nn.Module) -> set[str]:
    """Parameters a module declares as never trained (`frozen_parameter_names()`, e.g. a side network's backbone)."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, DeclaresFrozen):
            names |= {f"{module_name}.{n}" if module_name else n for n in module.frozen_parameter_names()}
    return names


@dataclass(frozen=True)
class FreezePlan:
    """Frozen parameter names, and the modules whose whole subtree is frozen (kept in eval mode)."""

    frozen_parameters: frozenset[str]
    frozen_modules: tuple[str, ...]


def plan_freezing(model: nn.Module, freeze: Sequence[str] = (), trainable: Sequence[str] | None = None, *, path: str = "model") -> FreezePlan:
    """`freeze` lists what not to train; `trainable`, when given, lists the only things to train."""
    names = {n for n, _ in model.named_parameters()}
    frozen = match_parameters(model, freeze, path=f"{path}.freeze") | frozen_by_design(model)
    if trainable is not None:
        frozen |= names - match_parameters(model, trainable, path=f"{path}.trainable")
    modules = []
    for module_name, module in model.named_modules():
        params = [f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters()]
        parent_frozen = any(module_name.startswith(m + ".") for m in modules)
        if module_name and params and all(p in frozen for p in params) and not parent_frozen:
            modules.append(module_name)
    return FreezePlan(frozenset(frozen), tuple(modules))


def apply_freezing(model: nn.Module, plan: FreezePlan) -> None:
    """No gradients for frozen parameters and eval mode for fully frozen modules (BatchNorm statistics stay)."""
    for name, param in model.named_parameters():
        param.requires_grad_(name not in plan.frozen_parameters)
    for name in plan.frozen_modules:
        model.get_submodule(name).eval()
