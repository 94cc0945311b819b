"""Lightning callbacks of mvclip's own."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from mvclip.checkpoints import atomic_write


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
