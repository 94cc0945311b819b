"""A second temporal dataset, made the way real data arrives: mp4 files and a CSV of captions.

Why it exists: whatever makes a model learn time on the embedded synthetic set must not depend on that
generator's shapes, motions or wording. This one shares nothing with it but the idea of time-reversed
twins: other objects (polygons rasterized with supersampling: stars, arrows, hexagons, an L, a crescent,
a heart), other events (rotation direction, two objects meeting or parting, a gauge filling or draining,
lights going on or off, diagonal slides, dots counting up or down, a camera zooming in or out), a 4:3
canvas, 24 frames at 12 fps, a drifting textured background, and its own vocabulary and sentence
templates. It writes `videos/*.mp4` plus `train.csv` / `val.csv` (columns `path, caption, group, label,
label_name`; every clip and its twin share a `group`); shards are then built with the ordinary command:

    python -m mvclip.datamodules.motion_set --out data/motion
    python -m mvclip shards --videos data/motion/videos --annotations data/motion/train.csv --out data/motion/train
    python -m mvclip shards --videos data/motion/videos --annotations data/motion/val.csv --out data/motion/val

Everything is a function of the seed; a folder that already holds the finished set is left as it is.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvclip.atomic import atomic_write, write_json_atomic

from .shard_writer import encode_frames_h264
from .worker_pool import worker_pool

VERSION = 1
WIDTH, HEIGHT, FRAMES, FPS = 128, 96, 24, 12
SUPERSAMPLE = 3
PALETTE: dict[str, tuple[int, int, int]] = {
    "crimson": (200, 20, 60), "teal": (0, 150, 150), "gold": (235, 190, 30), "magenta": (220, 40, 200),
    "lime": (140, 230, 40), "navy": (40, 50, 160), "silver": (200, 200, 210),
}
OBJECTS = ("star", "arrow", "hexagon", "letter L", "crescent", "heart")
# (event played forwards, the same frames played backwards), and how each is said
EVENTS: tuple[tuple[str, str], ...] = (
    ("turn_clockwise", "turn_counterclockwise"), ("come_together", "drift_apart"), ("fill_up", "drain"),
    ("light_up", "go_dark"), ("slide_to_bottom_right", "slide_to_top_left"), ("count_up", "count_down"),
    ("zoom_in", "zoom_out"),
)
CLASSES: tuple[str, ...] = tuple(e for pair in EVENTS for e in pair)
SENTENCES: dict[str, tuple[str, ...]] = {
    "turn_clockwise": ("the {c} {o} spins clockwise", "a {c} {o} rotating in the clockwise direction",
                       "clockwise rotation of a {c} {o}"),
    "turn_counterclockwise": ("the {c} {o} spins counterclockwise", "a {c} {o} rotating against the clock",
                              "counterclockwise rotation of a {c} {o}"),
    "come_together": ("two {c} {o}s come together", "a pair of {c} {o}s move toward each other",
                      "two {c} {o}s meet in the middle"),
    "drift_apart": ("two {c} {o}s drift apart", "a pair of {c} {o}s move away from each other",
                    "two {c} {o}s separate"),
    "fill_up": ("a {c} gauge fills up", "the {c} level in the gauge rises", "a gauge filling with {c}"),
    "drain": ("a {c} gauge drains", "the {c} level in the gauge falls", "a gauge emptying of {c}"),
    "light_up": ("the lights come on over a {c} {o}", "a dark scene with a {c} {o} gets brighter",
                 "a {c} {o} lit up as the room brightens"),
    "go_dark": ("the lights go out over a {c} {o}", "a bright scene with a {c} {o} gets darker",
                "a {c} {o} fading into darkness"),
    "slide_to_bottom_right": ("a {c} {o} slides toward the bottom right corner",
                              "the {c} {o} glides down and to the right", "a {c} {o} heading for the lower right"),
    "slide_to_top_left": ("a {c} {o} slides toward the top left corner",
                          "the {c} {o} glides up and to the left", "a {c} {o} heading for the upper left"),
    "count_up": ("{c} dots appear one after another", "more and more {c} dots show up",
                 "the number of {c} dots grows one at a time"),
    "count_down": ("{c} dots vanish one after another", "fewer and fewer {c} dots remain",
                   "the number of {c} dots shrinks one at a time"),
    "zoom_in": ("the camera zooms in on a {c} {o}", "a close-up forming on a {c} {o}",
                "zooming toward a {c} {o}"),
    "zoom_out": ("the camera zooms out from a {c} {o}", "a {c} {o} recedes as the view widens",
                 "zooming away from a {c} {o}"),
}
_SPLIT_IDS = {"train": 0, "val": 1}


def outline(kind: str, radius: float, angle: float) -> np.ndarray:
    """Polygon vertices (N, 2) of an object centred at 0, rotated by `angle` (radians, clockwise on screen)."""
    if kind == "star":
        t = np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
        pts = np.stack([r * np.sin(t), -r * np.cos(t)], 1)
    elif kind == "hexagon":
        t = np.arange(6) * math.pi / 3 + 0.3
        pts = radius * np.stack([np.cos(t), np.sin(t)], 1) * np.array([1.0, 0.75])  # squashed: rotation shows
    elif kind == "arrow":
        pts = radius * np.array([[1.0, 0], [0.2, -0.7], [0.2, -0.3], [-1, -0.3], [-1, 0.3], [0.2, 0.3], [0.2, 0.7]])
    elif kind == "letter L":
        pts = radius * np.array([[-0.6, -1], [-0.15, -1], [-0.15, 0.55], [0.7, 0.55], [0.7, 1], [-0.6, 1]])
    elif kind == "crescent":
        t = np.linspace(-math.pi / 2, math.pi / 2, 12)
        outer = np.stack([np.cos(t), np.sin(t)], 1)
        inner = np.stack([0.35 + 0.45 * np.cos(t[::-1]), np.sin(t[::-1])], 1)
        pts = radius * np.concatenate([outer, inner]) - np.array([0.3 * radius, 0])
    elif kind == "heart":
        t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = radius * np.stack([x, y], 1) / 17
    else:
        raise KeyError(f"unknown object {kind!r}; expected one of {OBJECTS}")
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def fill_polygon(canvas: np.ndarray, poly: np.ndarray, colour: np.ndarray, alpha: float = 1.0) -> None:
    """Paint a polygon (canvas pixel units) with even-odd coverage, supersampled inside its bounding box."""
    h, w = canvas.shape[:2]
    x0, y0 = np.floor(poly.min(0)).astype(int) - 1
    x1, y1 = np.ceil(poly.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return
    step = 1.0 / SUPERSAMPLE
    ys = y0 + (np.arange((y1 - y0) * SUPERSAMPLE) + 0.5) * step
    xs = x0 + (np.arange((x1 - x0) * SUPERSAMPLE) + 0.5) * step
    px, py = np.meshgrid(xs, ys)
    inside = np.zeros(px.shape, bool)
    ax, ay = poly[:, 0], poly[:, 1]
    bx, by = np.roll(ax, -1), np.roll(ay, -1)
    for i in range(len(poly)):
        crosses = (ay[i] > py) != (by[i] > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xcross = ax[i] + (py - ay[i]) * (bx[i] - ax[i]) / (by[i] - ay[i])
        inside ^= crosses & (px < xcross)
    cover = inside.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).mean((1, 3))[..., None] * alpha
    region = canvas[y0:y1, x0:x1]
    region += cover * (colour - region)


@dataclass(frozen=True)
class Scene:
    split: str
    index: int
    pair: int
    obj: str
    colour: str
    background: tuple[float, float, float]
    drift: float  # background texture drift, px per frame (the clip's own "camera" noise)
    texture_seed: int
    start: float  # normalized time at which the event starts and ends
    end: float
    x: float
    y: float
    radius: float
    distractor: tuple[str, str, float, float] | None  # object, colour, x, y


def sample_scene(seed: int, split: str, index: int) -> Scene:
    rng = np.random.default_rng([VERSION, seed, _SPLIT_IDS[split], index, 7])
    pair = index % len(EVENTS)
    colour = str(rng.choice(list(PALETTE)))
    others = [c for c in PALETTE if c != colour]
    obj = str(rng.choice(OBJECTS))
    start = float(rng.uniform(0.0, 0.25))
    distractor = None
    if rng.random() < 0.4:
        distractor = (str(rng.choice(OBJECTS)), str(rng.choice(others)),
                      float(rng.uniform(0.1, 0.9) * WIDTH), float(rng.uniform(0.15, 0.85) * HEIGHT))
    return Scene(split, index, pair, obj, colour, tuple(float(v) for v in rng.uniform(20, 70, 3)),
                 float(rng.uniform(-0.8, 0.8)), int(rng.integers(2**31)), start, float(rng.uniform(0.75, 1.0)),
                 float(rng.uniform(0.35, 0.65) * WIDTH), float(rng.uniform(0.35, 0.65) * HEIGHT),
                 float(rng.uniform(11, 16)), distractor)


def _texture(scene: Scene) -> np.ndarray:
    """A wide stripe-and-grain texture the background window drifts across."""
    rng = np.random.default_rng(scene.texture_seed)
    wide = WIDTH + 2 * FRAMES + 2
    xx = np.arange(wide)[None, :] + 0.6 * np.arange(HEIGHT)[:, None]
    stripes = 10 * np.sin(2 * math.pi * xx / rng.uniform(9, 20))
    grain = rng.normal(0, 3, (HEIGHT, wide))
    return np.asarray(scene.background)[None, None] + (stripes + grain)[..., None]


def render(scene: Scene) -> np.ndarray:
    """The forward clip, (FRAMES, HEIGHT, WIDTH, 3) uint8. Its twin is the same frames reversed."""
    event = EVENTS[scene.pair][0]
    colour = np.asarray(PALETTE[scene.colour], np.float64)
    texture = _texture(scene)
    frames = np.empty((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    dots = np.random.default_rng(scene.texture_seed + 1).uniform([12, 12], [WIDTH - 12, HEIGHT - 12], (6, 2))
    for t in range(FRAMES):
        u = min(max((t / (FRAMES - 1) - scene.start) / (scene.end - scene.start), 0.0), 1.0)
        offset = int(round(FRAMES + scene.drift * t))
        frame = texture[:, offset:offset + WIDTH].copy()
        zoom = 1.0 + 1.2 * u if event == "zoom_in" else 1.0
        if scene.distractor is not None:
            kind, dcol, dx, dy = scene.distractor
            cx, cy = WIDTH / 2 + (dx - WIDTH / 2) * zoom, HEIGHT / 2 + (dy - HEIGHT / 2) * zoom
            fill_polygon(frame, outline(kind, 7 * zoom, 0.0) + [cx, cy], np.asarray(PALETTE[dcol], np.float64))
        if event == "turn_clockwise":
            fill_polygon(frame, outline(scene.obj, scene.radius, math.pi * u) + [scene.x, scene.y], colour)
        elif event == "come_together":
            gap = (1 - u) * 0.32 * WIDTH + 1.1 * scene.radius
            for side in (-1, 1):
                fill_polygon(frame, outline(scene.obj, 0.8 * scene.radius, 0.0) + [WIDTH / 2 + side * gap, scene.y], colour)
        elif event == "fill_up":
            left, right, top, bottom = scene.x - 10, scene.x + 10, 14.0, HEIGHT - 14.0
            level = bottom - u * (bottom - top)
            rim = np.array([[left - 2, top - 2], [right + 2, top - 2], [right + 2, bottom + 2], [left - 2, bottom + 2]])
            fill_polygon(frame, rim, np.array([230.0, 230, 230]))
            fill_polygon(frame, np.array([[left, top], [right, top], [right, bottom], [left, bottom]]), np.asarray(scene.background))
            if u > 0:
                fill_polygon(frame, np.array([[left, level], [right, level], [right, bottom], [left, bottom]]), colour)
        elif event == "light_up":
            fill_polygon(frame, outline(scene.obj, scene.radius, 0.0) + [scene.x, scene.y], colour)
            frame *= 0.15 + 0.85 * u
        elif event == "slide_to_bottom_right":
            x = scene.radius + 4 + u * (WIDTH - 2 * scene.radius - 8)
            y = scene.radius + 4 + u * (HEIGHT - 2 * scene.radius - 8)
            fill_polygon(frame, outline(scene.obj, scene.radius, 0.0) + [x, y], colour)
        elif event == "count_up":
            for k, (dx, dy) in enumerate(dots):
                if u * len(dots) > k:
                    fill_polygon(frame, outline("hexagon", 5.0, 0.0) / 0.75 + [dx, dy], colour)
        elif event == "zoom_in":
            fill_polygon(frame, outline(scene.obj, scene.radius * zoom, 0.0) + [WIDTH / 2 + (scene.x - WIDTH / 2) * zoom,
                                                                                 HEIGHT / 2 + (scene.y - HEIGHT / 2) * zoom], colour)
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return frames


def captions(event: str, scene: Scene) -> list[str]:
    return [s.format(c=scene.colour, o=scene.obj) for s in SENTENCES[event]]


def _make_pair(task: tuple[int, str, int, str]) -> list[dict[str, str]]:
    """Render one scene, write the clip and its reversed twin, return their CSV rows (one per caption)."""
    seed, split, index, folder = task
    scene = sample_scene(seed, split, index)
    forward = render(scene)
    rows = []
    group = f"{split}-{index:05d}"
    for reverse, event in enumerate(EVENTS[scene.pair]):
        name = f"{group}-{'b' if reverse else 'a'}.mp4"
        path = Path(folder) / name
        if not path.is_file():
            data = encode_frames_h264(forward[::-1] if reverse else forward, FPS, keyframe_interval=8, crf=18, threads=1)
            atomic_write(path, lambda tmp: tmp.write_bytes(data))
        rows += [{"path": name, "caption": text, "group": group, "label": str(CLASSES.index(event)), "label_name": event}
                 for text in captions(event, scene)]
    return rows


def generate(out: str | os.PathLike[str], *, num_train: int = 2048, num_val: int = 256, seed: int = 0,
             workers: int | None = None) -> Path:
    """Write `out/videos/*.mp4`, `out/train.csv`, `out/val.csv` and `out/motion_set.json`; returns `out`."""
    out = Path(out)
    info = {"generator": "mvclip.datamodules.motion_set", "version": VERSION, "seed": seed,
            "counts": {"train": 2 * math.ceil(num_train / 2), "val": 2 * math.ceil(num_val / 2)},
            "frames": FRAMES, "fps": FPS, "size": [WIDTH, HEIGHT], "classes": list(CLASSES)}
    marker = out / "motion_set.json"
    if marker.is_file():
        import json

        if json.loads(marker.read_text(encoding="utf-8")) == info:
            return out
        raise FileExistsError(f"{marker}: a motion set with other settings is there; pass another --out")
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for split, count in info["counts"].items():
        tasks = [(seed, split, i, str(videos)) for i in range(count // 2)]
        with worker_pool(workers or os.cpu_count() or 1) as pool:
            rows = [row for pair in pool.map(_make_pair, tasks, chunksize=16) for row in pair]
        def write_csv(tmp: Path, rows: list[dict[str, str]] = rows) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=["path", "caption", "group", "label", "label_name"])
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(out / f"{split}.csv", write_csv)
    write_json_atomic(marker, info)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvclip.datamodules.motion_set", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for videos/, train.csv and val.csv")
    parser.add_argument("--num-train", type=int, default=2048)
    parser.add_argument("--num-val", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    if args.num_train < 2 or args.num_val < 2:
        parser.error("--num-train and --num-val must be at least 2 (one clip and its twin)")
    out = generate(args.out, num_train=args.num_train, num_val=args.num_val, seed=args.seed, workers=args.workers)
    print(f"motion set in {out}: videos/, train.csv, val.csv; build shards with `python -m mvclip shards`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
