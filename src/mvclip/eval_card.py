"""Evaluation protocol options and the evaluation card every result carries.

`EvalProtocol` is the `model.evaluation` section of a recipe (`recipes/eval/*.yaml`): which benchmark, whether dual
softmax is reported beside the plain numbers, and optionally the split hash the test shards must have been built from
(a locked protocol refuses other files). `EvalCard` is what an evaluation produced and under which conditions:
dataset, split hash, frames, sampling, resolution, protocol options and the numbers. The training module keeps the
card of its last evaluation; checkpoints store it under `CARD_KEY`, exports copy it into `metrics.json`, and `test`
writes it as `eval_card.json` in the run's log folder. Cards are plain data: `to_dict` / `from_dict` round-trip exactly.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from mvclip.config_checks import is_real
from mvclip.errors import ConfigError

__all__ = ["CARD_KEY", "EvalProtocol", "EvalCard", "split_record"]

CARD_KEY = "mvclip_eval_card"


@dataclass(frozen=True)
class EvalProtocol:
    """`model.evaluation`: benchmark name, dual softmax (beside the plain numbers, never instead), its inverse
    temperature, an optional split-hash lock, and whether text-video retrieval is evaluated (off for classification)."""

    benchmark: str | None = None
    dual_softmax: bool = False
    dsl_scale: float = 100.0
    split_hash: str | None = None
    retrieval: bool = True

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None, where: str = "model.evaluation") -> EvalProtocol:
        """The protocol of a recipe section; an unknown key or a wrong type is a ConfigError naming `where.<key>`."""
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping such as {{benchmark: msrvtt_1ka, dual_softmax: true}}, got {values!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; expected one of {', '.join(sorted(known))}")
        for key in ("dual_softmax", "retrieval"):
            if key in values and not isinstance(values[key], bool):
                raise ConfigError(f"{where}.{key}: expected true or false, got {values[key]!r}")
        for key in ("benchmark", "split_hash"):
            if values.get(key) is not None and not isinstance(values[key], str):
                raise ConfigError(f"{where}.{key}: expected a string or null, got {values[key]!r}")
        scale = values.get("dsl_scale", 100.0)
        if not is_real(scale) or not scale > 0:
            raise ConfigError(f"{where}.dsl_scale: expected a number > 0, got {scale!r}")
        return cls(**{**dict(values), "dsl_scale": float(scale)})

    def metric_options(self) -> dict[str, Any]:
        """Arguments of `RetrievalMetric` this protocol asks for."""
        return {"dual_softmax": self.dual_softmax, "dsl_scale": self.dsl_scale}

    def check_split(self, record: Mapping[str, Any], where: str) -> None:
        """A locked protocol (`split_hash` set) refuses shards built from other files, naming both hashes."""
        if self.split_hash is None:
            return
        found = record.get("split_hash")
        if found != self.split_hash:
            raise ConfigError(
                f"{where}: shards built from split {found or '(none recorded)'}, but model.evaluation.split_hash locks "
                f"{self.split_hash}; rebuild them from the published files (docs/evaluation.md) or change the lock")


@dataclass
class EvalCard:
    """What an evaluation measured and how: enough to tell whether two numbers are comparable."""

    dataset: str | None
    split_hash: str | None
    stage: str
    frames: int
    sampling: str
    resolution: int
    protocol: dict[str, Any] = field(default_factory=dict)  # dual_softmax, dsl_scale, prompt ensemble, ...
    results: dict[str, float] = field(default_factory=dict)
    split_files: dict[str, str] = field(default_factory=dict)
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # plain JSON types only (what checkpoints and metrics.json hold)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "evaluation card") -> EvalCard:
        """The card of `to_dict`; a missing or unknown key is a ValueError naming `where`."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        required = {"dataset", "split_hash", "stage", "frames", "sampling", "resolution"}
        missing, unknown = sorted(required - set(data)), sorted(set(data) - names)
        if missing or unknown:
            raise ValueError(f"{where}: missing keys {missing}, unknown keys {unknown}; expected {sorted(names)}")
        return cls(**{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()})


def split_record(pattern: str | None) -> dict[str, Any]:
    """The benchmark record (`benchmark`, `split_hash`, `split_files`, ...) of the shards at `pattern`: the options of
    the `manifest.json` in that folder or beside its first shards (local or remote); {} when there is none."""
    if not pattern:
        return {}
    from mvclip.datamodules.shard_reading import manifests_of

    manifests = list(manifests_of(str(pattern).split("::")[0]).values())
    options = (manifests[0].get("options") or {}) if manifests else {}
    return {k: options[k] for k in ("benchmark", "split_hash", "split_files", "class_names", "num_videos", "num_captions")
            if k in options}


def write_card(card: EvalCard, path: str | os.PathLike[str]) -> Path:
    """`eval_card.json`, written atomically."""
    from mvclip.atomic import write_json_atomic

    return write_json_atomic(path, card.to_dict())


def make_card(protocol: EvalProtocol, record: Mapping[str, Any], input_spec: Any, stage: str, results: Mapping[str, float],
              step: int | None = None, zero_shot: Mapping[str, Any] | None = None) -> EvalCard:
    """The card of one evaluation: the shards' record (`split_record`), the model's input as the data module read it
    (`mvclip.input_spec.InputSpec`), the protocol options and the numbers."""
    options: dict[str, Any] = {"dual_softmax": protocol.dual_softmax, "retrieval": protocol.retrieval}
    if protocol.dual_softmax:
        options["dsl_scale"] = protocol.dsl_scale
    if zero_shot:
        from mvclip.zeroshot import templates_of

        templates = zero_shot.get("templates")
        options["prompt_ensemble"] = templates if isinstance(templates, str) else ("default" if templates is None else "custom")
        options["prompt_templates"] = len(templates_of(templates))
    return EvalCard(
        dataset=protocol.benchmark or record.get("benchmark"), split_hash=record.get("split_hash"), stage=stage,
        frames=int(input_spec.frames), sampling=str(input_spec.sampling), resolution=int(input_spec.resolution),
        protocol=options, results={k: float(v) for k, v in results.items()},
        split_files=dict(record.get("split_files") or {}), step=step,
    )
