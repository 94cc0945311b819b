"""`python -m mvclip blocks`: every registered block with origin, doc, parameters and reparameterizability."""
from __future__ import annotations

from mvclip.builder import load_config
from mvclip.commands.options import CommandParser
from mvclip.registry import REGISTRY


def main(argv: list[str]) -> int:
    parser = CommandParser("blocks", description=__doc__)
    parser.add_argument("--config", help="also load the `imports:` of this model YAML first")
    parser.add_argument("names", nargs="*", help="only these blocks")
    args = parser.parse_args(argv)
    if args.config:
        cfg, base_dir = load_config(args.config)
        for i, target in enumerate(cfg.get("imports") or []):
            REGISTRY.import_plugin(str(target), path=f"imports[{i}]", base_dir=base_dir)
    entries = [e for e in REGISTRY.entries() if not args.names or e.name in args.names]
    for entry in entries:
        reparam = "reparameterizable" if entry.reparameterizable else "not reparameterizable"
        print(f"{entry.name}  [{entry.kind}; {entry.origin}; {reparam}]")
        if entry.doc:
            print(f"    {entry.doc}")
        print(f"    parameters: {entry.describe_parameters() or '(none)'}")
    for failure in REGISTRY.plugin_failures:
        print(f"failed plugin: {failure}")
    print(f"{len(entries)} block(s)")
    return 0
