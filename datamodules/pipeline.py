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

Split by concern: :mod:`.shard_reading` lists shards and reads tars, :mod:`.sample_decoding` turns a raw sample into a
model input; this module splits the work across ranks and workers and batches it (`ShardDataset`, `ShardLoader`), and
re-exports the other two modules' names so ``datamodules.pipeline.<name>`` keeps working.
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable, Iterator, Sequence

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mvclip.distributed import rank_and_world_size
from mvclip.errors import ConfigError

from .bad_samples import BadSampleCounter, TooManyBadSamples
from .sample_decoding import BadSample, SampleDecoder, Tokenizer, raw_group
from .shard_reading import Shard, count_samples, iter_tar, list_shards

__all__ = [
    "BadSample", "SampleDecoder", "Shard", "ShardDataset", "ShardLoader", "Tokenizer", "count_samples", "iter_tar",
    "list_shards", "raw_group", "shuffle_buffer", "shuffled_shards", "split_quota", "train_batches_per_rank",
]


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
