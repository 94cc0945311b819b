"""One command-line language for every `python -m mvclip` command.

Options are snake_case, as LightningCLI spells its own (`--ckpt_path`, `--print_config`), so a user learns one
spelling for `fit` and for the argparse commands alike. Command lines written before that convention keep working:
every option also takes its kebab-case spelling (`--no-onnx`, `--ckpt-path`), and `--ckpt` is `--ckpt_path`.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# old spellings -> the option they mean (after kebab-case became snake_case)
OPTION_ALIASES: dict[str, str] = {"--ckpt": "--ckpt_path"}


def program(command: str | None = None) -> str:
    """What the user typed to start mvclip (`mvclip` when installed as a script, else `python -m mvclip`), for usage lines."""
    name = "mvclip" if Path(sys.argv[0]).name == "mvclip" else "python -m mvclip"
    return f"{name} {command}" if command else name


def snake_case_options(argv: Sequence[str]) -> list[str]:
    """`--no-onnx` -> `--no_onnx`, `--ckpt=x` -> `--ckpt_path=x`; values and everything after `--` are left alone."""
    out: list[str] = []
    for i, token in enumerate(argv):
        if token == "--":
            return out + list(argv[i:])
        if token.startswith("--") and len(token) > 2:
            name, equals, value = token.partition("=")
            name = "--" + name[2:].replace("-", "_")
            token = OPTION_ALIASES.get(name, name) + equals + value
        out.append(token)
    return out


class CommandParser(argparse.ArgumentParser):
    """An argparse parser for `python -m mvclip COMMAND` that reads the kebab-case spellings of its options too."""

    def __init__(self, command: str, **kwargs) -> None:
        super().__init__(prog=program(command), **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        args = sys.argv[1:] if args is None else args
        return super().parse_known_args(snake_case_options(args), namespace)
