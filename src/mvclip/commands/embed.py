"""`python -m mvclip embed --export DIR --video a.mp4 ... --text "..." ...`: embeddings from an exported model.

Runs the fused model (PyTorch, or onnxruntime with `--backend onnx`) on video files and captions,
writes unit-norm embeddings with their keys to an `.npz`, and prints the text-to-video ranking.
No Lightning, no data module: the export folder's `preprocess.json` says how to read a video.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mvclip.atomic import atomic_write
from mvclip.commands.options import CommandParser

VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".avi", ".mov"}


def _videos(items: list[str]) -> list[Path]:
    """Files as given; folders expand to the videos in them, sorted."""
    out = []
    for item in items:
        path = Path(item)
        out += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if path.is_dir() else [path]
    return out


def main(argv: list[str]) -> int:
    parser = CommandParser("embed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="an export folder (`python -m mvclip export`, or `<ckpt>.export` after fit)")
    parser.add_argument("--video", nargs="*", default=[], help="video files or folders of videos")
    parser.add_argument("--text", nargs="*", default=[], help="captions")
    parser.add_argument("--text_file", default=None, help="a file with one caption per line")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--out", default="embeddings.npz", help="where to write the embeddings (default embeddings.npz)")
    args = parser.parse_args(argv)

    from mvclip.inference import ExportedModel

    texts = list(args.text)
    for i, text in enumerate(texts):
        if not text.strip():
            print(f"mvclip embed: --text caption {i + 1} ({text!r}) is empty; every caption needs some text", file=sys.stderr)
            return 2
    if args.text_file:
        texts += [line.strip() for line in Path(args.text_file).read_text().splitlines() if line.strip()]
    videos = _videos(args.video)
    if not videos and not texts:
        parser.error("give at least one --video or --text")
    try:
        model = ExportedModel(args.export, backend=args.backend)
        embedded = model.embed_readable_videos(videos)
        text_emb = model.embed_texts(texts).numpy()
    except (FileNotFoundError, ValueError) as error:
        print(f"mvclip embed: {error}", file=sys.stderr)
        return 2
    for video, why in embedded.skipped:
        print(f"mvclip embed: skipped {video}: cannot be read ({why})", file=sys.stderr)
    if videos and not embedded.videos:
        print(f"mvclip embed: none of the {len(videos)} videos could be read; nothing was written", file=sys.stderr)
        return 1
    videos, video_emb = embedded.videos, embedded.embeddings.numpy()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, video=video_emb, video_key=np.array([str(v) for v in videos], dtype=str),
                     text=text_emb, text_key=np.array(texts, dtype=str))

    path = atomic_write(args.out, write)
    skipped = f" (skipped {len(embedded.skipped)} unreadable video(s), listed above)" if embedded.skipped else ""
    print(f"wrote {len(videos)} video and {len(texts)} text embeddings to {path}{skipped}")
    if len(videos) and len(texts):
        similarity = text_emb @ video_emb.T
        for text, row in zip(texts, similarity):
            best = int(row.argmax())
            print(f"{text!r} -> {videos[best].name} (cosine {row[best]:.3f})")
    return 0
