"""`python -m mvclip models`: the model presets shipped with mvclip, with parameters, input and published weights.

Every name works as `mvclip.create_model(NAME, pretrained=...)`, `build_model(NAME)` and `--model.model=NAME`.
Parameters are counted on the meta device (nothing is allocated).
"""
from __future__ import annotations

import argparse

from mvclip.commands.options import CommandParser


def count_parameters(name: str) -> dict[str, int]:
    """Video, text and total parameters of a preset, built on the meta device."""
    import torch

    from mvclip.builder import build_model

    with torch.device("meta"):
        model = build_model(name)
    video = sum(p.numel() for p in model.video.parameters())
    text = sum(p.numel() for p in model.text.parameters()) if model.text is not None else 0
    return {"video": video, "text": text, "total": sum(p.numel() for p in model.parameters())}


def main(argv: list[str]) -> int:
    parser = CommandParser("models", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="only these presets")
    args = parser.parse_args(argv)

    from mvclip.markdown import table
    from mvclip.models import list_models, model_info

    names = args.names or list_models()
    rows = []
    for name in names:
        info = model_info(name)
        params = count_parameters(name)
        spec = info.input
        norm = "none" if spec.get("mean") is None else f"mean {spec['mean']}, std {spec['std']}"
        weights = ", ".join(f"{tag} ({w.repo}/{w.file})" for tag, w in info.weights.items()) or "-"
        rows.append([name, f"{params['video'] / 1e6:.1f}M", f"{params['text'] / 1e6:.1f}M",
                     f"{spec['frames']} x {spec.get('resolution', 256)} px", norm, weights])
    print("\n".join(table(["model", "video params", "text params", "input", "normalization", "published weights (pretrained=)"], rows)))
    return 0
