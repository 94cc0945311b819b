"""The embedded default dataset: procedurally rendered clips whose captions depend on frame order.

Why it exists: `recipes/small.yaml` must train on a fresh machine with no data, and a toy set is
only useful if it tests what a video model adds over an image model. Here a shape moves, grows,
appears or changes colour, and every clip is generated together with its time-reversed twin (the
same frames backwards, the opposite caption, the same split). The two contain the same multiset of
frames, so a model that pools frames without regard to order scores exactly chance on telling
"moves left" from "moves right" within a pair; only temporal modelling can do better.

Clips are rendered with numpy, encoded to H.264 mp4 with PyAV, and packed with `write_shards`
(the same writer as real data) into `train/`, `val/`, `test/` under one root, which holds a
`dataset.json`. Everything is a function of the seed: each scene draws from its own random
generator seeded by (seed, split, index), so counts can change without changing earlier scenes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from mvclip.atomic import write_json_atomic

from .shard_format import read_manifest
from .shard_writer import ClipSource, encode_frames_h264, write_shards
from .worker_pool import worker_pool

log = logging.getLogger(__name__)

VERSION = 1
DATASET_FILE = "dataset.json"
SPLITS = ("train", "val", "test")
DEFAULT_FRAMES = 16
DEFAULT_SIZE = 112
DEFAULT_FPS = 8
KEYFRAME_INTERVAL = 8
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 235),
    "yellow": (245, 215, 40), "purple": (160, 70, 210), "orange": (250, 140, 30),
    "white": (240, 240, 240),
}
# Each pair: (event rendered forwards, event of the same frames played backwards).
PAIRS: tuple[tuple[str, str], ...] = (
    ("move_right", "move_left"), ("move_down", "move_up"), ("grow", "shrink"),
    ("appear", "disappear"), ("change_colour", "change_colour"),
)
# The built-in classification set (`label` / `label_name` in every sample's json).
CLASS_NAMES: tuple[str, ...] = (
    "move_left", "move_right", "move_up", "move_down", "grow", "shrink", "appear", "disappear",
    "change_colour",
)
# Zero-shot class prompts: "a video of {prompt}".
CLASS_PROMPTS: dict[str, str] = {
    "move_left": "a shape moving to the left", "move_right": "a shape moving to the right",
    "move_up": "a shape moving up", "move_down": "a shape moving down",
    "grow": "a shape growing bigger", "shrink": "a shape shrinking",
    "appear": "a shape appearing", "disappear": "a shape disappearing",
    "change_colour": "a shape changing colour",
}
TEMPLATES: dict[str, tuple[str, ...]] = {
    "move_left": ("a {c} {s} moves to the left", "a {c} {s} slides from right to left",
                  "a {s} that is {c} travels leftward", "the {c} {s} is moving left"),
    "move_right": ("a {c} {s} moves to the right", "a {c} {s} slides from left to right",
                   "a {s} that is {c} travels rightward", "the {c} {s} is moving right"),
    "move_up": ("a {c} {s} moves up", "a {c} {s} rises from the bottom towards the top",
                "a {s} that is {c} travels upward", "the {c} {s} is moving up"),
    "move_down": ("a {c} {s} moves down", "a {c} {s} falls from the top towards the bottom",
                  "a {s} that is {c} travels downward", "the {c} {s} is moving down"),
    "grow": ("a {c} {s} grows", "a small {c} {s} gets bigger", "a {c} {s} expands",
             "the {c} {s} is growing larger"),
    "shrink": ("a {c} {s} shrinks", "a big {c} {s} gets smaller", "a {c} {s} contracts",
               "the {c} {s} is shrinking"),
    "appear": ("a {c} {s} appears", "a {c} {s} fades into view", "a {c} {s} shows up",
               "the {c} {s} appears out of nowhere"),
    "disappear": ("a {c} {s} disappears", "a {c} {s} fades out of view", "a {c} {s} vanishes",
                  "the {c} {s} disappears from sight"),
    "change_colour": ("a {c} {s} turns {c2}", "a {s} changes colour from {c} to {c2}",
                      "a {c} {s} becomes {c2}", "the {s} switches from {c} to {c2}"),
}


_AN = re.compile(r"\b([aA]) ([aeiou])")  # "a orange" -> "an orange"


def captions_for(event: str, shape: str, colour: str, colour_to: str | None = None) -> list[str]:
    """Every wording of one event, most direct first."""
    if event not in TEMPLATES:
        raise KeyError(f"unknown event {event!r}; expected one of {sorted(TEMPLATES)}")
    texts = (t.format(c=colour, s=shape, c2=colour_to) for t in TEMPLATES[event])
    return [_AN.sub(r"\1n \2", text) for text in texts]


# ----------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to render one pair; rendering is a pure function of it."""

    split: str
    index: int
    pair: int  # index into PAIRS
    frames: int
    size: int
    shape: str
    colour: str
    colour_to: str  # second colour (colour-change pairs only; else == colour)
    radius: tuple[float, float]  # start, end (px)
    centre: tuple[tuple[float, float], tuple[float, float]]  # start, end (x, y) px
    t0: int  # first frame of the change
    t1: int  # last frame of the change
    background: tuple[int, int, int]
    texture_seed: int
    distractor: tuple[str, str, float, float, float] | None  # shape, colour, x, y, radius
    first_key: int  # 0: forward clip gets key suffix "a", 1: suffix "b"

    @property
    def events(self) -> tuple[str, str]:
        return PAIRS[self.pair]


def sample_scene(seed: int, split: str, index: int, *, frames: int = DEFAULT_FRAMES,
                 size: int = DEFAULT_SIZE) -> SceneSpec:
    """Scene `index` of `split`; pair types cycle so every split is balanced over them."""
    rng = np.random.default_rng([VERSION, seed, _SPLIT_IDS[split], index])
    pair = index % len(PAIRS)
    event = PAIRS[pair][0]
    shape = SHAPES[rng.integers(len(SHAPES))]
    names = list(COLOURS)
    colour, colour_to = (str(c) for c in rng.choice(names, size=2, replace=False))
    if event != "change_colour":
        colour_to = colour
    s = float(size)
    r = float(rng.uniform(0.09, 0.14) * s)
    radius = (r, r)
    if event == "grow":
        radius = (float(rng.uniform(0.05, 0.07) * s), float(rng.uniform(0.17, 0.22) * s))
    margin = max(radius) + 3
    x, y = (float(v) for v in rng.uniform(margin, s - margin, size=2))
    centre = ((x, y), (x, y))
    if event in {"move_right", "move_down"}:
        a = float(rng.uniform(margin, 0.35 * s))
        b = float(rng.uniform(0.65 * s, s - margin))
        centre = ((a, y), (b, y)) if event == "move_right" else ((x, a), (x, b))
    # the change happens over [t0, t1]; still frames before and after vary the timing
    if event in {"appear", "change_colour"}:
        t0 = int(rng.integers(frames // 4, frames // 2))
        t1 = t0 + 2
    else:
        t0 = int(rng.integers(0, max(1, frames // 5)))
        t1 = int(rng.integers(frames - 1 - max(1, frames // 5), frames))
    tint = rng.uniform(-12, 12, size=3)
    background = tuple(int(v) for v in np.clip(rng.uniform(35, 80) + tint, 0, 255))
    distractor = None
    if rng.random() < 0.5:
        others = [c for c in names if c not in {colour, colour_to}]
        dshape = str(rng.choice([sh for sh in SHAPES if sh != shape]))
        dr = float(rng.uniform(0.06, 0.09) * s)
        dx, dy = (float(v) for v in rng.uniform(dr + 2, s - dr - 2, size=2))
        distractor = (dshape, str(rng.choice(others)), dx, dy, dr)
    return SceneSpec(
        split=split, index=index, pair=pair, frames=frames, size=size, shape=str(shape),
        colour=colour, colour_to=colour_to, radius=radius, centre=centre, t0=t0, t1=t1,
        background=background, texture_seed=int(rng.integers(2**31)), distractor=distractor,
        first_key=int(rng.integers(2)))


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Approximate signed distance (px, negative inside) to a shape of 'radius' r at the
    origin; sizes are scaled so the shapes have similar areas."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return np.hypot(dx, dy) - r
    if shape == "square":
        return np.maximum(ax, ay) - 0.88 * r
    if shape == "diamond":
        return (ax + ay) * (1 / math.sqrt(2)) - 0.88 * r
    if shape == "triangle":  # apex up, inradius 0.62 r
        edges = np.maximum(dy, np.maximum(0.866 * dx - 0.5 * dy, -0.866 * dx - 0.5 * dy))
        return edges - 0.62 * r
    if shape == "cross":
        arm, half = 1.05 * r, 0.36 * r
        return np.minimum(np.maximum(ax - arm, ay - half), np.maximum(ax - half, ay - arm))
    raise KeyError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _background(spec: SceneSpec) -> np.ndarray:
    """A plain colour with a faint smooth gradient and fixed grain (same in every frame)."""
    rng = np.random.default_rng(spec.texture_seed)
    n = spec.size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    fx, fy, phase = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
    wave = 8.0 * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    grain = rng.normal(0, 2.0, size=(n, n)).astype(np.float32)
    base = np.asarray(spec.background, np.float32)
    return base + (wave + grain)[..., None]


def _paint(image: np.ndarray, shape: str, colour: np.ndarray, x: float, y: float, r: float,
           alpha: float, grid: tuple[np.ndarray, np.ndarray]) -> None:
    yy, xx = grid
    coverage = np.clip(0.5 - _signed_distance(shape, xx - x, yy - y, r), 0.0, 1.0) * alpha
    image += coverage[..., None] * (colour - image)


def _progress(t: int, t0: int, t1: int) -> float:
    """0 before t0, 1 after t1, smooth in between."""
    if t1 <= t0:
        return float(t >= t0)
    u = min(max((t - t0) / (t1 - t0), 0.0), 1.0)
    return u * u * (3 - 2 * u)


def render_scene(spec: SceneSpec) -> np.ndarray:
    """The forward clip of a pair, (frames, size, size, 3) uint8 RGB. Its twin is `[::-1]`."""
    n = spec.size
    grid = tuple(g + 0.5 for g in np.mgrid[0:n, 0:n].astype(np.float32))
    background = _background(spec)
    if spec.distractor is not None:
        dshape, dcolour, dx, dy, dr = spec.distractor
        _paint(background, dshape, np.asarray(COLOURS[dcolour], np.float32), dx, dy, dr, 1.0,
               grid)
    event = spec.events[0]
    c0 = np.asarray(COLOURS[spec.colour], np.float32)
    c1 = np.asarray(COLOURS[spec.colour_to], np.float32)
    out = np.empty((spec.frames, n, n, 3), np.uint8)
    for t in range(spec.frames):
        u = _progress(t, spec.t0, spec.t1)
        (xa, ya), (xb, yb) = spec.centre
        x, y = xa + u * (xb - xa), ya + u * (yb - ya)
        r = spec.radius[0] + u * (spec.radius[1] - spec.radius[0])
        alpha = u if event == "appear" else 1.0
        colour = c0 + u * (c1 - c0)
        frame = background.copy()
        if alpha > 0:
            _paint(frame, spec.shape, colour, x, y, r, alpha, grid)
        out[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return out


@dataclass
class SyntheticClip:
    """One clip of a pair, as rendered: frames plus what goes into its json."""

    key: str
    frames: np.ndarray
    captions: list[str]
    meta: dict[str, Any]


def make_pair(spec: SceneSpec) -> tuple[SyntheticClip, SyntheticClip]:
    """The forward clip and its time-reversed twin (same frames backwards, opposite caption)."""
    forward = render_scene(spec)
    clips = []
    keys = [f"{spec.split}_{spec.index:06d}_{s}" for s in ("a", "b")]
    if spec.first_key:
        keys.reverse()
    for reverse, (event, key) in enumerate(zip(spec.events, keys)):
        c_from, c_to = (spec.colour, spec.colour_to) if not reverse else (spec.colour_to,
                                                                           spec.colour)
        meta: dict[str, Any] = {
            "event": event, "shape": spec.shape, "colour": c_from,
            "pair": f"{spec.split}_{spec.index:06d}", "twin": keys[1 - reverse],
            "time_reversed": bool(reverse),
        }
        if event == "change_colour":
            meta["colour_to"] = c_to
        if spec.distractor is not None:
            meta["distractor"] = f"{spec.distractor[1]} {spec.distractor[0]}"
        clips.append(SyntheticClip(key=key, frames=forward[::-1] if reverse else forward,
                                   captions=captions_for(event, spec.shape, c_from, c_to),
                                   meta=meta))
    return clips[0], clips[1]


# ----------------------------------------------------------------------------------------------
# Building the dataset


def _render_and_encode(task: tuple[int, str, int, int, int, int, str]) -> list[ClipSource]:
    """Pool task: render one pair, write both mp4s, return their ClipSources."""
    seed, split, index, frames, size, fps, folder = task
    spec = sample_scene(seed, split, index, frames=frames, size=size)
    sources = []
    for clip in make_pair(spec):
        path = Path(folder) / f"{clip.key}.mp4"
        data = encode_frames_h264(clip.frames, fps, keyframe_interval=KEYFRAME_INTERVAL, crf=18,
                                  threads=1)
        path.write_bytes(data)
        label = CLASS_NAMES.index(clip.meta["event"])
        sources.append(ClipSource(
            key=clip.key, path=path, captions=clip.captions, label=label,
            label_name=clip.meta["event"],
            extra={**clip.meta, "source": f"synthetic:v{VERSION}/seed{seed}/{clip.key}"}))
    return sources


def default_cache_dir() -> Path:
    """`$MVCLIP_CACHE`, else `$XDG_CACHE_HOME/mvclip`, else `~/.cache/mvclip`."""
    if os.environ.get("MVCLIP_CACHE"):
        return Path(os.environ["MVCLIP_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mvclip"


def _default_eval_count(num_train: int) -> int:
    return max(32, math.ceil(num_train / 8))


def _pairs(count: int) -> int:
    return math.ceil(count / 2)


def _settings(num_train: int, num_val: int, num_test: int, seed: int, frames: int, size: int,
              fps: int) -> dict[str, Any]:
    counts = {"train": 2 * _pairs(num_train), "val": 2 * _pairs(num_val),
              "test": 2 * _pairs(num_test)}
    return {"generator": "mvclip.datamodules.synthetic", "version": VERSION, "seed": seed,
            "frames": frames, "size": size, "fps": fps, "counts": counts}


def _is_complete(root: Path, settings: dict[str, Any]) -> bool | None:
    """True: a finished dataset with these settings. False: one of ours, unfinished or damaged.
    None: no dataset.json. Raises if it is a finished dataset with other settings."""
    path = root / DATASET_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if info.get("generator") != settings["generator"]:
        return False
    mine = {k: info.get(k) for k in settings}
    if mine != settings:
        raise ValueError(
            f"{path}: a synthetic dataset with settings {mine} is already there, but "
            f"{settings} was asked for; pass another root (or delete {root})")
    try:
        return all(read_manifest(root / s)["total_samples"] == settings["counts"][s]
                   for s in SPLITS)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (POSIX flock); held while one process generates."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename below still keeps readers safe
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_synthetic_dataset(root: str | os.PathLike[str] | None = None, *,
                             num_train: int = 2048, num_val: int | None = None,
                             num_test: int | None = None, seed: int = 0,
                             frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE,
                             fps: int = DEFAULT_FPS, workers: int | None = None,
                             progress: bool = True) -> Path:
    """Return the root of the synthetic dataset, generating it first if missing or incomplete.

    `root=None` uses a folder named after the settings in the cache directory. Validation and
    test sizes default to max(32, num_train / 8); counts are rounded up to whole pairs. Several
    processes may call this at once: one generates under a lock into a temporary folder that is
    renamed into place, the others wait and then find it complete.
    """
    num_val = _default_eval_count(num_train) if num_val is None else num_val
    num_test = _default_eval_count(num_train) if num_test is None else num_test
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if value < 2:
            raise ValueError(f"{name} must be at least 2 (one pair of clips), got {value}")
    if frames < 4 or size < 32:
        raise ValueError(f"need frames >= 4 and size >= 32, got frames={frames}, size={size}")
    settings = _settings(num_train, num_val, num_test, seed, frames, size, fps)
    if root is None:
        c = settings["counts"]
        root = default_cache_dir() / (f"synthetic-v{VERSION}-seed{seed}-{c['train']}-{c['val']}-"
                                      f"{c['test']}-{frames}f-{size}px")
    root = Path(root)
    if _is_complete(root, settings):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f".{root.name}.lock"):
        state = _is_complete(root, settings)
        if state:
            return root  # another process finished it while we waited
        if state is None and root.exists() and any(root.iterdir()):
            raise FileExistsError(f"{root} exists, is not empty and holds no {DATASET_FILE}: "
                                  "not overwriting it with the synthetic dataset")
        for stale in root.parent.glob(f".{root.name}.tmp-*"):  # left by a killed generator
            shutil.rmtree(stale, ignore_errors=True)
        staging = root.parent / f".{root.name}.tmp-{os.getpid()}"
        try:
            _generate(staging, settings, workers=workers or os.cpu_count() or 1,
                      progress=progress)
            if root.exists():
                shutil.rmtree(root)
            os.rename(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root


def _generate(staging: Path, settings: dict[str, Any], *, workers: int, progress: bool) -> None:
    started = time.perf_counter()
    seed, frames, size, fps = (settings[k] for k in ("seed", "frames", "size", "fps"))
    staging.mkdir(parents=True)
    clip_dir = staging / "_clips"
    clip_dir.mkdir()
    tasks = [(seed, split, i, frames, size, fps, str(clip_dir))
             for split in SPLITS for i in range(_pairs(settings["counts"][split]))]
    by_split: dict[str, list[ClipSource]] = {s: [] for s in SPLITS}
    bar = tqdm(total=len(tasks), desc="rendering synthetic pairs", unit="pair",
               disable=not progress, dynamic_ncols=True)
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(worker_pool(workers))
            results = pool.map(_render_and_encode, tasks, chunksize=16)
        else:
            results = map(_render_and_encode, tasks)
        for task, sources in zip(tasks, results):
            by_split[task[1]].extend(sources)
            bar.update(1)
    bar.close()
    rendered = time.perf_counter() - started

    for split in SPLITS:
        count = settings["counts"][split]
        # about 8 shards per split (so loaders can spread them over workers), an even number
        # of samples per shard so that a clip and its twin never land in different shards
        per_shard = max(2, 2 * math.ceil(count / 16))
        manifest = write_shards(by_split[split], staging / split, prefix=split,
                                samples_per_shard=per_shard, workers=workers if workers > 1 else 0,
                                progress=progress)
        if manifest["skipped"] or manifest["total_samples"] != count:
            raise RuntimeError(f"synthetic {split} split: expected {count} clips, wrote "
                               f"{manifest['total_samples']}, skipped {manifest['skipped'][:3]}")
    shutil.rmtree(clip_dir)
    info = {**settings, "classes": list(CLASS_NAMES), "class_prompts": CLASS_PROMPTS,
            "shapes": list(SHAPES), "colours": list(COLOURS),
            "pairs": [list(p) for p in PAIRS],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "generation_seconds": round(time.perf_counter() - started, 2),
            "render_seconds": round(rendered, 2), "workers": workers}
    write_json_atomic(staging / DATASET_FILE, info)


def synthetic_summary(root: str | os.PathLike[str]) -> str:
    """One line: clips per split and size on disk."""
    root = Path(root)
    counts = {s: read_manifest(root / s)["total_samples"] for s in SPLITS}
    size = sum(p.stat().st_size for p in root.rglob("*.tar"))
    parts = ", ".join(f"{n} {s}" for s, n in counts.items())
    return f"synthetic dataset at {root}: {parts} clips, {size / 2**20:.1f} MiB"


__all__ = [
    "CLASS_NAMES", "CLASS_PROMPTS", "COLOURS", "PAIRS", "SHAPES", "SPLITS",
    "SceneSpec", "SyntheticClip", "captions_for", "default_cache_dir", "ensure_synthetic_dataset",
    "make_pair", "render_scene", "sample_scene", "synthetic_summary",
]
