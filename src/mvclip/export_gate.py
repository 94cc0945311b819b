"""The retrieval gate of a quantized export: it is evaluated on validation clips like the float model, and refused
when it loses what a deployer would notice.

`metrics.json` records, per quantized graph pair, the embedding cosine to float (mean and min, video and text) and
the change in T2V/V2T R@1 and R@5 and twin accuracy. The export is refused (`QuantizationRefused`, nothing written)
when either R@1 drops by more than `max_r1_drop` points (default 1) or the mean video or text cosine is below
`min_mean_cosine` (default 0.99), unless `override` is set; the error carries the numbers.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mvclip.export_verify import ExportError

GATED_KEYS = ("t2v/R@1", "v2t/R@1")
REPORTED_KEYS = ("t2v/R@1", "t2v/R@5", "v2t/R@1", "v2t/R@5", "temporal/twin_acc")


class QuantizationRefused(ExportError):
    """A quantized graph lost more retrieval accuracy than the gate allows; nothing was written."""


@dataclass(frozen=True)
class Gate:
    """How much a quantized export may lose: R@1 points (T2V and V2T each) and mean embedding cosine to float."""

    max_r1_drop: float = 1.0
    min_mean_cosine: float = 0.99
    override: bool = False


@dataclass
class EvalSet:
    """Validation clips with their captions: what calibration draws from and what the gate evaluates on."""

    video: torch.Tensor  # (N, T, 3, H, W)
    text: torch.Tensor  # (M, L) token ids
    text_video_index: torch.Tensor  # (M,) the clip each caption describes
    keys: list[str]
    groups: list[str | None] = field(default_factory=list)

    @classmethod
    def from_batches(cls, batches: Iterable[Mapping[str, Any]], max_clips: int) -> EvalSet:
        """The first `max_clips` clips of validation batches (`video`, `text`, `text_video_index`, `key`, `group`)."""
        video, text, index, keys, groups = [], [], [], [], []
        count = 0
        for batch in batches:
            take = min(batch["video"].shape[0], max_clips - count)
            if take <= 0:
                break
            keep = batch["text_video_index"] < take
            video.append(batch["video"][:take].float().cpu())
            text.append(batch["text"][keep].cpu())
            index.append(batch["text_video_index"][keep].cpu() + count)
            keys += list(batch["key"][:take])
            groups += list(batch.get("group") or [None] * take)[:take]
            count += take
        if not count:
            raise ValueError("no validation clips to calibrate and evaluate the quantized export on")
        return cls(torch.cat(video), torch.cat(text), torch.cat(index), keys, groups)

    def __len__(self) -> int:
        return len(self.keys)


def evaluate(video_emb: torch.Tensor, text_emb: torch.Tensor, data: EvalSet) -> dict[str, float]:
    """Retrieval (R@1/R@5 both ways) and, where clips declare groups, twin accuracy; as in validation."""
    from mvclip.metrics import RetrievalMetric
    from mvclip.temporal_metrics import TemporalMetric

    retrieval = RetrievalMetric()
    text_keys = [data.keys[i] for i in data.text_video_index.tolist()]
    retrieval.update(video_emb.float(), data.keys, text_emb.float(), text_keys)
    out = {k: float(v) for k, v in retrieval.compute().items() if k in REPORTED_KEYS}
    if any(g is not None for g in data.groups):
        temporal = TemporalMetric()
        temporal.update(video_emb.float(), data.keys, text_emb.float(), data.text_video_index, groups=data.groups or None,
                        captions=[row.numpy().tobytes().hex() for row in data.text])
        result = temporal.compute()
        if "twin_acc" in result:
            out["temporal/twin_acc"] = float(result["twin_acc"])
    return out


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def gate_report(
    graphs: str, reference: Mapping[str, torch.Tensor], quantized: Mapping[str, torch.Tensor], data: EvalSet, gate: Gate,
) -> dict[str, Any]:
    """Compare float and quantized embeddings ({"video": (N, D), "text": (M, D)}) on `data`; the report for
    `metrics.json`, or QuantizationRefused naming `graphs` and the numbers."""
    before = evaluate(reference["video"], reference["text"], data)
    after = evaluate(quantized["video"], quantized["text"], data)
    cosine = {kind: _cosine(reference[kind], quantized[kind]) for kind in ("video", "text")}
    report: dict[str, Any] = {
        "clips": len(data),
        "captions": int(data.text.shape[0]),
        "cosine": {kind: {"mean": float(c.mean()), "min": float(c.min())} for kind, c in cosine.items()},
        "float": before,
        "quantized": after,
        "delta": {k: after[k] - before[k] for k in before if k in after},
        "gate": asdict(gate),
    }
    failures = [f"{k} drops {-report['delta'][k]:.2f} points ({before[k]:.2f} -> {after[k]:.2f}; limit {gate.max_r1_drop:g})"
                for k in GATED_KEYS if -report["delta"].get(k, 0.0) > gate.max_r1_drop]
    failures += [f"mean {kind} cosine to float {report['cosine'][kind]['mean']:.4f} (limit {gate.min_mean_cosine:g})"
                 for kind in ("video", "text") if report["cosine"][kind]["mean"] < gate.min_mean_cosine]
    report["passed"] = not failures
    if failures and not gate.override:
        raise QuantizationRefused(
            f"{graphs}: int8 refused on {len(data)} validation clips: {'; '.join(failures)}; "
            "nothing was written (recalibrate, or override the gate to keep it anyway)"
        )
    return report
