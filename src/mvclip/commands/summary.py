"""`python -m mvclip summary --config MODEL.yaml`: stages, output shapes, parameters and FLOPs (unfused and fused)."""
from __future__ import annotations

import argparse

import torch

from mvclip.builder import build_model
from mvclip.summary import format_table, summarize


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvclip summary", description=__doc__)
    parser.add_argument("--config", required=True, help="a model YAML (e.g. recipes/models/mobileviclip_tiny.yaml)")
    parser.add_argument("--frames", type=int, default=8, help="clip length T (default 8)")
    parser.add_argument("--resolution", type=int, default=256, help="frame height and width (default 256)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = build_model(args.config)
    print(format_table(summarize(model, args.frames, args.resolution), args.frames, args.resolution))
    return 0
