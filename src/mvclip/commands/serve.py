"""`python -m mvclip serve --index INDEX [--port 8000]`: a search page over an index, on 127.0.0.1 by default.

Type a caption and see the top-k clips, playable, with their scores; pick a clip and type labels to classify it
zero-shot. Needs `pip install "mvclip[serve]"` (Starlette and uvicorn). `--host 0.0.0.0` exposes it to the network.
"""
from __future__ import annotations

import argparse
import sys

from mvclip.commands.options import CommandParser


def main(argv: list[str]) -> int:
    parser = CommandParser("serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="an index file written by `python -m mvclip index`")
    parser.add_argument("--model", help="the export or checkpoint to embed queries with (default: the one the index names)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("-k", "--k", type=int, default=6, help="results shown per query (default 6)")
    args = parser.parse_args(argv)

    from mvclip.errors import USER_ERRORS
    from mvclip.extras import require
    from mvclip.serve import create_app
    from mvclip.video_index import VideoIndex

    try:
        require("serve", "python -m mvclip serve")
        index = VideoIndex.load(args.index)
        index.use_model(args.model or index.model_source)
        app = create_app(index, default_k=args.k)
    except USER_ERRORS as error:
        print(f"mvclip serve: {error}", file=sys.stderr)
        return 2
    import uvicorn

    print(f"serving {len(index)} videos of {args.index} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
