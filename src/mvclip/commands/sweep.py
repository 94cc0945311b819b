"""`python -m mvclip sweep --sweep recipes/ablations/block_design.yaml`: run an ablation sweep (every variant x seed
of a recipe, finished runs skipped) and write its table (`ablation.md`), CSVs and latency-accuracy plot."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from mvclip.commands.options import CommandParser
from mvclip.errors import ConfigError
from mvclip.sweep import load_sweep, parse_assignments, run_sweep


def main(argv: list[str]) -> int:
    parser = CommandParser("sweep", description=__doc__)
    parser.add_argument("--sweep", required=True, help="the sweep file (e.g. recipes/ablations/block_design.yaml)")
    parser.add_argument("--config", help="the base recipe (overrides the sweep file's `base:`)")
    parser.add_argument("--root", type=Path, help="where the runs and reports go (default runs/sweeps/<name>)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every variant, value as YAML (repeatable; e.g. --set trainer.max_steps=20)")
    parser.add_argument("--only", action="append", default=[], metavar="VARIANT",
                        help="run only this variant (repeatable); the reports still list every variant")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S",
                        help="these seeds instead of the sweep file's (e.g. --seeds 0 1 adds seed 1; finished runs are skipped)")
    parser.add_argument("--print_commands", action="store_true",
                        help="print one `python -m mvclip fit ...` line per pending run (for a scheduler) and run nothing")
    parser.add_argument("--docs", type=Path, metavar="PATH",
                        help="also write the `## <name>` section of this Markdown file (e.g. docs/ablations.md), "
                             "with the plot copied to <PATH without .md>/<name>.png")
    parser.add_argument("--no_check", dest="check", action="store_false",
                        help="skip the check (--print_config and a model plan per variant) before the first run")
    args = parser.parse_args(argv)
    command = "python -m mvclip sweep " + shlex.join(argv)
    try:
        sweep = load_sweep(args.sweep, config=args.config, extra=parse_assignments(args.assignments), only=args.only, seeds=args.seeds)
        return run_sweep(sweep, root=args.root, command=command, print_commands=args.print_commands,
                         check=args.check, docs=args.docs)
    except ConfigError as error:
        print(f"mvclip sweep: {error}", file=sys.stderr)
        return 2
