"""Published weights by name, found in the Hugging Face hub's local cache and never downloaded at run time.

`pretrained=` accepts `hf-hub:owner/repo/file.pt` (or `hf-hub:owner/repo` when a preset names the file) and the
weight names a preset lists under `weights:` (`mobileclip_s0`). Resolution only looks in the cache
(`huggingface_hub.try_to_load_from_cache`); a file that is not there is an error that says what to download and where.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mvclip.extras import require

HUB_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class HubFile:
    """One file of a Hugging Face hub repository."""

    repo: str
    file: str
    revision: str | None = None

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/resolve/{self.revision or 'main'}/{self.file}"


def parse_hub_reference(reference: str, default_file: str | None = None) -> HubFile:
    """`hf-hub:owner/repo/path/file.pt[@revision]` -> HubFile; `hf-hub:owner/repo` takes `default_file`."""
    body = reference[len(HUB_PREFIX):] if reference.startswith(HUB_PREFIX) else reference
    body, _, revision = body.partition("@")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"pretrained={reference!r}: expected hf-hub:owner/repo/file (e.g. hf-hub:apple/MobileCLIP-S0/mobileclip_s0.pt)")
    repo, file = "/".join(parts[:2]), "/".join(parts[2:]) or default_file
    if not file:
        raise ValueError(f"pretrained={reference!r}: name the file too: hf-hub:{repo}/<file in the repo>")
    return HubFile(repo, file, revision or None)


def cached_hub_file(ref: HubFile, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached copy of `ref`; FileNotFoundError saying how to fetch it when there is none (nothing is downloaded)."""
    require("hub", "pretrained weights from the Hugging Face hub")
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    found = try_to_load_from_cache(ref.repo, ref.file, cache_dir=None if cache_dir is None else str(cache_dir), revision=ref.revision)
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    cache = Path(cache_dir) if cache_dir is not None else Path(HF_HUB_CACHE)
    revision = f" --revision {ref.revision}" if ref.revision else ""
    raise FileNotFoundError(
        f"{ref.file} of {ref.repo} is not in the Hugging Face cache {cache} (mvclip downloads nothing at run time): "
        f"run `huggingface-cli download {ref.repo} {ref.file}{revision}` on a machine with network "
        f"(with HF_HUB_CACHE={cache} if not the default) and copy the cache here, "
        f"or download {ref.url} and pass its path as pretrained="
    )
