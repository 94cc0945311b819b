"""What a model takes as input: one typed description, read by everything that turns a video into a model input.

A model config's `input` section (with `video.num_frames` for the clip length) is the one place that says how many
frames, at what resolution, sampled how, in what value range and with what mean/std normalization a model expects.
The weights decide it (MobileCLIP v1 and MobileCLIP2-S0/S2/B: [0, 1] with no mean/std; OpenAI-normalized models:
CLIP's mean/std), so it lives with the model: the builder attaches it to the model (`model.input_spec`),
checkpoints and exports carry it (`preprocess.json`), and the data module, `export`, `embed` and
`create_model`'s preprocess read it. A data section that states a different value is an error (`conflicts`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from mvclip.config_checks import is_real
from mvclip.errors import ConfigError

SAMPLING_MODES = ("segments", "fps", "consecutive")
VALUE_RANGES = ((0.0, 1.0), (0.0, 255.0))
# CLIP's normalization, for models trained on OpenAI-normalized inputs (e.g. MobileCLIP2-S3/S4)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# keys of `preprocess.json` that describe, for people, what the numbers mean; not part of the description
DESCRIPTIVE_KEYS = ("resize", "pixels")


@dataclass(frozen=True)
class InputSpec:
    """How a video becomes this model's input clip `(T, 3, resolution, resolution)`.

    frames: clip length T (the model config's `video.num_frames`).
    resolution: side of the square centre crop.
    mean, std: per-channel normalization after scaling to `value_range`; None for none (MobileCLIP).
    sampling: `segments` | `fps` | `consecutive` (`mvclip.datamodules.sampling`); evaluation takes segment centres.
    sampling_fps: frames per second `fps` sampling reads.
    stride: step between the frames `consecutive` sampling reads.
    short_side: short side frames are decoded to before the crop (None: `resolution`).
    value_range: pixel values before normalization, [0, 1] or [0, 255].
    """

    frames: int = 8
    resolution: int = 256
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    sampling: str = "segments"
    sampling_fps: float = 2.0
    stride: int = 4
    short_side: int | None = None
    value_range: tuple[float, float] = (0.0, 1.0)

    def check(self, where: str) -> None:
        """Raise a ConfigError naming `where.<field>` for the first value that is not usable."""
        for name in ("frames", "resolution", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}.{name}: expected a positive integer, got {value!r}")
        if self.short_side is not None and (isinstance(self.short_side, bool) or not isinstance(self.short_side, int) or self.short_side < 1):
            raise ConfigError(f"{where}.short_side: expected a positive integer or null, got {self.short_side!r}")
        if self.sampling not in SAMPLING_MODES:
            raise ConfigError(f"{where}.sampling: expected one of {', '.join(SAMPLING_MODES)}, got {self.sampling!r}")
        if not isinstance(self.sampling_fps, (int, float)) or isinstance(self.sampling_fps, bool) or self.sampling_fps <= 0:
            raise ConfigError(f"{where}.sampling_fps: expected a positive number, got {self.sampling_fps!r}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError(f"{where}: mean and std go together (both three numbers, or both null for no normalization)")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or not all(isinstance(v, (int, float)) for v in value)):
                raise ConfigError(f"{where}.{name}: expected three numbers (R, G, B), got {list(value)!r}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ConfigError(f"{where}.std: expected positive numbers, got {list(self.std)!r}")
        if tuple(self.value_range) not in VALUE_RANGES:
            raise ConfigError(f"{where}.value_range: expected [0, 1] or [0, 255], got {list(self.value_range)!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "input") -> InputSpec:
        """From a config section, a checkpoint's record or a `preprocess.json`; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - set(DESCRIPTIVE_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(sorted(known))}")
        kwargs = {k: _plain(v) for k, v in values.items() if k in known and (v is not None or k in ("mean", "std", "short_side"))}
        spec = cls(**kwargs)
        spec.check(where)
        return spec

    @classmethod
    def from_model_config(cls, cfg: Mapping[str, Any], path: str = "model") -> InputSpec:
        """A model config's `input` section, its clip length from `video.num_frames` (or `input.frames`; both: equal)."""
        section = cfg.get("input") or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"{path}.input: expected a mapping such as {{resolution: 256, mean: null, std: null}}, got {section!r}")
        values = dict(section)
        video = cfg.get("video") or {}
        frames = video.get("num_frames") if isinstance(video, Mapping) else None
        if frames is not None and values.get("frames") is not None and values["frames"] != frames:
            raise ConfigError(
                f"{path}.input.frames: {values['frames']!r} differs from {path}.video.num_frames ({frames!r}); "
                "the clip length is said once: drop one of them"
            )
        if frames is not None:
            values["frames"] = frames
        return cls.from_mapping(values, f"{path}.input")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML data (lists, not tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def describe(self) -> dict[str, Any]:
        """`to_dict()` plus the words a deployer reads (`preprocess.json`)."""
        low, high = self.value_range
        pixels = f"RGB in [{low:g}, {high:g}]" + (", then (x - mean) / std" if self.mean is not None else "")
        return {**self.to_dict(), "resize": "bilinear, short side to resolution, centre crop", "pixels": pixels}

    def conflicts(self, stated: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """(key, stated, this description's) as text, for each value a data section states (not None) that differs."""
        out = []
        for key, value in stated.items():
            if value is None or key not in _DEFAULTS:
                continue
            mine = getattr(self, key)
            if _plain(value) != mine and not _same_number(value, mine):
                out.append((key, _show(_plain(value)), _show(mine)))
        return out

    def with_values(self, **values: Any) -> InputSpec:
        """A copy with some fields changed (checked)."""
        spec = replace(self, **{k: _plain(v) for k, v in values.items()})
        spec.check("input")
        return spec


_DEFAULTS = {f.name: f.default for f in fields(InputSpec)}


def _plain(value: Any) -> Any:
    """Lists (YAML, JSON) as tuples, so descriptions compare and hash alike whatever they were read from."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return tuple(float(v) if is_real(v) else v for v in value)
    return value


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and float(a) == float(b)


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)
