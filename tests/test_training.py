"""The training stack: LightningModule behaviour, the CLI, recipes, predict and resume."""
import os
import signal
import subprocess
import sys
import time

import lightning as L
import numpy as np
import pytest
import torch

from mvclip.datamodules.datamodule import VideoTextDataModule
from mvclip.datamodules.synthetic import ensure_synthetic_dataset
from mvclip.errors import ConfigError
from mvclip.lightning_module import VideoTextModule

from helpers import ROOT, cli

E2E_STEPS = 240
E2E_CHANCE_MULTIPLE = 6  # observed 16x on this machine (R@1 25% vs chance 1.56%)


def datamodule(root, **overrides):
    kwargs = dict(train=str(root / "train"), val=str(root / "val"), test=str(root / "test"), frames=4,
                  resolution=64, batch_size=8, eval_batch_size=16, num_workers=0)
    kwargs.update(overrides)
    return VideoTextDataModule(**kwargs)


def trainer(**overrides):
    kwargs = dict(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def test_frozen_text_branch_is_bit_identical_after_training(synthetic_root, tiny_model_config):
    module = VideoTextModule(model=tiny_model_config, freeze=["text"], lr=1e-2, warmup_steps=0)
    before = {k: v.clone() for k, v in module.model.text.state_dict().items()}  # BatchNorm buffers too
    video_before = {k: v.clone() for k, v in module.model.video.state_dict().items()}
    trainer(max_steps=3).fit(module, datamodule=datamodule(synthetic_root))
    after = module.model.text.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not module.model.text.training  # kept in eval mode
    changed = [k for k, v in module.model.video.state_dict().items() if not torch.equal(v, video_before[k])]
    assert changed, "the video branch should have trained"
    names = {id(p) for g in module.parameter_groups() for p in g["params"]}
    assert not any(id(p) in names for p in module.model.text.parameters())


def test_parameter_groups_exclude_norms_biases_layer_scales_tpe_and_logit_scale(tiny_model_config):
    module = VideoTextModule(model=tiny_model_config, weight_decay=0.1)
    by_id = {id(p): n for n, p in module.model.named_parameters()}
    for group in module.parameter_groups():
        names = [by_id[id(p)] for p in group["params"]]
        if group["weight_decay"] == 0:
            assert "logit_scale" in names or any(n.endswith("bias") for n in names)
        else:
            assert not any(n.endswith((".bias", "logit_scale", ".tpe")) or "layer_scale" in n or ".bn." in n for n in names), names
    decayed = [by_id[id(p)] for g in module.parameter_groups() if g["weight_decay"] > 0 for p in g["params"]]
    assert "video.stages.2.pos_embed.tpe" not in decayed and "text.token_embedding.weight" in decayed


def test_trainable_patterns_and_freeze_errors(tiny_model_config):
    module = VideoTextModule(model=tiny_model_config, trainable=["temporal"])
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all(".temporal_mixer." in n or n.endswith(".tpe") for n in trainable)
    with pytest.raises(ConfigError, match=r"model.freeze\[1\]: pattern 'txt' matches no parameter"):
        VideoTextModule(model=tiny_model_config, freeze=["text", "txt"])


def test_non_finite_loss_stops_with_step_and_learning_rate(tiny_model_config):
    module = VideoTextModule(model=tiny_model_config, lr=3e-4, warmup_steps=0)
    batch = {"video": torch.full((4, 4, 3, 32, 32), float("nan")), "text": torch.randint(0, 49406, (4, 77)), "key": list("abcd")}
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss .* at global step 0 .*last learning rate 0.0003"):
        trainer(max_steps=2).fit(module, train_dataloaders=loader)


def test_init_from_is_strict_and_reports_when_not(tmp_path, tiny_model_config):
    source = VideoTextModule(model=tiny_model_config)
    ckpt = tmp_path / "source.ckpt"
    torch.save({"state_dict": source.state_dict()}, ckpt)
    changed = dict(tiny_model_config, embed_dim=48)  # a new head and text projection
    with pytest.raises(ConfigError, match="does not match the model"):
        VideoTextModule(model=changed, init_from=str(ckpt))
    module = VideoTextModule(model=changed, init_from=str(ckpt), init_strict=False, lr=1e-3, pretrained_lr_mult=0.1)
    report = module.init_report
    assert any(m.startswith("video.head.proj") for m in report.mismatched) and "text.projection" in " ".join(report.mismatched)
    assert torch.equal(module.model.video.stem.blocks[0].rbr_conv[0].conv.weight, source.model.video.stem.blocks[0].rbr_conv[0].conv.weight)
    lrs = {g["name"]: g["lr"] for g in module.parameter_groups()}
    assert lrs["pretrained/decay"] == pytest.approx(1e-4) and lrs["new/decay"] == pytest.approx(1e-3)


def test_init_parts_takes_only_the_text_tower(tmp_path, tiny_model_config):
    source = VideoTextModule(model=tiny_model_config)
    for t in source.parameters():  # every tensor differs from a fresh model's
        t.data.normal_()
    ckpt = tmp_path / "source.ckpt"
    torch.save({"state_dict": source.state_dict()}, ckpt)
    torch.manual_seed(123)
    fresh = VideoTextModule(model=tiny_model_config)
    torch.manual_seed(123)
    module = VideoTextModule(model=tiny_model_config, init_from=str(ckpt), init_parts=["text"], freeze=["text"])
    text_keys = [k for k in module.model.state_dict() if k.startswith("text.")]
    assert sorted(module.init_report.loaded) == sorted(text_keys) and not module.init_report.missing
    for key, value in module.model.state_dict().items():
        expected = (source if key.startswith("text.") else fresh).model.state_dict()[key]
        assert torch.equal(value, expected), key
    assert {n for n, p in module.model.named_parameters() if not p.requires_grad} == {n for n, _ in module.model.named_parameters() if n.startswith("text.")}
    with pytest.raises(ConfigError, match=r"model.init_parts \['txt'\]: .* holds none of these parts"):
        VideoTextModule(model=tiny_model_config, init_from=str(ckpt), init_parts=["txt"], init_strict=False)
    for bad in ("text", [], 5, [""]):  # a string, nothing, a number, an empty pattern: never "load everything"
        with pytest.raises(ConfigError, match=r"model.init_parts: expected a non-empty list of parameter patterns"):
            VideoTextModule(model=tiny_model_config, init_from=str(ckpt), init_parts=bad)
    with pytest.raises(ConfigError, match=r"model.init_parts \['text'\]: set model.init_from"):
        VideoTextModule(model=tiny_model_config, init_parts=["text"])


def test_a_checkpoint_that_left_out_its_frozen_text_gives_it_back_from_its_init_from(tmp_path, tiny_model_config, monkeypatch):
    """Run A's frozen text tower came from init_from, so A's checkpoint omits it; run B, started from A's checkpoint,
    must get that text tower, not a random one (init_strict: false used to leave it at its init without a word)."""
    monkeypatch.chdir(tmp_path)  # init_from is recorded as given, relative to where the run started
    source = VideoTextModule(model=tiny_model_config)
    for t in source.parameters():
        t.data.normal_()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "text_source.ckpt")
    run_a = VideoTextModule(model=tiny_model_config, init_from="text_source.ckpt", init_parts=["text"], freeze=["text"])
    checkpoint = {"state_dict": run_a.state_dict(), "hyper_parameters": dict(run_a.hparams)}
    run_a.on_save_checkpoint(checkpoint)
    assert checkpoint["mvclip_omitted_frozen"] and not any(k.startswith("model.text.") for k in checkpoint["state_dict"])
    torch.save(checkpoint, tmp_path / "run_a.ckpt")
    torch.manual_seed(7)
    run_b = VideoTextModule(model=tiny_model_config, init_from="run_a.ckpt", init_strict=False, freeze=["text"])
    assert not run_b.init_report.missing
    for key, value in run_b.model.state_dict().items():
        expected = (source if key.startswith("text.") else run_a).model.state_dict()[key]
        assert torch.equal(value, expected), key
    (tmp_path / "text_source.ckpt").unlink()
    with pytest.raises(ConfigError, match=r"run_a.ckpt: \d+ frozen tensors .* from its init_from text_source.ckpt, which is not found") as info:
        VideoTextModule(model=tiny_model_config, init_from="run_a.ckpt", init_strict=False)
    assert "\n" not in str(info.value)


def test_print_config_with_dotted_overrides():
    out = cli("fit", "--config", "recipes/small.yaml", "--model.freeze=[text]", "--data.frames=16", "--print_config").stdout
    assert "frames: 16" in out and "- text" in out and "model: recipes/models/tiny_cpu.yaml" in out


def test_unknown_recipe_key_is_reported_with_its_path(tmp_path):
    result = cli("fit", "--config", "recipes/small.yaml", "--model.lrr=0.1", "--print_config", check=False)
    assert result.returncode != 0 and "lrr" in result.stderr
    bad = tmp_path / "bad.yaml"
    recipe = (ROOT / "recipes/small.yaml").read_text()
    assert "  batch_size: 32\n" in recipe
    bad.write_text(recipe.replace("  batch_size: 32\n", "  batch_size: 32\n  frame_rate: 3\n"))
    result = cli("fit", "--config", str(bad), "--print_config", check=False)
    assert result.returncode != 0 and "frame_rate" in result.stderr


def test_predict_writes_embeddings_with_keys(synthetic_root, tiny_model_config, tmp_path):
    from mvclip.callbacks import EmbeddingWriter

    module = VideoTextModule(model=tiny_model_config)
    dm = datamodule(synthetic_root)
    writer = EmbeddingWriter(output_dir=str(tmp_path / "emb"))
    trainer(callbacks=[writer]).predict(module, datamodule=dm, return_predictions=False)
    data = np.load(tmp_path / "emb" / "embeddings.npz")
    assert data["video"].shape == (32, 32) and len(set(data["video_key"].tolist())) == 32
    assert data["text"].shape[0] == data["text_key"].shape[0] >= 32
    np.testing.assert_allclose(np.linalg.norm(data["video"], axis=1), 1.0, rtol=1e-5)
    assert set(data["text_key"].tolist()) == set(data["video_key"].tolist())


def test_predict_command_writes_embeddings_by_default(synthetic_root, tmp_path):
    cli("predict", "--config", "recipes/small.yaml", f"--data.test={synthetic_root / 'test'}", "--model.input={resolution: 64}",
        "--data.num_workers=0", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false")
    data = np.load(tmp_path / "embeddings" / "embeddings.npz")
    assert data["video"].shape == (32, 256) and data["text_key"].shape[0] == data["text"].shape[0] >= 32


RECIPE_SMOKE = ["--trainer.max_steps=2", "--trainer.limit_val_batches=0",
                "--data.batch_size=2", "--data.eval_batch_size=2", "--data.num_workers=0", "--trainer.logger=false",
                "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false", "--trainer.max_epochs=null"]


# ViT-B/16 needs no 128 px to prove its recipe runs: 64 px is 4 x 4 patches a frame and a quarter of the time
SMOKE_RESOLUTION = {"side4video_vit_b16": 64}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["mobileviclip_tiny", "mobileviclip_small", "finetune_msrvtt", "side4video_tiny", "side4video_vit_b16"])
def test_real_data_recipes_parse_and_run_two_steps(recipe, synthetic_root, tmp_path):
    cli("fit", "--config", f"recipes/{recipe}.yaml", "--print_config")
    # the recipes name published weights (pretrained / the frozen backbone), which this machine does not have
    no_weights = ["--model.init_from=null"] if recipe == "side4video_vit_b16" else ["--model.pretrained=null"]
    out = cli("fit", "--config", f"recipes/{recipe}.yaml", f"--data.train={synthetic_root / 'train'}",
              f"--data.val={synthetic_root / 'val'}", f"--data.test={synthetic_root / 'test'}", f"--model.input={{resolution: {SMOKE_RESOLUTION.get(recipe, 128)}}}",
              *RECIPE_SMOKE, *no_weights, cwd=ROOT)
    assert "`Trainer.fit` stopped: `max_steps=2` reached." in out.stdout + out.stderr


@pytest.mark.slow
def test_small_side_network_recipe_starts_from_the_backbone_recipe(synthetic_root, tmp_path):
    """Step 1 (the frame-mean backbone) writes a checkpoint; step 2 loads all of it and trains only the side network."""
    data = [f"--data.train={synthetic_root / 'train'}", f"--data.val={synthetic_root / 'val'}"]  # the recipes' 64 px
    smoke = [a for a in RECIPE_SMOKE if not a.startswith(("--trainer.callbacks", "--trainer.enable_checkpointing"))]
    backbone = tmp_path / "backbone"
    cli("fit", "--config", "recipes/side4video_small_backbone.yaml", *data, *smoke,
        "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
        f"init_args: {{dirpath: {backbone}, save_last: true, save_top_k: 0}}}}]", cwd=ROOT)
    out = cli("fit", "--config", "recipes/side4video_small.yaml", f"--model.init_from={backbone / 'last.ckpt'}",
              *data, *RECIPE_SMOKE, cwd=ROOT)
    assert "`Trainer.fit` stopped: `max_steps=2` reached." in out.stdout + out.stderr
    module = VideoTextModule(model="recipes/models/tiny_cpu_side.yaml", init_from=str(backbone / "last.ckpt"), init_strict=False)
    report = module.init_report
    assert not report.unexpected and not report.mismatched
    assert report.missing and all(k.startswith(("video.side.", "video.side_head.")) for k in report.missing)
    assert not any(k.startswith("video.side_head.proj") for k in report.missing)  # the head's copy follows the backbone
    video = torch.rand(2, 8, 3, 64, 64)
    module.eval()
    torch.testing.assert_close(module.model.encode_video(video), module.model.video.backbone_embedding(video), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_resume_after_kill_finishes_with_the_same_number_of_steps(synthetic_root, tmp_path):
    """Kill a run once it has a checkpoint, resume with --ckpt_path last, and check it ends at max_steps with restored state."""
    run_dir = tmp_path / "run"
    common = ["fit", "--config", "recipes/small.yaml", f"--data.train={synthetic_root / 'train'}",
              f"--data.val={synthetic_root / 'val'}", "--model.input={resolution: 64, frames: 4}", "--data.batch_size=8",
              "--data.num_workers=0", "--trainer.max_steps=12", "--trainer.val_check_interval=6",
              f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}",
              "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
              "init_args: {save_last: true, every_n_train_steps: 2, save_top_k: -1}}]"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "mvclip", *common], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = run_dir / "small" / "version_0" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpt_dir.glob("*step=4.ckpt")) and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    saved_step = saved["global_step"]
    assert 2 <= saved_step < 12, f"the run should have been killed mid-way, last checkpoint at step {saved_step}"
    cli(*common, "--ckpt_path=last")
    final = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 12
    assert final["lr_schedulers"][0]["last_epoch"] == 12  # the scheduler continued, not restarted
    steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert steps == {12}  # AdamW's per-parameter step counts continued from the checkpoint


def test_frozen_pretrained_weights_are_left_out_of_checkpoints_and_restored(tmp_path, tiny_model_config):
    source = VideoTextModule(model=tiny_model_config)
    ckpt = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": source.state_dict()}, ckpt)
    module = VideoTextModule(model=tiny_model_config, init_from=str(ckpt), freeze=["text"])
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert not any(k.startswith("model.text.") for k in checkpoint["state_dict"])
    assert any(k.startswith("model.video.") for k in checkpoint["state_dict"])
    fresh = VideoTextModule(model=tiny_model_config, init_from=str(ckpt), freeze=["text"])
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)  # the omitted keys were filled back in
    assert torch.equal(fresh.model.text.token_embedding.weight, source.model.text.token_embedding.weight)


def test_frozen_text_embeddings_of_captions_are_computed_once(tiny_model_config):
    module = VideoTextModule(model=tiny_model_config, freeze=["text"]).eval()
    calls = []
    original = module.model.text.forward
    module.model.text.forward = lambda tokens: calls.append(tokens.shape[0]) or original(tokens)
    tokens = torch.randint(0, 49406, (6, 77))
    with torch.no_grad():
        first = module._encode_eval_text(tokens)
        second = module._encode_eval_text(tokens[[5, 0, 2]])
    assert calls == [6]  # the second call was served from the cache
    torch.testing.assert_close(second, first[[5, 0, 2]])


class _LossHistory(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


@pytest.mark.slow
def test_end_to_end_training_learns_retrieval_well_above_chance(tmp_path_factory, tiny_model_config):
    """A few hundred steps on the synthetic temporal data: the loss falls and text-to-video R@1 beats chance by a margin."""
    root = ensure_synthetic_dataset(tmp_path_factory.mktemp("synthetic_e2e"), num_train=512, num_val=64, num_test=32,
                                    seed=1, frames=8, size=64, progress=False)
    L.seed_everything(0)
    config = {**tiny_model_config, "video": {**tiny_model_config["video"], "num_frames": 8}}  # 8-frame clips
    module = VideoTextModule(model=config, lr=3e-3, warmup_steps=20)
    history = _LossHistory()
    dm = datamodule(root, frames=8, resolution=64, batch_size=16, eval_batch_size=32, crop_scale=(0.8, 1.0))
    trainer(max_steps=E2E_STEPS, limit_val_batches=None, val_check_interval=E2E_STEPS, check_val_every_n_epoch=None,
            callbacks=[history]).fit(module, datamodule=dm)
    results = module.last_results["val"]
    chance = 100.0 / results["num_videos"]
    first, last = np.mean(history.losses[:20]), np.mean(history.losses[-20:])
    print(f"e2e: loss {first:.3f} -> {last:.3f}; val t2v R@1 {results['t2v/R@1']:.2f} (chance {chance:.2f}), v2t R@1 {results['v2t/R@1']:.2f}")
    assert last < first - 0.3
    assert results["t2v/R@1"] >= E2E_CHANCE_MULTIPLE * chance


def test_fused_adamw_applies_to_cpu_parameters_and_updates_as_the_per_tensor_one(tiny_model_config):
    """`fit`'s AdamW runs fused on CPU and CUDA: the same update, within float32 rounding, over a few steps."""
    from mvclip.lightning_module import fused_adamw_applies

    module = VideoTextModule(model=tiny_model_config)
    groups = module.parameter_groups()
    assert fused_adamw_applies(groups) is True
    assert fused_adamw_applies([{"params": [torch.nn.Parameter(torch.zeros(2, device="meta"))]}]) is None
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 7)), torch.nn.Parameter(torch.randn(3))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    starts = [p.detach().clone() for p in params]
    options = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    fused, plain = torch.optim.AdamW(params, fused=True, **options), torch.optim.AdamW(twins, foreach=False, **options)
    for step in range(5):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(params, twins, grads):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for p, q, start in zip(params, twins, starts):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert (p - start).abs().mean() > 5e-3  # five steps of lr 1e-2 moved the weights (about 0.03 per entry)
