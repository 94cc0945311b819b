"""Sweep files: reading and checking one (`load_sweep`), `--set` assignments, and values as command-line text.

What a sweep file may hold is described in `mvclip.sweep`; every mistake is a `ConfigError` naming the file and key.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mvclip.errors import ConfigError


SWEEP_KEYS = ("name", "base", "description", "seeds", "checkpoint", "overrides", "variants", "baseline")
CHECKPOINT_KINDS = ("last", "best")
# Set by the sweep for every run: a sweep file (or --set) may not set them.
RESERVED_KEYS = {
    "config": "the recipe is `base` (or --config)",
    "seed_everything": "the sweep sets it from `seeds`",
    "trainer.logger": "the sweep points the logger at the run directory",
    "trainer.logger.init_args.save_dir": "the sweep sets it (the sweep root, see --root)",
    "trainer.logger.init_args.name": "the sweep sets it (the variant name)",
    "trainer.logger.init_args.version": "the sweep sets it (seed<S>)",
    "trainer.default_root_dir": "the run directory is the logger's",
}
SECTIONS = ("trainer", "model", "data", "optimizer", "lr_scheduler")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


@dataclass
class Sweep:
    """A validated sweep file (with the command line's --config/--set/--only applied)."""

    name: str
    base: str
    seeds: list[int]
    variants: dict[str, dict[str, Any]]
    overrides: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = "last"
    baseline: str | None = None
    description: str = ""
    path: Path | None = None
    only: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # --set: over everything else

    def variant_overrides(self, variant: str) -> dict[str, Any]:
        """The common overrides, then the variant's, then --set's (the later wins on the same key)."""
        return {**self.overrides, **self.variants[variant], **self.extra}

    @property
    def selected(self) -> list[str]:
        return [v for v in self.variants if not self.only or v in self.only]


def _check_overrides(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of dotted keys to values (e.g. {{trainer.max_steps: 150}}), got {value!r}")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise ConfigError(f"{where}: {key!r} is not a dotted config key (like data.sampling or model.overrides)")
        for reserved, why in RESERVED_KEYS.items():
            if key == reserved or key.startswith(reserved + "."):
                raise ConfigError(f"{where}.{key}: may not be set in a sweep: {why}")
        if key in SECTIONS:
            raise ConfigError(
                f"{where}.{key}: a whole section would replace the recipe's; give dotted keys instead "
                f"(e.g. {key}.{next(iter(val)) if isinstance(val, dict) and val else 'x'}: ...)"
            )
        out[key] = val
    return out


def parse_assignments(items: Iterable[str], where: str = "--set") -> dict[str, Any]:
    """`key=value` strings (value read as YAML: `150`, `fps`, `[text]`, `{a.b: c}`) -> a mapping."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"{where} {item!r}: expected KEY=VALUE (e.g. --set trainer.max_steps=20)")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"{where} {item!r}: the value is not valid YAML: {error}") from error
    return _check_overrides(out, where)


def load_sweep(
    path: str | os.PathLike[str],
    *,
    config: str | None = None,
    extra: dict[str, Any] | None = None,
    only: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
) -> Sweep:
    """Read and validate a sweep file; nothing runs before this has passed. Errors name the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level (name, base, seeds, overrides, variants, ...)")
    unknown = [k for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(SWEEP_KEYS)}")

    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{path}: name: {name!r} must be letters, digits, '_', '-' or '.' (it names the output folder)")

    base = config or data.get("base")
    if not base:
        raise ConfigError(f"{path}: base: no recipe; set `base:` in the sweep file or pass --config")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a recipe path, got {base!r}")
    if not Path(base).is_file():
        beside = path.parent / base
        if config is None and beside.is_file():
            base = str(beside)
        else:
            where = "--config" if config else f"{path}: base"
            raise ConfigError(f"{where}: recipe not found: {base}")

    where = "--seeds" if seeds is not None else f"{path}: seeds"
    seeds = list(seeds) if seeds is not None else data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"{where}: expected a non-empty list of integers (e.g. [0, 1]), got {seeds!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: every seed must be a non-negative integer, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: {seeds!r} repeats a seed")

    checkpoint = data.get("checkpoint", "last")
    if checkpoint not in CHECKPOINT_KINDS:
        raise ConfigError(f"{path}: checkpoint: expected one of {', '.join(CHECKPOINT_KINDS)}, got {checkpoint!r}")

    description = data.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"{path}: description: expected text, got {description!r}")

    overrides = _check_overrides(data.get("overrides"), f"{path}: overrides")

    variants_raw = data.get("variants")
    if not isinstance(variants_raw, dict) or not variants_raw:
        raise ConfigError(f"{path}: variants: expected a non-empty mapping of variant name -> overrides, got {variants_raw!r}")
    variants: dict[str, dict[str, Any]] = {}
    for vname, vover in variants_raw.items():
        if not isinstance(vname, str) or not _NAME.match(vname):
            raise ConfigError(f"{path}: variants: {vname!r} is not a valid name (letters, digits, '_', '-', '.'; it names a folder)")
        variants[vname] = _check_overrides(vover, f"{path}: variants.{vname}")

    baseline = data.get("baseline")
    if baseline is not None and baseline not in variants:
        raise ConfigError(f"{path}: baseline: {baseline!r} is not one of the variants ({', '.join(variants)})")

    for wanted in only:
        if wanted not in variants:
            raise ConfigError(f"--only {wanted}: not a variant of {path} ({', '.join(variants)})")
    return Sweep(name=name, base=str(base), seeds=list(seeds), variants=variants, overrides=overrides,
                 checkpoint=checkpoint, baseline=baseline, description=description.strip(), path=path, only=list(only),
                 extra=dict(extra or {}))


def _float_text(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:  # YAML 1.1 reads 1e-05 as a string; 1.0e-05 is a float
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def cli_value(value: Any, nested: bool = False) -> str:
    """A value as YAML flow text that jsonargparse reads back unchanged: `150`, `fps`, `[text]`, `{"a.b": "c"}`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, str):
        if not nested and value and not value[0].isspace() and not value[-1].isspace():
            try:
                if yaml.safe_load(value) == value and not any(c in value for c in "{}[],#&*!|>'\"%@`"):
                    return value
            except yaml.YAMLError:
                pass
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {cli_value(v, True)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(cli_value(v, True) for v in value) + "]"
    raise ConfigError(f"cannot pass a {type(value).__name__} ({value!r}) on the command line")
