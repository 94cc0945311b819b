"""A text tower for the synthetic set that no video tower took part in: the control for frozen-text ablations.

Why: MobileViCLIP aligns its video tower to a pretrained, frozen text encoder. The synthetic world has no such
encoder, and a text tower taken from a video run (the demo's) learned what *that* video tower could see: aligning
another block design to it hands over part of the answer. This script teaches the tower of a model config from the
captions' own annotations instead. Every caption the generator can write (each event, shape, colour and wording) is
paired with a fixed target, the normalized sum of one random unit vector per annotation field (event, shape, first
colour, second colour for colour changes), and the tower is trained to point at its caption's target (mean 1 - cos).
The target depends only on what the caption says, so "moves to the left" and "moves to the right" differ along the
same direction for every shape and colour, as in a text encoder pretrained on real captions.

    python bench/text_tower_from_annotations.py --out runs/text_tower_annotations/text.safetensors

It writes the text tower's tensors (`text.*`, safetensors, atomically), which a recipe loads with
`model.init_from: <file>`, `model.init_parts: [text]`, `model.freeze: [text]`, and prints one JSON line: the
mean cosine to the targets and the mean cosine between each caption and its time-reversed twin's, before and after.
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mvclip.atomic import atomic_write
from mvclip.builder import build_model
from mvclip.errors import ConfigError
from mvclip.datamodules.synthetic import COLOURS, PAIRS, SHAPES, TEMPLATES, captions_for
from mvclip.schedule import warmup_cosine
from mvclip.tokenizer import tokenize

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("event", "shape", "colour", "colour_to")


def annotated_captions() -> list[tuple[str, dict[str, str]]]:
    """Every (caption, annotation) the synthetic generator can produce, all wordings included."""
    out = []
    for event in TEMPLATES:
        for shape, colour in itertools.product(SHAPES, COLOURS):
            seconds = [c for c in COLOURS if c != colour] if event == "change_colour" else [None]
            for colour_to in seconds:
                note = {"event": event, "shape": shape, "colour": colour}
                if colour_to is not None:
                    note["colour_to"] = colour_to
                out += [(text, note) for text in captions_for(event, shape, colour, colour_to)]
    return out


def twin_annotation(note: dict[str, str]) -> dict[str, str]:
    """The annotation of the same frames played backwards (PAIRS; a colour change swaps its colours)."""
    reverse = {a: b for pair in PAIRS for a, b in (pair, pair[::-1])}
    twin = {**note, "event": reverse[note["event"]]}
    if "colour_to" in note:
        twin["colour"], twin["colour_to"] = note["colour_to"], note["colour"]
    return twin


def targets(notes: list[dict[str, str]], dim: int, seed: int) -> torch.Tensor:
    """(N, dim) unit targets: the normalized sum of one fixed random unit vector per annotation field value."""
    generator = torch.Generator().manual_seed(seed)
    table: dict[tuple[str, str], torch.Tensor] = {}
    rows = []
    for note in notes:
        row = torch.zeros(dim)
        for field in FIELDS:
            if field in note:
                key = (field, note[field])
                if key not in table:
                    table[key] = F.normalize(torch.randn(dim, generator=generator), dim=0)
                row += table[key]
        rows.append(row)
    return F.normalize(torch.stack(rows), dim=-1)


@torch.no_grad()
def report(text: torch.nn.Module, tokens: torch.Tensor, goal: torch.Tensor, twin_index: list[int]) -> dict[str, float]:
    """Mean cosine to the targets, and between each caption and its twin's most direct wording."""
    text.eval()
    emb = torch.cat([F.normalize(text(chunk), dim=-1) for chunk in tokens.split(256)])
    text.train()
    return {"target_cos": round(float((emb * goal).sum(-1).mean()), 4),
            "twin_text_cos": round(float((emb * emb[twin_index]).sum(-1).mean()), 4)}


def goal_dim(model: torch.nn.Module) -> int:
    """The text tower's output width (the shared embedding's)."""
    with torch.no_grad():
        return int(model.text(tokenize(["a red circle grows"])).shape[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "recipes/models/tiny_cpu.yaml"))
    parser.add_argument("--out", default=str(ROOT / "runs/text_tower_annotations/text.safetensors"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for name in ("steps", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected an integer >= 1, got {getattr(args, name)}")
    if Path(args.out).is_dir():
        parser.error(f"--out {args.out}: is a folder; expected the path of the .safetensors file to write")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    pairs = annotated_captions()
    texts, notes = [t for t, _ in pairs], [n for _, n in pairs]
    first = {}  # the most direct wording of each annotation, the twin comparison's reference
    for i, note in enumerate(notes):
        first.setdefault(tuple(sorted(note.items())), i)
    twin_index = [first[tuple(sorted(twin_annotation(n).items()))] for n in notes]
    try:
        model = build_model(args.model)
    except ConfigError as error:
        parser.error(f"--model {args.model}: {error}")
    text = model.text
    tokens = tokenize(texts)
    goal = targets(notes, goal_dim(model), args.seed)
    before = report(text, tokens, goal, twin_index)

    optimizer = torch.optim.AdamW(text.parameters(), lr=args.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, args.warmup, args.steps))
    order, rng, start = [], random.Random(args.seed), time.time()
    for step in range(args.steps):
        if len(order) < args.batch:
            order += rng.sample(range(len(texts)), len(texts))
        batch, order = order[:args.batch], order[args.batch:]
        emb = F.normalize(text(tokens[batch]), dim=-1)
        loss = (1 - (emb * goal[batch]).sum(-1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    after = report(text, tokens, goal, twin_index)

    state = {f"text.{k}": v.detach().contiguous() for k, v in text.state_dict().items()}
    atomic_write(args.out, lambda tmp: save_file(state, str(tmp)))
    result = {"out": args.out, "captions": len(texts), "steps": args.steps, "seed": args.seed,
              "seconds": round(time.time() - start, 1), "before": before, "after": after}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
