"""Fused, verified, deployable exports: what turns a checkpoint into a model a phone can run.

An export folder holds
- `model.safetensors`: the fused weights;
- `model.yaml`: the model config with `inference_mode: true`, which builds every block directly in
  its fused form (`mvclip.load_export` needs no training code path);
- `preprocess.json`: frames, resolution, sampling and normalization the model was trained with;
- `video.onnx`, `text.onnx`: the encoders as ONNX graphs with a dynamic batch axis, checked with
  onnxruntime against PyTorch;
- `metrics.json`: parameters, FLOPs, unfused vs fused CPU latency, the verification numbers, and
  what the caller adds (validation results, training time and memory).

The folder is written under a temporary name and swapped into place, so a reader sees either the
old export or the whole new one. If the fused model does not match the unfused one, nothing is
written and `ExportError` names the first block whose fused form disagrees. An export never deletes
what it did not write (`mvclip.export_folder`): it refuses a folder of other files or the
checkpoint's own folder, and replaces only an earlier export.

This module writes the folder and re-exports the rest, split by concern: `mvclip.export_verify` (parity checks and
the failure locator), `mvclip.export_measure` (parameters, FLOPs, latency), `mvclip.export_onnx` (the ONNX graphs)
and `mvclip.export_folder` (the marker and the atomic swap).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from mvclip.builder import build_model
from mvclip.checkpoints import load_safetensors, load_torch_file
from mvclip.errors import CheckpointError
from mvclip.export_folder import MARKER_NAME, ExportTargetError, check_export_target, replace_export, write_marker
from mvclip.export_measure import count_flops, interleaved_latency_ms, measure
from mvclip.export_onnx import ONNX_MAX_ABS_DIFF, ONNX_OPSET, export_onnx
from mvclip.export_targets import FORMATS, Quantize, check_formats, export_targets
from mvclip.extras import installed, missing_note
from mvclip.fusion import compare_outputs, fuse
from mvclip.model import VideoTextModel
from mvclip.portable_config import portable_config
from mvclip.export_verify import (
    MAX_ABS_DIFF, MIN_COSINE, Check, ExportError, encoders, locate_fusion_failure, unfolded_layers, verify_fused,
)

__all__ = [
    "EXPORT_FILES", "FORMATS", "MAX_ABS_DIFF", "Quantize", "MIN_COSINE", "ONNX_MAX_ABS_DIFF", "ONNX_OPSET", "Check", "ExportError",
    "count_flops", "export_checkpoint", "export_dir_for", "export_model", "export_onnx", "fused_config",
    "interleaved_latency_ms", "load_export", "locate_fusion_failure", "measure", "model_from_checkpoint",
    "random_inputs", "read_checkpoint", "unfolded_layers", "verify_fused",
]

EXPORT_FILES = ("model.safetensors", "model.yaml", "preprocess.json", "metrics.json")


def export_dir_for(checkpoint: str | os.PathLike[str]) -> Path:
    """`runs/x/checkpoints/last.ckpt` -> `runs/x/checkpoints/last.export/`."""
    path = Path(checkpoint)
    return path.with_name(path.stem + ".export")


def fused_config(model_config: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The model config that rebuilds the fused model directly; relative `.py` imports made absolute."""
    return {**portable_config(model_config, base_dir), "inference_mode": True}


def load_export(folder: str | os.PathLike[str]) -> VideoTextModel:
    """The fused model of an export folder, built in inference form and loaded strictly from safetensors."""
    folder = Path(folder)
    for name in ("model.yaml", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: not an mvclip export (missing {name}); make one with `python -m mvclip export --ckpt_path ...`")
    model = build_model(folder / "model.yaml", path=f"{folder / 'model.yaml'}")
    model.load_state_dict(load_safetensors(folder / "model.safetensors"), strict=True)
    return model.eval().requires_grad_(False)


def _state_for_safetensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def export_model(
    model: VideoTextModel,
    model_config: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    inputs: Mapping[str, torch.Tensor],
    *,
    config_dir: str | os.PathLike[str] | None = None,
    preprocess: Mapping[str, Any] | None = None,
    extra_metrics: Mapping[str, Any] | None = None,
    onnx: bool = True,
    latency_repeats: int = 10,
    checkpoint: str | os.PathLike[str] | None = None,
    formats: Sequence[str] | None = None,
    clip_lengths: Sequence[int] | None = None,
    quantize: Quantize | None = None,
) -> dict[str, Any]:
    """Fuse a copy of `model`, verify it on `inputs` ({"video": (B,T,3,H,W), "text": (B,L)}), write the folder.

    `model` itself is not changed (it is deep-copied before anything is put in eval mode). `out_dir` must be new,
    empty or an earlier export, and must not hold `checkpoint` (`ExportTargetError` otherwise, before any work).
    `formats` are the deployment targets (`mvclip.export_targets.FORMATS`; default: ONNX unless `onnx=False`, skipped
    with a note when its extra is missing); a target named here whose extra is missing is an error. `clip_lengths` are
    the clip lengths the video graphs are exported for and checked at (default: the held-out batch's). `quantize` adds
    int8 graphs to the targets that have a quantizer, refused by its retrieval gate (`mvclip.export_gate`) unless overridden.
    Returns the metrics written to `metrics.json`.
    """
    from safetensors.torch import save_file

    explicit = formats is not None
    formats = check_formats(formats if explicit else (["onnx"] if onnx else []), require_extras=explicit)
    if quantize is not None and not set(formats) & {"onnx", "executorch"}:
        raise ValueError(f"quantize int8: needs an onnx or executorch target (formats: {', '.join(formats) or 'none'})")
    out_dir = Path(out_dir)
    protect = [checkpoint] if checkpoint is not None else []
    check_export_target(out_dir, protect)
    reference = copy.deepcopy(model).cpu().eval()  # keeps requires_grad, so "trainable" counts stay right
    inputs = {k: v.cpu() for k, v in inputs.items() if v is not None}
    fused = fuse(reference)
    checks = verify_fused(reference, fused, inputs)
    config = fused_config(model_config, config_dir)

    tmp = _make_temporary_folder(out_dir)
    try:
        save_file(_state_for_safetensors(fused), str(tmp / "model.safetensors"))
        (tmp / "model.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
        preprocess = dict(preprocess or {}) or model.input_spec.describe()  # a checkpoint's record, else the model's own
        (tmp / "preprocess.json").write_text(json.dumps(preprocess, indent=2) + "\n")
        rebuilt = load_export(tmp)
        with torch.no_grad():
            for name, encode in encoders(fused).items():
                report = compare_outputs(encode(fused, inputs[name]), encode(rebuilt, inputs[name]))
                check = Check.of(f"reloaded/{name}", report)
                if not check.ok:
                    raise ExportError(f"the export folder does not rebuild the fused model: {check}")
                checks.append(check)
        targets: dict[str, Any] = {}
        if not explicit and onnx and not installed("onnx"):
            print(missing_note("onnx", "ONNX graphs"), file=sys.stderr)
        elif formats:
            target_checks, targets = export_targets(rebuilt, inputs, tmp, formats, clip_lengths, quantize)
            checks += target_checks
        metrics: dict[str, Any] = dict(extra_metrics or {})
        # the fused model as the folder rebuilds it (a training copy in channels_last would lend it its layout)
        metrics.update(measure(reference, rebuilt, inputs["video"], inputs.get("text"), latency_repeats))
        metrics["input"] = {"frames": int(inputs["video"].shape[1]), "resolution": int(inputs["video"].shape[-1])}
        metrics["checks"] = [asdict(c) for c in checks]
        metrics["targets"] = targets
        metrics["files"] = sorted(p.name for p in tmp.iterdir())
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_marker(tmp, checkpoint)
        tmp.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared
        for path in tmp.rglob("*"):  # packages that are folders (.mlpackage) included
            path.chmod(0o755 if path.is_dir() else 0o644)
        check_export_target(out_dir, protect)  # again: the folder may have changed while we verified
        replace_export(tmp, out_dir)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _cannot_write(out_dir, error) from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metrics


def _make_temporary_folder(out_dir: Path) -> Path:
    """A private folder beside `out_dir` to assemble the export in; a place that cannot be written is reported as such."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as error:
        raise _cannot_write(out_dir, error) from error


def _cannot_write(out_dir: Path, error: OSError) -> ExportTargetError:
    earlier = " and the earlier export there is untouched" if (out_dir / MARKER_NAME).is_file() else ""
    where = f" ({error.filename})" if error.filename and str(error.filename) != str(out_dir) else ""
    return ExportTargetError(f"{out_dir}: cannot write the export: {error.strerror or error}{where}; nothing was written{earlier}")


# -- from a Lightning checkpoint -----------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A Lightning checkpoint loaded safely (weights_only=True), with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = load_torch_file(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (expected a dict with `state_dict`)")
    return ckpt


def model_from_checkpoint(template: VideoTextModel, ckpt: Mapping[str, Any], path: str | os.PathLike[str]) -> VideoTextModel:
    """A copy of `template` with the checkpoint's weights; frozen pretrained tensors the checkpoint omits
    (`mvclip_omitted_frozen`) keep the template's values, as `VideoTextModule.on_load_checkpoint` does."""
    model = copy.deepcopy(template).cpu()
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    omitted = {k[len(prefix):] for k in ckpt.get("mvclip_omitted_frozen", [])}
    result = model.load_state_dict(state, strict=False)
    missing = sorted(set(result.missing_keys) - omitted)
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: does not fit the model: missing {missing[:5]}, unexpected {sorted(result.unexpected_keys)[:5]}")
    return model


def random_inputs(frames: int, resolution: int, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded batch of [0, 1] clips and a few captions, for exports made without data at hand."""
    from mvclip.tokenizer import tokenize

    generator = torch.Generator().manual_seed(seed)
    video = torch.rand(batch, frames, 3, resolution, resolution, generator=generator)
    captions = ["a red circle moves to the left", "a blue square grows", "a person is cooking", "a dog runs on the beach"]
    return {"video": video, "text": tokenize((captions * batch)[:batch])}


def export_checkpoint(
    module: Any,
    checkpoint: str | os.PathLike[str],
    inputs: Mapping[str, torch.Tensor],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    kind: str = "checkpoint",
    extra_metrics: Mapping[str, Any] | None = None,
    onnx: bool = True,
    latency_repeats: int = 10,
    formats: Sequence[str] | None = None,
    clip_lengths: Sequence[int] | None = None,
    quantize: Quantize | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Export one checkpoint of a `VideoTextModule` (its model is the template; it is not modified)."""
    ckpt = read_checkpoint(checkpoint)
    model = model_from_checkpoint(module.model, ckpt, checkpoint)
    out = Path(out_dir) if out_dir is not None else export_dir_for(checkpoint)
    metrics = {
        "kind": kind,
        "checkpoint": str(checkpoint),
        "step": int(ckpt.get("global_step", 0)),
        "validation": dict(ckpt.get("mvclip_validation", {})),
        "validation_step": ckpt.get("mvclip_validation_step"),
        **({"evaluation_card": ckpt["mvclip_eval_card"]} if ckpt.get("mvclip_eval_card") else {}),  # mvclip.eval_card
        **dict(extra_metrics or {}),
    }
    metrics = export_model(
        model, module.model_config, out, inputs, config_dir=module.model_config_dir,
        preprocess=ckpt.get("mvclip_preprocess"), extra_metrics=metrics, onnx=onnx, latency_repeats=latency_repeats,
        checkpoint=checkpoint, formats=formats, clip_lengths=clip_lengths, quantize=quantize,
    )
    return out, metrics
