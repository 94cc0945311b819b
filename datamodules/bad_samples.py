"""Counting the samples a loader had to skip, and refusing to train on a mostly broken corpus.

A bad sample (undecodable video, no captions, broken JSON, ...) must never stop training, but
skipping silently hides a broken build: so each skip is counted by reason and by shard, the
counts travel from the loader workers to the main process inside the batches (key
``"bad_samples"``, a plain dict of counts since the worker's previous batch), are merged into a
:class:`BadSampleCounter` there, logged each epoch by :class:`BadSampleLogger`, and checked
against ``max_bad_fraction``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from lightning.pytorch import Callback, LightningModule, Trainer

# Fixed so that every rank logs the same keys (a rank-dependent set would hang sync_dist).
REASONS: tuple[str, ...] = (
    "missing_video",  # the sample has no member with a video extension
    "empty_video",  # zero-byte video member
    "undecodable",  # PyAV cannot open or decode it
    "truncated_video",  # stream ends before frames its index lists
    "no_frames",  # the stream holds no frames
    "missing_json",  # no json member
    "bad_json",  # not UTF-8, not JSON, or not an object
    "no_captions",  # captions missing, not a list of strings, or all empty
    "bad_label",  # label present but not an int
    "bad_teacher",  # teacher.npy, views.json or a teacher.NAME.*.npy member unreadable or inconsistent
    "truncated_shard",  # the tar itself ended mid-member or is corrupt (counted once per shard)
)


class TooManyBadSamples(RuntimeError):
    """The share of skipped samples exceeded ``max_bad_fraction``."""


class BadSampleCounter:
    """Counts of skipped samples by reason and by shard, plus how many samples were good."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.by_shard: dict[str, Counter[str]] = {}
        self.good: int = 0
        self.good_by_shard: Counter[str] = Counter()

    # -- recording -------------------------------------------------------------------------
    def add(self, reason: str, shard: str, n: int = 1) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown bad-sample reason {reason!r}; expected one of {REASONS}")
        self.counts[reason] += n
        self.by_shard.setdefault(shard, Counter())[reason] += n

    def add_good(self, shard: str, n: int = 1) -> None:
        self.good += n
        self.good_by_shard[shard] += n

    # -- totals ----------------------------------------------------------------------------
    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    @property
    def seen(self) -> int:
        return self.good + self.bad

    @property
    def bad_fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def worst_shards(self, k: int = 3) -> list[tuple[str, int, int]]:
        """(shard, bad, seen) of the ``k`` shards with most skips."""
        rows = []
        for shard, c in self.by_shard.items():
            bad = sum(c.values())
            rows.append((shard, bad, bad + self.good_by_shard.get(shard, 0)))
        rows.sort(key=lambda r: (-r[1], -r[1] / max(r[2], 1), r[0]))
        return rows[:k]

    def check(self, max_bad_fraction: float, *, min_seen: int = 1, where: str = "") -> None:
        """Raise :class:`TooManyBadSamples` naming the worst shards when the bad share is too high."""
        if self.seen < max(1, min_seen) or self.bad_fraction <= max_bad_fraction:
            return
        worst = ", ".join(
            f"{shard} ({bad}/{seen} bad: {dict(self.by_shard[shard])})" for shard, bad, seen in self.worst_shards()
        )
        raise TooManyBadSamples(
            f"{where + ': ' if where else ''}{self.bad} of {self.seen} samples "
            f"({self.bad_fraction:.1%}) were skipped, more than max_bad_fraction={max_bad_fraction:.1%}. "
            f"Reasons: {dict(self.counts)}. Worst shards: {worst}. Rebuild or drop those shards, "
            f"or raise max_bad_fraction in the data config."
        )

    # -- transport and merging -------------------------------------------------------------
    def merge(self, other: "BadSampleCounter | Mapping[str, Any]") -> "BadSampleCounter":
        if not isinstance(other, BadSampleCounter):
            other = BadSampleCounter.from_dict(other)
        self.counts.update(other.counts)
        for shard, c in other.by_shard.items():
            self.by_shard.setdefault(shard, Counter()).update(c)
        self.good += other.good
        self.good_by_shard.update(other.good_by_shard)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "by_shard": {s: dict(c) for s, c in self.by_shard.items()},
            "good": self.good,
            "good_by_shard": dict(self.good_by_shard),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BadSampleCounter":
        out = cls()
        out.counts.update(d.get("counts", {}))
        for s, c in d.get("by_shard", {}).items():
            out.by_shard[s] = Counter(c)
        out.good = int(d.get("good", 0))
        out.good_by_shard.update(d.get("good_by_shard", {}))
        return out

    def take(self) -> dict[str, Any]:
        """The counts as a dict, then reset: what a worker attaches to each batch it yields."""
        d = self.to_dict()
        self.reset()
        return d

    def reset(self) -> None:
        self.__init__()

    def summary(self) -> dict[str, int]:
        """Flat counts for logging: every reason (zeros included), ``bad``, ``good``."""
        out = {r: int(self.counts.get(r, 0)) for r in REASONS}
        out["bad"] = self.bad
        out["good"] = self.good
        return out

    def __repr__(self) -> str:
        return f"BadSampleCounter(good={self.good}, bad={self.bad}, counts={dict(self.counts)})"


class BadSampleLogger(Callback):
    """Logs the data module's skipped-sample counts at the end of each train/validation epoch.

    Expects ``trainer.datamodule.bad_samples`` to be a dict ``{"train"|"val"|"test": BadSampleCounter}``
    (as :class:`VideoTextDataModule` keeps it). Keys are ``data/<stage>/bad/<reason>``; values are
    summed across ranks. After logging, the epoch's counter is checked against the data module's
    ``max_bad_fraction`` and reset.
    """

    def __init__(self, prefix: str = "data") -> None:
        self.prefix = prefix

    def _log(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        counters = getattr(dm, "bad_samples", None)
        if not counters or stage not in counters:
            return
        counter: BadSampleCounter = counters[stage]
        for name, value in counter.summary().items():
            key = f"{self.prefix}/{stage}/{'bad/' if name in REASONS else ''}{name}"
            pl_module.log(key, float(value), reduce_fx="sum", sync_dist=True, on_epoch=True, on_step=False)
        counter.check(getattr(dm, "max_bad_fraction", 1.0), where=f"{stage} epoch {trainer.current_epoch}")
        counter.reset()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:  # a few batches only: neither logged nor checked
            counters = getattr(trainer.datamodule, "bad_samples", None) or {}
            if "val" in counters:
                counters["val"].reset()
            return
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "test")
