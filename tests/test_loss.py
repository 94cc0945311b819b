"""VTC loss: hand-checked single-process values, and a real 2-rank gloo run compared with one process.

What equals what in the distributed test (world_size W = 2, each rank holds B rows of the
concatenated batch, inputs ``x`` -> shared projection ``proj`` -> normalized embeddings):

* loss: with ``local_loss=True`` rank r's loss is the mean over ITS rows of the global logits, so
  ``mean_r loss_r == single-process loss``; with ``local_loss=False`` every rank's loss equals it.
* local input gradients, ``gather_with_grad=True``: the gather's backward SUMS every rank's
  contribution, so ``grad_r == W * single-process grad of rank r's rows``, i.e. ``grad_r / W``
  matches (both ``local_loss`` settings).
* shared parameters (``proj``, the log logit scale): the DDP average ``mean_r grad_r`` equals the
  single-process gradient (with ``gather_with_grad=True``).
* ``gather_with_grad=False``: ``local_loss=False`` gives ``grad_r == single-process grad`` of the
  rows (no factor W, so after DDP averaging the feature path is 1/W too small -- known open_clip
  behaviour); ``local_loss=True`` gives only rank r's own loss term, checked against the same local
  loss computed with the other ranks' embeddings detached.
"""
from __future__ import annotations

import math
import os
import socket
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from mvclip.loss import VideoTextContrastiveLoss, clamp_logit_scale_, gather_features
from helpers import exit_spawned_worker

WORLD = 2
LOCAL_B = 4
DIM = 16
CONFIGS = [(True, True), (False, True), (True, False), (False, False)]  # (local_loss, gather_with_grad)
ATOL = 1e-6


# ----------------------------------------------------------------------------- single process


def test_matches_hand_computed_symmetric_cross_entropy():
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # scale 2: logits_v2t = [[1.2, 0.0], [1.6, 2.0]], logits_t2v = its transpose [[1.2, 1.6], [0.0, 2.0]]
    lse = lambda *z: math.log(sum(math.exp(x) for x in z))  # noqa: E731
    v2t = ((lse(1.2, 0.0) - 1.2) + (lse(1.6, 2.0) - 2.0)) / 2
    t2v = ((lse(1.2, 1.6) - 1.2) + (lse(0.0, 2.0) - 2.0)) / 2
    loss = VideoTextContrastiveLoss()(video, text, torch.tensor(2.0))
    assert loss.item() == pytest.approx((v2t + t2v) / 2, abs=1e-6)


def test_aligned_embeddings_with_large_scale_give_near_zero_loss():
    emb = F.normalize(torch.randn(8, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    out = VideoTextContrastiveLoss()(emb, emb.clone(), torch.tensor(100.0), output_dict=True)
    assert out["loss"].item() < 1e-3
    assert out["acc_v2t"].item() == 1.0 and out["acc_t2v"].item() == 1.0
    assert torch.equal(out["labels"], torch.arange(8))
    assert out["logits_per_video"].shape == (8, 8)


def test_symmetric_in_video_and_text_and_gradients_finite():
    g = torch.Generator().manual_seed(1)
    v = F.normalize(torch.randn(6, DIM, generator=g), dim=-1).requires_grad_()
    t = F.normalize(torch.randn(6, DIM, generator=g), dim=-1).requires_grad_()
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    loss_fn = VideoTextContrastiveLoss()
    loss = loss_fn(v, t, log_scale.exp())
    assert loss.item() == pytest.approx(loss_fn(t, v, log_scale.exp()).item(), abs=1e-6)
    loss.backward()
    for grad in (v.grad, t.grad, log_scale.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_normalize_option_equals_prenormalized_inputs():
    g = torch.Generator().manual_seed(2)
    v, t = torch.randn(5, DIM, generator=g) * 3, torch.randn(5, DIM, generator=g) * 3
    scale = torch.tensor(10.0)
    raw = VideoTextContrastiveLoss(normalize=True)(v, t, scale)
    pre = VideoTextContrastiveLoss()(F.normalize(v, dim=-1), F.normalize(t, dim=-1), scale)
    assert raw.item() == pytest.approx(pre.item(), abs=1e-6)


def test_shape_errors_and_world_size_without_process_group():
    with pytest.raises(ValueError, match="matching"):
        VideoTextContrastiveLoss()(torch.zeros(2, 4), torch.zeros(3, 4), torch.tensor(1.0))
    with pytest.raises(ValueError, match="both"):
        VideoTextContrastiveLoss(world_size=2)
    with pytest.raises(RuntimeError, match="initialized"):
        VideoTextContrastiveLoss(world_size=2, rank=0)(torch.zeros(2, 4), torch.zeros(2, 4), torch.tensor(1.0))
    # world_size 1 passes the tensors through untouched
    v, t = torch.randn(2, 4), torch.randn(2, 4)
    assert gather_features(v, t, with_grad=True) == (v, t)


def test_logit_scale_helpers():
    p = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    clamp_logit_scale_(p)
    assert p.item() == pytest.approx(math.log(1 / 0.07))  # inside the range: untouched
    with torch.no_grad():
        p.fill_(7.0)
    clamp_logit_scale_(p)
    assert p.exp().item() == pytest.approx(100.0, rel=1e-5) and p.requires_grad
    with torch.no_grad():
        p.fill_(-1.0)
    clamp_logit_scale_(p)
    assert p.item() == 0.0


# ----------------------------------------------------------------------------- two processes (gloo)


def _make_data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    video = torch.randn(WORLD * LOCAL_B, DIM, generator=g)
    # text correlated with video so the loss is not trivially log(N)
    text = video + 0.8 * torch.randn(WORLD * LOCAL_B, DIM, generator=g)
    proj = torch.eye(DIM) + 0.1 * torch.randn(DIM, DIM, generator=g)
    return {"video": video, "text": text, "proj": proj, "log_scale": torch.tensor(math.log(1 / 0.07))}


def _forward(loss_fn: VideoTextContrastiveLoss, xv, xt, proj, log_scale, **kw):
    return loss_fn(xv @ proj, xt @ proj, log_scale.exp(), **kw)


def _worker(rank: int, port: int, data_path: str, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        data = torch.load(data_path)
        results: dict = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for local_loss, with_grad in CONFIGS:
                xv = data["video"].chunk(WORLD)[rank].clone().requires_grad_()
                xt = data["text"].chunk(WORLD)[rank].clone().requires_grad_()
                proj = data["proj"].clone().requires_grad_()
                log_scale = data["log_scale"].clone().requires_grad_()
                loss_fn = VideoTextContrastiveLoss(local_loss=local_loss, gather_with_grad=with_grad, normalize=True)
                out = _forward(loss_fn, xv, xt, proj, log_scale, output_dict=True)
                out["loss"].backward()
                results[(local_loss, with_grad)] = {
                    "loss": out["loss"].detach(),
                    "labels": out["labels"],
                    "logits_shape": tuple(out["logits_per_video"].shape),
                    "grad_video": xv.grad,
                    "grad_text": xt.grad,
                    "grad_proj": proj.grad,
                    "grad_log_scale": log_scale.grad,
                }
        results["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    exit_spawned_worker()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> tuple[dict, list[dict]]:
    """Run every config once on 2 gloo ranks (one spawn for all: startup dominates)."""
    tmp = tmp_path_factory.mktemp("vtc_ddp")
    data = _make_data()
    torch.save(data, tmp / "data.pt")
    mp.spawn(_worker, args=(_free_port(), str(tmp / "data.pt"), str(tmp)), nprocs=WORLD, join=True)
    return data, [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def _single_process(data: dict, local_loss: bool = True) -> dict[str, torch.Tensor]:
    """The reference: one process, the concatenated batch (local_loss is irrelevant at world_size 1)."""
    xv, xt = data["video"].clone().requires_grad_(), data["text"].clone().requires_grad_()
    proj, log_scale = data["proj"].clone().requires_grad_(), data["log_scale"].clone().requires_grad_()
    loss = _forward(VideoTextContrastiveLoss(local_loss=local_loss, normalize=True), xv, xt, proj, log_scale)
    loss.backward()
    return {"loss": loss.detach(), "grad_video": xv.grad, "grad_text": xt.grad,
            "grad_proj": proj.grad, "grad_log_scale": log_scale.grad}


def _rank_rows(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t.chunk(WORLD)[rank]


def test_two_ranks_no_deprecation_warnings(two_rank_run):
    _, ranks = two_rank_run
    for r in ranks:
        bad = [w for w in r["warnings"] if "deprecat" in w.lower() or w.startswith("FutureWarning")]
        assert not bad, bad


def test_two_ranks_labels_and_logit_shapes(two_rank_run):
    _, ranks = two_rank_run
    for rank, r in enumerate(ranks):
        assert torch.equal(r[(True, True)]["labels"], torch.arange(LOCAL_B) + rank * LOCAL_B)
        assert r[(True, True)]["logits_shape"] == (LOCAL_B, WORLD * LOCAL_B)
        assert torch.equal(r[(False, True)]["labels"], torch.arange(WORLD * LOCAL_B))
        assert r[(False, True)]["logits_shape"] == (WORLD * LOCAL_B, WORLD * LOCAL_B)


@pytest.mark.parametrize("local_loss", [True, False])
def test_two_ranks_gather_with_grad_matches_single_process(two_rank_run, local_loss):
    data, ranks = two_rank_run
    ref = _single_process(data)
    res = [r[(local_loss, True)] for r in ranks]

    losses = torch.stack([r["loss"] for r in res])
    if local_loss:
        # each rank: mean over its own rows of the global logits -> their mean is the global loss
        assert torch.allclose(losses.mean(), ref["loss"], atol=ATOL)
        assert not torch.allclose(losses[0], losses[1])  # really different local losses
    else:
        assert torch.allclose(losses, ref["loss"].expand(WORLD), atol=ATOL)

    for rank, r in enumerate(res):
        for key in ("grad_video", "grad_text"):
            # backward through the gather sums over ranks: W times the single-process rows
            assert torch.allclose(r[key] / WORLD, _rank_rows(ref[key], rank), atol=ATOL), (rank, key)
            assert not torch.allclose(r[key], _rank_rows(ref[key], rank), atol=ATOL)
    # shared parameters: the DDP average over ranks equals the single-process gradient
    for key in ("grad_proj", "grad_log_scale"):
        ddp_avg = torch.stack([r[key] for r in res]).mean(0)
        assert torch.allclose(ddp_avg, ref[key], atol=ATOL), key


def test_two_ranks_without_grad_gather_global_loss(two_rank_run):
    """local_loss=False, detached gather: each rank's grad is the single-process grad of its rows."""
    data, ranks = two_rank_run
    ref = _single_process(data)
    for rank, r in enumerate(ranks):
        res = r[(False, False)]
        assert torch.allclose(res["loss"], ref["loss"], atol=ATOL)
        for key in ("grad_video", "grad_text"):
            assert torch.allclose(res[key], _rank_rows(ref[key], rank), atol=ATOL), (rank, key)
        assert torch.allclose(res["grad_log_scale"], ref["grad_log_scale"], atol=ATOL)


def test_two_ranks_without_grad_gather_local_loss(two_rank_run):
    """local_loss=True, detached gather: only the rank's own loss term reaches its rows."""
    data, ranks = two_rank_run
    for rank, r in enumerate(ranks):
        res = r[(True, False)]
        xv, xt = data["video"].clone().requires_grad_(), data["text"].clone().requires_grad_()
        proj, log_scale = data["proj"].clone(), data["log_scale"].clone().requires_grad_()
        v, t = F.normalize(xv @ proj, dim=-1), F.normalize(xt @ proj, dim=-1)
        mine = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        keep = torch.zeros(WORLD * LOCAL_B, 1, dtype=torch.bool)
        keep[mine] = True
        v_all, t_all = torch.where(keep, v, v.detach()), torch.where(keep, t, t.detach())
        labels = torch.arange(LOCAL_B) + rank * LOCAL_B
        scale = log_scale.exp()
        loss = (F.cross_entropy(scale * v[mine] @ t_all.T, labels) + F.cross_entropy(scale * t[mine] @ v_all.T, labels)) / 2
        loss.backward()
        assert torch.allclose(res["loss"], loss.detach(), atol=ATOL)
        assert torch.allclose(res["grad_video"], xv.grad[mine], atol=ATOL)
        assert torch.allclose(res["grad_text"], xt.grad[mine], atol=ATOL)
        assert torch.allclose(res["grad_log_scale"], log_scale.grad, atol=ATOL)
    # the scale gradient does not depend on detaching, so its DDP average is still exact
    ref = _single_process(data)
    ddp_avg = torch.stack([r[(True, False)]["grad_log_scale"] for r in ranks]).mean()
    assert torch.allclose(ddp_avg, ref["grad_log_scale"], atol=ATOL)
