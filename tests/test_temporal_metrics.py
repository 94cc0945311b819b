"""Temporal metrics on hand-made embeddings (exact values), and on real models: frame-mean scores exactly 0."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import mvclip
from mvclip.temporal_metrics import (
    TemporalMetric, order_sensitivity, shuffle_order, twin_accuracy, twin_caption_cosine,
)

E = torch.eye(4)


def test_order_sensitivity_hand_made():
    video = torch.stack([E[0], E[1]])
    # clip 0 stays, clip 1 moves onto clip 0: mean moved = (0 + 1) / 2; mean distance between clips = 1
    assert order_sensitivity(video, torch.stack([E[0], E[0]])) == pytest.approx(50.0)
    assert order_sensitivity(video, video.clone()) == 0.0
    # three clips at 60 degrees apart on a plane: distances between clips are 1 - cos 60 = 0.5 on average...
    a = torch.tensor([[1.0, 0.0], [0.5, 3**0.5 / 2], [-0.5, 3**0.5 / 2]])
    between = (0.5 + 1.5 + 0.5) * 2 / 6  # pairs (0,1), (0,2), (1,2) both ways
    moved = (1 - 0.5) / 3  # only clip 0 moves, onto clip 1's direction
    assert order_sensitivity(a, torch.stack([a[1], a[1], a[2]])) == pytest.approx(100 * moved / between)


def test_twin_accuracy_hand_made():
    # group 7: clips 0 and 1; group 9: clips 2 and 3; clip 4 has no group
    video = torch.stack([E[0], E[1], E[2], E[2], E[3]])
    captions = torch.stack([E[0], E[1], E[2], E[3], E[3]])  # mean caption embedding of each clip
    groups = torch.tensor([7, 7, 9, 9, -1])
    sets = torch.arange(5)
    # pairs: (0 vs 1) 1 > 0 right, (1 vs 0) right, (2 vs 3) 1 > 0 right, (3 vs 2): 0 vs 1 wrong -> 3 of 4
    assert twin_accuracy(video, captions, groups, sets) == (75.0, 4)
    # orthogonal caption means in both groups: cosine 0; group 9's second caption turned to 60 degrees: 0.5
    assert twin_caption_cosine(captions, groups, sets) == 0.0
    tilted = captions.clone()
    tilted[3] = 0.5 * E[2] + 3**0.5 / 2 * E[3]
    assert twin_caption_cosine(tilted, groups, sets) == pytest.approx((0.0 * 2 + 0.5 * 2) / 4)
    # a caption mean is not unit length (two captions averaged): the cosine normalizes it first
    assert twin_caption_cosine(torch.stack([E[0] + E[1], E[0]]), torch.tensor([1, 1]), torch.tensor([5, 6])) == pytest.approx(2**-0.5)


def test_twin_accuracy_ties_are_wrong_and_identical_captions_skipped():
    video = torch.stack([E[0], E[0]])
    captions = torch.stack([E[1], E[1]])  # both clips equally close to both caption sets
    assert twin_accuracy(video, captions, torch.tensor([1, 1]), torch.tensor([5, 6])) == (0.0, 2)
    accuracy, pairs = twin_accuracy(video, captions, torch.tensor([1, 1]), torch.tensor([5, 5]))
    assert pairs == 0 and accuracy != accuracy  # nan: nothing to score
    assert twin_caption_cosine(captions, torch.tensor([1, 1]), torch.tensor([5, 6])) == pytest.approx(1.0)  # merged
    cosine = twin_caption_cosine(captions, torch.tensor([1, 1]), torch.tensor([5, 5]))
    assert cosine != cosine  # identical captions are not a pair


def test_shuffle_order_is_a_derangement_and_not_the_reversal():
    for frames in (3, 4, 8, 16):
        order = shuffle_order(frames)
        assert sorted(order) == list(range(frames))
        assert all(o != i for i, o in enumerate(order)) and order != list(reversed(range(frames)))
    assert shuffle_order(8) == shuffle_order(8)  # fixed, so runs compare


def _batch(keys, video, caption_rows, groups):
    """An evaluation batch as the loader builds it: captions flattened, with the index of their clip."""
    text = torch.cat(caption_rows)
    index = torch.cat([torch.full((len(c),), i) for i, c in enumerate(caption_rows)])
    return dict(video=video, keys=keys, text=text, text_video_index=index, groups=groups)


def test_metric_accumulates_batches_and_counts_duplicates_once():
    m = TemporalMetric()
    # clip a: its two captions average to E0 + E1 direction; its twin b has captions at E2
    first = _batch(["a", "b"], torch.stack([E[0], E[2]]), [torch.stack([E[0], E[1]]), E[2:3]], ["p", "p"])
    m.update(**first, reversed_video=torch.stack([E[1], E[2]]), shuffled_video=torch.stack([E[0], E[2]]))
    # b again (DDP padding repeats samples), and c without a group
    second = _batch(["b", "c"], torch.stack([E[2], E[3]]), [E[2:3], E[3:4]], ["p", None])
    m.update(**second, reversed_video=torch.stack([E[2], E[3]]), shuffled_video=torch.stack([E[2], E[3]]))
    out = m.compute()
    assert out["twin_pairs"] == 2 and out["twin_acc"] == 100.0
    assert out["twin_text_cos"] == pytest.approx(0.0)  # a's captions (E0, E1) against b's (E2)
    # only a moves under reversal (E0 -> E1, distance 1); clips a, b, c are orthogonal: mean distance 1
    assert out["reverse"] == pytest.approx(100 / 3)
    assert out["shuffle"] == 0.0


def test_metric_without_groups_reports_no_twin_accuracy():
    m = TemporalMetric()
    m.update(**_batch(["a", "b"], torch.stack([E[0], E[1]]), [E[0:1], E[1:2]], None), reversed_video=torch.stack([E[0], E[1]]))
    assert m.compute() == {"reverse": 0.0}


def _clips(seed: int = 0) -> torch.Tensor:
    return torch.rand(6, 4, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _randomize_temporal(model: torch.nn.Module) -> None:
    """Give the temporal additions non-zero weights (they start as the identity)."""
    gen = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if ".temporal_mixer." in name or name.endswith(".tpe"):
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.mark.parametrize("fused", [False, True])
def test_frame_mean_model_scores_exactly_zero_and_temporal_model_more(tiny_model_config, fused):
    frames_cfg = copy.deepcopy(tiny_model_config)
    for stage in frames_cfg["video"]["stages"]:
        stage["block"] = {"st_repmixer": "repmixer", "tpe_attention": "attention"}[stage["block"]]
    clips = _clips()
    results = {}
    for name, cfg in (("frame_mean", frames_cfg), ("temporal", tiny_model_config)):
        torch.manual_seed(0)
        model = mvclip.build_model(cfg).eval()
        _randomize_temporal(model)
        if fused:
            model = mvclip.fuse(model)
        with torch.no_grad():
            v, r, s = (F.normalize(model.encode_video(x), dim=-1) for x in (clips, clips.flip(1), clips[:, shuffle_order(4)]))
        results[name] = (order_sensitivity(v, r), order_sensitivity(v, s))
    assert results["frame_mean"] == (0.0, 0.0)
    assert min(results["temporal"]) > 1e-3
