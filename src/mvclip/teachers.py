"""Teachers for dataset reinforcement: a model that embeds videos and texts, with a short name and a fingerprint.

A teacher is an mvclip checkpoint (`.ckpt` from `fit` or `convert`), an mvclip export folder, or a published
MobileCLIP file (`.pt`/`.pth`/`.bin`/`.safetensors`, or `hf-hub:owner/repo/file` from the local hub cache) loaded as
the frame-mean video model it holds (as `python -m mvclip convert` does). The fingerprint goes into the reinforced
shards' manifest, so a training run can tell exactly which weights made the embeddings it distils from.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvclip.datamodules.teacher_members import check_teacher_name
from mvclip.embedder import Embedder, load_embedder
from mvclip.hub import HUB_PREFIX, cached_hub_file, parse_hub_reference

MOBILECLIP_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass
class Teacher:
    """A loaded teacher: `embedder` (model in eval mode + its input description), its `name` and `record`."""

    name: str
    embedder: Embedder
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def input_spec(self):
        return self.embedder.input_spec


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_teacher_name(source: str) -> str:
    """`runs/a/last.ckpt` -> `last`, `x/last.export` -> `last_export`, `hf-hub:apple/MobileCLIP-S2/mobileclip_s2.pt`
    -> `mobileclip_s2`: the file's name, lowercased, other characters as `_`."""
    text = source.rstrip("/").rsplit("/", 1)[-1]
    path = Path(text)
    stem = path.stem if path.suffix in (".ckpt", *MOBILECLIP_SUFFIXES) else text
    return re.sub(r"[^a-z0-9_-]+", "_", stem.lower()).strip("_") or "teacher"


def split_teacher_argument(argument: str) -> tuple[str, str]:
    """`NAME=SOURCE` or `SOURCE` -> (name, source)."""
    name, sep, source = argument.partition("=")
    if sep and "/" not in name:
        return check_teacher_name(name), source
    return default_teacher_name(argument), argument


def load_teacher(argument: str, frames: int | None = None) -> Teacher:
    """Load `NAME=SOURCE` (or `SOURCE`, named after its file). `frames`: the clip length a MobileCLIP file is built
    for (mvclip checkpoints and exports keep their own). FileNotFoundError / ValueError name the source."""
    name, source = split_teacher_argument(argument)
    path = Path(source).expanduser()
    if source.startswith(HUB_PREFIX) or path.suffix in MOBILECLIP_SUFFIXES:
        if source.startswith(HUB_PREFIX):
            path = cached_hub_file(parse_hub_reference(source))
        elif not path.is_file():
            raise FileNotFoundError(f"teacher {name}: {source}: no such file")
        embedder, kind, weights = _mobileclip(path, frames or 8), "mobileclip", path
    elif path.is_dir():
        embedder, kind, weights = load_embedder(path), "export", path / "model.safetensors"
    elif path.is_file():
        embedder, kind, weights = load_embedder(path), "checkpoint", path
    else:
        raise FileNotFoundError(f"teacher {name}: {source}: not found (expected a .ckpt, an export folder, a MobileCLIP "
                                f"file {'/'.join(MOBILECLIP_SUFFIXES)} or hf-hub:owner/repo/file)")
    model = embedder.model
    if model.text is None:
        raise ValueError(f"teacher {name}: {source} has no text tower; a teacher must embed captions too")
    record = {
        "kind": kind,
        "source": source,
        "weights_sha256": file_sha256(weights),
        "model_fingerprint": embedder.fingerprint,
        "embed_dim": _embed_dim(embedder),
        "logit_scale": float(model.logit_scale.detach().exp()),
        "input": embedder.input_spec.to_dict(),
    }
    return Teacher(name, embedder, record)


def _embed_dim(embedder: Embedder) -> int:
    """The width of the shared embedding space (read off one text embedding: no config field names it for every model)."""
    return int(embedder.embed_texts(["a"]).shape[-1])


def _mobileclip(path: Path, frames: int) -> Embedder:
    from mvclip.builder import build_model
    from mvclip.checkpoints import read_state_dict
    from mvclip.pretrained import detect_format, frame_mean_config, load_pretrained

    state = read_state_dict(path)
    fmt = detect_format(list(state), str(path))
    model = build_model(frame_mean_config(state, fmt, str(path), frames=frames))
    load_pretrained(model, state, format=fmt.name, source=str(path))
    return Embedder(model, model.input_spec, source=str(path))
