"""``VideoTextDataModule``: video-text shards -> batches, configured from YAML.

LightningCLI instantiates it from ``class_path``/``init_args``, so every constructor argument is
a plain typed value. How shards are split, shuffled and counted lives in :mod:`.pipeline`; the
batch format in :mod:`.collate`; the bad-sample policy in :mod:`.bad_samples`.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from lightning.pytorch import LightningDataModule

from mvclip.errors import ConfigError
from mvclip.input_spec import InputSpec

from .bad_samples import BadSampleCounter, BadSampleLogger
from .collate import collate_eval, collate_train
from .decode import default_thread_count
from .pipeline import SampleDecoder, Shard, ShardDataset, ShardLoader, list_shards
from .shard_reading import teacher_embed_dims, teacher_logit_scales
from .sampling import SAMPLING_MODES
from .transforms import VideoTransform

Stage = Literal["train", "val", "test"]

__all__ = ["VideoTextDataModule", "BadSampleLogger"]


class VideoTextDataModule(LightningDataModule):
    """Shards of (video, captions) pairs for contrastive training and retrieval evaluation.

    Args:
        train: training shards: a directory holding ``manifest.json``, or brace-expanded
            paths/URLs (``dir/train-{000000..000009}.tar``; join several with ``::``).
        val: validation shards, given as for ``train``.
        test: test shards, given as for ``train``.
        synthetic: when true (or a dict of ``ensure_synthetic_dataset`` arguments), build the synthetic dataset in
            ``prepare_data`` and use its splits for the splits given no path (so reinforced training shards of
            the synthetic clips are validated on the synthetic validation split).
        frames: frames per clip (T). This and the other input options up to ``value_range`` default to the
            model's input description (its config's ``input`` section, ``mvclip.input_spec``), which the training
            module hands over before the first step; a value stated here that differs from the model's is an
            error then. Stand-alone (no model), unset options take ``InputSpec``'s defaults.
        sampling: ``segments`` | ``fps`` | ``consecutive`` (see :mod:`.sampling`).
        sampling_fps: frames per second read by ``fps`` sampling.
        stride: step between the frames ``consecutive`` sampling reads.
        resolution: output side (square crops).
        short_side: short side frames are decoded to before cropping (default: ``resolution``).
        mean: per-channel mean subtracted (none: no normalization, as MobileCLIP's weights want).
        std: per-channel standard deviation divided by.
        value_range: pixel values before normalization, [0, 1] or [0, 255].
        crop_scale: area range of the training random resized crop.
        hflip: random horizontal flip in training (off: captions name directions).
        batch_size: clips per training batch (per rank).
        eval_batch_size: clips per evaluation batch (per rank).
        num_workers: loader processes per rank.
        shuffle_buffer: raw samples (with ``group_batching``: groups) held for shuffling in each training worker.
        group_batching: keep the members of a sample ``group`` (e.g. a clip and its time-reversed twin, or
            any declared hard negatives; see docs/data.md) in the same training batch. Members must sit next to
            each other in one shard, as ``mvclip shards`` and the synthetic set write them.
        seed: seeds shard order (with the epoch), frame sampling and crops.
        resampled: draw training shards with replacement (large corpora; no shard-count limit).
        epoch_samples: samples in one training epoch over all ranks (default: the manifest's
            total); the epoch has ``epoch_samples // (world_size * batch_size)`` batches per rank.
            Required for remote training shards whose counts are unknown (no ``manifest.json`` or
            video2dataset ``_stats.json`` beside them): they are never downloaded just to count them.
        max_bad_fraction: share of skipped samples above which loading fails.
        decode_threads: decoder threads per worker (default: cores // workers).
        bad_check_min_samples: samples seen before the running bad share is checked mid-epoch.
        tokenizer: callable ``list[str] -> LongTensor (N, 77)``; default ``mvclip.tokenizer.tokenize``.
        pin_memory: pin batches (GPU training).
    """

    def __init__(
        self,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        synthetic: bool | dict[str, Any] = False,
        frames: int | None = None,
        sampling: Literal["segments", "fps", "consecutive"] | None = None,
        sampling_fps: float | None = None,
        stride: int | None = None,
        resolution: int | None = None,
        short_side: int | None = None,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        hflip: bool = False,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        value_range: tuple[float, float] | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 64,
        group_batching: bool = False,
        seed: int = 0,
        resampled: bool = False,
        epoch_samples: int | None = None,
        max_bad_fraction: float = 0.1,
        decode_threads: int | None = None,
        bad_check_min_samples: int = 200,
        tokenizer: Callable[..., Any] | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if sampling is not None and sampling not in SAMPLING_MODES:
            raise ConfigError(f"data.sampling: {sampling!r} is not one of {SAMPLING_MODES}")
        for name, value in (("frames", frames), ("resolution", resolution), ("batch_size", batch_size), ("stride", stride)):
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ConfigError(f"data.max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.paths: dict[str, str | None] = {"train": train, "val": val, "test": test}
        self.synthetic = synthetic
        # what this data section states about the model's input (None: the model's); see `adopt_input`
        self.stated_input: dict[str, Any] = {
            "frames": frames, "sampling": sampling, "sampling_fps": sampling_fps, "stride": stride, "resolution": resolution,
            "short_side": short_side, "mean": tuple(mean) if mean is not None else None,
            "std": tuple(std) if std is not None else None, "value_range": tuple(value_range) if value_range is not None else None,
        }
        stated = {k: v for k, v in self.stated_input.items() if v is not None}
        if ("mean" in stated) != ("std" in stated):
            raise ConfigError("data.mean / data.std: give both (or neither, for no normalization)")
        self._use_input(InputSpec.from_mapping(stated, "data"))
        self.crop_scale = tuple(crop_scale)
        self.hflip = hflip
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.group_batching = group_batching
        self.seed = seed
        self.resampled = resampled
        self.epoch_samples = epoch_samples
        self.max_bad_fraction = max_bad_fraction
        self.decode_threads = decode_threads
        self.bad_check_min_samples = bad_check_min_samples
        self.tokenizer = tokenizer
        self.pin_memory = pin_memory
        # validate transform options now, not in a worker
        VideoTransform(self.resolution, True, self.crop_scale, hflip=hflip, mean=self.mean, std=self.std, value_range=self.value_range)
        self.shards: dict[str, list[Shard]] = {}
        self.teacher_scales: dict[str, float] | None = None  # the training manifest's teachers' logit scales, read once
        self.bad_samples: dict[str, BadSampleCounter] = {s: BadSampleCounter() for s in ("train", "val", "test")}

    # -- the model's input ---------------------------------------------------------------------
    def _use_input(self, spec: InputSpec) -> None:
        self.input_spec = spec
        for key, value in spec.to_dict().items():
            setattr(self, key, tuple(value) if isinstance(value, list) else value)

    def adopt_input(self, spec: InputSpec, model: str = "the model") -> None:
        """Take the model's input description; an input option this data section states differently is a
        ConfigError naming it (called by the training module before the first step)."""
        conflicts = spec.conflicts(self.stated_input)
        if conflicts:
            key, stated, models = conflicts[0]
            more = "; ".join(f"data.{k}: {a} vs {b}" for k, a, b in conflicts[1:])
            raise ConfigError(
                f"data.{key}: {stated} differs from input.{key} of {model} ({models}); a model's config says how its "
                f"clips look: drop data.{key} (it defaults to the model's) or change the model's with "
                f"model.input: {{{key}: {stated}}}" + (f" (also {more})" if more else "")
            )
        self._use_input(spec)

    # -- where the shards are ----------------------------------------------------------------
    def _synthetic_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"seed": self.seed, "progress": False}  # sizes: the generator's defaults
        if isinstance(self.synthetic, dict):
            kwargs.update(self.synthetic)
        return kwargs

    def _use_synthetic(self) -> bool:
        return bool(self.synthetic) and not all(self.paths.values())

    def _ensure_synthetic(self) -> None:
        from .synthetic import ensure_synthetic_dataset

        root = ensure_synthetic_dataset(**self._synthetic_kwargs())
        for split in ("train", "val", "test"):
            if not self.paths[split]:
                self.paths[split] = str(root / split)

    def prepare_data(self) -> None:
        if self._use_synthetic():
            self._ensure_synthetic()

    def setup(self, stage: str | None = None) -> None:
        if self._use_synthetic():
            self._ensure_synthetic()  # cheap when prepare_data built it (other ranks, other nodes)
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test", "val")}
        for split in wanted.get(stage or "", ("train", "val", "test")):
            pattern = self.paths.get(split)
            if pattern and split not in self.shards:
                self.shards[split] = self._list(split, pattern)
        if stage in ("fit", None):
            self.training_teacher_scales()  # a manifest conflict is an error now, not at the first step

    def _list(self, split: str, pattern: str) -> list[Shard]:
        """The split's shards; ``epoch_samples`` stands in for the counts of remote training shards that have none."""
        return list_shards(pattern, self.epoch_samples if split == "train" else None, where=f"data.{split}")

    # -- loaders -----------------------------------------------------------------------------
    def _dataset(self, split: str, train: bool) -> ShardDataset:
        pattern = self.paths.get(split)
        if not pattern:
            raise ConfigError(f"data.{split}: no shard pattern configured (and synthetic is off)")
        if split not in self.shards:
            self.shards[split] = self._list(split, pattern)
        threads = self.decode_threads or default_thread_count(self.num_workers)
        decoder = SampleDecoder(
            transform=VideoTransform(
                self.resolution, train, self.crop_scale, hflip=self.hflip, mean=self.mean, std=self.std,
                value_range=self.value_range,
            ),
            tokenizer=self.tokenizer,
            train=train,
            frames=self.frames,
            sampling=self.sampling,
            sampling_fps=self.sampling_fps,
            stride=self.stride,
            short_side=self.short_side,
            thread_count=threads,
        )
        return ShardDataset(
            self.shards[split],
            decoder,
            collate_train if train else collate_eval,
            batch_size=self.batch_size if train else self.eval_batch_size,
            train=train,
            num_workers=self.num_workers,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            seed=self.seed,
            resampled=self.resampled and train,
            pattern=pattern,
            epoch_samples=self.epoch_samples if train else None,
            group_batching=self.group_batching and train,
        )

    def _loader(self, split: str, train: bool) -> ShardLoader:
        ds = self._dataset(split, train)
        ds.check_split()  # fail before training starts, naming the pattern
        return ShardLoader(
            ds, num_workers=self.num_workers, epoch_fn=self._trainer_epoch, pin_memory=self.pin_memory
        )

    def _trainer_epoch(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else int(trainer.current_epoch)

    def train_dataloader(self) -> ShardLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> ShardLoader | list:
        if not self.paths.get("val"):
            return []  # Lightning reads an empty list as "no validation"
        return self._loader("val", False)

    def test_dataloader(self) -> ShardLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> "_OpaqueLoader":
        """`predict` embeds the test split (every clip once, all captions), or val when no test split is set."""
        return _OpaqueLoader(self._loader("test" if self.paths.get("test") else "val", False))

    def train_batches_per_rank(self) -> int:
        """The fixed epoch length every rank runs (``floor(total / (world * batch))``)."""
        return len(self._dataset("train", True))

    # -- bad-sample accounting ---------------------------------------------------------------
    def _stage(self) -> str:
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.training:
            return "train"
        return "test" if trainer.testing else "val"

    def record_bad_samples(self, batch: Any, stage: str | None = None) -> Any:
        """Move a batch's ``bad_samples`` counts into ``self.bad_samples[stage]`` and check the share."""
        if isinstance(batch, dict) and "bad_samples" in batch:
            stage = stage or self._stage()
            counter = self.bad_samples[stage]
            counter.merge(batch.pop("bad_samples"))
            counter.check(
                self.max_bad_fraction,
                min_seen=self.bad_check_min_samples,
                where=f"data.{stage} ({self.paths.get(stage)})",
            )
        return batch

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = self.record_bad_samples(batch)
        if isinstance(batch, dict) and "teacher_video" in batch and "teacher_logit_scale" not in batch:
            scales = self.training_teacher_scales()
            if scales:  # each teacher's own temperature, for the distillation loss (docs/distillation.md)
                batch["teacher_logit_scale"] = dict(scales)
        return batch

    def training_teacher_scales(self) -> dict[str, float]:
        """{teacher name: logit scale} recorded in the training shards' manifest by `python -m mvclip teacher`."""
        if self.teacher_scales is None:
            pattern = self.paths.get("train")
            self.teacher_scales = teacher_logit_scales(pattern) if pattern else {}
        return self.teacher_scales

    def training_teacher_embed_dims(self) -> dict[str, int]:
        """{teacher name: embedding width} recorded in the training shards' manifest (read once, at setup)."""
        pattern = self.paths.get("train")
        return teacher_embed_dims(pattern) if pattern else {}


class _OpaqueLoader:
    """Hides a ShardLoader from Lightning's predict loop, which would re-instantiate any DataLoader with an
    index-tracking sampler; our shards are iterable datasets with their own split, so it must not."""

    def __init__(self, loader: ShardLoader) -> None:
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)
