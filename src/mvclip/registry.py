"""The block registry: names in YAML -> `nn.Module` classes, from mvclip or from plugins.

Blocks arrive three ways, all recorded with their origin so `python -m mvclip blocks` can say
where each came from: mvclip's own `mvclip.blocks` package (built-in), the Python entry-point
group `mvclip.blocks` of installed packages, and an `imports:` list in a model YAML (module
names or `.py` paths). A plugin that fails to import is reported, never fatal to the others.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from torch import nn

from mvclip.contracts import BLOCK_KINDS, BlockTraits, block_traits
from mvclip.errors import ConfigError, RegistryError

ENTRY_POINT_GROUP = "mvclip.blocks"
LIST_COMMAND = "python -m mvclip blocks"

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be imported: its name, what it pointed to, and the error."""

    name: str
    target: str
    error: BaseException

    def __str__(self) -> str:
        return f"{self.name} ({self.target}): {type(self.error).__name__}: {self.error}"


@dataclass(frozen=True)
class BlockEntry:
    """One registered block. `kind` says what input it takes: video `(N, C, H, W)` + frames, text `(B, L, C)`,
    side `(B*T, N, C)` + frames + global token, or one of a side network's other parts (`mvclip.contracts`)."""

    name: str
    cls: type[nn.Module]
    kind: str
    origin: str

    @property
    def source(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"

    @property
    def doc(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @property
    def reparameterizable(self) -> bool:
        return self.traits.reparameterizable

    @property
    def traits(self) -> BlockTraits:
        """What the class declares about itself (`mvclip.contracts`)."""
        return block_traits(self.cls)

    def signature(self) -> inspect.Signature:
        return inspect.signature(self.cls.__init__)

    def parameters(self) -> list[inspect.Parameter]:
        """Constructor parameters a YAML mapping may set (not `self`, not *args/**kwargs)."""
        return [
            p
            for name, p in self.signature().parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def accepts_any_keyword(self) -> bool:
        return any(p.kind is p.VAR_KEYWORD for p in self.signature().parameters.values())

    def describe_parameters(self) -> str:
        parts = []
        for p in self.parameters():
            parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
        return ", ".join(parts)


class BlockRegistry:
    """Name -> block class, with lazy loading of built-ins and entry points."""

    def __init__(self) -> None:
        self._entries: dict[str, BlockEntry] = {}
        self._loaded = False
        self._origin_stack: list[str] = []
        self._imported: dict[str, Any] = {}
        self._importing: set[str] = set()  # plugins whose code is running now: a re-entry is a self-import
        self.plugin_failures: list[PluginFailure] = []

    # -- registering -------------------------------------------------------------------------
    def register(self, name: str, cls: type[nn.Module], *, kind: str = "video", override: bool = False) -> None:
        if kind not in BLOCK_KINDS:
            raise ValueError(f"register_block({name!r}): kind must be one of {BLOCK_KINDS}, got {kind!r}")
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_block({name!r}): expected an nn.Module subclass, got {cls!r}")
        entry = BlockEntry(name=name, cls=cls, kind=kind, origin=self._origin_of(cls))
        taken = self._entries.get(name)
        if taken is not None and not override and taken.source != entry.source:
            raise RegistryError(
                f"block name {name!r} is already registered by {taken.source} ({taken.origin}); "
                f"{entry.source} ({entry.origin}) tried to register it again. Choose another name, "
                f"or pass override=True to replace it deliberately."
            )
        self._entries[name] = entry

    def _origin_of(self, cls: type) -> str:
        if self._origin_stack:
            return self._origin_stack[-1]
        if cls.__module__.startswith("mvclip.blocks"):
            return "built-in"
        return f"module {cls.__module__}"

    @contextlib.contextmanager
    def _origin(self, origin: str) -> Iterator[None]:
        self._origin_stack.append(origin)
        try:
            yield
        finally:
            self._origin_stack.pop()

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        """Import the built-in blocks and every installed `mvclip.blocks` entry point, once."""
        if self._loaded:
            return
        self._loaded = True
        with self._origin("built-in"):
            importlib.import_module("mvclip.blocks")
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(getattr(ep, "dist", None), "name", None)
            origin = f"entry point {ep.name}" + (f" ({dist})" if dist else "")
            try:
                with self._origin(origin):
                    loaded = ep.load()
                # An entry point may name a class directly instead of a module that registers.
                if isinstance(loaded, type) and issubclass(loaded, nn.Module):
                    if not any(e.cls is loaded for e in self._entries.values()):
                        with self._origin(origin):
                            self.register(ep.name, loaded, kind=block_traits(loaded).kind)
            except Exception as error:  # a broken plugin must not hide the others
                failure = PluginFailure(ep.name, ep.value, error)
                self.plugin_failures.append(failure)
                warnings.warn(f"mvclip: block plugin failed to import, its blocks are unavailable: {failure}", stacklevel=2)

    def import_plugin(self, target: str, *, path: str = "imports", base_dir: Path | None = None) -> None:
        """Load an `imports:` entry (a module name or a `.py` file); errors name the entry."""
        self.load()
        key = target
        try:
            if target.endswith(".py"):
                file = Path(target).expanduser()
                if not file.is_absolute() and not file.exists() and base_dir is not None:
                    file = base_dir / file
                file = file.resolve()
                key = str(file)
                if key in self._imported:
                    return
                self._refuse_reentry(key, target, path)
                if not file.is_file():
                    raise FileNotFoundError(f"no such file: {file}")
                digest = hashlib.sha1(key.encode()).hexdigest()[:8]
                module_name = f"mvclip_user_{file.stem}_{digest}"
                spec = importlib.util.spec_from_file_location(module_name, file)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                with self._origin(f"imported file {file}"):
                    self._importing.add(key)
                    try:
                        spec.loader.exec_module(module)
                    except BaseException:
                        sys.modules.pop(module_name, None)
                        raise
                    finally:
                        self._importing.discard(key)
            else:
                if key in self._imported:
                    return
                with self._origin(f"imported module {target}"):
                    module = importlib.import_module(target)
        except (RegistryError, ConfigError):
            raise
        except Exception as error:
            raise ConfigError(
                f"{path}: could not import block plugin {target!r}: {type(error).__name__}: {error}"
            ) from error
        self._imported[key] = module

    def _refuse_reentry(self, key: str, target: str, path: str) -> None:
        """A plugin file whose own code builds a model listing it in `imports:` would import itself forever."""
        if key in self._importing:
            raise ConfigError(
                f"{path}: block plugin {target!r} imports itself: its code builds a model whose `imports:` lists it again; "
                "expected a plugin that only defines and registers blocks (build models elsewhere)"
            )

    # -- looking up --------------------------------------------------------------------------
    def names(self) -> list[str]:
        self.load()
        return sorted(self._entries)

    def entries(self) -> list[BlockEntry]:
        self.load()
        return [self._entries[n] for n in sorted(self._entries)]

    def get(self, name: str, *, path: str | None = None) -> BlockEntry:
        self.load()
        if name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.6)
        where = f"{path}: " if path else ""
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        failed = ""
        if self.plugin_failures:
            failed = " Some block plugins failed to import: " + "; ".join(map(str, self.plugin_failures)) + "."
        raise RegistryError(f"{where}unknown block {name!r}.{hint} Run `{LIST_COMMAND}` to list all registered blocks.{failed}")

    def __contains__(self, name: str) -> bool:
        self.load()
        return name in self._entries

    # -- building ----------------------------------------------------------------------------
    def resolve(self, spec: Any, *, path: str, context: Mapping[str, Any] | None = None) -> tuple[BlockEntry, dict[str, Any]]:
        """Check a `{block: name, **args}` mapping against the block's signature; no module is built.

        `context` holds values the assembler supplies (`dim`, `out_dim`, `num_frames`): each is
        passed only if the block accepts it and the YAML did not set it.
        """
        spec = _plain(spec)
        if not isinstance(spec, Mapping) or not isinstance(spec.get("block"), str):
            raise ConfigError(f"{path}: expected a mapping with a 'block' name, e.g. {{block: st_repmixer, dim: 256}}; got {spec!r}")
        entry = self.get(spec["block"], path=path)
        kwargs = {k: v for k, v in spec.items() if k != "block"}
        accepted = {p.name: p for p in entry.parameters()}
        if not entry.accepts_any_keyword():
            unknown = [k for k in kwargs if k not in accepted]
            if unknown:
                suggestions = {k: difflib.get_close_matches(k, list(accepted), n=1) for k in unknown}
                described = ", ".join(f"{k!r}" + (f" (did you mean {s[0]!r}?)" if s else "") for k, s in suggestions.items())
                raise ConfigError(
                    f"{path}: block {entry.name!r} got unexpected argument(s) {described}. "
                    f"Accepted parameters: {entry.describe_parameters()}"
                )
        for key, value in (context or {}).items():
            if key in accepted and key not in kwargs:
                kwargs[key] = value
        missing = [p.name for p in accepted.values() if p.default is p.empty and p.name not in kwargs]
        if missing:
            raise ConfigError(
                f"{path}: block {entry.name!r} is missing required argument(s) {', '.join(map(repr, missing))}. "
                f"Accepted parameters: {entry.describe_parameters()}"
            )
        return entry, kwargs

    def build(self, spec: Any, *, path: str = "block", context: Mapping[str, Any] | None = None) -> nn.Module:
        entry, kwargs = self.resolve(spec, path=path, context=context)
        return self.instantiate(entry, kwargs, path=path)

    def instantiate(self, entry: BlockEntry, kwargs: Mapping[str, Any], *, path: str) -> nn.Module:
        """Construct a resolved block; constructor errors are re-raised with the config path."""
        try:
            module = entry.cls(**kwargs)
        except (TypeError, ValueError, AssertionError) as error:
            raise ConfigError(
                f"{path}: building block {entry.name!r} failed: {error}. "
                f"Accepted parameters: {entry.describe_parameters()}"
            ) from error
        module.block_name = entry.name  # type: ignore[assignment]
        return module


def _plain(value: Any) -> Any:
    """OmegaConf nodes -> plain Python containers, so signatures and errors see ordinary values."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


REGISTRY = BlockRegistry()


def register_block(name: str, *, kind: str = "video", override: bool = False) -> Callable[[T], T]:
    """Class decorator: make a block available to YAML as `{block: name, ...}`.

    `kind="video"` blocks take `forward(x, frames)` with x of shape `(B*T, C, H, W)`;
    `kind="text"` blocks take `forward(x)` with x of shape `(B, L, C)`;
    `kind="side"` blocks (side networks) take `forward(x, frames, token)` with x of shape `(B*T, N, C)` and the
    backbone's global token `(B*T, C)` or None.
    `kind="side_stem"`, `"side_fusion"` and `"side_head"` are a side network's other parts (`mvclip.contracts`).
    """

    def decorate(cls: T) -> T:
        REGISTRY.register(name, cls, kind=kind, override=override)
        return cls

    return decorate


def list_blocks() -> list[str]:
    """Names of all registered blocks (built-in and plugins)."""
    return REGISTRY.names()


def build_block(spec: Any, *, path: str = "block", **context: Any) -> nn.Module:
    """Build one block from a `{block: name, **args}` mapping."""
    return REGISTRY.build(spec, path=path, context=context)
