"""How high can text-to-video R@1 go on a synthetic validation split, for models that see more and more?

Three idealized readers of the clips, each perfect at what it sees and blind to the rest:
- `appearance`: the object's shape and the set of colours it shows (what any single frame, or the mean of
  frames, gives away), nothing about the event;
- `time-blind`: everything except frame order: shape, colours and the kind of event up to reversal
  (a move along an axis, a size change, appear/disappear, a colour change), so a clip and its
  time-reversed twin look the same;
- `perfect`: the caption's whole content (shape, colours in order, event); only clips whose captions say
  the same thing tie.
A caption's ground-truth clip then ties with every clip the reader cannot tell from it; broken at random,
the expected R@1 of that caption is 1 / (size of the tie). The script averages that over every caption of
the split, from the metadata in the shards (no model involved).

    python bench/ceilings.py --docs docs/ablations.md
    python bench/ceilings.py --split /data/motion/val   # any split whose samples carry the same metadata
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import today, write_section  # noqa: E402

from mvclip.datamodules.synthetic import PAIRS, ensure_synthetic_dataset  # noqa: E402

READERS = ("appearance", "time-blind", "perfect")


def split_metadata(folder: Path) -> list[dict]:
    """The json of every sample of a shard folder."""
    out = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            out += [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    return out


def _pair_kind(event: str) -> str:
    return next("/".join(pair) for pair in PAIRS if event in pair)


def what_reader_sees(meta: dict, reader: str) -> tuple:
    """The part of a clip's content a reader can tell apart (for the synthetic set's metadata)."""
    colours = (meta["colour"], meta.get("colour_to", meta["colour"]))
    if reader == "appearance":
        return meta["shape"], frozenset(colours)
    if reader == "time-blind":
        return meta["shape"], frozenset(colours), _pair_kind(meta["event"])
    if reader == "perfect":
        return meta["shape"], colours, meta["event"]
    raise ValueError(f"unknown reader {reader!r}; expected one of {READERS}")


def ceiling(metas: list[dict], reader: str) -> float:
    """Expected T2V R@1 (percent) with ties broken at random, over every caption of every clip."""
    seen = Counter(what_reader_sees(m, reader) for m in metas)
    per_caption = [1.0 / seen[what_reader_sees(m, reader)] for m in metas for _ in m["captions"]]
    return 100.0 * sum(per_caption) / len(per_caption)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default=None, help="shard folder (default: the demo's synthetic validation split)")
    parser.add_argument("--docs", default=None, help="also write the table as a section of this Markdown file")
    args = parser.parse_args(argv)
    split = Path(args.split) if args.split else ensure_synthetic_dataset(num_train=2048, seed=0, progress=False) / "val"
    metas = split_metadata(split)
    rows = [(reader, ceiling(metas, reader)) for reader in READERS]
    table = "\n".join(["| reader | sees | T2V R@1 ceiling % |", "|---|---|---|"] + [
        f"| {reader} | {desc} | {value:.1f} |" for (reader, value), desc in zip(rows, (
            "shape and colours", "shape, colours, event up to time reversal", "everything the caption says"))])
    print(table)
    if args.docs:
        body = (f"Computed {today()} with `python bench/ceilings.py --docs {args.docs}` from the metadata of the "
                f"{len(metas)} clips of `{split.name}` (no model): the expected text-to-video R@1 of an ideal reader "
                "that is perfect at what it sees and blind to the rest, ties broken at random. A model above the "
                "time-blind ceiling must be using frame order.\n\n" + table)
        write_section("Retrieval ceilings of the synthetic validation split", body, path=Path(args.docs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
