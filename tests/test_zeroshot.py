"""Zero-shot classifier construction (template ensembling) and ZeroShotAccuracy on hand-built embeddings."""
from __future__ import annotations

import pytest
import torch

from mvclip.zeroshot import DEFAULT_TEMPLATES, ZeroShotAccuracy, build_classifier


class FakeText:
    """A 'tokenizer' that numbers prompts and an 'encoder' that looks them up in a random, un-normalized table."""

    def __init__(self, dim: int = 12) -> None:
        self.ids: dict[str, int] = {}
        self.table = torch.randn(1000, dim, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 5, 1000)[:, None]
        self.calls: list[int] = []

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[self.ids.setdefault(t, len(self.ids))] for t in texts], dtype=torch.long)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls.append(tokens.shape[0])
        return self.table[tokens[:, 0]]

    def embed(self, text: str) -> torch.Tensor:
        return self.table[self.ids[text]]


def test_template_averaging_matches_manual_recipe():
    fake = FakeText()
    classes = ["archery", "playing guitar", "surfing water"]
    templates = ["a video of {}.", "a clip showing {}.", "{}"]
    got = build_classifier(fake.encode, fake.tokenize, classes, templates, batch_size=4)
    assert got.shape == (3, 12) and got.dtype == torch.float32
    for c, name in enumerate(classes):
        per_template = [fake.embed(t.format(name)) for t in templates]
        mean = torch.stack([e / e.norm() for e in per_template]).mean(0)
        assert torch.allclose(got[c], mean / mean.norm(), atol=1e-6)
        # the un-normalized average would differ (the table's norms vary), so the test can tell them apart
        raw = torch.stack(per_template).mean(0)
        assert not torch.allclose(got[c], raw / raw.norm(), atol=1e-3)
    assert fake.calls == [4, 4, 1]  # 9 prompts, batches of 4


def test_batch_size_does_not_change_the_classifier():
    fake = FakeText()
    a = build_classifier(fake.encode, fake.tokenize, ["a", "b", "c", "d", "e"], DEFAULT_TEMPLATES, batch_size=1)
    b = build_classifier(fake.encode, fake.tokenize, ["a", "b", "c", "d", "e"], DEFAULT_TEMPLATES, batch_size=1000)
    assert torch.allclose(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(5))


def test_templates_need_a_placeholder():
    fake = FakeText()
    with pytest.raises(ValueError, match="{}"):
        build_classifier(fake.encode, fake.tokenize, ["a"], ["a video"])
    assert all("{}" in t for t in DEFAULT_TEMPLATES) and len(DEFAULT_TEMPLATES) >= 3


def _classes(c: int, d: int = 16) -> torch.Tensor:
    return torch.eye(d)[:c]


def test_known_top1_and_top5_with_many_classes():
    # 7 orthonormal classes; a video's similarity to class j is its j-th coordinate (times a positive scale)
    w = _classes(7)
    videos = torch.zeros(5, 16)
    videos[0, :7] = torch.tensor([9, 1, 2, 3, 4, 5, 6.0])  # label 0 -> rank 1
    videos[1, :7] = torch.tensor([9, 1, 2, 3, 4, 5, 6.0])  # label 6 -> rank 2
    videos[2, :7] = torch.tensor([9, 1, 2, 3, 4, 5, 6.0])  # label 3 -> rank 5 (9,6,5,4 above)
    videos[3, :7] = torch.tensor([9, 1, 2, 3, 4, 5, 6.0])  # label 2 -> rank 6: a top-5 miss
    videos[4, :7] = torch.tensor([1, 2, 3, 4, 5, 6, 9.0]) * 3  # label 6 -> rank 1, scale does not matter
    labels = torch.tensor([0, 6, 3, 2, 6])
    m = ZeroShotAccuracy(w)
    m.update(videos, labels)
    assert m.compute() == {"top1": 40.0, "top5": 80.0, "num_samples": 5.0}


def test_top5_with_fewer_than_five_classes_is_top_c():
    m = ZeroShotAccuracy(_classes(3))
    videos = torch.zeros(4, 16)
    videos[:, :3] = torch.tensor([[3, 2, 1], [3, 2, 1], [3, 2, 1], [1, 3, 2.0]])
    m.update(videos, torch.tensor([0, 1, 2, 0]))
    assert m.compute() == {"top1": 25.0, "top5": 100.0, "num_samples": 4.0}


def test_ties_with_a_wrong_class_are_misses():
    m = ZeroShotAccuracy(_classes(3))
    videos = torch.zeros(2, 16)
    videos[:, :3] = torch.tensor([[1, 1, 0], [1, 1, 0.0]])  # exactly equidistant from classes 0 and 1
    m.update(videos, torch.tensor([0, 1]))
    assert m.compute()["top1"] == 0.0


def test_classifier_via_set_classifier_and_is_normalized():
    m = ZeroShotAccuracy()
    with pytest.raises(RuntimeError, match="no classifier"):
        m.update(torch.randn(2, 16), torch.tensor([0, 1]))
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    m.set_classifier(w * torch.tensor([[1.0], [10.0], [0.1], [3.0]]))  # scaled rows must not bias the argmax
    videos = w + 0.01 * torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    m.update(videos, torch.arange(4))
    assert m.compute()["top1"] == 100.0


def test_duplicated_keys_count_once_and_unkeyed_samples_all_count():
    w = _classes(3)
    videos = torch.zeros(3, 16)
    videos[:, :3] = torch.tensor([[3, 2, 1], [3, 2, 1], [3, 2, 1.0]])
    labels = torch.tensor([0, 1, 1])  # one hit, two misses
    keyed = ZeroShotAccuracy(w)
    keyed.update(videos, labels, ["a", "b", "c"])
    keyed.update(videos[:1], labels[:1], ["a"])  # padding repeats the hit
    assert keyed.compute() == pytest.approx({"top1": 100 / 3, "top5": 100.0, "num_samples": 3.0})
    unkeyed = ZeroShotAccuracy(w)
    unkeyed.update(videos, labels)
    unkeyed.update(videos[:1], labels[:1])
    assert unkeyed.compute()["top1"] == 50.0


def test_labels_out_of_range_are_rejected():
    m = ZeroShotAccuracy(_classes(3))
    with pytest.raises(ValueError, match="labels must be in"):
        m.update(torch.randn(2, 16), torch.tensor([0, 3]))
