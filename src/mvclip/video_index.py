"""Text-to-video search over a folder (or a shard set) of videos, embedded once and saved to one file.

`VideoIndex.build(model, videos)` embeds the videos in batches with a progress bar, skipping and reporting the ones
that cannot be read; `save` writes embeddings, paths, the exact input description and the model's fingerprint in one
atomic `.npz`; `search(texts, k)` and `search_video(path, k)` rank the videos by cosine similarity. A query embedded
by another model than the index's is refused (`IndexMismatchError`): its ranks would mean nothing.

Search is a matrix product (exact) up to `ANN_THRESHOLD` videos; above it, with faiss installed (`mvclip[search]`),
an IVF index (docs/benchmarks.md, "Vector search for VideoIndex", measures both at 10k and 1M vectors).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from mvclip.atomic import atomic_write
from mvclip.embedder import Embedder, load_embedder
from mvclip.errors import ConfigError
from mvclip.extras import installed
from mvclip.input_spec import InputSpec

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
ANN_THRESHOLD = 200_000  # below it the exact product answers a query in a few ms on one core (docs/benchmarks.md)
FORMAT_VERSION = 1


class IndexMismatchError(ConfigError):
    """A query from a model other than the one the index was built with."""


class Hit(NamedTuple):
    """One ranked result: the video and its cosine similarity to the query."""

    path: str
    score: float


def find_videos(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    """A folder (searched recursively for video files, sorted) or a list of files, as strings."""
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"videos folder not found: {root}")
        return sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    return [str(p) for p in source]


def _shard_samples(pattern: str) -> list[tuple[str, bytes]]:
    """(shard:key, video bytes) of a shard set (a folder with manifest.json, or a tar pattern)."""
    from mvclip.datamodules.bad_samples import BadSampleCounter
    from mvclip.datamodules.shard_format import video_member
    from mvclip.datamodules.shard_reading import iter_tar, list_shards

    out, counter = [], BadSampleCounter()
    for shard in list_shards(pattern):
        for raw in iter_tar(shard.url, counter):
            ext = video_member(raw)
            if ext is not None:
                out.append((f"{raw['__shard__']}:{raw['__key__']}", raw[ext]))
    return out


@dataclass
class VideoIndex:
    """Unit-norm video embeddings `(N, D)`, the videos they came from, and what made them."""

    embeddings: torch.Tensor
    paths: list[str]
    input_spec: InputSpec
    fingerprint: str
    model_source: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    embedder: Embedder | None = None  # the model queries are embedded with (set by build, or load(..., model=))

    # -- building ------------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: Embedder | str | os.PathLike[str], videos: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
              *, shards: str | None = None, batch_size: int = 8, progress: bool = True) -> VideoIndex:
        """Embed a folder or list of `videos` (or a `shards` set) with `model` (an Embedder, export folder or checkpoint)."""
        from tqdm import tqdm

        embedder = model if isinstance(model, Embedder) else load_embedder(model)
        if (videos is None) == (shards is None):
            raise ValueError("give either videos (a folder or a list of files) or shards")
        if shards is not None:
            items: list[tuple[str, bytes | str]] = list(_shard_samples(shards))
        else:
            items = [(path, path) for path in find_videos(videos)]
        rows, kept, skipped, pending, names = [], [], [], [], []
        bar = tqdm(total=len(items), desc="embedding videos", unit="video", disable=not progress)

        def flush() -> None:
            if pending:
                rows.append(embedder.embed_clips(torch.stack(pending)))
                kept.extend(names)
                pending.clear()
                names.clear()

        from mvclip.inference import UNREADABLE_VIDEO_ERRORS

        for name, data in items:
            try:
                pending.append(embedder.preprocess(data))
                names.append(name)
            except (*UNREADABLE_VIDEO_ERRORS, RuntimeError) as error:
                skipped.append((name, f"{type(error).__name__}: {error}".splitlines()[0]))
            if len(pending) == batch_size:
                flush()
            bar.update(1)
        flush()
        bar.close()
        dim = rows[0].shape[1] if rows else 0
        embeddings = torch.cat(rows) if rows else torch.zeros(0, dim)
        return cls(embeddings, kept, embedder.input_spec, embedder.fingerprint, embedder.source, skipped, embedder)

    # -- saving and loading ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """One `.npz` (embeddings as float32, the rest as JSON), written atomically."""
        meta = {"format": FORMAT_VERSION, "paths": self.paths, "input": self.input_spec.to_dict(), "fingerprint": self.fingerprint,
                "model_source": self.model_source, "skipped": [list(s) for s in self.skipped]}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, embeddings=self.embeddings.float().numpy(), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Embedder | str | os.PathLike[str] | None = None) -> VideoIndex:
        """An index written by `save`; with `model`, queries are embedded by it (refused if it is not the index's)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"index not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                embeddings = torch.from_numpy(data["embeddings"].copy())
                meta = json.loads(bytes(data["meta"]).decode())
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(f"{path}: not a video index written by VideoIndex.save ({error})") from error
        if meta.get("format") != FORMAT_VERSION:
            raise ConfigError(f"{path}: index format {meta.get('format')!r}; this mvclip reads format {FORMAT_VERSION}")
        index = cls(embeddings, list(meta["paths"]), InputSpec.from_mapping(meta["input"], f"{path}: input"), meta["fingerprint"],
                    meta.get("model_source", ""), [tuple(s) for s in meta.get("skipped", [])])
        if model is not None:
            index.use_model(model)
        return index

    def use_model(self, model: Embedder | str | os.PathLike[str]) -> None:
        """Embed queries with `model`; an IndexMismatchError unless it is the model the index was built with."""
        embedder = model if isinstance(model, Embedder) else load_embedder(model)
        if embedder.fingerprint != self.fingerprint:
            raise IndexMismatchError(
                f"the index was built with model {self.fingerprint} ({self.model_source}) but the query model is "
                f"{embedder.fingerprint} ({embedder.source}); query with the index's model or rebuild the index with this one"
            )
        self.embedder = embedder

    # -- searching ------------------------------------------------------------------------------------------------
    def search_embeddings(self, queries: torch.Tensor, k: int = 5) -> list[list[Hit]]:
        """Rank the videos for each unit-norm query row `(Q, D)`; ties keep index order."""
        if queries.ndim != 2 or (len(self.paths) and queries.shape[1] != self.embeddings.shape[1]):
            raise IndexMismatchError(f"queries of shape {tuple(queries.shape)} do not match the index's {self.embeddings.shape[1]}-d embeddings")
        k = min(k, len(self.paths))
        if k <= 0:
            return [[] for _ in range(queries.shape[0])]
        if len(self.paths) > ANN_THRESHOLD and installed("search"):
            scores, indices = self._ann().search(queries.float().numpy(), k)
            return [[Hit(self.paths[i], float(s)) for s, i in zip(srow, irow) if i >= 0] for srow, irow in zip(scores, indices)]
        similarity = queries.float() @ self.embeddings.float().T
        order = torch.sort(similarity, dim=1, descending=True, stable=True)
        return [[Hit(self.paths[int(i)], float(s)) for s, i in zip(srow[:k], irow[:k])] for srow, irow in zip(order.values, order.indices)]

    def search(self, texts: str | Sequence[str], k: int = 5) -> list[Hit] | list[list[Hit]]:
        """Videos ranked for a caption (a list of captions: one ranking each)."""
        single = isinstance(texts, str)
        results = self.search_embeddings(self._query_model().embed_texts([texts] if single else list(texts)), k)
        return results[0] if single else results

    def search_video(self, path: str | os.PathLike[str], k: int = 5) -> list[Hit]:
        """Videos ranked by similarity to another video (itself first, if it is in the index)."""
        embedder = self._query_model()
        return self.search_embeddings(embedder.embed_clips(embedder.preprocess(path)[None]), k)[0]

    def classify(self, video: str | os.PathLike[str], labels: Sequence[str], template: str = "a video of {}") -> list[tuple[str, float]]:
        """Zero-shot: `labels` ranked by their probability for `video` (softmax over the model's scaled cosines)."""
        embedder = self._query_model()
        clip = embedder.embed_clips(embedder.preprocess(video)[None])
        texts = embedder.embed_texts([template.format(label) if "{}" in template else label for label in labels])
        probs = ((clip @ texts.T) * embedder.model.logit_scale.detach().exp()).softmax(dim=-1)[0]
        return sorted(((label, float(p)) for label, p in zip(labels, probs)), key=lambda item: -item[1])

    def _query_model(self) -> Embedder:
        if self.embedder is None:
            raise IndexMismatchError(f"no query model: load the index with model= (the export or checkpoint {self.model_source or 'it was built with'})")
        return self.embedder

    def _ann(self):
        cached = getattr(self, "_faiss", None)
        if cached is None:
            import faiss

            data = self.embeddings.float().numpy()
            nlist = int(4 * np.sqrt(len(data)))
            cached = faiss.IndexIVFFlat(faiss.IndexFlatIP(data.shape[1]), data.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
            cached.train(data[np.random.default_rng(0).choice(len(data), min(len(data), 40 * nlist), replace=False)])
            cached.add(data)
            cached.nprobe = 32
            self._faiss = cached
        return cached

    def __len__(self) -> int:
        return len(self.paths)
