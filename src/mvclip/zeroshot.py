"""Zero-shot video classification: prompt-ensembled class embeddings and a DDP-safe accuracy metric.

Class names go through prompt templates; each prompt is embedded and L2-normalized, the prompts of
a class are averaged and the mean renormalized (CLIP's recipe, docs/design.md §6). `ZeroShotAccuracy`
ranks the true class with the same pessimistic tie rule as retrieval and de-duplicates samples by
key, so DistributedSampler padding does not change the reported accuracy.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mvclip.sample_keys import first_occurrence, hash_keys

__all__ = ["DEFAULT_TEMPLATES", "KINETICS_TEMPLATES", "PROMPT_ENSEMBLES", "build_classifier", "class_names_of",
           "templates_of", "ZeroShotAccuracy"]

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a video of {}.",
    "a video of a person {}.",
    "a video of a person doing {}.",
    "a clip showing {}.",
    "a video clip of {}.",
    "footage of {}.",
    "a person is {}.",
    "a demonstration of {}.",
)

# Kinetics class names are mostly activities ("abseiling", "playing cello"): prompts about a person doing them, in
# several phrasings and picture qualities, averaged per class (CLIP's ensembling; docs/evaluation.md).
KINETICS_TEMPLATES: tuple[str, ...] = (
    "a video of a person {}.",
    "a video of someone {}.",
    "a clip of people {}.",
    "a person {}.",
    "footage of a person {}.",
    "a video showing {}.",
    "an example of {}.",
    "a close-up video of a person {}.",
    "a blurry video of a person {}.",
    "a low-resolution video of someone {}.",
    "a home video of a person {}.",
    "a short clip of {}.",
)

PROMPT_ENSEMBLES: dict[str, tuple[str, ...]] = {"default": DEFAULT_TEMPLATES, "kinetics": KINETICS_TEMPLATES}


def templates_of(value: str | Sequence[str] | None, where: str = "model.zero_shot.templates") -> tuple[str, ...]:
    """A prompt ensemble: a name of `PROMPT_ENSEMBLES`, a list of templates with `{}`, or None for the default."""
    if value is None:
        return DEFAULT_TEMPLATES
    if isinstance(value, str):
        if value not in PROMPT_ENSEMBLES:
            raise ValueError(f"{where}: {value!r} is not a prompt ensemble; expected one of {', '.join(PROMPT_ENSEMBLES)} "
                             "or a list of templates with '{}'")
        return PROMPT_ENSEMBLES[value]
    return tuple(str(t) for t in value)


def class_names_of(value: str | Sequence[str] | None, where: str = "model.zero_shot.class_names") -> list[str]:
    """Class names in label order: a list; a text file with one name per line; or a shards folder (or its
    `manifest.json`) built with `shards --benchmark`, whose manifest records them."""
    import json
    from pathlib import Path

    if value is None or (not isinstance(value, str) and not value):
        raise ValueError(f"{where}: a non-empty list of class names (or a file or shards folder holding them) is required")
    if not isinstance(value, str):
        return [str(n) for n in value]
    path = Path(value)
    manifest = path / "manifest.json" if path.is_dir() else path
    if manifest.name == "manifest.json" and manifest.is_file():
        names = (json.loads(manifest.read_text(encoding="utf-8")).get("options") or {}).get("class_names")
        if not names:
            raise ValueError(f"{where}: {manifest} records no class_names; build the shards with `shards --benchmark kinetics400`")
        return [str(n) for n in names]
    if not path.is_file():
        raise ValueError(f"{where}: {value} is neither a list, a class-name file nor a shards folder")
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{where}: {path} holds no class name; expected one per line")
    return names


@torch.no_grad()
def build_classifier(
    model_encode_text: Callable[[Tensor], Tensor],
    tokenize: Callable[[list[str]], Tensor],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Tensor:
    """(C, D) float32 unit-norm class embeddings: per class, mean of normalized template embeddings, renormalized.

    All C*T prompts are encoded in batches of `batch_size` (one call per class would be slow for
    400-class Kinetics). Tokens are moved to `device` when given.
    """
    if not class_names:
        raise ValueError("build_classifier needs at least one class name")
    if not templates:
        raise ValueError("build_classifier needs at least one template")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"templates must contain '{{}}' for the class name: {bad}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts = [t.format(name) for name in class_names for t in templates]
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenize(prompts[start : start + batch_size])
        if device is not None:
            tokens = tokens.to(device)
        chunks.append(model_encode_text(tokens).float())
    emb = torch.cat(chunks).reshape(len(class_names), len(templates), -1)
    emb = torch.nn.functional.normalize(emb, dim=-1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)


class ZeroShotAccuracy(Metric):
    """Top-1 / top-k accuracy (percent) of videos against a fixed class-embedding matrix.

    The true class's rank is 1 + #{other classes with score >= its score} (cosine, float64), so a
    tie with a wrong class is a miss. `top5` means top-min(5, C). With keys, a sample seen more than
    once (any rank, any batch) counts once; samples updated without keys are all counted.
    Returns `{"top1", "top5", "num_samples"}`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, classifier: Tensor | None = None, top_k: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = int(top_k)
        self.register_buffer("classifier", torch.empty(0), persistent=False)
        if classifier is not None:
            self.set_classifier(classifier)
        self.add_state("label_rank", default=[], dist_reduce_fx="cat")
        self.add_state("key_ids", default=[], dist_reduce_fx="cat")
        self.add_state("has_key", default=[], dist_reduce_fx="cat")

    def set_classifier(self, weights: Tensor) -> None:
        """Use these (C, D) class embeddings from now on (normalized here; samples already seen keep their ranks)."""
        if weights.ndim != 2 or weights.shape[0] == 0:
            raise ValueError(f"classifier must be a non-empty (C, D) matrix, got {tuple(weights.shape)}")
        w = torch.nn.functional.normalize(weights.detach().to(torch.float64), dim=-1)
        self.classifier = w.to(self.classifier.device if self.classifier.numel() else weights.device)

    def update(self, video_emb: Tensor, labels: Tensor, keys: Sequence[str] | None = None) -> None:
        """Rank each video's true class now, so only a rank per sample is stored (not the embeddings)."""
        if self.classifier.numel() == 0:
            raise RuntimeError("ZeroShotAccuracy has no classifier: pass one at construction or call set_classifier()")
        if video_emb.ndim != 2 or video_emb.shape[1] != self.classifier.shape[1]:
            raise ValueError(f"video_emb must be (B, {self.classifier.shape[1]}), got {tuple(video_emb.shape)}")
        labels = labels.reshape(-1).long().to(video_emb.device)
        if labels.numel() != video_emb.shape[0]:
            raise ValueError(f"{labels.numel()} labels for {video_emb.shape[0]} videos")
        num_classes = self.classifier.shape[0]
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
        if keys is not None and len(keys) != labels.numel():
            raise ValueError(f"{len(keys)} keys for {labels.numel()} videos")
        v = torch.nn.functional.normalize(video_emb.detach().to(torch.float64), dim=-1)
        scores = v @ self.classifier.to(v.device).T
        true = scores.gather(1, labels[:, None])
        self.label_rank.append((scores >= true).sum(1))
        if keys is None:
            self.key_ids.append(torch.zeros_like(labels))
            self.has_key.append(torch.zeros_like(labels))  # int64, not bool: gloo gathers it everywhere
        else:
            self.key_ids.append(hash_keys(keys, labels.device))
            self.has_key.append(torch.ones_like(labels))

    def compute(self) -> dict[str, float]:
        """Accuracies over the de-duplicated samples."""
        if isinstance(self.label_rank, list) and not self.label_rank:
            raise ValueError("ZeroShotAccuracy.compute() called before any update()")
        ranks = dim_zero_cat(self.label_rank).long()
        key_ids = dim_zero_cat(self.key_ids).long()
        has_key = dim_zero_cat(self.has_key) != 0
        keyed = torch.nonzero(has_key).flatten()
        keep = torch.cat([keyed[first_occurrence(key_ids[keyed])], torch.nonzero(~has_key).flatten()])
        ranks = ranks[keep].to(torch.float64)
        if ranks.numel() == 0:
            raise ValueError("ZeroShotAccuracy: no samples")
        k = min(self.top_k, self.classifier.shape[0])
        return {
            "top1": float((ranks <= 1).to(torch.float64).mean() * 100.0),
            f"top{self.top_k}": float((ranks <= k).to(torch.float64).mean() * 100.0),
            "num_samples": float(ranks.numel()),
        }
