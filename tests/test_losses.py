"""Training losses chosen by `model.loss`: hand-computed values, VTC as the weight-0 case, a 2-rank gloo run against one
process, and the recipe side (building, one-line errors, SigLIP's bias in the optimizer without weight decay).

The expected numbers are written out with Python floats (explicit softmax, KL and log-sigmoid), not by calling the
code under test. The 2-rank test follows tests/test_loss.py: each rank's loss is the mean over its own rows, so
``mean_r loss_r`` is the one-process loss; local input gradients come back ``WORLD`` times the one-process rows (the
gather's backward sums); shared parameters' DDP average equals the one-process gradient.
"""
from __future__ import annotations

import math
import os
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mvclip.errors import ConfigError
from mvclip.losses import (
    DistillationLoss, ModelOutputs, SigLIPLoss, TrainingLoss, VideoTextContrastiveLoss, build_loss,
)
from test_loss import WORLD, _free_port
from helpers import exit_spawned_worker

LOCAL_B = 3
DIM = 8
ATOL = 1e-6


# ----------------------------------------------------------------------------- hand-written math


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _logits(scale: float, rows: list[list[float]], cols: list[list[float]]) -> list[list[float]]:
    return [[scale * _dot(r, c) for c in cols] for r in rows]


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(z) for z in row]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _cross_entropy(row: list[float], label: int) -> float:
    return math.log(sum(math.exp(z) for z in row)) - row[label]


def _transpose(m: list[list[float]]) -> list[list[float]]:
    return [list(col) for col in zip(*m)]


def _outputs(video, text, scale: float) -> ModelOutputs:
    return ModelOutputs(torch.tensor(video), torch.tensor(text), torch.tensor(scale))


# 3 unit-norm student pairs (D = 2) and one teacher (D = 3) for the same clips
S_VIDEO = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
S_TEXT = [[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]
T_VIDEO = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8]]
T_TEXT = [[0.6, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_distillation_matches_hand_computed_3x3():
    scale, teacher_scale, weight = 2.0, 3.0, 0.25
    student_v2t = _logits(scale, S_VIDEO, S_TEXT)
    student_t2v = _transpose(student_v2t)
    teacher_v2t = _logits(teacher_scale, T_VIDEO, T_TEXT)
    teacher_t2v = _transpose(teacher_v2t)
    vtc = (sum(_cross_entropy(student_v2t[i], i) for i in range(3)) / 3
           + sum(_cross_entropy(student_t2v[i], i) for i in range(3)) / 3) / 2
    kd_v2t = sum(_kl(_softmax(teacher_v2t[i]), _softmax(student_v2t[i])) for i in range(3)) / 3
    kd_t2v = sum(_kl(_softmax(teacher_t2v[i]), _softmax(student_t2v[i])) for i in range(3)) / 3
    kd = (kd_v2t + kd_t2v) / 2
    expected = (1 - weight) * vtc + weight * kd

    batch = {"teacher_video": {"big": torch.tensor(T_VIDEO)}, "teacher_text": {"big": torch.tensor(T_TEXT)}}
    out = DistillationLoss(weight=weight, teacher_logit_scale=teacher_scale)(_outputs(S_VIDEO, S_TEXT, scale), batch)
    assert out["vtc"].item() == pytest.approx(vtc, abs=1e-6)
    assert out["kd"].item() == pytest.approx(kd, abs=1e-6)
    assert out["loss"].item() == pytest.approx(expected, abs=1e-6)
    assert kd > 0.01 and set(out) == {"loss", "vtc", "kd"}
    # the same scale given per sample by the batch (the manifest's) is used when the recipe states none
    batch["teacher_logit_scale"] = {"big": torch.full((3,), teacher_scale)}
    assert DistillationLoss(weight=weight)(_outputs(S_VIDEO, S_TEXT, scale), batch)["loss"].item() == pytest.approx(expected, abs=1e-6)
    # a stated scale overrides the batch's
    batch["teacher_logit_scale"] = {"big": torch.full((3,), 100.0)}
    stated = DistillationLoss(weight=weight, teacher_logit_scale=teacher_scale)(_outputs(S_VIDEO, S_TEXT, scale), batch)
    assert stated["loss"].item() == pytest.approx(expected, abs=1e-6)


def _random_case(seed: int, batch: int = 5, teachers: dict[str, int] | None = None):
    g = torch.Generator().manual_seed(seed)
    video = F.normalize(torch.randn(batch, DIM, generator=g), dim=-1)
    text = F.normalize(video + torch.randn(batch, DIM, generator=g), dim=-1)
    teacher_video = {n: F.normalize(torch.randn(batch, d, generator=g), dim=-1) for n, d in (teachers or {"a": 6}).items()}
    teacher_text = {n: F.normalize(v + 0.5 * torch.randn(v.shape, generator=g), dim=-1) for n, v in teacher_video.items()}
    return ModelOutputs(video, text, torch.tensor(10.0)), {"teacher_video": teacher_video, "teacher_text": teacher_text}


def test_distillation_weight_zero_is_exactly_vtc_and_teachers_average():
    outputs, batch = _random_case(0, teachers={"a": 6, "b": 4})
    vtc = VideoTextContrastiveLoss()(outputs, batch)
    out = DistillationLoss(weight=0.0)(outputs, batch)
    assert torch.equal(out["loss"], vtc["loss"]) and out["kd"].item() > 0
    # several teachers: the mean of the per-teacher terms, each logged
    alone = {name: DistillationLoss(weight=1.0, teachers=[name])(outputs, batch)["loss"] for name in ("a", "b")}
    both = DistillationLoss(weight=1.0)(outputs, batch)
    assert both["loss"].item() == pytest.approx((alone["a"].item() + alone["b"].item()) / 2, abs=1e-6)
    assert both["kd/a"].item() == pytest.approx(alone["a"].item(), abs=1e-6) and set(both) >= {"kd/a", "kd/b"}


def test_distillation_feature_term_matches_hand_computed_3x3():
    # a teacher of the student's width (D = 2): fd = mean over rows of ((1 - <v, v'>) + (1 - <t, t'>)) / 2
    teacher_video, teacher_text = [[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]], [[0.8, 0.6], [0.0, 1.0], [0.6, 0.8]]
    scale, teacher_scale, weight, feature_weight = 2.0, 3.0, 0.25, 4.0
    fd = sum((1 - _dot(v, tv)) + (1 - _dot(t, tt))
             for v, tv, t, tt in zip(S_VIDEO, teacher_video, S_TEXT, teacher_text)) / 3 / 2
    assert fd == pytest.approx((0.4 + 1.0 + 0.2 + 0.0 + 0.0 + 0.4) / 6)  # video rows, then caption rows
    batch = {"teacher_video": {"same": torch.tensor(teacher_video)}, "teacher_text": {"same": torch.tensor(teacher_text)}}
    plain = DistillationLoss(weight=weight, teacher_logit_scale=teacher_scale)(_outputs(S_VIDEO, S_TEXT, scale), batch)
    out = DistillationLoss(weight=weight, feature_weight=feature_weight, teacher_logit_scale=teacher_scale)(
        _outputs(S_VIDEO, S_TEXT, scale), batch)
    assert out["fd"].item() == pytest.approx(fd, abs=1e-6) and plain["fd"].item() == pytest.approx(fd, abs=1e-6)
    assert out["loss"].item() == pytest.approx(plain["loss"].item() + feature_weight * fd, abs=1e-6)
    assert plain["loss"].item() == pytest.approx((1 - weight) * plain["vtc"].item() + weight * plain["kd"].item(), abs=1e-6)
    # both weights 0: exactly VTC, the parts still logged
    zero = DistillationLoss(weight=0.0, feature_weight=0.0)(_outputs(S_VIDEO, S_TEXT, scale), batch)
    assert torch.equal(zero["loss"], VideoTextContrastiveLoss()(_outputs(S_VIDEO, S_TEXT, scale), batch)["loss"])
    # a teacher of another width: no fd part while it is not trained on, a one-line error when it is
    wide = {"teacher_video": {"big": torch.tensor(T_VIDEO)}, "teacher_text": {"big": torch.tensor(T_TEXT)}}
    assert "fd" not in DistillationLoss(weight=weight)(_outputs(S_VIDEO, S_TEXT, scale), wide)
    with pytest.raises(ValueError, match=r"feature_weight: teacher 'big' embeds in 3 dimensions and the student in 2"):
        DistillationLoss(feature_weight=1.0)(_outputs(S_VIDEO, S_TEXT, scale), wide)
    with pytest.raises(ValueError, match=r"feature_weight: expected a finite number >= 0"):
        DistillationLoss(feature_weight=-1.0)


def test_distillation_without_teachers_names_model_loss():
    outputs, _ = _random_case(1)
    with pytest.raises(ConfigError, match=r"model\.loss.*no teacher embeddings.*python -m mvclip teacher") as info:
        DistillationLoss()(outputs, {"video": None, "text": None})
    assert "\n" not in str(info.value)
    outputs, batch = _random_case(1)
    with pytest.raises(ConfigError, match=r"teacher 'x' is not in the batch"):
        DistillationLoss(teachers=["x"])(outputs, batch)


def test_text_uniformity_matches_hand_computed_3x3_and_weight_zero_is_vtc():
    # rows i: log of the mean over the other two captions of exp(-2 |t_i - t_j|^2), |t_i - t_j|^2 = 2 - 2 t_i.t_j
    outputs = _outputs(S_VIDEO, S_TEXT, 10.0)
    expected_rows = []
    for i, row in enumerate(S_TEXT):
        others = [math.exp(-2.0 * (2.0 - 2.0 * _dot(row, other))) for j, other in enumerate(S_TEXT) if j != i]
        expected_rows.append(math.log(sum(others) / len(others)))
    expected = sum(expected_rows) / 3
    vtc = VideoTextContrastiveLoss()(outputs, {})
    out = VideoTextContrastiveLoss(text_uniformity=0.5)(outputs, {})
    assert out["text_uniformity"].item() == pytest.approx(expected, abs=1e-6)
    assert out["loss"].item() == pytest.approx(vtc["loss"].item() + 0.5 * expected, abs=1e-6)
    assert torch.equal(out["vtc"], vtc["loss"]) and set(vtc) == {"loss", "vtc"}  # weight 0: VTC exactly, no extra part
    for bad in ({"text_uniformity": -0.1}, {"uniformity_t": 0.0}, {"text_uniformity": "abc"}, {"text_uniformity": None},
                {"text_uniformity": True}, {"uniformity_t": float("inf")}):
        with pytest.raises(ValueError, match="text_uniformity >= 0 and uniformity_t > 0"):
            VideoTextContrastiveLoss(**bad)


def test_text_uniformity_pulls_the_closest_captions_apart_and_ignores_identical_ones():
    """A caption and its twin's at cosine 0.985 (the collapse measured under VTC): one gradient step on the term alone
    moves them apart more than it moves the already distant pair; two identical captions get no push from each other."""
    angle = math.acos(0.985)
    text = torch.tensor([[1.0, 0.0, 0.0], [math.cos(angle), math.sin(angle), 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    loss_fn = VideoTextContrastiveLoss(text_uniformity=1.0)
    loss_fn.uniformity(text).backward()
    with torch.no_grad():
        stepped = F.normalize(text - 0.05 * text.grad, dim=-1)
    assert stepped[0] @ stepped[1] < 0.985 - 1e-3                            # the twins separate
    assert (stepped[0] @ stepped[1]).item() < (text[0] @ text[1]).item()
    raw = torch.tensor([[2.0, 0.0], [3.0, 0.0]], requires_grad=True)  # normalized as the model does: one caption twice
    value = loss_fn.uniformity(F.normalize(raw, dim=-1))
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-7) and raw.grad.abs().max().item() < 1e-7


def test_siglip_matches_hand_computed_2x2():
    video, text, scale, bias = [[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.0, 1.0]], 2.0, -1.0
    log_sigmoid = lambda z: -math.log(1 + math.exp(-z))  # noqa: E731
    z = [[scale * _dot(v, t) + bias for t in text] for v in video]  # [[0.2, -1.0], [0.6, 1.0]]
    expected = -(log_sigmoid(z[0][0]) + log_sigmoid(-z[0][1]) + log_sigmoid(-z[1][0]) + log_sigmoid(z[1][1])) / 2
    out = SigLIPLoss(bias_init=bias)(_outputs(video, text, scale), {})
    assert out["loss"].item() == pytest.approx(expected, abs=1e-6) and set(out) == {"loss", "siglip"}
    assert SigLIPLoss().bias.item() == -10.0 and SigLIPLoss().bias.requires_grad


# ----------------------------------------------------------------------------- two processes (gloo)

TEACHERS = {"wide": 12, "narrow": 5, "same": DIM}  # "same": the student's width, for the feature term


def _dist_data() -> dict:
    g = torch.Generator().manual_seed(7)
    n = WORLD * LOCAL_B
    video = torch.randn(n, DIM, generator=g)
    teacher_video = {name: torch.randn(n, d, generator=g) for name, d in TEACHERS.items()}
    return {
        "video": video, "text": video + 0.8 * torch.randn(n, DIM, generator=g),
        "proj": torch.eye(DIM) + 0.1 * torch.randn(DIM, DIM, generator=g), "log_scale": torch.tensor(math.log(10.0)),
        "teacher_video": {k: F.normalize(v, dim=-1) for k, v in teacher_video.items()},
        "teacher_text": {k: F.normalize(v + 0.7 * torch.randn(v.shape, generator=g), dim=-1) for k, v in teacher_video.items()},
    }


def _rows(t: torch.Tensor, rank: int | None) -> torch.Tensor:
    return t if rank is None else t.chunk(WORLD)[rank]


def _run_losses(data: dict, rank: int | None) -> dict:
    """Both losses on rank `rank`'s rows (None: one process, every row): loss and gradients."""
    results = {}
    for name in ("distillation", "distillation_feature", "siglip", "text_uniformity"):
        xv, xt = _rows(data["video"], rank).clone().requires_grad_(), _rows(data["text"], rank).clone().requires_grad_()
        proj, log_scale = data["proj"].clone().requires_grad_(), data["log_scale"].clone().requires_grad_()
        outputs = ModelOutputs(F.normalize(xv @ proj, dim=-1), F.normalize(xt @ proj, dim=-1), log_scale.exp())
        batch = {key: {k: _rows(v, rank) for k, v in data[key].items()} for key in ("teacher_video", "teacher_text")}
        batch["teacher_logit_scale"] = {"narrow": torch.full((xv.shape[0],), 50.0)}  # per sample, as collated
        loss_fn = {"distillation": lambda: DistillationLoss(weight=0.5),
                   "distillation_feature": lambda: DistillationLoss(weight=0.3, feature_weight=2.0, teachers=["same"]),
                   "siglip": lambda: SigLIPLoss(bias_init=-2.0),
                   "text_uniformity": lambda: VideoTextContrastiveLoss(text_uniformity=0.7)}[name]()
        out = loss_fn(outputs, batch)
        out["loss"].backward()
        results[name] = {"loss": out["loss"].detach(), "grad_video": xv.grad, "grad_text": xt.grad, "grad_proj": proj.grad,
                         "grad_log_scale": log_scale.grad,
                         "grad_bias": loss_fn.bias.grad if name == "siglip" else None}
    return results


def _worker(rank: int, port: int, data_path: str, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = _run_losses(torch.load(data_path), rank)
        results["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    exit_spawned_worker()


@pytest.fixture(scope="module")
def two_rank_losses(tmp_path_factory) -> tuple[dict, list[dict]]:
    """Both losses on 2 gloo ranks in one spawn (start-up dominates), and the one-process reference."""
    tmp = tmp_path_factory.mktemp("losses_ddp")
    data = _dist_data()
    torch.save(data, tmp / "data.pt")
    mp.spawn(_worker, args=(_free_port(), str(tmp / "data.pt"), str(tmp)), nprocs=WORLD, join=True)
    return _run_losses(data, None), [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", ["distillation", "distillation_feature", "siglip", "text_uniformity"])
def test_two_ranks_equal_one_process(two_rank_losses, name):
    ref_all, ranks = two_rank_losses
    ref, res = ref_all[name], [r[name] for r in ranks]
    assert not [w for r in ranks for w in r["warnings"] if "deprecat" in w.lower()]
    losses = torch.stack([r["loss"] for r in res])
    assert torch.allclose(losses.mean(), ref["loss"], atol=ATOL) and not torch.allclose(losses[0], losses[1])
    for rank, r in enumerate(res):
        for key in ("grad_video", "grad_text"):
            assert torch.allclose(r[key] / WORLD, _rows(ref[key], rank), atol=ATOL), (rank, key)
    shared = ("grad_proj", "grad_log_scale") + (("grad_bias",) if name == "siglip" else ())
    for key in shared:
        assert ref[key].abs().sum() > 0, key
        assert torch.allclose(torch.stack([r[key] for r in res]).mean(0), ref[key], atol=ATOL), key


# ----------------------------------------------------------------------------- the recipe side


def test_build_loss_from_spec_and_one_line_errors():
    assert type(build_loss(None)) is VideoTextContrastiveLoss
    loss = build_loss({"class_path": "mvclip.losses.DistillationLoss", "init_args": {"weight": 0.3}}, gather_with_grad=False)
    assert isinstance(loss, DistillationLoss) and loss.weight == 0.3 and loss.vtc.gather_with_grad is False
    assert isinstance(build_loss({"class_path": "SigLIPLoss"}), SigLIPLoss)  # a bare name: one of mvclip.losses
    bad = {
        "mvclip.losses.NoSuchLoss": {"class_path": "mvclip.losses.NoSuchLoss"},
        "no_such_package": {"class_path": "no_such_package.Loss"},
        "not a mvclip.losses.TrainingLoss": {"class_path": "torch.nn.MSELoss"},
        "unexpected keyword argument 'wieght'": {"class_path": "DistillationLoss", "init_args": {"wieght": 0.5}},
        r"weight: expected a number in \[0, 1\]": {"class_path": "DistillationLoss", "init_args": {"weight": 1.5}},
        "expected the keys class_path and init_args": {"class_pth": "SigLIPLoss"},
    }
    for message, spec in bad.items():
        with pytest.raises(ConfigError, match=message) as info:
            build_loss(spec)
        assert str(info.value).startswith("model.loss") and "\n" not in str(info.value), str(info.value)


def test_recipe_chooses_the_loss_and_siglip_bias_trains_without_decay(tmp_path, tiny_model_config):
    from omegaconf import OmegaConf

    from mvclip.lightning_module import VideoTextModule

    recipe = tmp_path / "recipe.yaml"
    OmegaConf.save({"model": {"model": tiny_model_config, "weight_decay": 0.1,
                              "loss": {"class_path": "mvclip.losses.SigLIPLoss", "init_args": {"bias_init": -5.0}}}}, recipe)
    args = OmegaConf.to_container(OmegaConf.load(recipe))["model"]
    module = VideoTextModule(**args)
    assert isinstance(module.loss, SigLIPLoss) and module.loss.bias.item() == -5.0
    groups = module.parameter_groups()
    holding = [g for g in groups if any(p is module.loss.bias for p in g["params"])]
    assert len(holding) == 1 and holding[0]["weight_decay"] == 0.0 and holding[0]["name"] == "new/no_decay"
    assert any(g["weight_decay"] == 0.1 for g in groups)
    # a bad class path fails while the module is built, before the model is (the default, VTC: test_build_loss...)
    with pytest.raises(ConfigError, match=r"^model\.loss\.class_path: cannot import 'mvclip\.losses\.Nope'"):
        VideoTextModule(model=tiny_model_config, loss={"class_path": "mvclip.losses.Nope"})


def test_training_step_logs_the_named_parts(tiny_model_config):
    """The module hands the loss its outputs and the whole batch, and logs every part under train/loss/<name>."""
    from mvclip.lightning_module import VideoTextModule
    from mvclip.tokenizer import tokenize

    module = VideoTextModule(model=tiny_model_config, loss={"class_path": "DistillationLoss", "init_args": {"weight": 0.5}})
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value.detach()))  # no Trainer attached
    g = torch.Generator().manual_seed(3)
    video = torch.randn(2, 4, 3, 32, 32, generator=g)
    batch = {"video": video, "text": tokenize(["a cat", "a dog"]),
             "teacher_video": {"t": F.normalize(torch.randn(2, 5, generator=g), dim=-1)},
             "teacher_text": {"t": F.normalize(torch.randn(2, 5, generator=g), dim=-1)}}
    loss = module.training_step(batch, 0)
    assert {"train/loss", "train/loss/vtc", "train/loss/kd"} <= set(logged)
    assert loss.item() == pytest.approx(0.5 * logged["train/loss/vtc"] + 0.5 * logged["train/loss/kd"], rel=1e-5)
    assert isinstance(module.loss, TrainingLoss)


def test_docs_example_loss_runs_and_builds(capsys, monkeypatch, tmp_path):
    """docs/losses.md's own-loss example runs as written and its class builds from a class path, as the YAML names it."""
    import re
    import sys

    doc = (Path(__file__).resolve().parents[1] / "docs" / "losses.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    (tmp_path / "my_losses.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_losses", raising=False)
    exec(compile(code, "docs/losses.md", "exec"), {"__name__": "docs_example"})
    assert "'loss': tensor(" in capsys.readouterr().out
    loss = build_loss({"class_path": "my_losses.MarginLoss", "init_args": {"margin": 0.3}})
    assert type(loss).__name__ == "MarginLoss" and loss.margin == 0.3
    with pytest.raises(ConfigError, match=r"model\.loss\.init_args: MarginLoss: margin: expected a number >= 0"):
        build_loss({"class_path": "my_losses.MarginLoss", "init_args": {"margin": -1}})
