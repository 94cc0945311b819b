"""Why do the temporal blocks not learn time? The loop behind docs/blocks.md, "Starting the temporal branch".

It trains tiny_cpu with mvclip's own model, contrastive loss, parameter groups and schedule, but on clips of the
synthetic set decoded once and kept in memory (so a run is ~2x faster than `fit` and one lever changes at a time),
and reports what `fit` does not: the cosine between the text embeddings of a clip's caption and its twin's, and how
far the temporal branches have moved. Levers that became recipe keys are passed as those keys (`--overrides`,
`--module`); the probes that did not (a bag-of-words text side, a fixed logit scale) are flags here only.

    python bench/temporal_levers.py --name shipped --res 64 --steps 150 --warmup 20
    python bench/temporal_levers.py --name demo --res 64 --steps 150 --warmup 20 --order pairs \
        --overrides '{"video.temporal_init": "active"}' --module '{"lr_mult": {"text": 0.1}}'

Each run appends one JSON line to --out (default runs/temporal_levers.jsonl).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tarfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mvclip.datamodules.decode import VideoReader
from mvclip.datamodules.pipeline import shuffle_buffer
from mvclip.datamodules.sampling import sample_indices
from mvclip.datamodules.synthetic import ensure_synthetic_dataset
from mvclip.datamodules.transforms import VideoTransform
from mvclip.freezing import apply_freezing
from mvclip.lightning_module import VideoTextModule
from mvclip.model import TextEncoder
from mvclip.metrics import RetrievalMetric
from mvclip.registry import REGISTRY
from mvclip.schedule import warmup_cosine
from mvclip.tokenizer import tokenize
from mvclip.zeroshot import ZeroShotAccuracy, build_classifier

CLASSES = ["moves to the left", "moves to the right", "moves up", "moves down", "grows", "shrinks",
           "appears", "disappears", "changes colour"]
TEMPLATES = ["a red circle {}", "a green square {}", "a blue triangle {}", "a yellow diamond {}", "a purple cross {}",
             "an orange circle {}", "a white square {}", "a red triangle {}", "a green diamond {}", "a blue cross {}",
             "a yellow circle {}", "a purple square {}", "an orange triangle {}", "a white diamond {}", "a red cross {}"]
CACHE = Path(os.environ.get("MVCLIP_CACHE", Path.home() / ".cache" / "mvclip")) / "levers"
ROOT = Path(__file__).resolve().parents[1]


def bag_of_words(self: TextEncoder, tokens: torch.Tensor) -> torch.Tensor:
    """The probe text side: the mean of the caption's learned word embeddings (no blocks, no projection)."""
    eot = tokens.argmax(dim=-1)
    pos = torch.arange(tokens.shape[1])
    keep = ((pos[None, :] >= 1) & (pos[None, :] < eot[:, None])).float()
    return (self.token_embedding(tokens) * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)


def branch_strength(model: torch.nn.Module) -> list[float]:
    """Mean |BN weight| of the temporal branches (for `mirror`: |difference| of the two branches' weights)."""
    vals = []
    for n, m in model.named_modules():
        if n.endswith("temporal_mixer") and getattr(m, "branch", None) is not None:
            if getattr(m, "mirror", None) is not None:
                vals.append((m.branch.bn.weight - m.mirror.bn.weight).abs().mean().item()
                            + (m.branch.conv.weight - m.mirror.conv.weight).abs().mean().item())
            else:
                vals.append(m.branch.bn.weight.abs().mean().item())
    return vals and [statistics.fmean(vals)]


def read_split(folder: Path):
    """Ordered list of (key, mp4, meta) as the shards hold them (shard order by name)."""
    out = []
    for shard in sorted(folder.glob("*.tar")):
        samples = {}
        order = []
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                samples[key][ext] = tar.extractfile(m).read()
        out.append([(k, samples[k]["mp4"], json.loads(samples[k]["json"])) for k in order])
    return out


def decode_all(shards, side: int, tag: str):
    path = CACHE / f"{tag}-{side}.pt"
    if path.exists():
        return torch.load(path)
    frames = {}
    for shard in shards:
        for key, data, _ in shard:
            with VideoReader(data, thread_count=2, name=key) as r:
                frames[key] = r.frames(list(range(r.info.num_frames)), short_side=side)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(frames, path)
    return frames


def train_order(shards, seed: int, epoch: int, buffer: int, order: str):
    rng = random.Random(f"{seed}/{epoch}")
    if order == "pipeline":  # shard order shuffled, one reader, shuffle buffer
        sh = list(shards)
        rng.shuffle(sh)
        items = (s for shard in sh for s in shard)
        return list(shuffle_buffer(items, buffer, rng))
    if order == "random":
        items = [s for shard in shards for s in shard]
        rng.shuffle(items)
        return items
    if order == "pairs":  # every batch made of complete twin pairs
        by_pair = defaultdict(list)
        for shard in shards:
            for s in shard:
                by_pair[s[2]["pair"]].append(s)
        pairs = list(by_pair.values())
        rng.shuffle(pairs)
        return [s for p in pairs for s in p]
    raise ValueError(order)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--res", type=int, default=80)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--order", default="pipeline")
    p.add_argument("--model", default=str(ROOT / "recipes/models/tiny_cpu.yaml"))
    p.add_argument("--overrides", default="{}", help="JSON of model overrides")
    p.add_argument("--module", default="{}", help="JSON of extra VideoTextModule kwargs")
    p.add_argument("--text", default="tower", choices=["tower", "bow"],
                   help="bow: the text side is the mean of learned word embeddings (a probe, not a model option)")
    p.add_argument("--scale", type=float, default=0.0, help="fixed logit scale (0: learn)")
    p.add_argument("--objective", default="vtc", choices=["vtc", "events"],
                   help="events: no text side; a linear head on the video embedding learns the nine event labels "
                        "with cross-entropy (what the video tower can learn when supervised directly)")
    p.add_argument("--name", default="run")
    p.add_argument("--eval_every", type=int, default=0,
                   help="also evaluate (and append a line) every N steps, to see the learning curve")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plugin", action="append", default=[],
                   help="a .py file or module of probe blocks to register first (e.g. bench/probes/spatial_position.py)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "temporal_levers.jsonl")
    args = p.parse_args(argv)
    for plugin in args.plugin:
        REGISTRY.import_plugin(plugin, path="--plugin")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    root = ensure_synthetic_dataset(num_train=2048, seed=0, progress=False)
    train_shards = read_split(root / "train")
    val_shards = read_split(root / "val")
    train_frames = decode_all(train_shards, args.res, "train")
    val_samples = [s for shard in val_shards for s in shard]
    val_frames = decode_all(val_shards, args.res, "val")
    tr_tf = VideoTransform(args.res, True, (0.8, 1.0))
    ev_tf = VideoTransform(args.res, False)

    val_keys = [k for k, _, _ in val_samples]
    val_meta = {k: m for k, _, m in val_samples}
    val_video = torch.stack([ev_tf(val_frames[k][sample_indices(16, 8, "segments", train=False)]) for k in val_keys])

    if args.text == "bow":
        TextEncoder.forward = bag_of_words
    module_kwargs = {"freeze": [], **json.loads(args.module)}
    module = VideoTextModule(model=args.model, overrides=json.loads(args.overrides), lr=args.lr,
                             weight_decay=0.05, warmup_steps=args.warmup, **module_kwargs)
    model = module.model

    def train_mode() -> None:
        """Train mode, except the modules `freeze` keeps in eval mode (their BatchNorm statistics stay)."""
        model.train()
        apply_freezing(model, module.freeze_plan)
    if args.scale:
        model.logit_scale.data.fill_(math.log(args.scale)); model.logit_scale.requires_grad_(False)
    head = None
    if args.objective == "events":
        with torch.no_grad():
            width = model.eval().encode_video(val_video[:1]).shape[-1]
        head = torch.nn.Linear(width, len(CLASSES))
    groups = module.parameter_groups() + ([{"params": list(head.parameters())}] if head is not None else [])
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, args.warmup, args.steps, 0.0))
    caption_rng = random.Random(args.seed)
    aug_rng = random.Random(args.seed + 1)
    log = []

    def temporal_stats():
        out = {}
        bn = branch_strength(model)
        if bn:
            out["tbn"] = round(bn[0], 4)
        tpe = [p.norm().item() for n, p in model.named_parameters() if n.endswith(".tpe")]
        if tpe:
            out["tpe"] = round(statistics.fmean(tpe), 4)
        return out

    @torch.no_grad()
    def evaluate_events():
        """Event top-1 of the linear head, and how far reversing a clip moves its embedding."""
        model.eval()
        labels = torch.tensor([val_meta[k]["label"] for k in val_keys])
        v = torch.cat([model.encode_video(val_video[i:i + 64]) for i in range(0, len(val_keys), 64)])
        vr = torch.cat([model.encode_video(val_video[i:i + 64].flip(1)) for i in range(0, len(val_keys), 64)])
        top1 = (head(v).argmax(-1) == labels).float().mean().item()
        rev = (1 - F.cosine_similarity(v, vr, dim=-1)).mean().item()
        train_mode()
        return {"event_top1": round(100 * top1, 2), "rev_sens": round(rev, 5)}

    @torch.no_grad()
    def evaluate():
        if head is not None:
            return evaluate_events()
        model.eval()
        v = torch.cat([model.encode_video(val_video[i:i + 64], normalize=True) for i in range(0, len(val_keys), 64)])
        vr = torch.cat([model.encode_video(val_video[i:i + 64].flip(1), normalize=True) for i in range(0, len(val_keys), 64)])
        caps = [val_meta[k]["captions"] for k in val_keys]
        flat = [c for cs in caps for c in cs]
        t = torch.cat([model.encode_text(tokenize(flat[i:i + 256]), normalize=True) for i in range(0, len(flat), 256)])
        owner = [k for k, cs in zip(val_keys, caps) for _ in cs]
        metric = RetrievalMetric()
        metric.update(v, val_keys, t, owner)
        res = metric.compute()
        clf = build_classifier(lambda tok: model.encode_text(tok), tokenize, CLASSES, TEMPLATES)
        zs = ZeroShotAccuracy(clf)
        zs.update(v, torch.tensor([val_meta[k]["label"] for k in val_keys]), val_keys)
        zres = zs.compute()
        row = {k: i for i, k in enumerate(val_keys)}
        start = 0
        cap_rows = {}
        for k, cs in zip(val_keys, caps):
            cap_rows[k] = t[start:start + len(cs)]
            start += len(cs)
        right = []
        pair_cos = []
        for k in val_keys:
            tw = val_meta[k]["twin"]
            own = (cap_rows[k] @ v[row[k]]).mean()
            oth = (cap_rows[tw] @ v[row[k]]).mean()
            right.append(float(own > oth))
            pair_cos.append(float(v[row[k]] @ v[row[tw]]))
        rev = (1 - (v * vr).sum(-1)).mean().item()
        # text separation of twin captions
        tcos = []
        for k in val_keys:
            tw = val_meta[k]["twin"]
            tcos.append(float(cap_rows[k][0] @ cap_rows[tw][0]))
        train_mode()
        return {"t2v_r1": round(res["t2v/R@1"], 2), "t2v_r5": round(res["t2v/R@5"], 2), "v2t_r1": round(res["v2t/R@1"], 2),
                "zs_top1": round(zres["top1"], 2), "twin": round(100 * statistics.fmean(right), 1),
                "pair_cos": round(statistics.fmean(pair_cos), 4), "rev_sens": round(rev, 5),
                "text_twin_cos": round(statistics.fmean(tcos), 4)}

    def write(res: dict) -> None:
        print("RESULT " + json.dumps(res), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps({**res, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}) + "\n")

    train_mode()
    step = 0
    epoch = 0
    t0 = time.time()
    while step < args.steps:
        order = train_order(train_shards, args.seed, epoch, 64, args.order)
        epoch += 1
        for b in range(len(order) // args.batch):
            if step >= args.steps:
                break
            items = order[b * args.batch:(b + 1) * args.batch]
            vids, texts = [], []
            for key, _, meta in items:
                idx = sample_indices(16, 8, "segments", train=True, rng=aug_rng)
                vids.append(tr_tf(train_frames[key][idx], aug_rng))
                texts.append(caption_rng.choice(meta["captions"]))
            video = torch.stack(vids)
            if head is not None:
                labels = torch.tensor([meta["label"] for _, _, meta in items])
                loss = F.cross_entropy(head(model.encode_video(video)), labels)
            else:
                tok = tokenize(texts)
                ve = model.encode_video(video, normalize=True)
                te = model.encode_text(tok, normalize=True)
                loss = module.loss(ve, te, model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            if args.eval_every and step % args.eval_every == 0 and step < args.steps:
                write({"name": args.name, "step": step, "time_s": round(time.time() - t0, 1), **evaluate(),
                       **temporal_stats()})
            if step % 25 == 0:
                print(json.dumps({"step": step, "loss": round(loss.item(), 4), "s": round(time.time() - t0, 1),
                                  "scale": round(model.logit_scale.exp().item(), 2), **temporal_stats()}), flush=True)
    write({"name": args.name, "step": step, "time_s": round(time.time() - t0, 1), **evaluate(), **temporal_stats()})


if __name__ == "__main__":
    main()
