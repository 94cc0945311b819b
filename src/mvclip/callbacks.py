"""Lightning callbacks of mvclip's own."""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback

from mvclip.atomic import atomic_write


class EmbeddingWriter(BasePredictionWriter):
    """Writes `predict` outputs as `embeddings.npz` (or `.safetensors` + `keys.json`): unit-norm video and text
    embeddings with the keys they belong to, so retrieval can run outside mvclip. One file per rank under DDP."""

    def __init__(self, output_dir: str = "embeddings", format: Literal["npz", "safetensors"] = "npz") -> None:
        super().__init__(write_interval="epoch")
        if format not in ("npz", "safetensors"):
            raise ValueError(f"EmbeddingWriter.format must be 'npz' or 'safetensors', got {format!r}")
        self.output_dir = Path(output_dir)
        self.format = format

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        batches = [b for loader in (predictions if predictions and isinstance(predictions[0], list) else [predictions]) for b in loader]
        video = torch.cat([b["video"] for b in batches]).float().numpy()
        keys = [k for b in batches for k in b["key"]]
        has_text = all("text" in b for b in batches)
        text = torch.cat([b["text"] for b in batches]).float().numpy() if has_text else np.zeros((0, video.shape[1]), np.float32)
        text_keys = [k for b in batches for k in b.get("text_key", [])]
        suffix = "" if trainer.world_size == 1 else f"-rank{trainer.global_rank}"
        if self.format == "npz":
            def write(tmp: Path) -> None:
                with open(tmp, "wb") as f:
                    np.savez(f, video=video, video_key=np.array(keys, dtype=str), text=text, text_key=np.array(text_keys, dtype=str))

            path = atomic_write(self.output_dir / f"embeddings{suffix}.npz", write)
        else:
            from safetensors.numpy import save_file

            path = atomic_write(self.output_dir / f"embeddings{suffix}.safetensors", lambda tmp: save_file({"video": video, "text": text}, str(tmp)))
            atomic_write(self.output_dir / f"keys{suffix}.json", lambda tmp: tmp.write_text(json.dumps({"video_key": keys, "text_key": text_keys})))
        print(f"wrote {len(keys)} video and {len(text_keys)} text embeddings to {path}")


def _peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory of this process in MB: CUDA's max allocated on a GPU, else the process's max RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "cpu max RSS"


def preprocess_of(datamodule: Any, model: Any = None) -> dict[str, Any]:
    """The input a model takes, for deployers (`preprocess.json`): the model's description (`mvclip.input_spec`),
    else what the data module reads."""
    spec = getattr(model, "input_spec", None) or getattr(datamodule, "input_spec", None)
    if spec is not None:
        return spec.describe()
    keys = ("frames", "sampling", "sampling_fps", "stride", "resolution", "short_side", "mean", "std")
    out = {k: getattr(datamodule, k) for k in keys if hasattr(datamodule, k)}
    for k in ("mean", "std"):
        if out.get(k) is not None:
            out[k] = list(out[k])
    out["resize"] = "bilinear, short side to resolution, centre crop"
    out["pixels"] = "RGB in [0, 1]" + (", then (x - mean) / std" if out.get("mean") is not None else "")
    return out


class FuseExport(Callback):
    """Exports the best and last checkpoints as fused, verified, deployable folders at the end of fit.

    Rank 0 only; the training module is never modified (every export works on a copy). Each folder
    (`<checkpoint>.export/`, see `mvclip.export`) gets fused safetensors, a YAML that rebuilds the fused
    model, ONNX graphs checked with onnxruntime, and `metrics.json` with parameters, FLOPs, unfused
    vs fused CPU latency, the checkpoint's validation results, training time and peak memory. The
    first validation batch (held out from training) is what the fused model is verified on. A
    mismatch raises `mvclip.export.ExportError` naming the block, and nothing is written.

    `formats` names the deployment targets (`onnx`, `executorch`, `coreml`; docs/deploy.md; default: ONNX unless
    `onnx: false`) and `clip_lengths` the clip lengths their video graphs are exported for and checked at.
    """

    def __init__(self, checkpoints: list[str] | None = None, onnx: bool = True, latency_repeats: int = 10, held_out: int = 4,
                 formats: list[str] | None = None, clip_lengths: list[int] | None = None) -> None:
        super().__init__()
        self.checkpoints = list(checkpoints or ["best", "last"])
        unknown = set(self.checkpoints) - {"best", "last"}
        if unknown:
            raise ValueError(f"FuseExport.checkpoints: expected 'best' and/or 'last', got {sorted(unknown)}")
        self.onnx, self.latency_repeats, self.held_out = onnx, latency_repeats, held_out
        if formats is not None:
            from mvclip.export_targets import check_formats

            formats = check_formats(formats)  # an unknown format or a missing extra fails before training, not after
        self.formats, self.clip_lengths = formats, list(clip_lengths) if clip_lengths else None
        self.inputs: dict[str, torch.Tensor] | None = None
        self.exports: dict[str, Path] = {}
        self._start: float | None = None
        self._saved_step: int | None = None
        self._validated_step: int | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.inputs is None and isinstance(batch, dict) and "video" in batch:
            self.inputs = {"video": batch["video"][: self.held_out].detach().cpu().float()}
            if "text" in batch:
                self.inputs["text"] = batch["text"][: self.held_out].detach().cpu()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._validated_step = trainer.global_step

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Lightning writes `last.ckpt` only at steps where a top-k checkpoint was saved too, so a run whose final
        validation was not its best would leave a stale "last": save the real last state before exporting it."""
        ckpt = trainer.checkpoint_callback
        if "last" not in self.checkpoints or ckpt is None or not ckpt.save_last or ckpt.dirpath is None:
            return
        if self._saved_step != trainer.global_step:
            path = Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"
            trainer.save_checkpoint(path)
            ckpt.last_model_path = str(path)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Each checkpoint carries its validation results and input pipeline, so it can be exported later too."""
        self._saved_step = trainer.global_step
        checkpoint["mvclip_validation"] = {f"val/{k}": v for k, v in getattr(pl_module, "last_results", {}).get("val", {}).items()}
        checkpoint["mvclip_validation_step"] = self._validated_step
        checkpoint["mvclip_preprocess"] = preprocess_of(trainer.datamodule, pl_module.model)

    def _targets(self, trainer: Any) -> dict[str, str]:
        ckpt = trainer.checkpoint_callback
        if ckpt is None:
            return {}
        paths = {"best": getattr(ckpt, "best_model_path", ""), "last": getattr(ckpt, "last_model_path", "")}
        return {kind: paths[kind] for kind in self.checkpoints if paths[kind]}

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero or trainer.interrupted:
            return
        from mvclip.export import export_checkpoint, random_inputs
        from mvclip.export_folder import ExportTargetError

        peak, peak_kind = _peak_memory(pl_module.device)
        train = {
            "time_s": time.perf_counter() - self._start if self._start is not None else None,
            "peak_memory_mb": peak,
            "peak_memory_kind": peak_kind,
            "steps": int(trainer.global_step),
        }
        inputs = self.inputs
        if inputs is None:  # no validation ran: verify on a seeded random batch of the training input size
            spec = pl_module.model.input_spec
            inputs = random_inputs(spec.frames, spec.resolution)
        for kind, path in self._targets(trainer).items():
            try:
                out, metrics = export_checkpoint(
                    pl_module, path, inputs, kind=kind, extra_metrics={"train": train}, onnx=self.onnx, latency_repeats=self.latency_repeats,
                    formats=self.formats, clip_lengths=self.clip_lengths,
                )
            except ExportTargetError as error:  # e.g. someone else's files where the export would go: left alone
                print(f"export ({kind}) not written: {error}", file=sys.stderr)
                continue
            self.exports[kind] = out
            latency = metrics["latency_ms"]
            print(f"export ({kind}): {out}  fused latency {latency['video_fused']:.1f} ms/clip, "
                  f"{latency['video_fused_channels_last']:.1f} ms in channels_last (unfused as trained "
                  f"{latency['video_unfused']:.1f} ms, {latency['fused_speedup']:.2f}x in its layout), "
                  f"{metrics['flops']['video_clip'] / 1e9:.2f} GFLOPs/clip; left unfolded: {_describe_unfolded(metrics['unfolded'])}")
            if trainer.logger is not None:
                trainer.logger.log_metrics(
                    {
                        f"export/{kind}/latency_fused_ms": latency["video_fused"],
                        f"export/{kind}/latency_unfused_ms": latency["video_unfused"],
                        f"export/{kind}/gflops_per_clip": metrics["flops"]["video_clip"] / 1e9,
                        f"export/{kind}/params_m": metrics["params"]["total"] / 1e6,
                        "train/peak_memory_mb": peak,
                        "train/time_min": (train["time_s"] or 0.0) / 60,
                    },
                    step=trainer.global_step,
                )


class TemporalDiagnostics(Callback):
    """Logs how the temporal parameters learn (TensorBoard `diag/...`), next to the rest of the model.

    Every `every_n_steps` optimizer steps, before gradient clipping: the gradient norm, weight norm and distance
    from the starting weights of the parameters blocks declare as temporal (`temporal_state`; per video stage and
    in all) and of all other trainable parameters. A temporal branch that is not learning shows up as a gradient
    norm near 0 and a distance from init that stays flat while the rest of the model moves.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"TemporalDiagnostics.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._start: dict[str, torch.Tensor] = {}

    @staticmethod
    def _part(name: str, temporal: bool) -> str:
        if not temporal:
            return "other"
        parts = name.split(".")
        return f"temporal/stage{parts[2]}" if parts[:2] == ["video", "stages"] and len(parts) > 2 else "temporal/other"

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = {n: p.detach().clone() for n, p in pl_module.model.named_parameters() if p.requires_grad}

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if trainer.global_step % self.every_n_steps or trainer.logger is None or not trainer.is_global_zero:
            return
        sums: dict[str, list[float]] = {}
        for name, param in pl_module.model.named_parameters():
            if name not in self._start:
                continue
            temporal = name in pl_module.temporal_names
            grad = float(param.grad.detach().float().pow(2).sum()) if param.grad is not None else 0.0
            row = [grad, float(param.detach().float().pow(2).sum()), float((param.detach() - self._start[name]).float().pow(2).sum())]
            for part in {self._part(name, temporal), "temporal" if temporal else "other"}:
                acc = sums.setdefault(part, [0.0, 0.0, 0.0])
                for i, value in enumerate(row):
                    acc[i] += value
        metrics = {}
        for part, (grad, weight, moved) in sums.items():
            metrics.update({f"diag/{part}/grad_norm": grad**0.5, f"diag/{part}/weight_norm": weight**0.5, f"diag/{part}/moved": moved**0.5})
        trainer.logger.log_metrics(metrics, step=trainer.global_step)


class ResultGrid(Callback):
    """At each validation, logs to TensorBoard what the retrieval numbers mean: a grid of a few text queries with
    their top-`k` clips as frame strips (the clips a query describes framed in green, `val/results/t2v` in the images
    tab, the same as a table with keys and scores in the text tab) and the video embeddings for the projector tab
    (keys and first captions as metadata, one frame each as sprites, at most `max_embeddings`).

    The queries are fixed: the first caption of each of the validation set's first clips, `queries` distinct ones (its
    loader is not shuffled). One per clip, because a clip's captions are often paraphrases: the first four distinct
    captions of the synthetic set all describe its first clip, and would draw the same row four times.

    Data comes from what validation computes anyway: `VideoTextModule.validation_step` returns the batch's unit-norm
    embeddings, and the batch gives keys, caption tokens (decoded back to text) and frames. Frames are the costly part,
    so none are kept whole: each batch's clips are scored against the queries as it passes and only the clips that
    enter a query's running top `k` are cut down to a strip (`frames` frames of `frame_px` px, a few kB). The batches
    seen before all the queries are known (usually just the first) keep a strip of every clip until then. Nothing is
    re-read from disk. Does nothing unless a logger is a `TensorBoardLogger`; skips the sanity check; under DDP it draws
    rank 0's share of the validation set.
    """

    def __init__(self, queries: int = 4, k: int = 5, frames: int = 4, frame_px: int = 48, max_embeddings: int = 1000,
                 sprite_px: int = 32, tag: str = "val/results") -> None:
        super().__init__()
        for name, value in (("queries", queries), ("k", k), ("frames", frames), ("frame_px", frame_px), ("sprite_px", sprite_px)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ResultGrid.{name} must be a positive integer, got {value!r}")
        if isinstance(max_embeddings, bool) or not isinstance(max_embeddings, int) or max_embeddings < 0:
            raise ValueError(f"ResultGrid.max_embeddings must be an integer >= 0 (0: no projector), got {max_embeddings!r}")
        self.num_queries, self.k, self.frames, self.frame_px = queries, k, frames, frame_px
        self.max_embeddings, self.sprite_px, self.tag = max_embeddings, sprite_px, tag
        self._warned = False
        self._reset()

    def _reset(self) -> None:
        self._queries: list[tuple[bytes, str, torch.Tensor]] = []
        self._pending: list[dict[str, Any]] = []
        self._top: list[list[Any]] = []
        self._scores: list[list[torch.Tensor]] = []
        self._correct: list[list[torch.Tensor]] = []
        self._seen: set[str] = set()
        self._order = 0
        self._projected: list[torch.Tensor] = []
        self._metadata: list[list[str]] = []
        self._sprites: list[np.ndarray] = []

    @staticmethod
    def _tensorboard(trainer: Any) -> Any:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers = getattr(trainer, "loggers", None) or ([trainer.logger] if trainer.logger is not None else [])
        return next((lg for lg in loggers if isinstance(lg, TensorBoardLogger)), None)

    def _active(self, trainer: Any) -> bool:
        return not trainer.sanity_checking and trainer.is_global_zero and self._tensorboard(trainer) is not None

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._reset()

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        from mvclip.result_grid import caption_text, frame_strip

        if not self._active(trainer):
            return
        if not isinstance(outputs, dict) or "video_emb" not in outputs or "text_emb" not in outputs:
            if not self._warned:
                print("ResultGrid: validation_step returned no embeddings (video_emb, text_emb); no result grid is logged", file=sys.stderr)
                self._warned = True
            return
        spec = getattr(getattr(pl_module, "model", None), "input_spec", None)
        video, keys = batch["video"], list(batch["key"])
        video_emb = outputs["video_emb"].detach().float().cpu()
        text_emb = outputs["text_emb"].detach().float().cpu()
        tokens = batch["text"].detach().cpu()
        owner = batch["text_video_index"].tolist()
        rows = [row.numpy().tobytes() for row in tokens]
        fresh = [i for i, key in enumerate(keys) if key not in self._seen]  # DDP pads by repeating clips
        self._seen.update(keys[i] for i in fresh)
        captions: list[set[bytes]] = [set() for _ in keys]
        first_caption: dict[int, int] = {}
        for j, i in enumerate(owner):
            captions[i].add(rows[j])
            first_caption.setdefault(i, j)
        known = {q[0] for q in self._queries}
        for i in fresh:
            j = first_caption.get(i)
            if len(self._queries) < self.num_queries and j is not None and rows[j] not in known:
                self._queries.append((rows[j], caption_text(tokens[j]), text_emb[j]))
                known.add(rows[j])
        for i in fresh:
            if len(self._projected) >= self.max_embeddings:
                break
            self._projected.append(video_emb[i])
            self._metadata.append([keys[i], caption_text(tokens[first_caption[i]]) if i in first_caption else ""])
            self._sprites.append(frame_strip(video[i], 1, self.sprite_px, spec))
        record = {
            "emb": video_emb[fresh], "keys": [keys[i] for i in fresh], "captions": [captions[i] for i in fresh],
            "orders": list(range(self._order, self._order + len(fresh))),
        }
        self._order += len(fresh)
        if len(self._queries) < self.num_queries:  # a later batch may bring a query these clips must be ranked for
            record["strips"] = [frame_strip(video[i], self.frames, self.frame_px, spec) for i in fresh]
            self._pending.append(record)
            return
        self._flush()
        self._rank(record, lambda n: frame_strip(video[fresh[n]], self.frames, self.frame_px, spec))

    def _flush(self) -> None:
        for record in self._pending:
            self._rank(record, record["strips"].__getitem__)
        self._pending = []

    def _rank(self, record: dict[str, Any], strip_of: Any) -> None:
        from mvclip.result_grid import top_hits

        if not record["keys"]:
            return
        while len(self._top) < len(self._queries):
            self._top.append([])
            self._scores.append([])
            self._correct.append([])
        scores = torch.stack([q[2] for q in self._queries]) @ record["emb"].T  # (queries, clips)
        for q, (row, _, _) in enumerate(self._queries):
            correct = [row in caps for caps in record["captions"]]
            self._top[q] = top_hits(self._top[q], scores[q], record["orders"], record["keys"], correct, strip_of, self.k)
            self._scores[q].append(scores[q])
            self._correct[q].append(torch.tensor(correct))

    def results(self) -> list[Any]:
        """The queries ranked (`mvclip.result_grid.QueryResult`), with each one's correct-clip rank: 1 + the other clips
        scoring at least as high as its best correct clip (pessimistic, as `RetrievalMetric` counts). For the end of a
        validation: clips still waiting for a query are ranked for the queries found so far."""
        from mvclip.result_grid import QueryResult

        self._flush()
        out = []
        for q, (_, caption, _) in enumerate(self._queries):
            if q >= len(self._top):
                break
            scores, correct = torch.cat(self._scores[q]), torch.cat(self._correct[q])
            rank = None
            if bool(correct.any()):
                best = scores[correct].max()
                rank = 1 + int(((scores >= best) & ~correct).sum())
            out.append(QueryResult(caption, list(self._top[q]), rank))
        return out

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        from mvclip.result_grid import draw_grid, results_table

        if not self._active(trainer):
            return
        writer = self._tensorboard(trainer).experiment
        step = int(trainer.global_step)
        results = self.results()
        if results:
            writer.add_image(f"{self.tag}/t2v", draw_grid(results, self.k), step, dataformats="HWC")
            writer.add_text(f"{self.tag}/t2v", results_table(results), step)
        if self._projected:
            sprites = torch.from_numpy(np.stack(self._sprites)).permute(0, 3, 1, 2).float() / 255.0
            writer.add_embedding(torch.stack(self._projected), metadata=self._metadata, metadata_header=["key", "caption"],
                                 label_img=sprites, global_step=step, tag=f"{self.tag}/video".replace("/", "_"))
        writer.flush()
        self._reset()


def _describe_unfolded(unfolded: dict[str, Any]) -> str:
    """`12 LayerNorm` style summary of the normalization layers reparameterization could not fold."""
    return ", ".join(f"{n} {kind}" for kind, n in sorted(unfolded["norms"].items())) or "no normalization layers"
