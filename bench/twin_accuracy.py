"""Can a model tell a clip from its time-reversed twin? The diagnostic behind the block-design ablation.

Every clip of the synthetic set has a twin with the same frames backwards and the opposite caption
("moves to the left" / "moves to the right"). For each validation clip this script compares the
clip's mean cosine similarity to its own captions with that to its twin's captions, using each
sweep run's fused export (`<run>/checkpoints/last.export`) on the clips decoded exactly as at
evaluation. A model that ignores frame order gives a clip and its twin nearly the same embedding
(not exactly: evaluation takes the middle frame of each of 8 segments of the 16, so the twin's
sampled frames are the neighbours of the clip's, not the same ones), so it is right on about one
clip of every pair: 50 %. It also reports how alike the two embeddings of a pair are.

    python bench/twin_accuracy.py --root runs/sweeps/block_design --docs docs/ablations.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import today, write_section  # noqa: E402

from mvclip.datamodules.synthetic import ensure_synthetic_dataset  # noqa: E402
from mvclip.inference import ExportedModel  # noqa: E402


def read_split(folder: Path) -> dict[str, tuple[bytes, dict]]:
    """key -> (mp4 bytes, metadata) for every sample of the split's shards."""
    samples: dict[str, dict] = defaultdict(dict)
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                samples[key][ext] = tar.extractfile(member).read()
    return {k: (v["mp4"], json.loads(v["json"])) for k, v in samples.items() if "mp4" in v and "json" in v}


_decoded: dict[str, torch.Tensor] = {}


@torch.no_grad()
def twin_scores(export: Path, samples: dict[str, tuple[bytes, dict]]) -> tuple[float, float]:
    """(twin accuracy in %, mean cosine between the video embeddings of a clip and its twin)."""
    model = ExportedModel(export)
    keys = sorted(samples)
    pipeline = json.dumps(model.preprocess, sort_keys=True)  # runs with the same input pipeline share the decoding
    if pipeline not in _decoded:
        _decoded[pipeline] = torch.stack([model.decoder.clip(samples[k][0], k) for k in keys])
    clips = _decoded[pipeline]
    video = torch.cat([model._run("video", clips[i : i + 32]) for i in range(0, len(keys), 32)])
    row = {k: i for i, k in enumerate(keys)}
    captions = {k: model.embed_texts(samples[k][1]["captions"]) for k in keys}
    right, pair_cosines = [], []
    for k in keys:
        twin = samples[k][1]["twin"]
        if twin not in row:
            continue
        own = (captions[k] @ video[row[k]]).mean().item()
        other = (captions[twin] @ video[row[k]]).mean().item()
        right.append(own > other)
        pair_cosines.append(float(video[row[k]] @ video[row[twin]]))
    return 100.0 * sum(right) / len(right), statistics.fmean(pair_cosines)


def _stat(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/sweeps/block_design", help="a sweep's output folder")
    parser.add_argument("--split", default=None, help="folder of shards (default: the recipes' synthetic validation split)")
    parser.add_argument("--docs", default=None, help="also write the table as a section of this Markdown file")
    args = parser.parse_args(argv)
    root = Path(args.root)
    split = Path(args.split) if args.split else ensure_synthetic_dataset(num_train=2048, seed=0, progress=False) / "val"
    samples = read_split(split)
    results: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for export in sorted(root.glob("*/seed*/checkpoints/last.export")):
        variant = export.parents[2].name
        results[variant].append(twin_scores(export, samples))
        print(f"{variant} {export.parents[1].name}: twin accuracy {results[variant][-1][0]:.1f} %, pair cosine {results[variant][-1][1]:.4f}")
    if not results:
        print(f"no exports under {root}/*/seed*/checkpoints/last.export", file=sys.stderr)
        return 1
    lines = ["| variant | runs | twin accuracy % | cosine(clip, its twin) |", "|---|---|---|---|"]
    for variant, scores in results.items():
        lines.append(f"| {variant} | {len(scores)} | {_stat([s[0] for s in scores], 1)} | {_stat([s[1] for s in scores], 4)} |")
    table = "\n".join(lines)
    print(table)
    if args.docs:
        body = (
            f"Measured {today()} with `python bench/twin_accuracy.py --root {args.root} --docs {args.docs}` on the "
            f"{len(samples)} validation clips ({len(samples) // 2} time-reversed pairs), each run's fused `last` export. "
            "Twin accuracy: how often a clip is closer to its own captions than to its twin's (opposite direction) "
            "captions; a model blind to frame order scores about 50 %, because a clip and its twin get nearly the same "
            "embedding (not exactly: evaluation samples the middle frame of each segment, so the twin's frames are "
            "the neighbours of the clip's). Mean ± std over seeds.\n\n" + table
        )
        write_section(f"{root.name}: time-reversed twins", body, path=Path(args.docs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
