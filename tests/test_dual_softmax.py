"""Dual softmax beside the plain numbers, multi-caption recall and the prompt ensemble, on hand-made examples whose
ranks are worked out in the comments."""
from __future__ import annotations

import math

import pytest
import torch

from mvclip.metrics import RetrievalMetric
from mvclip.zeroshot import KINETICS_TEMPLATES, build_classifier, class_names_of, templates_of


def embeddings(similarity: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(videos, texts) whose cosine similarity text i . video j is exactly similarity[i][j]: videos are the unit axes
    e_0..e_{V-1}; a text is its row plus one more coordinate that brings its norm to 1."""
    s = torch.tensor(similarity, dtype=torch.float64)
    rest = torch.sqrt(1.0 - (s * s).sum(1, keepdim=True))
    texts = torch.cat([s, rest], dim=1)
    videos = torch.eye(s.shape[1], s.shape[1] + 1, dtype=torch.float64)
    return videos, texts


# text x video; t1 belongs to v1 but v0 is a "hub" every text likes
HUB = [[0.50, 0.40, 0.10],
       [0.45, 0.40, 0.10],
       [0.10, 0.20, 0.50]]


def test_dual_softmax_changes_r1_on_a_hub_and_is_reported_beside_the_plain_numbers():
    videos, texts = embeddings(HUB)
    keys = ["v0", "v1", "v2"]
    plain, dsl = RetrievalMetric(), RetrievalMetric(dual_softmax=True, dsl_scale=10.0)
    for metric in (plain, dsl):
        metric.update(videos, keys, texts, keys)
    a, b = plain.compute(), dsl.compute()
    # plain t2v: t1 scores v0 0.45 > its own v1 0.40 -> ranks [1, 2, 1]; v2t: v1 sees t0 and t1 tie at 0.40, a tie
    # counts against the ground truth -> ranks [1, 2, 1]
    assert a["t2v/R@1"] == pytest.approx(200 / 3) and a["t2v/MnR"] == pytest.approx(4 / 3)
    assert a["v2t/R@1"] == pytest.approx(200 / 3) and a["v2t/MnR"] == pytest.approx(4 / 3)
    assert not any("dsl" in k for k in a)
    assert {k: b[k] for k in a} == a  # the plain numbers stay, unchanged
    # t2v DSL, scale 10: prior of (t1, v0) = e^4.5 / (e^5 + e^4.5 + e^1) = 0.3733 -> 0.45 * 0.3733 = 0.168;
    # (t1, v1) = e^4 / (e^4 + e^4 + e^2) = 0.4683 -> 0.40 * 0.4683 = 0.187 > 0.168: t1 now finds v1 -> ranks [1, 1, 1]
    prior_t1_v0 = math.exp(4.5) / (math.exp(5) + math.exp(4.5) + math.exp(1))
    prior_t1_v1 = math.exp(4) / (2 * math.exp(4) + math.exp(2))
    assert 0.40 * prior_t1_v1 > 0.45 * prior_t1_v0
    assert b["t2v_dsl/R@1"] == 100.0 and b["t2v_dsl/MnR"] == 1.0
    # v2t DSL: for v1, prior of t0 = e^4 / (e^5 + e^4 + e^1) = 0.2654 -> 0.106; of t1 = e^4 / (e^4.5 + e^4 + e^1) = 0.3706
    # -> 0.148: the tie is broken for t1 -> ranks [1, 1, 1]
    assert 0.40 * math.exp(4) / (math.exp(4.5) + math.exp(4) + math.exp(1)) > 0.40 * math.exp(4) / (math.exp(5) + math.exp(4) + math.exp(1))
    assert b["v2t_dsl/R@1"] == 100.0 and b["v2t_dsl/MnR"] == 1.0


def test_multi_caption_recall_hit_if_any_caption_of_the_video_is_ranked():
    # 5 captions of 3 videos: c0, c1 describe v0; c2 describes v1; c3, c4 describe v2
    sim = [[0.6, 0.2, 0.1],   # c0 -> v0 first: rank 1
           [0.3, 0.5, 0.1],   # c1 -> v1 0.5 above v0 0.3: rank 2
           [0.2, 0.4, 0.45],  # c2 -> v2 0.45 above v1 0.4: rank 2
           [0.1, 0.2, 0.7],   # c3 -> rank 1
           [0.5, 0.3, 0.2]]   # c4 -> v0 0.5, v1 0.3 above v2 0.2: rank 3
    videos, texts = embeddings(sim)
    metric = RetrievalMetric()
    metric.update(videos, ["v0", "v1", "v2"], texts, ["v0", "v0", "v1", "v2", "v2"])
    out = metric.compute()
    # t2v ranks [1, 2, 2, 1, 3]: R@1 2/5, R@5 all, MdR floor(median of 0-based [0, 0, 1, 1, 2]) + 1 = 2, MnR 9/5
    assert (out["t2v/R@1"], out["t2v/R@5"], out["t2v/MdR"], out["t2v/MnR"]) == (pytest.approx(40.0), 100.0, 2.0, pytest.approx(1.8))
    # v2t: v0's best own caption c0 (0.6) beats c2 0.2, c3 0.1, c4 0.5 -> 1; v1's only caption c2 (0.4) is below c1 (0.5)
    # -> 2; v2's best own caption c3 (0.7) beats all others (its weak c4 does not matter) -> 1
    assert out["v2t/R@1"] == pytest.approx(200 / 3) and out["v2t/MnR"] == pytest.approx(4 / 3)
    assert (out["num_videos"], out["num_texts"]) == (3.0, 5.0)


def test_prompt_ensemble_is_the_mean_of_normalised_template_embeddings():
    # class "run": template A embeds to (3, 4), B to (0, 2); class "swim": A (1, 0), B (0, 5)
    table = {"A run": [3.0, 4.0], "B run": [0.0, 2.0], "A swim": [1.0, 0.0], "B swim": [0.0, 5.0]}
    prompts: list[str] = []

    def tokenize(texts: list[str]) -> torch.Tensor:
        start = len(prompts)
        prompts.extend(texts)
        return torch.arange(start, start + len(texts))

    encode = lambda tokens: torch.tensor([table[prompts[i]] for i in tokens.tolist()])  # noqa: E731
    got = build_classifier(encode, tokenize, ["run", "swim"], ["A {}", "B {}"], batch_size=3)
    # run: (0.6, 0.8) and (0, 1) -> mean (0.3, 0.9) -> /sqrt(0.9); swim: (1, 0), (0, 1) -> (0.5, 0.5) -> (1, 1)/sqrt 2
    expected = torch.tensor([[0.3 / math.sqrt(0.9), 0.9 / math.sqrt(0.9)], [1 / math.sqrt(2), 1 / math.sqrt(2)]])
    torch.testing.assert_close(got, expected)
    # averaging raw embeddings instead would give run = (1.5, 3) / |.| = (0.447, 0.894): not what CLIP does
    assert not torch.allclose(got[0], torch.tensor([1.5, 3.0]) / math.hypot(1.5, 3.0), atol=1e-3)


def test_named_ensembles_and_class_name_sources(tmp_path):
    assert templates_of("kinetics") == KINETICS_TEMPLATES and all("{}" in t for t in KINETICS_TEMPLATES)
    assert templates_of(["a {}"]) == ("a {}",)
    with pytest.raises(ValueError, match="model.zero_shot.templates: 'imagenet' is not a prompt ensemble"):
        templates_of("imagenet")
    names = tmp_path / "classes.txt"
    names.write_text("abseiling\nair drumming\n")
    assert class_names_of(str(names)) == ["abseiling", "air drumming"]
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text('{"options": {"class_names": ["zumba", "yoga"]}}')
    assert class_names_of(str(shards)) == ["zumba", "yoga"]
    with pytest.raises(ValueError, match="neither a list"):
        class_names_of(str(tmp_path / "nowhere.txt"))
