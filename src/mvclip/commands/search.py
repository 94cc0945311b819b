"""`python -m mvclip search --index INDEX "a dog catches a frisbee" -k 5`: the videos of an index ranked by text.

Queries are embedded with the model the index was built with (`--model` to name it when it moved); a model with
another fingerprint is refused. `--video FILE` ranks by similarity to a video instead.
"""
from __future__ import annotations

import argparse
import sys

from mvclip.commands.options import CommandParser


def main(argv: list[str]) -> int:
    parser = CommandParser("search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="an index file written by `python -m mvclip index`")
    parser.add_argument("queries", nargs="*", help="captions to search for")
    parser.add_argument("--video", help="rank by similarity to this video instead")
    parser.add_argument("-k", "--k", type=int, default=5, help="results per query (default 5)")
    parser.add_argument("--model", help="the export or checkpoint to embed queries with (default: the one the index names)")
    args = parser.parse_args(argv)
    if not args.queries and not args.video:
        parser.error("give a caption to search for, or --video")

    from mvclip.errors import USER_ERRORS
    from mvclip.video_index import VideoIndex

    try:
        index = VideoIndex.load(args.index)
        index.use_model(args.model or index.model_source)
        rankings = [(f"video {args.video}", index.search_video(args.video, args.k))] if args.video else []
        rankings += list(zip(args.queries, index.search(args.queries, args.k))) if args.queries else []
    except (*USER_ERRORS, ValueError) as error:
        print(f"mvclip search: {error}", file=sys.stderr)
        return 2
    for query, hits in rankings:
        print(query)
        for rank, hit in enumerate(hits, 1):
            print(f"  {rank}. {hit.score:.3f}  {hit.path}")
    return 0
