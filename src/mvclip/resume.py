"""What may change when a run resumes (or a checkpoint is evaluated or exported), and what must not.

A checkpoint resumes and evaluates its own model: the one described by the config stored in it
(`mvclip.portable_config`), whatever the YAML on disk says now. Its other settings (`model.*` of the recipe) must
match the checkpoint's, because Lightning restores the optimizer and schedule as they were and a changed value would
otherwise be recorded but not used. The exceptions, applied and printed:

- `lr`: the new learning rate wins. Every parameter group's rate and the schedule's base rates are scaled by
  new / old when training resumes, so warmup, cosine decay and the per-group multipliers keep their shape.
- `zero_shot`, `temporal_eval`, `evaluation`: evaluation options, used from the next validation on.

When evaluating (validate, test, predict) only what decides the weights is checked: the model config, and the files
frozen weights were left out of the checkpoint for (`pretrained`, `init_from`).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mvclip.errors import CheckpointError, ConfigError
from mvclip.portable_config import checkpoint_model_config, config_differences, plain_data, resolve_model_spec

# hparams that may differ from the checkpoint's, and what then happens
TAKES_EFFECT = {
    "lr": "the optimizer's learning rates are rescaled to it when training resumes",
    "zero_shot": "an evaluation option, used from the next validation on",
    "temporal_eval": "an evaluation option, used from the next validation on",
    "evaluation": "an evaluation option (benchmark protocol, dual softmax), used from the next validation on",
}
ARCHITECTURE = ("model", "overrides")  # compared as the resolved config they build, not as written
WEIGHT_SOURCES = ("pretrained", "init_from")  # where frozen weights left out of the checkpoint come from
SPEC_KEY = "mvclip_model_spec"  # the `model` / `overrides` as the user wrote them (a path, usually)
OMITTED_KEY = "mvclip_omitted_frozen"


def saved_hparams(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The module arguments a checkpoint was written with (Lightning's private `_...` entries left out)."""
    return {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not str(k).startswith("_")}


def saved_spec(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """`{"model": ..., "overrides": ...}` as the run's recipe gave them (not the stored config they resolved to)."""
    spec = checkpoint.get(SPEC_KEY)
    if isinstance(spec, Mapping):
        return {"model": spec.get("model"), "overrides": spec.get("overrides")}
    hparams = saved_hparams(checkpoint)
    return {"model": hparams.get("model"), "overrides": hparams.get("overrides")}


def same_value(a: Any, b: Any) -> bool:
    """Equality that treats lists and tuples alike and ints and floats by value (YAML and checkpoints differ there)."""
    return not config_differences(plain_data(a), plain_data(b))


def hparam_conflicts(saved: Mapping[str, Any], current: Mapping[str, Any], *, training: bool,
                     omitted_frozen: bool) -> tuple[list[str], list[str]]:
    """(errors, notices) for `model.*` values that differ from the checkpoint's; the model config is checked apart."""
    errors, notices = [], []
    for key in sorted(set(saved) & set(current)):
        if str(key).startswith("_") or key in ARCHITECTURE or same_value(saved[key], current[key]):
            continue
        change = f"model.{key}: {current[key]!r} here, {saved[key]!r} in the checkpoint"
        if key in TAKES_EFFECT:
            if training or key != "lr":
                notices.append(f"{change}; {TAKES_EFFECT[key]}")
        elif training or (key in WEIGHT_SOURCES and omitted_frozen):
            errors.append(change)
    return errors, notices


def conflict_error(path: str | os.PathLike[str], errors: list[str], *, training: bool) -> ConfigError:
    what = "resuming" if training else "evaluating"
    return ConfigError(
        f"{path}: {'; '.join(errors)}. A checkpoint keeps its run's settings when {what} (only "
        f"{', '.join('model.' + k for k in TAKES_EFFECT)} may change): drop the override, or start a new run from "
        f"these weights with --model.init_from={path} instead of --ckpt_path"
    )


def model_config_to_build(checkpoint: Mapping[str, Any], path: str | os.PathLike[str], spec: Mapping[str, Any],
                          warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The stored model config to rebuild from, given the `model`/`overrides` now asked for; None for a checkpoint
    that stores none. The same spec as the run's (its YAML maybe edited or moved since) gets the stored config with a
    warning; another spec must resolve to the same config, or it is an error naming `model.model`."""
    stored = checkpoint_model_config(checkpoint)
    if stored is None:
        return None
    try:
        differences = config_differences(stored, resolve_model_spec(spec["model"], spec.get("overrides")))
        problem = f"differs from the model config stored in the checkpoint ({differences[0]})" if differences else None
    except ConfigError as error:
        differences, problem = ["unreadable"], f"cannot be used ({error})"
    if not differences:
        return stored
    if same_value(spec, saved_spec(checkpoint)):
        warn(f"{_describe(spec)} {problem}; using the copy stored in {path}")
        return stored
    raise ConfigError(
        f"{path}: model.model: {_describe(spec)} {problem}; a checkpoint resumes and evaluates its own model (stored "
        f"in it). Drop --model.model/--model.overrides, or start a new run from these weights with --model.init_from={path}"
    )


def _describe(spec: Mapping[str, Any]) -> str:
    model = spec.get("model")
    text = f"model {model}" if isinstance(model, (str, Path)) else "the model mapping"
    return text + (f" with overrides {dict(spec['overrides'])}" if spec.get("overrides") else "")


def module_from_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike[str],
                           warn: Callable[[str], None] = print) -> Any:
    """A `VideoTextModule` rebuilt from a checkpoint's stored config and arguments (for export). Files the
    checkpoint does not need (`pretrained`/`init_from` when it omitted no frozen weights) are not read."""
    from mvclip.lightning_module import VideoTextModule

    hparams = saved_hparams(checkpoint)
    if "model" not in hparams:
        raise CheckpointError(f"{path}: no model hyperparameters; was it written by `python -m mvclip fit`?")
    stored = model_config_to_build(checkpoint, path, saved_spec(checkpoint), warn)
    if stored is None:
        warn(f"{path} stores no model config (written by an older mvclip); rebuilding from {_describe(saved_spec(checkpoint))} as it is now")
    else:
        hparams.update(model=stored, overrides=None)
    if not checkpoint.get(OMITTED_KEY):
        hparams.update({key: None for key in WEIGHT_SOURCES if key in hparams})
    module = VideoTextModule(**hparams)
    module.model_spec = saved_spec(checkpoint)
    return module


# -- while Lightning restores a checkpoint --------------------------------------------------------------------------
def relocate_checkpoint_callbacks(checkpoint: dict[str, Any], trainer: Any, ckpt_path: str | os.PathLike[str] | None) -> None:
    """A run folder moved since the checkpoint was written: point each `ModelCheckpoint`'s saved paths at its new
    folder, so Lightning restores them (it keeps them only when the folder is unchanged) and the resumed run goes on
    writing `last.ckpt` instead of starting `last-v1.ckpt` beside it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    if ckpt_path is None or not Path(ckpt_path).is_file():
        return
    resumed_dir = Path(ckpt_path).resolve().parent
    states = checkpoint.get("callbacks") or {}
    for callback in getattr(trainer, "checkpoint_callbacks", []):
        state = states.get(callback.state_key) if isinstance(callback, ModelCheckpoint) else None
        old, new = (state or {}).get("dirpath"), callback.dirpath if state else None
        if not old or not new or old == new or Path(new).resolve() != resumed_dir:
            continue

        def moved(value: Any, old: str = str(old), new: str = str(new)) -> Any:
            if isinstance(value, str) and value and Path(value).parent == Path(old):
                return str(Path(new) / Path(value).name)
            return value

        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in state:
                state[key] = moved(state[key])
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}
        state["dirpath"] = new


def rescale_learning_rates(trainer: Any, ratio: float) -> None:
    """Scale every optimizer group's learning rate and every scheduler's base rates by `ratio` (after a restore)."""
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
        if hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [lr * ratio for lr in scheduler._last_lr]


def check_restored_checkpoint(module: Any, checkpoint: dict[str, Any]) -> float | None:
    """`VideoTextModule.on_load_checkpoint`: refuse a checkpoint of another model or other settings (the message names
    the keys), print what changes, re-point moved checkpoint folders. Returns new lr / old lr when lr changed."""
    trainer = module._trainer  # None for `VideoTextModule.load_from_checkpoint`: loading weights, not resuming
    path = getattr(trainer, "ckpt_path", None) or "the checkpoint"
    training = trainer is not None and str(getattr(trainer.state.fn, "value", trainer.state.fn)) == "fit"
    stored = checkpoint_model_config(checkpoint)
    if stored is not None:
        differences = config_differences(stored, module.portable_model_config)
        if differences:
            raise ConfigError(
                f"{path}: the checkpoint's model differs from this module's ({differences[0]}); a checkpoint resumes and "
                "evaluates its own model: build the module from the config stored in it (the command line does)"
            )
    saved = saved_hparams(checkpoint)
    errors, notices = hparam_conflicts(saved, dict(module.hparams), training=training,
                                       omitted_frozen=bool(checkpoint.get(OMITTED_KEY)))
    if errors:
        raise conflict_error(path, errors, training=training)
    if trainer is not None:
        relocate_checkpoint_callbacks(checkpoint, trainer, getattr(trainer, "ckpt_path", None))
    for line in notices:
        if trainer is None or trainer.is_global_zero:
            print(f"resuming from {path}: {line}")
    if training and "lr" in saved and not same_value(saved["lr"], module.hparams.lr):
        return float(module.hparams.lr) / float(saved["lr"])
    return None
