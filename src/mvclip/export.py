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
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mvclip.layers.reparam import is_batchnorm
from mvclip.builder import build_model
from mvclip.checkpoints import load_safetensors, load_torch_file
from mvclip.contracts import is_reparameterizable
from mvclip.errors import CheckpointError
from mvclip.extras import installed, missing_note
from mvclip.export_folder import MARKER_NAME, ExportTargetError, check_export_target, replace_export, write_marker
from mvclip.fusion import VerifyReport, compare_outputs, fuse
from mvclip.model import VideoTextModel
from mvclip.portable_config import portable_config
from mvclip.summary import count_params

MAX_ABS_DIFF = 1e-4  # on unit-norm float32 embeddings
MIN_COSINE = 0.99999
ONNX_MAX_ABS_DIFF = 1e-4
ONNX_OPSET = 17
EXPORT_FILES = ("model.safetensors", "model.yaml", "preprocess.json", "metrics.json")


class ExportError(RuntimeError):
    """The fused model (or its ONNX graph) does not reproduce the unfused model; nothing was written."""


@dataclass(frozen=True)
class Check:
    """One parity check of the export: which output, against what, how far apart."""

    name: str
    max_abs_diff: float
    min_cosine: float

    @classmethod
    def of(cls, name: str, report: VerifyReport) -> Check:
        return cls(name, report.max_abs_diff, report.min_cosine)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= MAX_ABS_DIFF and self.min_cosine >= MIN_COSINE


def export_dir_for(checkpoint: str | os.PathLike[str]) -> Path:
    """`runs/x/checkpoints/last.ckpt` -> `runs/x/checkpoints/last.export/`."""
    path = Path(checkpoint)
    return path.with_name(path.stem + ".export")


def _encoders(model: VideoTextModel) -> dict[str, Callable[[VideoTextModel, torch.Tensor], torch.Tensor]]:
    out: dict[str, Callable[[VideoTextModel, torch.Tensor], torch.Tensor]] = {"video": lambda m, x: m.encode_video(x, normalize=True)}
    if model.text is not None:
        out["text"] = lambda m, x: m.encode_text(x, normalize=True)
    return out


# -- verification --------------------------------------------------------------------------------
@torch.no_grad()
def verify_fused(model: VideoTextModel, fused: VideoTextModel, inputs: Mapping[str, torch.Tensor]) -> list[Check]:
    """Unit-norm embeddings of the unfused (eval) and fused models on the same held-out inputs."""
    checks = []
    for name, encode in _encoders(model).items():
        report = compare_outputs(encode(model, inputs[name]), encode(fused, inputs[name]))
        check = Check.of(name, report)
        if not check.ok:
            culprit = locate_fusion_failure(model, fused, lambda m, x=inputs[name], e=encode: e(m, x))
            raise ExportError(
                f"fused {name} encoder does not match the unfused one: max |diff| {check.max_abs_diff:.3g} "
                f"(limit {MAX_ABS_DIFF:g}), min cosine {check.min_cosine:.7f} (limit {MIN_COSINE}); {culprit}"
            )
        checks.append(check)
    return checks


def _reparameterizable(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost modules with `reparameterize()`, by qualified name (what `fuse` calls)."""
    found: dict[str, nn.Module] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        if is_reparameterizable(module):
            found[prefix] = module
            return
        for name, child in module.named_children():
            walk(child, f"{prefix}.{name}" if prefix else name)

    walk(model, "")
    return found


@torch.no_grad()
def locate_fusion_failure(model: nn.Module, fused: nn.Module, run: Callable[[nn.Module], Any], rel_tol: float = 1e-4) -> str:
    """Feed every fused block the exact input its unfused twin saw, and name the first that disagrees."""
    blocks = _reparameterizable(model)
    fused_modules = dict(fused.named_modules())
    records: list[tuple[str, tuple, torch.Tensor]] = []
    hooks = [
        module.register_forward_hook(lambda m, args, out, name=name: records.append((name, args, out)))
        for name, module in blocks.items()
    ]
    try:
        run(model)
    finally:
        for hook in hooks:
            hook.remove()
    for name, args, expected in records:
        got = fused_modules[name](*args)
        report = compare_outputs(expected.flatten(1), got.flatten(1))
        if report.max_rel_diff > rel_tol:
            return f"first mismatching block: {name} ({type(blocks[name]).__name__}), relative difference {report.max_rel_diff:.3g}"
    return "every block matches on its own; the mismatch comes from how they are combined"


# -- measurements --------------------------------------------------------------------------------
@torch.no_grad()
def count_flops(run: Callable[[], Any]) -> int:
    """FLOPs of one call (torch's flop counter: a multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def interleaved_latency_ms(candidates: Mapping[str, Callable[[], Any]], repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median wall time of each candidate, run round-robin so that machine load hits all of them alike."""
    for _ in range(warmup):
        for run in candidates.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(model: VideoTextModel, fused: VideoTextModel, video: torch.Tensor, tokens: torch.Tensor | None, repeats: int = 10) -> dict[str, Any]:
    """Parameters, FLOPs of one clip / one caption (fused), and CPU latency of one clip unfused vs fused.

    Both models must be on the CPU and in eval mode.
    """
    clip = video[:1]
    params = {
        "total": count_params(model),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "video": count_params(model.video),
        "text": count_params(model.text) if model.text is not None else 0,
        "video_fused": count_params(fused.video),
    }
    flops = {"video_clip": count_flops(lambda: fused.encode_video(clip))}
    if tokens is not None and fused.text is not None:
        flops["text"] = count_flops(lambda: fused.encode_text(tokens[:1]))
    with torch.no_grad():
        latency = interleaved_latency_ms({"video_unfused": lambda: model.encode_video(clip), "video_fused": lambda: fused.encode_video(clip)}, repeats)
    latency["fused_speedup"] = latency["video_unfused"] / latency["video_fused"]
    return {
        "params": params,
        "flops": flops,
        "latency_ms": latency,
        "latency_threads": torch.get_num_threads(),
        "unfolded": unfolded_layers(fused),
    }


def unfolded_layers(fused: nn.Module) -> dict[str, Any]:
    """What reparameterization left in place: normalization layers by type (LayerNorm normalizes each token by
    its own statistics and cannot fold; a BatchNorm left here is one no block folded) and where the BatchNorms are."""
    norms: dict[str, int] = {}
    batchnorms = []
    for name, module in fused.named_modules():
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or is_batchnorm(module):
            norms[type(module).__name__] = norms.get(type(module).__name__, 0) + 1
            if is_batchnorm(module):
                batchnorms.append(name)
    return {"norms": norms, "batchnorms": batchnorms}


# -- ONNX ----------------------------------------------------------------------------------------
class _Encoder(nn.Module):
    """One encoder of a VideoTextModel as a standalone graph: input -> unit-norm embedding."""

    def __init__(self, model: VideoTextModel, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "video":
            return self.model.encode_video(x, normalize=True)
        return self.model.encode_text(x, normalize=True)


def export_onnx(fused: VideoTextModel, inputs: Mapping[str, torch.Tensor], folder: Path) -> list[Check]:
    """`video.onnx` / `text.onnx` with a dynamic batch axis, each run in onnxruntime on the held-out batch."""
    import onnxruntime as ort

    checks = []
    for kind in _encoders(fused):
        x = inputs[kind].cpu()
        path = folder / f"{kind}.onnx"
        with warnings.catch_warnings():
            # The traced graph is specialised to this clip length and token context (the tracer warns about
            # those Python branches); only the batch axis is dynamic, and it is checked below.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(
                _Encoder(fused, kind).eval(), (x,), str(path), input_names=[kind], output_names=["embedding"],
                dynamic_axes={kind: {0: "batch"}, "embedding": {0: "batch"}}, opset_version=ONNX_OPSET, dynamo=False,
            )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        # the held-out batch, and a batch of another size: the batch axis must really be dynamic
        for name, batch in ((f"onnx/{kind}", x), (f"onnx/{kind}/batch{x.shape[0] + 1}", torch.cat([x, x[:1]]))):
            with torch.no_grad():
                expected = _Encoder(fused, kind)(batch)
            got = torch.from_numpy(session.run(None, {kind: batch.numpy()})[0])
            check = Check.of(name, compare_outputs(expected, got))
            if check.max_abs_diff > ONNX_MAX_ABS_DIFF:
                raise ExportError(f"{path.name}: onnxruntime differs from PyTorch by {check.max_abs_diff:.3g} (limit {ONNX_MAX_ABS_DIFF:g}) on {name}")
            checks.append(check)
    return checks


# -- the folder ----------------------------------------------------------------------------------
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
) -> dict[str, Any]:
    """Fuse a copy of `model`, verify it on `inputs` ({"video": (B,T,3,H,W), "text": (B,L)}), write the folder.

    `model` itself is not changed (it is deep-copied before anything is put in eval mode). `out_dir` must be new,
    empty or an earlier export, and must not hold `checkpoint` (`ExportTargetError` otherwise, before any work).
    Returns the metrics written to `metrics.json`.
    """
    from safetensors.torch import save_file

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
        (tmp / "preprocess.json").write_text(json.dumps(dict(preprocess or {}), indent=2) + "\n")
        rebuilt = load_export(tmp)
        with torch.no_grad():
            for name, encode in _encoders(fused).items():
                report = compare_outputs(encode(fused, inputs[name]), encode(rebuilt, inputs[name]))
                check = Check.of(f"reloaded/{name}", report)
                if not check.ok:
                    raise ExportError(f"the export folder does not rebuild the fused model: {check}")
                checks.append(check)
        if onnx and not installed("onnx"):
            print(missing_note("onnx", "ONNX graphs"), file=sys.stderr)
        elif onnx:
            checks += export_onnx(rebuilt, inputs, tmp)
        metrics: dict[str, Any] = dict(extra_metrics or {})
        metrics.update(measure(reference, fused, inputs["video"], inputs.get("text"), latency_repeats))
        metrics["input"] = {"frames": int(inputs["video"].shape[1]), "resolution": int(inputs["video"].shape[-1])}
        metrics["checks"] = [asdict(c) for c in checks]
        metrics["files"] = sorted(p.name for p in tmp.iterdir())
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_marker(tmp, checkpoint)
        tmp.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared
        for file in tmp.iterdir():
            file.chmod(0o644)
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
        **dict(extra_metrics or {}),
    }
    metrics = export_model(
        model, module.model_config, out, inputs, config_dir=module.model_config_dir,
        preprocess=ckpt.get("mvclip_preprocess"), extra_metrics=metrics, onnx=onnx, latency_repeats=latency_repeats,
        checkpoint=checkpoint,
    )
    return out, metrics
