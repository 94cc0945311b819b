"""Command-line entry point: one subcommand per module, imported only when used.

Training subcommands (`fit`, `validate`, `test`, `predict`) go to LightningCLI; the others are
small argparse programs (`mvclip.commands.options.CommandParser`). Each command module exposes `main(argv) -> int`.
All of them speak one option language: snake_case, kebab-case accepted (`mvclip.commands.options`).
"""
from __future__ import annotations

import importlib
import sys

from mvclip import allocator
from mvclip.commands.options import program

# name -> (module with `main(argv)`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("mvclip.commands.train", "train a model from a recipe (LightningCLI)"),
    "validate": ("mvclip.commands.train", "evaluate on the validation split"),
    "test": ("mvclip.commands.train", "evaluate on the test split"),
    "predict": ("mvclip.commands.train", "write video and text embeddings with their keys"),
    "models": ("mvclip.commands.models", "list the model presets: parameters, input, published weights"),
    "blocks": ("mvclip.commands.blocks", "list every registered block"),
    "summary": ("mvclip.commands.summary", "stages, output shapes, parameters and FLOPs of a model"),
    "export": ("mvclip.commands.export", "fuse a checkpoint into a verified deployable folder (safetensors, YAML, ONNX)"),
    "convert": ("mvclip.commands.convert", "MobileCLIP weights (Apple, timm, open_clip) -> an mvclip checkpoint and a fused export"),
    "embed": ("mvclip.commands.embed", "embed videos and texts with an exported (fused) model, no training stack"),
    "sweep": ("mvclip.commands.sweep", "run an ablation sweep and write its table, CSV and plot"),
    "shards": ("mvclip.commands.shards", "build WebDataset shards from videos or the synthetic set"),
    "teacher": ("mvclip.commands.teacher", "reinforce shards with teacher embeddings of stored augmented views"),
    "index": ("mvclip.commands.index", "embed a folder or shard set of videos into a searchable index"),
    "search": ("mvclip.commands.search", "search an index by text (or by a video) and print the ranked videos"),
    "serve": ("mvclip.commands.serve", "a web page over an index: text search, playable results, zero-shot labels"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: {program()} <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append(f"\n`{program()} <command> --help` describes each command. Options are snake_case (`--ckpt_path`);"
                 "\nthe kebab-case spelling of any option (`--ckpt-path`) is accepted too.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except BrokenPipeError:  # `python -m mvclip blocks | head` is fine
        sys.stderr.close()
        return 0


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mvclip: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:  # before the command allocates anything (mvclip.allocator; MVCLIP_ALLOCATOR=system opts out)
        allocator.apply_env_choice()
    except ValueError as error:
        print(f"mvclip: {error}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if module.__name__ == "mvclip.commands.train":
        rest = [name, *rest]  # LightningCLI reads the subcommand itself
    return int(module.main(rest) or 0)
