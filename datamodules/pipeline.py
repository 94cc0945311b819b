"""From tar shards to batches: listing shards, reading them, splitting work, decoding samples.

Written directly on ``tarfile`` rather than on WebDataset's pipeline because its defaults fight
DDP (see ``docs/stack-notes.md``): the default node splitter raises, ``split_by_node`` with uneven
shards gave ranks different batch counts (a hang), ``warn_and_continue`` sleeps 0.5 s per bad
sample, and ``shardshuffle=N`` repeats one order every epoch. Here:

* **Training**: the shard list is shuffled with ``seed + epoch`` *before* it is split by rank and
  then by worker, so every shard is read exactly once per epoch across ranks x workers. Each rank
  yields exactly ``floor(total_samples / (world_size * batch_size))`` full batches (the epoch
  length comes from the manifest); a worker whose shards run short (uneven shards, skipped
  samples) cycles them again, a worker with too many stops early. Equal batch counts per rank are
  what keeps DDP from hanging.
* **Resampled training** (large corpora): each worker draws shards with replacement, with the
  same fixed epoch length.
* **Evaluation**: shards (or, when there are fewer shards than ranks x workers, samples) are split
  so every sample is seen exactly once across ranks; no padding duplicates. Ranks may then see
  different batch counts, so evaluation steps must not call collectives per step.

Bad samples are skipped and counted (:mod:`.bad_samples`); the counts ride along in each batch.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mvclip.distributed import rank_and_world_size
from mvclip.errors import ConfigError

from .bad_samples import BadSampleCounter, TooManyBadSamples
from .decode import DecodeError, VideoReader
from .sampling import sample_indices
from .shard_format import MANIFEST_NAME, TEACHER_EXTENSION, read_manifest, video_member
from .transforms import VideoTransform

Tokenizer = Callable[[Sequence[str]], torch.Tensor]


class BadSample(Exception):
    """A sample to skip; ``reason`` is one of :data:`bad_samples.REASONS`."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Listing shards
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    url: str
    samples: int


def _is_remote(url: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", url)) and not re.match(r"^[A-Za-z]:[\\/]", url)


def count_samples(url: str) -> int:
    """Distinct keys in a tar (used only for shards that no manifest lists)."""
    keys = set()
    for sample in iter_tar(url, BadSampleCounter()):
        keys.add(sample["__key__"])
    return len(keys)


def list_shards(pattern: str) -> list[Shard]:
    """Shards of a pattern: a directory with a manifest, or brace-expanded paths/URLs.

    Sample counts come from ``manifest.json`` next to the shards when there is one; other shards
    are counted by reading them once.
    """
    from braceexpand import braceexpand

    if not _is_remote(pattern) and Path(pattern).is_dir():
        manifest = read_manifest(pattern)
        shards = [Shard(str(Path(pattern) / s["name"]), int(s["samples"])) for s in manifest["shards"]]
        if not shards:
            raise FileNotFoundError(f"{pattern}/{MANIFEST_NAME} lists no shards")
        return shards
    urls = [u for part in pattern.split("::") for u in braceexpand(part)]
    if not urls:
        raise FileNotFoundError(f"shard pattern {pattern!r} expands to no paths")
    counts: dict[str, int] = {}
    for parent in {str(Path(u).parent) for u in urls if not _is_remote(u)}:
        if (Path(parent) / MANIFEST_NAME).is_file():
            for s in read_manifest(parent)["shards"]:
                counts[str(Path(parent) / s["name"])] = int(s["samples"])
    missing = [u for u in urls if not _is_remote(u) and not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(
            f"shard pattern {pattern!r}: {len(missing)} of {len(urls)} shards do not exist, e.g. {missing[0]}"
        )
    out = []
    for u in urls:
        key = str(Path(u)) if not _is_remote(u) else u
        out.append(Shard(u, counts[key] if key in counts else count_samples(u)))
    return out


# --------------------------------------------------------------------------------------------
# Reading one shard
# --------------------------------------------------------------------------------------------
_MEMBER = re.compile(r"^((?:.*/)?[^./]+)\.([^/]+)$")  # key = path up to the first dot of the basename


def _open(url: str):
    if _is_remote(url):
        import webdataset as wds

        return wds.gopen(url, "rb")
    return open(url, "rb")


def iter_tar(url: str, counter: BadSampleCounter) -> Iterator[dict[str, Any]]:
    """Samples of one tar as dicts ``{"__key__", "__shard__", ext: bytes}``, in file order.

    A tar that ends mid-member or is corrupt is counted once as ``truncated_shard`` and its
    remaining samples are lost; the samples before the damage are still yielded.
    """
    current: dict[str, Any] | None = None
    try:
        with _open(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                m = _MEMBER.match(member.name)
                if m is None:
                    continue
                key, ext = m.group(1), m.group(2).lower()
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__shard__": url}
                current[ext] = data
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        counter.add("truncated_shard", url)
        current = None  # its last member may be cut short
    if current is not None:
        yield current


# --------------------------------------------------------------------------------------------
# Decoding one sample
# --------------------------------------------------------------------------------------------
@dataclass
class SampleDecoder:
    """Raw shard sample -> ``{"key", "video", "text", "label"?, "teacher"?}``, or :class:`BadSample`."""

    transform: VideoTransform
    tokenizer: Tokenizer | None = None
    train: bool = True
    frames: int = 8
    sampling: str = "segments"
    sampling_fps: float = 2.0
    stride: int = 4
    short_side: int | None = None
    thread_count: int = 1

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer
        if tok is None:
            from mvclip.tokenizer import tokenize as tok
        return tok(texts)

    def clip(self, data: bytes, name: str, rng: random.Random | None = None, fallback_fps: float | None = None) -> torch.Tensor:
        """Encoded video bytes -> the model's input clip (T, 3, H, W): sample frames, decode them, transform.

        Raises `DecodeError` (or a codec error) on a broken video; `__call__` turns that into a `BadSample`.
        """
        with VideoReader(data, thread_count=self.thread_count, name=name) as reader:
            info = reader.info
            idx = sample_indices(
                info.num_frames,
                self.frames,
                self.sampling,
                train=self.train,
                video_fps=info.fps or fallback_fps,
                sampling_fps=self.sampling_fps,
                stride=self.stride,
                rng=rng,
            )
            frames = reader.frames(idx, short_side=self.short_side or self.transform.resolution)
        return self.transform(frames, rng)

    def __call__(self, raw: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        key, shard = raw["__key__"], raw["__shard__"]
        name = f"{shard}:{key}"
        if "json" not in raw:
            raise BadSample("missing_json", name)
        try:
            meta = json.loads(raw["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadSample("bad_json", f"{name}: {exc}") from exc
        if not isinstance(meta, dict):
            raise BadSample("bad_json", f"{name}: expected a JSON object, found {type(meta).__name__}")
        captions = meta.get("captions")
        if not isinstance(captions, list):
            raise BadSample("no_captions", f"{name}: 'captions' missing or not a list")
        captions = [c for c in captions if isinstance(c, str) and c.strip()]
        if not captions:
            raise BadSample("no_captions", f"{name}: no non-empty caption")
        label = meta.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
            raise BadSample("bad_label", f"{name}: label {label!r} is not an int")

        ext = video_member(raw)
        if ext is None:
            raise BadSample("missing_video", name)
        fallback_fps = float(meta["fps"]) if isinstance(meta.get("fps"), (int, float)) else None
        try:
            video = self.clip(raw[ext], name, rng, fallback_fps)
        except DecodeError as exc:
            raise BadSample(exc.reason, str(exc)) from exc
        except (av.FFmpegError, ValueError, RuntimeError, OSError) as exc:  # codec-level surprises
            raise BadSample("undecodable", f"{name}: {type(exc).__name__}: {exc}") from exc

        out: dict[str, Any] = {"key": key, "video": video}
        if self.train:
            out["text"] = self._tokenize([rng.choice(captions)])[0]
        else:
            out["text"] = self._tokenize(captions)
        if label is not None:
            out["label"] = label
        group = meta.get("group", meta.get("pair"))  # `pair`: the synthetic set's name for a twin pair
        if group is not None:
            if isinstance(group, bool) or not isinstance(group, (str, int)):
                raise BadSample("bad_json", f"{name}: group {group!r} is not a string or an int")
            out["group"] = str(group)
        teacher = raw.get(TEACHER_EXTENSION)
        if teacher is not None:
            try:
                out["teacher"] = torch.from_numpy(np.load(io.BytesIO(teacher), allow_pickle=False).copy())
            except (ValueError, OSError, EOFError) as exc:
                raise BadSample("bad_teacher", f"{name}: {exc}") from exc
        return out


def raw_group(raw: dict[str, Any]) -> str | None:
    """The `group` of a raw shard sample (read from its json; `pair` is the synthetic set's name), or None."""
    try:
        meta = json.loads(raw["json"].decode("utf-8")) if "json" in raw else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # the decoder rejects it later, as a sample of its own
    if not isinstance(meta, dict):
        return None
    group = meta.get("group", meta.get("pair"))
    return None if group is None or isinstance(group, bool) else str(group)


# --------------------------------------------------------------------------------------------
# Splitting work
# --------------------------------------------------------------------------------------------
def shuffled_shards(shards: Sequence[Shard], seed: int, epoch: int) -> list[Shard]:
    """The epoch's shard order, the same on every rank (seeded by seed and epoch only)."""
    order = list(shards)
    random.Random(f"shards/{seed}/{epoch}").shuffle(order)
    return order


def split_quota(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainders), summing to total."""
    if not weights:
        return []
    wsum = sum(weights)
    if wsum == 0:
        base = [total // len(weights)] * len(weights)
        for i in range(total - sum(base)):
            base[i] += 1
        return base
    exact = [total * w / wsum for w in weights]
    out = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


def train_batches_per_rank(total_samples: int, world_size: int, batch_size: int) -> int:
    """The DDP epoch-length rule: every rank yields exactly this many full batches."""
    return total_samples // (world_size * batch_size)


def shuffle_buffer(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Approximate shuffle keeping at most ``size`` raw samples in memory."""
    if size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------
class ShardDataset(IterableDataset):
    """Yields collated batches (one worker builds each whole batch); use with :class:`ShardLoader`."""

    def __init__(
        self,
        shards: Sequence[Shard],
        decoder: SampleDecoder,
        collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
        *,
        batch_size: int,
        train: bool,
        num_workers: int,
        shuffle_buffer: int = 0,
        seed: int = 0,
        resampled: bool = False,
        pattern: str = "",
        epoch_samples: int | None = None,
        group_batching: bool = False,
    ) -> None:
        super().__init__()
        self.shards = list(shards)
        self.group_batching = group_batching
        self.decoder = decoder
        self.collate = collate
        self.batch_size = batch_size
        self.train = train
        self.num_workers = max(1, num_workers)
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.resampled = resampled
        self.pattern = pattern
        self.total_samples = sum(s.samples for s in self.shards)
        # samples one training epoch covers across all ranks (default: the manifest's total)
        self.epoch_samples = epoch_samples or self.total_samples
        # set by ShardLoader in the main process just before workers start
        self.epoch = 0
        self.rank, self.world_size = rank_and_world_size(from_environment=True)

    # -- plan ------------------------------------------------------------------------------
    def check_split(self) -> None:
        """Refuse configurations that would leave a training worker without shards."""
        if not self.train:
            return
        slots = self.world_size * self.num_workers
        if not self.resampled and len(self.shards) < slots:
            raise ConfigError(
                f"training shards {self.pattern!r}: {len(self.shards)} shards cannot be split over "
                f"{self.world_size} ranks x {self.num_workers} workers = {slots} readers; every reader "
                f"needs at least one shard. Use fewer num_workers, write more (smaller) shards "
                f"(samples_per_shard), or set resampled: true."
            )
        if train_batches_per_rank(self.epoch_samples, self.world_size, self.batch_size) < 1:
            raise ConfigError(
                f"training shards {self.pattern!r}: {self.epoch_samples} samples per epoch are fewer than "
                f"world_size {self.world_size} x batch_size {self.batch_size}; no full batch per rank"
            )

    def batches_per_rank(self) -> int:
        if self.train:
            return train_batches_per_rank(self.epoch_samples, self.world_size, self.batch_size)
        return sum(math.ceil(n / self.batch_size) for n in self._eval_worker_sizes(self.rank))

    def __len__(self) -> int:
        return self.batches_per_rank()

    def _train_assignment(self, epoch: int, worker: int) -> tuple[list[Shard], int]:
        """This worker's shards and its batch quota for the epoch."""
        order = shuffled_shards(self.shards, self.seed, epoch)
        rank_shards = order[self.rank :: self.world_size]
        per_worker = [rank_shards[w :: self.num_workers] for w in range(self.num_workers)]
        quotas = split_quota(
            self.batches_per_rank(), [sum(s.samples for s in ws) for ws in per_worker]
        )
        return per_worker[worker], quotas[worker]

    def _eval_slots(self) -> tuple[int, bool]:
        slots = self.world_size * self.num_workers
        return slots, len(self.shards) >= slots

    def _eval_worker_sizes(self, rank: int) -> list[int]:
        slots, by_shard = self._eval_slots()
        sizes = []
        for w in range(self.num_workers):
            slot = rank * self.num_workers + w
            if by_shard:
                sizes.append(sum(s.samples for s in self.shards[slot::slots]))
            else:
                sizes.append(len(range(slot, self.total_samples, slots)))
        return sizes

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        workers = info.num_workers if info is not None else 1
        if workers != self.num_workers:
            raise RuntimeError(
                f"ShardDataset was planned for {self.num_workers} workers but runs on {workers}; "
                "build it with the DataLoader's num_workers"
            )
        epoch = self.epoch
        rng = random.Random(f"samples/{self.seed}/{epoch}/{self.rank}/{worker}")
        counter = BadSampleCounter()
        if self.train:
            yield from self._iter_train(epoch, worker, rng, counter)
        else:
            yield from self._iter_eval(worker, rng, counter)

    def _raw_train(self, shards: list[Shard], rng: random.Random, counter: BadSampleCounter) -> Iterator[list[dict]]:
        """Units of raw samples (a group, or one sample), shuffled one pass over the worker's shards at a time.

        The shuffle buffer is flushed at the end of each pass, so a sample is repeated only after
        every sample of the worker's shards has come out once.
        """
        if self.resampled:
            yield from shuffle_buffer(self._units(self._resampled(rng, counter)), self.shuffle_buffer, rng)
            return
        cycle = 0
        while True:
            order = list(shards)
            if cycle:
                rng.shuffle(order)
            one_pass = self._units(raw for shard in order for raw in iter_tar(shard.url, counter))
            yielded = 0
            for unit in shuffle_buffer(one_pass, self.shuffle_buffer, rng):
                yielded += 1
                yield unit
            if yielded == 0:
                raise TooManyBadSamples(
                    f"training shards {[s.url for s in shards]} (pattern {self.pattern!r}) yielded no "
                    f"readable samples: {counter}"
                )
            cycle += 1

    def _units(self, raws: Iterator[dict]) -> Iterator[list[dict]]:
        """With `group_batching`, consecutive samples of one shard that share a group form one unit, which the
        shuffle buffer moves and the batcher places as a whole; otherwise every sample is a unit of its own."""
        if not self.group_batching:
            yield from ([raw] for raw in raws)
            return
        unit: list[dict] = []
        current: str | None = None
        for raw in raws:
            group = raw_group(raw)
            if unit and (group is None or group != current or raw["__shard__"] != unit[0]["__shard__"]):
                yield unit
                unit = []
            unit.append(raw)
            current = group
        if unit:
            yield unit

    def _resampled(self, rng: random.Random, counter: BadSampleCounter) -> Iterator[dict]:
        """Endless samples from shards drawn with replacement."""
        empty = 0
        while empty < 10 * len(self.shards):
            got = 0
            for raw in iter_tar(rng.choice(self.shards).url, counter):
                got += 1
                yield raw
            empty = 0 if got else empty + 1
        raise TooManyBadSamples(f"training shards {self.pattern!r}: resampled shards yield no samples: {counter}")

    def _iter_train(
        self, epoch: int, worker: int, rng: random.Random, counter: BadSampleCounter
    ) -> Iterator[dict[str, Any]]:
        if self.resampled:
            n = self.batches_per_rank()
            quota = n // self.num_workers + (1 if worker < n % self.num_workers else 0)
            shards: list[Shard] = []
        else:
            shards, quota = self._train_assignment(epoch, worker)
        if quota <= 0:
            return
        pending: list[dict[str, Any]] = []
        carried: list[list[dict[str, Any]]] = []  # whole groups that did not fit the batch being filled
        done = 0
        streak = 0  # consecutive bad samples: a worker must not spin forever on a broken corpus
        for raws in self._raw_train(shards, rng, counter):
            unit = []
            for raw in raws:
                sample = self._decode(raw, rng, counter)
                if sample is None:
                    streak += 1
                    if streak >= max(1000, 2 * sum(s.samples for s in shards)):
                        raise TooManyBadSamples(
                            f"training worker {worker} of rank {self.rank}: {streak} bad samples in a row "
                            f"from {self.pattern!r}: {counter}"
                        )
                    continue
                streak = 0
                unit.append(sample)
            for part in (unit[i : i + self.batch_size] for i in range(0, len(unit), self.batch_size)):
                if len(pending) + len(part) <= self.batch_size:
                    pending.extend(part)
                else:
                    carried.append(part)
            while len(pending) == self.batch_size:
                yield self._batch(pending, counter)
                done += 1
                if done >= quota:
                    return
                pending = []
                for part in list(carried):  # groups held back start the next batch, in arrival order
                    if len(pending) + len(part) <= self.batch_size:
                        pending.extend(part)
                        carried.remove(part)

    def _batch(self, samples: list[dict[str, Any]], counter: BadSampleCounter) -> dict[str, Any]:
        """Collate, and hand over the bad-sample counts gathered since the previous batch."""
        batch = self.collate(samples)
        batch["bad_samples"] = counter.take()
        return batch

    def _iter_eval(self, worker: int, rng: random.Random, counter: BadSampleCounter) -> Iterator[dict[str, Any]]:
        slots, by_shard = self._eval_slots()
        slot = self.rank * self.num_workers + worker

        def raws() -> Iterator[dict]:
            if by_shard:
                for shard in self.shards[slot::slots]:
                    yield from iter_tar(shard.url, counter)
                return
            i = 0
            for shard in self.shards:
                for raw in iter_tar(shard.url, counter):
                    if i % slots == slot:
                        yield raw
                    i += 1

        pending: list[dict[str, Any]] = []
        for raw in raws():
            sample = self._decode(raw, rng, counter)
            if sample is None:
                continue
            pending.append(sample)
            if len(pending) == self.batch_size:
                yield self._batch(pending, counter)
                pending = []
        if pending:
            yield self._batch(pending, counter)

    def _decode(self, raw: dict[str, Any], rng: random.Random, counter: BadSampleCounter) -> dict[str, Any] | None:
        try:
            sample = self.decoder(raw, rng)
        except BadSample as exc:
            counter.add(exc.reason, raw["__shard__"])
            return None
        counter.add_good(raw["__shard__"])
        return sample


class ShardLoader(DataLoader):
    """A DataLoader over a :class:`ShardDataset` that tells it the epoch, rank and world size.

    These are read in the main process when iteration starts (workers are forked then), from
    ``epoch_fn`` (e.g. the trainer's current epoch) or an explicit :meth:`set_epoch`, else by
    counting iterations. Workers are therefore not persistent.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        *,
        num_workers: int = 0,
        epoch_fn: Callable[[], int | None] | None = None,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        if max(1, num_workers) != dataset.num_workers:
            raise ValueError(f"num_workers={num_workers} differs from the dataset's plan ({dataset.num_workers})")
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=False,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
        )
        self.epoch_fn = epoch_fn
        self._explicit_epoch: int | None = None
        self._iterations = 0

    def set_epoch(self, epoch: int) -> None:
        self._explicit_epoch = epoch

    def __iter__(self):
        ds: ShardDataset = self.dataset  # type: ignore[assignment]
        epoch = self._explicit_epoch
        if epoch is None and self.epoch_fn is not None:
            epoch = self.epoch_fn()
        if epoch is None:
            epoch = self._iterations
        self._explicit_epoch = None
        self._iterations += 1
        ds.epoch = int(epoch)
        ds.rank, ds.world_size = rank_and_world_size(from_environment=True)
        ds.check_split()
        return super().__iter__()
