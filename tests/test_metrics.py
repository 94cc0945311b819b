"""RetrievalMetric against an independent brute-force NumPy reference, hand-built ranks and a 2-process DDP run."""
from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mvclip.markdown import print_table
from mvclip.metrics import RetrievalMetric, rank_stats
from mvclip.sample_keys import stable_hash
from mvclip.zeroshot import ZeroShotAccuracy
from helpers import exit_spawned_worker

KEYS = ("R@1", "R@5", "R@10", "MdR", "MnR")


# ---------------------------------------------------------------- reference (loops, NumPy, no torch)
def reference(videos: dict[str, np.ndarray], captions: list[tuple[str, np.ndarray]]) -> dict[str, float]:
    """Brute force: every caption/video ranked by counting, per ground-truth caption, then min (docs/design.md §6)."""
    vkeys = list(videos)
    V = np.stack([videos[k].astype(np.float64) / np.linalg.norm(videos[k].astype(np.float64)) for k in vkeys])
    T = np.stack([e.astype(np.float64) / np.linalg.norm(e.astype(np.float64)) for _, e in captions])
    gt = [vkeys.index(k) for k, _ in captions]

    t2v = []
    for i in range(len(captions)):
        s = [float(np.dot(T[i], V[j])) for j in range(len(vkeys))]
        t2v.append(1 + sum(1 for j in range(len(vkeys)) if j != gt[i] and s[j] >= s[gt[i]]))

    v2t = []
    for j in range(len(vkeys)):
        mine = [i for i in range(len(captions)) if gt[i] == j]
        if not mine:
            continue
        s = [float(np.dot(T[i], V[j])) for i in range(len(captions))]
        per_caption = [1 + sum(1 for o in range(len(captions)) if gt[o] != j and s[o] >= s[c]) for c in mine]
        v2t.append(min(per_caption))

    def stats(ranks: list[int], prefix: str) -> dict[str, float]:
        r = np.asarray(ranks, dtype=np.float64)
        out = {f"{prefix}/R@{k}": 100.0 * float(np.mean(r <= k)) for k in (1, 5, 10)}
        out[f"{prefix}/MdR"] = float(np.floor(np.median(r - 1)) + 1)
        out[f"{prefix}/MnR"] = float(np.mean(r))
        return out

    return {**stats(t2v, "t2v"), **stats(v2t, "v2t"), "num_videos": float(len(vkeys)), "num_texts": float(len(captions))}


def assert_same(got: dict[str, float], want: dict[str, float]) -> None:
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-9), (k, got[k], v)


def random_dataset(seed: int, num_videos: int, dim: int = 16, max_caps: int = 5, min_caps: int = 1):
    """Videos with min..max captions each; captions are noisy copies so ranks spread over 1..V."""
    rng = np.random.default_rng(seed)
    videos = {f"vid{i:04d}": rng.standard_normal(dim).astype(np.float32) for i in range(num_videos)}
    captions = []
    for k, v in videos.items():
        for _ in range(rng.integers(min_caps, max_caps + 1)):
            captions.append((k, (v + 1.5 * rng.standard_normal(dim)).astype(np.float32)))
    return videos, captions


def feed(metric: RetrievalMetric, videos, captions, splits: list[list[str]], rng: np.random.Generator) -> None:
    """One update per split of video keys; each video's captions go in its batch, shuffled."""
    for keys in splits:
        caps = [c for c in captions if c[0] in set(keys)]
        order = rng.permutation(len(caps))
        caps = [caps[i] for i in order]
        metric.update(
            torch.from_numpy(np.stack([videos[k] for k in keys])),
            list(keys),
            torch.from_numpy(np.stack([e for _, e in caps])),
            [k for k, _ in caps],
        )


def split(keys: list[str], sizes: list[int]) -> list[list[str]]:
    out, start = [], 0
    for s in sizes:
        out.append(keys[start : start + s])
        start += s
    assert start == len(keys)
    return out


# ---------------------------------------------------------------- (a) one caption per video
def test_one_caption_per_video_matches_reference():
    videos, captions = random_dataset(0, 60, max_caps=1)
    m = RetrievalMetric()
    feed(m, videos, captions, split(list(videos), [16, 16, 16, 12]), np.random.default_rng(1))
    want = reference(videos, captions)
    got = m.compute()
    assert_same(got, want)
    assert 0 < got["t2v/R@1"] < 100 and got["t2v/MnR"] > 2  # the data is neither trivial nor hopeless


# ---------------------------------------------------------------- (b) several captions, different splits
@pytest.mark.parametrize("sizes", [[50], [7, 13, 30], [1] * 50, [20, 1, 29]])
def test_several_captions_any_batch_split_matches_reference(sizes):
    videos, captions = random_dataset(2, 50, max_caps=5)
    assert len({len([c for c in captions if c[0] == k]) for k in videos}) > 1  # really 1..5 captions
    m = RetrievalMetric(chunk_size=7)  # chunking with a ragged last chunk
    feed(m, videos, captions, split(list(videos), sizes), np.random.default_rng(sum(sizes) + len(sizes)))
    assert_same(m.compute(), reference(videos, captions))


def test_video_without_captions_is_a_distractor_only():
    videos, captions = random_dataset(3, 30, max_caps=3)
    captions = [c for c in captions if c[0] not in ("vid0003", "vid0017")]
    m = RetrievalMetric()
    feed(m, videos, captions, split(list(videos), [10, 20]), np.random.default_rng(0))
    got = m.compute()
    assert got["num_videos"] == 30
    assert_same(got, reference(videos, captions))


# ---------------------------------------------------------------- (c) exact ties are pessimistic
def _exact(vec: list[int]) -> np.ndarray:
    """Four +-1 entries: norm 2, so normalized entries are +-0.5 and every dot product is exact."""
    v = np.asarray(vec, dtype=np.float32)
    assert np.count_nonzero(v) == 4
    return v


def test_exact_ties_count_against_the_ground_truth():
    a = _exact([1, 1, 1, 1, 0, 0, 0, 0])
    c = _exact([0, 0, 0, 0, 1, 1, 1, 1])
    videos = {"A": a, "B": a.copy(), "C": c}  # A and B are identical videos
    captions = [("A", a), ("B", a.copy()), ("C", c), ("C", c.copy())]  # two identical captions of C
    m = RetrievalMetric()
    feed(m, videos, captions, [["A", "B", "C"]], np.random.default_rng(0))
    got = m.compute()
    # t2v: the A and B captions tie with the other twin video -> rank 2; C's two captions -> rank 1.
    # A naive (stable) argsort would put A first for A's caption and report R@1 = 75.
    assert got["t2v/R@1"] == 50.0
    assert got["t2v/MnR"] == 1.5
    # v2t: A's best caption ties with B's caption -> rank 2 (same for B); C's own identical captions do not count.
    assert got["v2t/R@1"] == pytest.approx(100 / 3)
    assert got["v2t/MnR"] == pytest.approx(5 / 3)
    assert got["v2t/MdR"] == 2.0
    assert_same(got, reference(videos, captions))


def test_collapsed_embeddings_score_zero_not_hundred():
    e = _exact([1, -1, 1, -1, 0, 0, 0, 0])
    videos = {f"v{i}": e.copy() for i in range(10)}
    captions = [(k, e.copy()) for k in videos for _ in range(2)]
    m = RetrievalMetric()
    feed(m, videos, captions, [list(videos)], np.random.default_rng(0))
    got = m.compute()
    for d in ("t2v", "v2t"):
        assert got[f"{d}/R@1"] == 0.0 and got[f"{d}/R@5"] == 0.0
    assert got["t2v/R@10"] == 100.0 and got["t2v/MdR"] == 10.0 and got["t2v/MnR"] == 10.0  # the other 9 tie above
    assert got["v2t/R@10"] == 0.0 and got["v2t/MdR"] == 19.0 and got["v2t/MnR"] == 19.0  # 18 foreign captions tie above
    assert_same(got, reference(videos, captions))


# ---------------------------------------------------------------- (d) de-duplication
def test_same_batch_twice_equals_once():
    videos, captions = random_dataset(4, 40, max_caps=4)
    once, twice = RetrievalMetric(), RetrievalMetric()
    feed(once, videos, captions, [list(videos)], np.random.default_rng(0))
    feed(twice, videos, captions, [list(videos)], np.random.default_rng(0))
    feed(twice, videos, captions, [list(videos)], np.random.default_rng(5))  # again, captions in another order
    got = twice.compute()
    assert got["num_videos"] == 40 and got["num_texts"] == len(captions)
    assert got == once.compute()
    assert_same(got, reference(videos, captions))


def test_padding_duplicate_in_another_batch_counts_once():
    videos, captions = random_dataset(5, 25, max_caps=3)
    keys = list(videos)
    m = RetrievalMetric()
    feed(m, videos, captions, [keys[:13], keys[13:], keys[:2]], np.random.default_rng(0))  # padding repeats 2
    got = m.compute()
    assert got["num_videos"] == 25 and got["num_texts"] == len(captions)
    assert_same(got, reference(videos, captions))


def test_caption_ids_identify_captions_across_batches():
    videos, captions = random_dataset(6, 10, max_caps=3)
    keys = list(videos)
    m = RetrievalMetric()
    m.update(torch.from_numpy(np.stack([videos[k] for k in keys])), keys, torch.zeros(0, 16), [], caption_ids=[])
    for i, (k, e) in enumerate(captions):  # captions arrive alone, apart from their videos, one of them twice
        m.update(torch.zeros(0, 16), [], torch.from_numpy(e[None]), [k], caption_ids=[f"cap{i}"])
    m.update(torch.zeros(0, 16), [], torch.from_numpy(captions[0][1][None]), [captions[0][0]], caption_ids=["cap0"])
    assert_same(m.compute(), reference(videos, captions))


def test_captions_must_travel_with_their_video_unless_ids_are_given():
    m = RetrievalMetric()
    with pytest.raises(ValueError, match="not in this batch"):
        m.update(torch.randn(1, 4), ["a"], torch.randn(1, 4), ["b"])
    m.update(torch.randn(1, 4), ["a"], torch.randn(1, 4), ["b"], caption_ids=["x"])
    with pytest.raises(ValueError, match="never given"):
        m.compute()


# ---------------------------------------------------------------- (e) perfect embeddings
def test_perfect_embeddings():
    rng = np.random.default_rng(7)
    videos = {f"v{i}": rng.standard_normal(32).astype(np.float32) for i in range(30)}
    captions = [(k, 3.0 * v) for k, v in videos.items()] + [(k, v.copy()) for k, v in list(videos.items())[:10]]
    m = RetrievalMetric()
    feed(m, videos, captions, split(list(videos), [10, 20]), rng)
    got = m.compute()
    for d in ("t2v", "v2t"):
        assert got[f"{d}/R@1"] == 100.0 and got[f"{d}/MdR"] == 1.0 and got[f"{d}/MnR"] == 1.0


# ---------------------------------------------------------------- (f) hand-built ranks
def test_constructed_ranks_give_exact_values():
    # Videos are basis vectors, so s(caption i, video j) is proportional to W[i, j]; every row is a
    # permutation of 5..1 (equal norms), so columns compare exactly too. Caption i describes video i.
    W = np.array(
        [[5, 4, 3, 2, 1], [5, 4, 3, 2, 1], [1, 2, 5, 4, 3], [5, 1, 2, 3, 4], [4, 3, 2, 5, 1]], dtype=np.float32
    )
    videos = {f"v{j}": np.eye(5, dtype=np.float32)[j] for j in range(5)}
    captions = [(f"v{i}", W[i]) for i in range(5)]
    m = RetrievalMetric()
    feed(m, videos, captions, [list(videos)], np.random.default_rng(0))
    got = m.compute()
    # t2v ranks: 6 - W[i, i] = [1, 2, 1, 3, 5]; 0-based sorted [0,0,1,2,4] -> median 1 -> MdR 2
    assert [got[f"t2v/{k}"] for k in KEYS] == pytest.approx([40.0, 100.0, 100.0, 2.0, 2.4])
    # v2t ranks (ties pessimistic): [3, 2, 1, 3, 5]; 0-based sorted [0,1,2,2,4] -> MdR 3
    assert [got[f"v2t/{k}"] for k in KEYS] == pytest.approx([20.0, 100.0, 100.0, 3.0, 2.8])


def test_rank_stats_median_and_recall_cutoffs():
    r = rank_stats(torch.tensor([1, 5, 10, 11, 20]), "x")
    assert [r[f"x/{k}"] for k in KEYS] == pytest.approx([20.0, 40.0, 60.0, 10.0, 9.4])
    # even count: the median of 0-based [0, 3] is 1.5 -> floor 1 -> MdR 2 (neither the lower nor upper middle + 1)
    assert rank_stats(torch.tensor([1, 4]), "x")["x/MdR"] == 2.0
    assert rank_stats(torch.tensor([4, 1, 3, 2]), "x")["x/MdR"] == 2.0


# ---------------------------------------------------------------- misc
def test_float64_separates_near_ties_that_float32_would_merge():
    # two videos whose float32 similarities to the caption are equal but float64 ones differ
    base = np.zeros(8, dtype=np.float32)
    base[0] = 1.0
    near = base.copy()
    near[1] = 1e-4  # cos = 1/sqrt(1+1e-8): 1 - 5e-9 rounds to 1 in float32, not in float64
    videos = {"gt": base, "other": near}
    m = RetrievalMetric()
    m.update(torch.from_numpy(np.stack([base, near])), ["gt", "other"], torch.from_numpy(base[None]), ["gt"])
    assert m.compute()["t2v/R@1"] == 100.0
    assert_same(m.compute(), reference(videos, [("gt", base)]))


def test_dual_softmax_is_reported_under_its_own_keys():
    videos, captions = random_dataset(8, 30, max_caps=2)
    plain, dsl = RetrievalMetric(), RetrievalMetric(dual_softmax=True, chunk_size=4)
    for m in (plain, dsl):
        feed(m, videos, captions, [list(videos)], np.random.default_rng(0))
    a, b = plain.compute(), dsl.compute()
    assert not any("dsl" in k for k in a)
    assert {k: b[k] for k in a} == a  # the plain numbers do not change
    # DSL by hand, dense: t2v prior = softmax over captions per video, v2t prior = softmax over videos per caption
    vk = list(videos)
    V = torch.nn.functional.normalize(torch.from_numpy(np.stack([videos[k] for k in vk])).double(), dim=-1)
    T = torch.nn.functional.normalize(torch.from_numpy(np.stack([e for _, e in captions])).double(), dim=-1)
    gt = torch.tensor([vk.index(k) for k, _ in captions])
    S = T @ V.T
    t2v = S * torch.softmax(100 * S, dim=0)
    v2t = (S * torch.softmax(100 * S, dim=1)).T
    t2v_ranks = [1 + int(((t2v[i] >= t2v[i, gt[i]]).sum()) - 1) for i in range(len(captions))]
    v2t_ranks = []
    for j in range(len(vk)):
        own = gt == j
        best = v2t[j][own].max()
        v2t_ranks.append(1 + int((v2t[j][~own] >= best).sum()))
    assert [b[f"t2v_dsl/{k}"] for k in KEYS] == pytest.approx([rank_stats(torch.tensor(t2v_ranks), "t")[f"t/{k}"] for k in KEYS])
    assert [b[f"v2t_dsl/{k}"] for k in KEYS] == pytest.approx([rank_stats(torch.tensor(v2t_ranks), "v")[f"v/{k}"] for k in KEYS])


def test_large_set_is_chunked_and_quick():
    torch.manual_seed(0)
    n, d = 3000, 64
    v = torch.randn(n, d)
    t = v + 2.0 * torch.randn(n, d)
    keys = [f"k{i}" for i in range(n)]
    m = RetrievalMetric(chunk_size=512)
    m.update(v, keys, t, keys)
    start = time.perf_counter()
    got = m.compute()
    assert time.perf_counter() - start < 20
    assert got["num_videos"] == n and 0 < got["t2v/R@1"] < 100


def test_stable_hash_is_stable_and_signed_int64():
    assert stable_hash("video_0001") == stable_hash("video_0001")
    assert stable_hash("a") != stable_hash("b")
    assert -(2**63) <= stable_hash("x") < 2**63
    # fixed value: blake2b-64 of b"abc", little endian, signed (guards against switching to Python's hash)
    import hashlib

    assert stable_hash("abc") == int.from_bytes(hashlib.blake2b(b"abc", digest_size=8).digest(), "little", signed=True)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_compute_without_update_raises():
    with pytest.raises(ValueError, match="before any update"):
        RetrievalMetric().compute()


def test_print_table_lays_out_directions_as_rows():
    res = {"t2v/R@1": 12.345, "t2v/MdR": 3.0, "v2t/R@1": 50.0, "v2t/MdR": 1.0, "num_videos": 1000.0}
    text = print_table(res, "MSR-VTT test")
    lines = text.splitlines()
    assert lines[0] == "### MSR-VTT test"
    row = next(line for line in lines if line.startswith("| t2v"))
    assert "12.35" in row and "3.00" in row
    assert any(line.startswith("| v2t") and "50.00" in line for line in lines)
    assert any("num_videos" in line and "| 1000" in line for line in lines)
    table = [line for line in lines if line.startswith("|")]
    assert len({len(line) for line in table[:4]}) == 1  # the wide table is aligned


# ---------------------------------------------------------------- DDP (2 CPU processes, gloo)
def _ddp_data():
    videos, captions = random_dataset(11, 41, max_caps=4)
    labels = {k: i % 7 for i, k in enumerate(videos)}
    classes = torch.nn.functional.normalize(torch.randn(7, 16, generator=torch.Generator().manual_seed(3)), dim=-1)
    return videos, captions, labels, classes


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        videos, captions, labels, classes = _ddp_data()
        keys = list(videos)
        # DistributedSampler-style: 41 samples over 2 ranks -> 21 each, the last one repeats keys[0]
        mine = keys[rank::2] + ([keys[0]] if rank == 1 else [])
        batches = [mine[:8], mine[8:]] if rank == 0 else [mine[:5], mine[5:17], mine[17:]]
        m = RetrievalMetric(dual_softmax=True)
        feed(m, videos, captions, batches, np.random.default_rng(rank))
        z = ZeroShotAccuracy(classes)
        for b in batches:
            z.update(torch.from_numpy(np.stack([videos[k] for k in b])), torch.tensor([labels[k] for k in b]), b)
        result = {"retrieval": m.compute(), "zeroshot": z.compute()}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()
    exit_spawned_worker()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_with_padding_equal_single_process(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    videos, captions, labels, classes = _ddp_data()
    keys = list(videos)
    single = RetrievalMetric(dual_softmax=True)
    feed(single, videos, captions, [keys], np.random.default_rng(0))
    z = ZeroShotAccuracy(classes)
    z.update(torch.from_numpy(np.stack([videos[k] for k in keys])), torch.tensor([labels[k] for k in keys]), keys)
    want_r, want_z = single.compute(), z.compute()
    assert want_r["num_videos"] == 41 and want_z["num_samples"] == 41
    for rank in range(2):
        got = json.loads(Path(tmp_path, f"rank{rank}.json").read_text())
        assert got["retrieval"].keys() == want_r.keys()
        for k, v in want_r.items():
            assert math.isclose(got["retrieval"][k], v, abs_tol=1e-9), (rank, k)
        assert got["zeroshot"] == pytest.approx(want_z)
    assert_same(want_r, reference(videos, captions))
