"""Frame sampling: range, order, length, exact eval positions, reproducibility, fallbacks."""

from __future__ import annotations

import random

import pytest

from mvclip.datamodules.sampling import (
    SAMPLING_MODES,
    consecutive_indices,
    fps_indices,
    sample_indices,
    segment_indices,
)


@pytest.mark.parametrize("mode", SAMPLING_MODES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("n", [1, 3, 7, 8, 9, 50, 333])
@pytest.mark.parametrize("t", [1, 8, 16])
def test_indices_in_range_sorted_exact_length(mode: str, train: bool, n: int, t: int) -> None:
    rng = random.Random(0)
    for _ in range(5):
        idx = sample_indices(n, t, mode, train=train, video_fps=25.0, sampling_fps=2.0, stride=3, rng=rng)
        assert len(idx) == t
        assert all(0 <= i < n for i in idx), idx
        assert idx == sorted(idx)
        assert all(isinstance(i, int) for i in idx)


def test_segment_centres_at_evaluation() -> None:
    # 100 frames, 8 segments of 12.5 frames: centres at 6.25, 18.75, ... floored
    assert segment_indices(100, 8, train=False) == [6, 18, 31, 43, 56, 68, 81, 93]
    assert segment_indices(16, 8, train=False) == [1, 3, 5, 7, 9, 11, 13, 15]


def test_segments_training_draws_one_frame_per_segment() -> None:
    rng = random.Random(1)
    seen = set()
    for _ in range(200):
        idx = segment_indices(80, 8, train=True, rng=rng)
        for i, v in enumerate(idx):
            assert 10 * i <= v < 10 * (i + 1)
        seen.add(tuple(idx))
    assert len(seen) > 100  # it is random


def test_short_videos_repeat_frames() -> None:
    # centres (i + 0.5) * 3 / 8 = 0.19, 0.56, 0.94, 1.31, 1.69, 2.06, 2.44, 2.81
    assert segment_indices(3, 8, train=False) == [0, 0, 0, 1, 1, 2, 2, 2]
    idx = segment_indices(3, 8, train=True, rng=random.Random(0))
    assert len(idx) == 8 and set(idx) <= {0, 1, 2} and idx == sorted(idx)
    assert sample_indices(1, 8, "fps", train=True, video_fps=30, rng=random.Random(0)) == [0] * 8


@pytest.mark.parametrize("mode", SAMPLING_MODES)
def test_reproducible_with_seed(mode: str) -> None:
    a = [sample_indices(300, 8, mode, train=True, video_fps=30.0, rng=random.Random(7)) for _ in range(3)]
    b = [sample_indices(300, 8, mode, train=True, video_fps=30.0, rng=random.Random(7)) for _ in range(3)]
    assert a == b
    draws = {tuple(sample_indices(300, 8, mode, train=True, video_fps=30.0, rng=random.Random(s))) for s in range(20)}
    assert len(draws) > 1


def test_fps_spacing_matches_rate() -> None:
    # 30 fps video sampled at 2 fps: one frame every 15 frames
    for train in (True, False):
        idx = fps_indices(600, 8, video_fps=30.0, sampling_fps=2.0, train=train, rng=random.Random(3))
        assert [b - a for a, b in zip(idx, idx[1:])] == [15] * 7
    # non-integer step (25 fps at 2 fps = 12.5 frames): spacing rounds to 12 or 13, mean 12.5
    idx = fps_indices(1000, 9, video_fps=25.0, sampling_fps=2.0, train=False)
    gaps = [b - a for a, b in zip(idx, idx[1:])]
    assert set(gaps) <= {12, 13} and sum(gaps) == 100


def test_fps_eval_window_is_centred_and_train_window_moves() -> None:
    # span = 7 * 15 + 1 = 106 frames of 300: slack 194, centred start 97
    assert fps_indices(300, 8, video_fps=30.0, sampling_fps=2.0, train=False) == [97 + 15 * k for k in range(8)]
    starts = {fps_indices(300, 8, video_fps=30.0, sampling_fps=2.0, train=True, rng=random.Random(s))[0] for s in range(30)}
    assert len(starts) > 5 and min(starts) >= 0 and max(starts) <= 194


def test_fps_falls_back_to_segments_for_short_clips() -> None:
    # 8 frames at 2 fps need 3.5 s + 1 frame = 106 frames at 30 fps; 60 frames is too short
    short = fps_indices(60, 8, video_fps=30.0, sampling_fps=2.0, train=False)
    assert short == segment_indices(60, 8, train=False)
    # unknown fps also falls back
    assert fps_indices(60, 8, video_fps=None, sampling_fps=2.0, train=False) == segment_indices(60, 8, train=False)
    # exactly long enough does not fall back
    assert fps_indices(106, 8, video_fps=30.0, sampling_fps=2.0, train=False) == [15 * k for k in range(8)]


def test_consecutive_stride_and_fallback() -> None:
    assert consecutive_indices(100, 8, stride=2, train=False) == [42 + 2 * k for k in range(8)]
    idx = consecutive_indices(100, 8, stride=3, train=True, rng=random.Random(0))
    assert [b - a for a, b in zip(idx, idx[1:])] == [3] * 7
    assert consecutive_indices(10, 8, stride=4, train=False) == segment_indices(10, 8, train=False)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="unknown sampling mode"):
        sample_indices(10, 8, "uniform", train=False)
    with pytest.raises(ValueError, match="0 frames"):
        sample_indices(0, 8, "segments", train=False)
