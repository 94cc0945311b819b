"""Dataset reinforcement: run teachers once over K augmented views of every clip and store what they saw and said.

`reinforce_shards(IN, OUT, teachers, recipe)` reads the shards of IN (never writing there) and writes one shard of the
same name to OUT per input shard, each sample carrying its original members untouched plus `views.json` (the K views'
parameters, :mod:`mvclip.datamodules.views`) and per teacher `teacher.NAME.video.npy` (K, D) and
`teacher.NAME.text.npy` (captions, D) (:mod:`mvclip.datamodules.teacher_members`). Training then replays one stored
view and distils from its stored embeddings, at no teacher cost. Like `python -m mvclip shards`: each shard is written
to `name.tar.tmp` and renamed when complete, `.progress.json` records finished shards, a rerun with the same teachers
and options skips them untouched, and `manifest.json` (written last) names the teachers with fingerprints.
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import av
import torch
from tqdm import tqdm

from mvclip.atomic import write_json_atomic
from mvclip.datamodules.bad_samples import BadSampleCounter
from mvclip.datamodules.decode import DecodeError, VideoReader
from mvclip.datamodules.sampling import sample_indices
from mvclip.datamodules.shard_format import MANIFEST_NAME, MANIFEST_VERSION, PROGRESS_NAME, read_manifest, video_member
from mvclip.datamodules.shard_reading import iter_tar
# the shard writer's temp-then-rename tar, shared so both commands write shards the same way
from mvclip.datamodules.shard_writer import _Prepared, _ShardFile, load_progress, make_output_dir
from mvclip.datamodules.teacher_members import encode_array, is_reinforcement_member, member_name
from mvclip.datamodules.transforms import VideoTransform
from mvclip.datamodules.views import VIEWS_EXTENSION, View, encode_views
from mvclip.teachers import Teacher
from mvclip.tokenizer import tokenize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewRecipe:
    """How the K views of a clip are drawn: as the training pipeline draws one (`data:` options of the same names).

    short_side: the short side frames are decoded to; crop boxes are in those pixels, so training replays a view
    exactly when its data config decodes at the same size (`short_side`, else `resolution`)."""

    views: int = 4
    seed: int = 0
    frames: int = 8
    short_side: int = 256
    sampling: str = "segments"
    sampling_fps: float = 2.0
    stride: int = 4
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = False

    def check(self) -> None:
        for name in ("views", "frames", "short_side", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        VideoTransform(self.short_side, True, tuple(self.crop_scale), tuple(self.crop_ratio), hflip=self.hflip)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def usable_captions(meta: dict[str, Any]) -> list[str]:
    """The captions training draws from (the sample decoder's rule): strings with some text, in order."""
    captions = meta.get("captions")
    return [c for c in captions if isinstance(c, str) and c.strip()] if isinstance(captions, list) else []


def draw_views(data: bytes, name: str, recipe: ViewRecipe, rng: random.Random) -> tuple[list[View], dict[int, torch.Tensor]]:
    """K random views of one video and its decoded frames {index: (H, W, 3) uint8} at `recipe.short_side`."""
    crop = VideoTransform(recipe.short_side, True, tuple(recipe.crop_scale), tuple(recipe.crop_ratio), hflip=recipe.hflip)
    with VideoReader(data, name=name) as reader:
        info = reader.info
        picks = [sample_indices(info.num_frames, recipe.frames, recipe.sampling, train=True, video_fps=info.fps,
                                sampling_fps=recipe.sampling_fps, stride=recipe.stride, rng=rng)
                 for _ in range(recipe.views)]
        wanted = sorted({i for pick in picks for i in pick})
        decoded = reader.frames(wanted, short_side=recipe.short_side)
    frames = dict(zip(wanted, decoded))
    height, width = int(decoded.shape[1]), int(decoded.shape[2])
    views = []
    for pick in picks:
        box, flip = crop.draw(height, width, rng)
        views.append(View(tuple(pick), tuple(box), (height, width), flip))  # type: ignore[arg-type]
    return views, frames


def teacher_clips(views: Sequence[View], frames: dict[int, torch.Tensor], teacher: Teacher) -> torch.Tensor:
    """(K, T, 3, S, S): each view as `teacher` sees it: the view's frames, box and flip, at its resolution and normalization."""
    spec = teacher.input_spec
    transform = VideoTransform(spec.resolution, False, mean=spec.mean, std=spec.std, value_range=spec.value_range)
    return torch.stack([transform.apply(torch.stack([frames[i] for i in v.indices]), v.box, v.flip) for v in views])


@torch.no_grad()
def embed_sample(teacher: Teacher, clips: torch.Tensor, captions: list[str], device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm float32 video (K, D) and text (C, D) embeddings."""
    model = teacher.embedder.model
    video = model.encode_video(clips.to(device), normalize=True).float().cpu()
    text = model.encode_text(tokenize(captions).to(device), normalize=True).float().cpu()
    return video, text


def _reinforce_sample(raw: dict[str, Any], teachers: Sequence[Teacher], recipe: ViewRecipe, device: str) -> _Prepared:
    key, shard = raw["__key__"], Path(raw["__shard__"]).name
    name = f"{shard}:{key}"
    try:
        meta = json.loads(raw["json"].decode("utf-8")) if "json" in raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _Prepared(key, shard, reason="bad_json", detail=f"{name}: {exc}")
    if not isinstance(meta, dict):
        return _Prepared(key, shard, reason="bad_json" if meta is not None else "missing_json", detail=name)
    captions = usable_captions(meta)
    if not captions:
        return _Prepared(key, shard, reason="no_captions", detail=name)
    ext = video_member(raw)
    if ext is None:
        return _Prepared(key, shard, reason="missing_video", detail=name)
    rng = random.Random(f"views/{recipe.seed}/{key}")  # per key: the same views whichever shard or run
    try:
        views, frames = draw_views(raw[ext], name, recipe, rng)
    except DecodeError as exc:
        return _Prepared(key, shard, reason=exc.reason, detail=str(exc))
    except (av.FFmpegError, ValueError, RuntimeError, OSError) as exc:
        return _Prepared(key, shard, reason="undecodable", detail=f"{name}: {type(exc).__name__}: {exc}")
    members = {e: v for e, v in raw.items() if not e.startswith("__") and not is_reinforcement_member(e)}
    members[VIEWS_EXTENSION] = encode_views(views)
    for teacher in teachers:
        video, text = embed_sample(teacher, teacher_clips(views, frames, teacher), captions, device)
        members[member_name(teacher.name, "video")] = encode_array(video.numpy())
        members[member_name(teacher.name, "text")] = encode_array(text.numpy())
    return _Prepared(key, shard, members=members)


def teacher_identity(teachers: Sequence[Teacher]) -> dict[str, dict[str, Any]]:
    """{name: fingerprint record}, in the order given."""
    return {t.name: dict(t.record) for t in teachers}


def reinforce_shards(in_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], teachers: Sequence[Teacher],
                     recipe: ViewRecipe, *, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Write reinforced copies of IN's shards to OUT (see the module docstring); returns OUT's manifest."""
    src, out = Path(in_dir).resolve(), Path(out_dir).resolve()
    if src == out or src in out.parents:
        raise ValueError(f"--out {out_dir} must lie outside --shards {in_dir}: the input shards are never written to")
    if not teachers:
        raise ValueError("give at least one teacher (--model)")
    names = [t.name for t in teachers]
    if len(set(names)) != len(names):
        raise ValueError(f"teacher names must differ, got {names}; name them NAME=PATH")
    recipe.check()
    for t in teachers:
        if t.input_spec.frames != recipe.frames:
            raise ValueError(f"teacher {t.name} ({t.record.get('source')}) takes {t.input_spec.frames} frames per clip, "
                             f"the views have {recipe.frames}: pass --frames {t.input_spec.frames} or use teachers that agree")
    manifest_in = read_manifest(src)
    options = {
        "source": str(src),
        "source_shards": [{"name": s["name"], "bytes": s["bytes"]} for s in manifest_in["shards"]],
        "teachers": {n: {k: v for k, v in r.items() if k != "source"} for n, r in teacher_identity(teachers).items()},
        "view": recipe.to_dict(),
    }
    make_output_dir(out)
    done = _load_progress(out, options)
    for path in out.glob("*.tar.tmp"):
        path.unlink()  # an interrupted shard of an earlier run
    state = {"version": MANIFEST_VERSION, "options": options, "shards": done}
    write_json_atomic(out / PROGRESS_NAME, state)

    finished = {r["name"] for r in done}
    if len(finished) < len(manifest_in["shards"]):
        (out / MANIFEST_NAME).unlink(missing_ok=True)  # a manifest means a complete set; this one is not, yet
    bar = tqdm(total=manifest_in["total_samples"], desc=f"teacher {out.name}", unit="clip", disable=not progress,
               dynamic_ncols=True)
    for record in done:
        bar.update(record["read"])
    try:
        for entry in manifest_in["shards"]:
            if entry["name"] in finished:
                continue
            shard = _ShardFile(out / entry["name"])
            counter = BadSampleCounter()
            read, skipped = 0, []
            try:
                for raw in iter_tar(str(src / entry["name"]), counter):
                    item = _reinforce_sample(raw, teachers, recipe, device)
                    read += 1
                    bar.update(1)
                    if item.members is None:
                        skipped.append({"input": entry["name"], "key": item.key, "reason": item.reason or "",
                                        "detail": item.detail})
                    else:
                        shard.add(item)
                    bar.set_postfix(skipped=sum(len(r["skipped"]) for r in done) + len(skipped), refresh=False)
                if counter.counts.get("truncated_shard"):
                    skipped.append({"input": entry["name"], "key": "", "reason": "truncated_shard",
                                    "detail": f"{src / entry['name']} ends mid-member; later samples are lost"})
                size = shard.finish()
            except BaseException:
                shard.abandon()
                raise
            done.append({"name": entry["name"], "samples": shard.samples, "bytes": size, "read": read,
                         "skipped": skipped})
            write_json_atomic(out / PROGRESS_NAME, state)
    finally:
        bar.close()

    order = {s["name"]: i for i, s in enumerate(manifest_in["shards"])}
    kept = sorted((r for r in done if r["samples"]), key=lambda r: order[r["name"]])
    manifest = {
        "version": MANIFEST_VERSION,
        "shards": [{"name": r["name"], "samples": r["samples"], "bytes": r["bytes"]} for r in kept],
        "total_samples": sum(r["samples"] for r in kept),
        "options": {**manifest_in.get("options", {}), "reinforced_from": str(src)},
        "teachers": teacher_identity(teachers),
        "views": recipe.views,
        "seed": recipe.seed,
        "view": recipe.to_dict(),
        "skipped": [s for r in sorted(done, key=lambda r: order[r["name"]]) for s in r["skipped"]],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for record in done:
        if not record["samples"]:
            (out / record["name"]).unlink(missing_ok=True)  # every sample was skipped: no empty tar in the set
    _write_manifest(out, manifest)
    return manifest


def _load_progress(out: Path, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Finished shards of an earlier run with the same inputs, teachers and views whose files are intact."""
    done = load_progress(out, options, made_from="reinforced from other inputs, teachers or view options")
    return [r for r in done
            if (out / r["name"]).is_file() and (out / r["name"]).stat().st_size == r["bytes"]
            or (not r["samples"] and not (out / r["name"]).exists())]


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest, leaving an identical one (apart from `created`) untouched."""
    path = out / MANIFEST_NAME
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and {k: v for k, v in old.items() if k != "created"} == {
                k: v for k, v in manifest.items() if k != "created"}:
            manifest["created"] = old.get("created", manifest["created"])
            return
    write_json_atomic(path, manifest)
