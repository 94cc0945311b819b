"""`python -m mvclip index --model EXPORT_OR_CKPT --videos DIR --out INDEX`: embed videos once for text search.

Videos are read as the model's input description says (`preprocess.json` of an export, the checkpoint's record),
in batches, with a progress bar; a video that cannot be read is skipped and listed. The index file holds the
embeddings, the paths, the input description and the model's fingerprint (`mvclip.video_index`).
"""
from __future__ import annotations

import argparse
import sys

from mvclip.commands.options import CommandParser


def main(argv: list[str]) -> int:
    parser = CommandParser("index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an export folder or a checkpoint (.ckpt)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", help="a folder of videos (searched recursively)")
    source.add_argument("--shards", help="a shard set: a folder with manifest.json, or a tar pattern")
    parser.add_argument("--out", required=True, help="the index file to write (.npz)")
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args(argv)

    from mvclip.errors import USER_ERRORS
    from mvclip.video_index import VideoIndex

    try:
        index = VideoIndex.build(args.model, args.videos, shards=args.shards, batch_size=args.batch_size)
    except USER_ERRORS as error:
        print(f"mvclip index: {error}", file=sys.stderr)
        return 2
    for path, why in index.skipped:
        print(f"mvclip index: skipped {path}: cannot be read ({why})", file=sys.stderr)
    if not len(index):
        print("mvclip index: no video could be read; nothing was written", file=sys.stderr)
        return 1
    out = index.save(args.out)
    skipped = f", skipped {len(index.skipped)} unreadable (listed above)" if index.skipped else ""
    print(f"indexed {len(index)} videos into {out} (model {index.fingerprint}{skipped})")
    return 0
