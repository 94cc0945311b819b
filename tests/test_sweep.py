"""Ablation sweeps: the sweep file, the run commands, skipping finished runs, aggregation and the reports."""
import csv
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from mvclip import sweep as sw
from mvclip.commands.sweep import main as sweep_main
from mvclip.errors import ConfigError
from mvclip.losses import VideoTextContrastiveLoss, build_loss
from mvclip.markdown import replace_section

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "recipes" / "ablations"


def write_sweep(tmp_path, text, name="ablate.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """\
    base: {base}
    seeds: [0, 1]
    overrides: {{trainer.max_steps: 7}}
    baseline: a
    variants:
      a: {{model.overrides: {{video.stages.3.block: attention}}}}
      b: {{}}
      c: {{model.freeze: [text], data.sampling: fps}}
"""


@pytest.fixture
def minimal(tmp_path):
    return write_sweep(tmp_path, MINIMAL.format(base=ROOT / "recipes" / "small.yaml"))


def fake_metrics(run_dir, t2v_r1, *, kind="last", zeroshot=None, latency=10.0, time_s=120.0, memory=900.0, temporal=None):
    """The metrics.json that mvclip.callbacks.FuseExport writes beside a checkpoint."""
    validation = {"val/t2v/R@1": t2v_r1, "val/t2v/R@5": t2v_r1 * 3, "val/v2t/R@1": t2v_r1 / 2, "val/v2t/R@5": t2v_r1 * 2}
    if zeroshot is not None:
        validation["val/zeroshot/top1"] = zeroshot
    validation.update({f"val/temporal/{k}": v for k, v in (temporal or {}).items()})
    stem = "last" if kind == "last" else "step150-t2v_r1=12.00"
    data = {"kind": kind, "checkpoint": str(run_dir / "checkpoints" / f"{stem}.ckpt"), "step": 150, "validation": validation,
            "params": {"total": 16_700_000, "trainable": 4_100_000, "video": 3_000_000, "text": 13_000_000, "video_fused": 2_900_000},
            "flops": {"video_clip": 1_250_000_000, "text": 300_000_000},
            "latency_ms": {"video_unfused": latency * 1.3, "video_fused": latency, "fused_speedup": 1.3},
            "input": {"frames": 8, "resolution": 64},
            "train": {"time_s": time_s, "peak_memory_mb": memory, "peak_memory_kind": "cpu max RSS", "steps": 150}}
    path = run_dir / "checkpoints" / f"{stem}.export" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# -- the sweep file ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["block_design", "block_design_text_frozen", "block_design_text_uniformity", "text_freeze", "sampling"])
def test_shipped_sweeps_parse(name):
    sweep = sw.load_sweep(ABLATIONS / f"{name}.yaml")
    assert sweep.name == name and sweep.base == "recipes/small.yaml" and sweep.baseline in sweep.variants
    budget = (400, 200) if name.startswith("block_design") else (150, 150)  # the demo's 400 steps
    assert (sweep.overrides["trainer.max_steps"], sweep.overrides["trainer.val_check_interval"]) == budget
    inputs = [sweep.overrides["model.input"]] if "model.input" in sweep.overrides else [v["model.input"] for v in sweep.variants.values()]
    assert [i["resolution"] for i in inputs] == [64] * len(inputs) and "data.resolution" not in sweep.overrides
    if name.startswith("block_design"):
        assert list(sweep.variants) == ["frame_mean", "st_repmixer", "tpe_attention", "both"] and sweep.seeds == [0, 1]
    if name == "block_design_text_frozen":  # the same variants, each aligned to one trained text tower, frozen
        assert sweep.variants == sw.load_sweep(ABLATIONS / "block_design.yaml").variants
        assert sweep.overrides["model.init_parts"] == sweep.overrides["model.freeze"] == ["text"]
        # the text tower no video tower took part in, where bench/text_tower_from_annotations.py writes it
        assert sweep.overrides["model.init_from"] == "runs/text_tower_annotations/text.safetensors"
        assert '"runs/text_tower_annotations/text.safetensors"' in (ROOT / "bench/text_tower_from_annotations.py").read_text()
    if name == "block_design_text_uniformity":  # the same variants, text from scratch, the uniformity term on
        assert sweep.variants == sw.load_sweep(ABLATIONS / "block_design.yaml").variants
        loss = build_loss(sweep.overrides["model.loss"])
        assert type(loss) is VideoTextContrastiveLoss and loss.text_uniformity == 1.0


def test_shipped_distill_sweep_builds_its_losses():
    sweep = sw.load_sweep(ABLATIONS / "distill.yaml")
    assert sweep.base == "recipes/small.yaml" and sweep.baseline == "vtc" and sweep.seeds == [0, 1]
    assert "model.loss" not in sweep.variants["vtc"]  # the recipe's own loss: VTC
    losses = {name: build_loss(v["model.loss"]) for name, v in sweep.variants.items() if name != "vtc"}
    assert {name: loss.weight for name, loss in losses.items()} == {
        "distill": 0.7, "distill_w1": 1.0, "distill_sharp": 0.7, "distill_w03": 0.3, "feature": 0.0, "distill_feature": 0.3}
    assert {name: loss.feature_weight for name, loss in losses.items()} == {
        "distill": 0.0, "distill_w1": 0.0, "distill_sharp": 0.0, "distill_w03": 0.0, "feature": 8.0, "distill_feature": 8.0}
    assert {name: loss.teacher_logit_scale for name, loss in losses.items()} == {
        "distill": None, "distill_w1": None, "distill_sharp": 50.0, "distill_w03": None, "feature": None,
        "distill_feature": None}
    # the budget its table was measured at, pinned apart from the demo's own schedule
    assert sweep.overrides["trainer.max_steps"] == 250


def test_distilled_recipe_is_the_sweeps_feature_variant():
    """recipes/distilled.yaml (the overlay docs/distillation.md names) trains what the sweep's `feature` row measured."""
    overlay = yaml.safe_load((ROOT / "recipes" / "distilled.yaml").read_text())
    sweep = sw.load_sweep(ABLATIONS / "distill.yaml")
    assert overlay["model"]["loss"] == sweep.variants["feature"]["model.loss"]
    assert overlay["data"]["train"] == sweep.overrides["data.train"]
    assert build_loss(overlay["model"]["loss"]).feature_weight == 8.0


def test_defaults_and_overrides_order(tmp_path, minimal):
    path = write_sweep(tmp_path, "variants: {x: {data.frames: 4}}\n", name="my-sweep.yaml")
    sweep = sw.load_sweep(path, config=str(ROOT / "recipes" / "small.yaml"))
    assert (sweep.name, sweep.seeds, sweep.checkpoint, sweep.baseline) == ("my-sweep", [0], "last", None)
    sweep = sw.load_sweep(minimal, extra=sw.parse_assignments(["trainer.max_steps=3", "data.sampling=segments"]), seeds=[4])
    assert sweep.seeds == [4]
    assert sweep.variant_overrides("c") == {"trainer.max_steps": 3, "model.freeze": ["text"], "data.sampling": "segments"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("variants: {{a: {{}}}}\nbase: {base}\nextra_key: 1\n", r"unknown key\(s\) 'extra_key'"),
        ("base: {base}\nvariants: {{}}\n", r"variants: expected a non-empty mapping"),
        ("base: {base}\n", r"variants: expected a non-empty mapping"),
        ("base: {base}\nseeds: 0\nvariants: {{a: {{}}}}\n", r"seeds: expected a non-empty list"),
        ("base: {base}\nseeds: [0, x]\nvariants: {{a: {{}}}}\n", r"seeds: every seed must be a non-negative integer"),
        ("base: {base}\nseeds: [1, 1]\nvariants: {{a: {{}}}}\n", r"seeds: \[1, 1\] repeats a seed"),
        ("base: {base}\nvariants: {{a/b: {{}}}}\n", r"variants: 'a/b' is not a valid name"),
        ("name: ../up\nbase: {base}\nvariants: {{a: {{}}}}\n", r"name: '../up' must be"),
        ("base: {base}\nbaseline: z\nvariants: {{a: {{}}}}\n", r"baseline: 'z' is not one of the variants \(a\)"),
        ("base: {base}\ncheckpoint: first\nvariants: {{a: {{}}}}\n", r"checkpoint: expected one of last, best"),
        ("base: {base}\nvariants: {{a: [1]}}\n", r"variants.a: expected a mapping of dotted keys"),
        ("base: {base}\nvariants: {{a: {{seed_everything: 3}}}}\n", r"variants.a.seed_everything: may not be set"),
        ("base: {base}\noverrides: {{trainer.logger.init_args.name: x}}\nvariants: {{a: {{}}}}\n", r"overrides.trainer.logger.init_args.name: may not be set"),
        ("base: {base}\noverrides: {{trainer: {{max_steps: 3}}}}\nvariants: {{a: {{}}}}\n", r"overrides.trainer: a whole section .* trainer.max_steps"),
        ("base: {base}\nvariants: {{a: {{'data..x': 1}}}}\n", r"variants.a: 'data..x' is not a dotted config key"),
        ("variants: {{a: {{}}}}\n", r"base: no recipe"),
        ("base: nowhere.yaml\nvariants: {{a: {{}}}}\n", r"base: recipe not found: nowhere.yaml"),
        ("- a\n- b\n", r"expected a mapping at the top level"),
        ("variants: {{a: [\n", r"not valid YAML"),
    ],
)
def test_sweep_file_errors_name_the_file_and_key(tmp_path, text, message):
    path = write_sweep(tmp_path, text.format(base=ROOT / "recipes" / "small.yaml"))
    with pytest.raises(ConfigError, match=message) as info:
        sw.load_sweep(path)
    assert str(path) in str(info.value)


def test_command_line_errors(minimal, capsys):
    with pytest.raises(ConfigError, match=r"--only d: not a variant .*\(a, b, c\)"):
        sw.load_sweep(minimal, only=["d"])
    with pytest.raises(ConfigError, match=r"--set 'trainer.max_steps': expected KEY=VALUE"):
        sw.parse_assignments(["trainer.max_steps"])
    with pytest.raises(ConfigError, match=r"--set.seed_everything: may not be set"):
        sw.parse_assignments(["seed_everything=1"])
    with pytest.raises(ConfigError, match=r"--seeds: every seed"):
        sw.load_sweep(minimal, seeds=[-1])
    with pytest.raises(ConfigError, match=r"--config: recipe not found: missing.yaml"):
        sw.load_sweep(minimal, config="missing.yaml")
    assert sweep_main(["--sweep", str(minimal), "--only", "zzz"]) == 2
    assert "mvclip sweep: --only zzz: not a variant" in capsys.readouterr().err


# -- commands ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [150, 2.0e-3, 1e-05, 4.0, True, None, "fps", "a b", "true", "", "x, y", "{x}", "#hash", "1.5", "ümlaut",
     ["text"], [], {"video.stages.0.block": "repmixer", "video.stages.3.block": "attention"},
     {"nested": {"list": [1, "two", None, 0.5], "flag": False}}],
)
def test_cli_values_read_back_unchanged(value):
    text = sw.cli_value(value)
    assert yaml.safe_load(text) == value, text
    assert "\n" not in text


def test_print_commands_lists_pending_runs_and_runs_nothing(tmp_path, minimal, capsys):
    root = tmp_path / "root"
    fake_metrics(root / "a" / "seed1", 12.0)  # finished: not printed
    fake_metrics(root / "b" / "seed0", 9.0, kind="best")  # a best export does not finish a `last` sweep
    code = sweep_main(["--sweep", str(minimal), "--root", str(root), "--print_commands", "--only", "a", "--only", "b",
                       "--set", "data.frames=4"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("python -m mvclip fit --config ") for line in lines)
    first = shlex.split(lines[0])
    assert first == ["python", "-m", "mvclip", "fit", "--config", str(ROOT / "recipes" / "small.yaml"), "--seed_everything", "0",
                     f"--trainer.logger.init_args.save_dir={root}", "--trainer.logger.init_args.name=a",
                     "--trainer.logger.init_args.version=seed0", "--data.seed=0", "--trainer.max_steps=7",
                     '--model.overrides={"video.stages.3.block": "attention"}', "--data.frames=4"]
    assert [shlex.split(line)[7] for line in lines] == ["0", "0", "1"]  # a seed0, b seed0, b seed1
    assert [shlex.split(line)[11] for line in lines] == ["--data.seed=0", "--data.seed=0", "--data.seed=1"]  # data order follows
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir() and not p.name.endswith(".export")) == [
        "a", "a/seed1", "a/seed1/checkpoints", "b", "b/seed0", "b/seed0/checkpoints"]  # nothing new
    assert not (root / "ablation.md").exists()


def test_mapping_and_list_overrides_reach_the_recipe_through_the_cli(tmp_path):
    """`model.overrides` (a mapping) and `model.freeze` (a list) survive the command line: `--print_config` shows them."""
    sweep = sw.load_sweep(ABLATIONS / "block_design.yaml", extra={"model.freeze": ["text"]})
    run = next(r for r in sw.plan_runs(sweep, tmp_path) if r.variant == "frame_mean")
    out = subprocess.run([*run.argv(), "--print_config"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    config = yaml.safe_load(out.stdout)
    assert config["model"]["overrides"] == {f"video.stages.{i}.block": "repmixer" for i in range(3)} | {"video.stages.3.block": "attention"}
    assert config["model"]["freeze"] == ["text"] and config["seed_everything"] == 0
    logger = config["trainer"]["logger"]["init_args"]
    assert (logger["save_dir"], logger["name"], logger["version"]) == (str(tmp_path), "frame_mean", "seed0")
    assert config["trainer"]["max_steps"] == 400 and config["model"]["input"] == {"resolution": 64}


def test_preflight_catches_a_bad_model_override_before_anything_runs(tmp_path):
    path = write_sweep(tmp_path, f"""\
        base: {ROOT / 'recipes' / 'small.yaml'}
        variants:
          typo: {{model.overrides: {{video.stages.7.block: attention}}}}
    """)
    sweep = sw.load_sweep(path)
    with pytest.raises(ConfigError, match=r"variants.typo: model.overrides: 'video.stages.7.block' names nothing"):
        sw.preflight(sweep, sw.plan_runs(sweep, tmp_path / "root"), cwd=str(ROOT))
    assert not (tmp_path / "root").exists()


def test_preflight_catches_a_missing_init_from_checkpoint_before_anything_runs(tmp_path):
    """A frozen-text sweep whose text tower was not made yet fails in seconds, naming the file, not once per run."""
    path = write_sweep(tmp_path, f"""\
        base: {ROOT / 'recipes' / 'small.yaml'}
        overrides: {{model.init_from: {tmp_path / 'no_such' / 'text.safetensors'}, model.init_parts: [text]}}
        variants:
          plain: {{}}
    """)
    sweep = sw.load_sweep(path)
    with pytest.raises(ConfigError, match=r"variants.plain: model.init_from: checkpoint .*no_such/text.safetensors not found"):
        sw.preflight(sweep, sw.plan_runs(sweep, tmp_path / "root"), cwd=str(ROOT))
    assert not (tmp_path / "root").exists()


def test_frame_mean_baseline_is_frame_wise_then_the_temporal_mean():
    """The baseline's video embedding ignores frame order (frame-wise + mean); every temporal variant does not."""
    from omegaconf import OmegaConf

    from mvclip.builder import build_model, load_config

    sweep = sw.load_sweep(ABLATIONS / "block_design.yaml")
    torch.manual_seed(0)
    clip = torch.randn(2, 8, 3, 32, 32)
    order = torch.randperm(8)
    for variant in sweep.variants:
        cfg, base_dir = load_config(ROOT / "recipes" / "models" / "tiny_cpu.yaml")
        cfg = OmegaConf.create(OmegaConf.to_container(cfg))
        for key, value in sweep.variants[variant].get("model.overrides", {}).items():
            OmegaConf.update(cfg, key, value, merge=False)
        torch.manual_seed(1)
        model = build_model(cfg, base_dir=base_dir).eval()
        for name, param in model.named_parameters():  # zero-initialized branches and tiny layer scales hide temporal mixing
            if "layer_scale" in name or not param.detach().any():
                param.data.normal_(0, 0.5)
        with torch.no_grad():
            same = torch.allclose(model.encode_video(clip), model.encode_video(clip[:, order]), atol=1e-5)
        assert same == (variant == "frame_mean"), variant


def test_sampling_sweep_fps_really_samples_at_a_fixed_rate_on_the_synthetic_clips():
    """At the sweep's rate the 8 frames fit the 16-frame, 8 fps clips (stride 2); at the default 2 fps `fps` would fall back to segments."""
    from mvclip.datamodules.sampling import sample_indices, segment_indices
    from mvclip.datamodules.synthetic import DEFAULT_FPS, DEFAULT_FRAMES

    rate = sw.load_sweep(ABLATIONS / "sampling.yaml").variants["fps"]["model.input"]["sampling_fps"]
    got = sample_indices(DEFAULT_FRAMES, 8, "fps", train=False, video_fps=DEFAULT_FPS, sampling_fps=rate)
    assert [b - a for a, b in zip(got, got[1:])] == [2] * 7
    assert sample_indices(DEFAULT_FRAMES, 8, "fps", train=False, video_fps=DEFAULT_FPS, sampling_fps=2.0) == segment_indices(DEFAULT_FRAMES, 8, train=False)


# -- running, failures, skipping ------------------------------------------------------------------------


FAKE_TRAINER = """
import json, os, sys
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
run_dir = Path(args["trainer.logger.init_args.save_dir"]) / args["trainer.logger.init_args.name"] / args["trainer.logger.init_args.version"]
mode = args.get("mode", "ok")
print("Seed set to", args["trainer.logger.init_args.version"])
if mode == "crash":
    print("Traceback (most recent call last):")
    print('  File "x.py", line 1, in <module>')
    print("FloatingPointError: non-finite training loss (nan) at global step 3", file=sys.stderr)
    print("/venv/lightning/warnings.py:1: UserWarning: something harmless", file=sys.stderr)
    sys.exit(1)
if mode == "ok":
    export = run_dir / "checkpoints" / "last.export"
    export.mkdir(parents=True)
    seed = int(args["trainer.logger.init_args.version"][4:])
    (export / "metrics.json").write_text(json.dumps({"kind": "last", "step": 3, "validation": {"val/t2v/R@1": 10.0 + 4 * seed},
        "latency_ms": {"video_fused": 5.0}, "params": {"total": 2e6, "trainable": 1e6}}))
"""


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    monkeypatch.setattr(sw.Run, "argv", lambda self: [sys.executable, str(script), *self.args])
    return script


def test_failed_runs_do_not_stop_the_sweep_and_reruns_skip_finished(tmp_path, fake_trainer, capsys):
    path = write_sweep(tmp_path, f"""\
        name: fake
        base: {ROOT / 'recipes' / 'small.yaml'}
        seeds: [0, 1]
        baseline: ok
        variants:
          crash: {{mode: crash}}
          ok: {{mode: ok}}
          no_export: {{mode: silent}}
    """)
    root = tmp_path / "root"
    sweep = sw.load_sweep(path)
    assert sw.run_sweep(sweep, root=root, command="python -m mvclip sweep --sweep fake.yaml", check=False) == 1
    out = capsys.readouterr().out
    assert "[1/6] crash seed0: FAILED after" in out and "FloatingPointError: non-finite training loss (nan) at global step 3" in out
    assert "[3/6] ok seed0: done in" in out and "T2V R@1 10.00" in out
    assert "no_export seed1: FAILED" in out and "without a last export" in out
    log = (root / "crash" / "seed0" / "sweep.log").read_text()
    assert log.startswith("$ python -m mvclip fit --config") and "UserWarning" in log
    rows = {row.name: row for row in sw.collect(sweep, root)}
    assert rows["ok"].status == "ok" and rows["ok"].stats["t2v_r1"].mean == pytest.approx(12.0)
    assert rows["crash"].status.startswith("failed (seed0: exit 1: FloatingPointError: non-finite")
    assert rows["no_export"].failed == 2 and rows["no_export"].done == 0
    assert "| crash " in out and "| ok (baseline)" in out
    assert (root / "ablation.md").is_file() and (root / "ablation.png").is_file()

    # rerun: the finished runs are skipped, the failed ones run again
    before = {p: p.stat().st_mtime_ns for p in (root / "ok").rglob("*")}
    assert sw.run_sweep(sweep, root=root, check=False) == 1
    out = capsys.readouterr().out
    assert "skip ok seed0: finished\n" in out and "skip ok seed1: finished\n" in out
    assert "[1/4] crash seed0" in out and "ok seed0: done" not in out
    assert before == {p: p.stat().st_mtime_ns for p in (root / "ok").rglob("*")}

    # settings changed since: still skipped (finished), with a note
    changed = sw.load_sweep(path, extra={"trainer.max_steps": 9}, only=["ok"])
    assert sw.run_sweep(changed, root=root, check=False) == 0
    assert "skip ok seed0: finished (NOTE: with other settings than now: trainer.max_steps: null -> 9" in capsys.readouterr().out


def test_error_line_picks_the_reason():
    traceback = "Epoch 0: 10%\nTraceback (most recent call last):\n  File \"a.py\", line 3\n    x()\nValueError: data.frames must be >= 1, got 0\n"
    assert sw.error_line(traceback) == "ValueError: data.frames must be >= 1, got 0"
    parser = 'usage: mvclip fit [-h]\nerror: Parser key "model":\n  Does not validate against any of the types\n  - extra\n'
    assert sw.error_line(parser) == 'error: Parser key "model": Does not validate against any of the types - extra'
    assert sw.error_line("a\nb\n/x.py:3: UserWarning: w\n") == "b"
    assert sw.error_line("") == "(no output)"


# -- aggregation and reports ------------------------------------------------------------------------


def test_aggregation_reports_mean_std_ratio_and_failures(tmp_path, minimal):
    root = tmp_path / "root"
    sweep = sw.load_sweep(minimal)
    fake_metrics(root / "a" / "seed0", 10.0, zeroshot=20.0, latency=10.0, time_s=120, memory=900,
                 temporal={"twin_acc": 50.0, "twin_text_cos": 0.9851, "reverse": 0.0})
    fake_metrics(root / "a" / "seed1", 14.0, zeroshot=30.0, latency=12.0, time_s=180, memory=1000,
                 temporal={"twin_acc": 52.0, "twin_text_cos": 0.9853, "reverse": 0.0})
    fake_metrics(root / "b" / "seed0", 18.0, latency=20.0)
    (root / "b" / "seed1").mkdir(parents=True)
    (root / "b" / "seed1" / "sweep.json").write_text(json.dumps({"status": "failed", "error": "exit 1: RuntimeError: boom"}))
    rows = {row.name: row for row in sw.collect(sweep, root)}

    a, b, c = rows["a"], rows["b"], rows["c"]
    assert a.stats["t2v_r1"].mean == pytest.approx(12.0) and a.stats["t2v_r1"].std == pytest.approx(2.8284271)  # sample std
    assert a.stats["zs_top1"].text() == "25.00 ± 7.07" and a.stats["t2v_r5"].text() == "36.00 ± 8.49"
    assert a.stats["train_time_min"].mean == pytest.approx(2.5) and a.stats["peak_memory_mb"].mean == 1000  # max over seeds
    assert a.stats["params_total_m"].mean == pytest.approx(16.7) and a.stats["flops_video_g"].mean == pytest.approx(1.25)
    assert (a.done, a.failed, a.status, a.ratio) == (2, 0, "ok", pytest.approx(1.0))
    assert b.stats["t2v_r1"].text() == "18.00" and b.ratio == pytest.approx(1.5)
    assert (b.done, b.failed) == (1, 1) and b.status == "1 failed (seed1: exit 1: RuntimeError: boom)"
    assert (c.done, c.pending, c.status, c.stats["t2v_r1"].text()) == (0, 2, "2 pending", "–")

    written = sw.write_reports(sweep, list(rows.values()), root, "python -m mvclip sweep --sweep x.yaml", date="2026-11-23 18:00")
    assert {p.name for p in written} == {"ablation.md", "ablation.csv", "ablation_runs.csv", "ablation.png"}
    md = (root / "ablation.md").read_text()
    assert md.startswith("# Ablation: ablate\n") and "python -m mvclip sweep --sweep x.yaml" in md and "2026-11-23 18:00" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert "| variant" in table[0] and "vs a" in table[0] and "ZS top-1" in table[0]
    assert table[0].index("twin acc") < table[0].index("twin text cos") < table[0].index("reverse Δ")
    row_a = next(line for line in table if line.startswith("| a (baseline)"))
    assert "| 51.00 ± 1.41 | 0.985 ± 0.000 | 0.00 ± 0.00 |" in row_a  # the cosine with three decimals
    assert "12.00 ± 2.83" in row_a and "1.00×" in row_a and "4.10 / 16.70" in row_a and "11.00 ± 1.41" not in row_a
    assert "| 2 / 0 " in row_a and "| ok " in row_a
    row_b = next(line for line in table if line.startswith("| b "))
    assert "1.50×" in row_b and "1 failed (seed1: exit 1: RuntimeError: boom)" in row_b
    assert "`c`: `model.freeze=[\"text\"]`, `data.sampling=fps`" in md and "![ablate: " in md and "(ablation.png)" in md

    with open(root / "ablation.csv") as f:
        by_variant = {r["variant"]: r for r in csv.DictReader(f)}
    assert list(by_variant) == ["a", "b", "c"]
    assert float(by_variant["a"]["t2v_r1_mean"]) == pytest.approx(12.0) and float(by_variant["a"]["t2v_r1_std"]) == pytest.approx(2.828427)
    assert float(by_variant["b"]["t2v_r1_vs_baseline"]) == pytest.approx(1.5) and by_variant["b"]["t2v_r1_std"] == ""
    assert by_variant["b"]["seeds_failed"] == "1" and "RuntimeError: boom" in by_variant["b"]["error"]
    assert float(by_variant["a"]["latency_fused_ms"]) == pytest.approx(11.0) and by_variant["c"]["status"] == "2 pending"
    with open(root / "ablation_runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert [(r["variant"], r["seed"], r["status"]) for r in runs] == [
        ("a", "0", "done"), ("a", "1", "done"), ("b", "0", "done"), ("b", "1", "failed"), ("c", "0", "pending"), ("c", "1", "pending")]
    assert float(runs[1]["t2v_r1"]) == 14.0 and runs[1]["peak_memory_kind"] == "cpu max RSS"
    png = (root / "ablation.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_best_checkpoint_kind_reads_the_best_export(tmp_path, minimal):
    text = minimal.read_text().replace("seeds: [0, 1]", "seeds: [0]\ncheckpoint: best")
    sweep = sw.load_sweep(write_sweep(tmp_path, text, name="best.yaml"))
    fake_metrics(tmp_path / "r" / "a" / "seed0", 5.0, kind="last")
    fake_metrics(tmp_path / "r" / "a" / "seed0", 7.0, kind="best")
    rows = sw.collect(sweep, tmp_path / "r")
    assert rows[0].stats["t2v_r1"].mean == 7.0 and rows[0].runs[0].metrics_path.parent.name == "step150-t2v_r1=12.00.export"


def test_docs_section_is_written_and_replaced_without_touching_others(tmp_path, minimal):
    sweep = sw.load_sweep(minimal)
    root = tmp_path / "root"
    fake_metrics(root / "a" / "seed0", 10.0)
    docs = tmp_path / "docs" / "ablations.md"
    docs.parent.mkdir()
    docs.write_text("# Ablations\n\nIntro.\n\n```yaml\n## not a heading\n```\n\n## other\n\nkeep me\n")
    sw.write_reports(sweep, sw.collect(sweep, root), root, "cmd one", docs=docs)
    text = docs.read_text()
    assert text.startswith("# Ablations\n\nIntro.\n\n```yaml\n## not a heading\n```\n\n## other\n\nkeep me\n\n## ablate\n")
    assert "cmd one" in text and "](ablations/ablate.png)" in text and (tmp_path / "docs" / "ablations" / "ablate.png").is_file()
    docs.write_text(text + "\n## later\n\nstays\n")
    sw.write_reports(sweep, sw.collect(sweep, root), root, "cmd two", docs=docs)
    text = docs.read_text()
    assert "cmd two" in text and "cmd one" not in text and text.count("## ablate\n") == 1
    assert "## other\n\nkeep me\n" in text and text.endswith("## later\n\nstays\n") and "## not a heading" in text


def test_replace_section_appends_to_an_empty_file():
    assert replace_section("", "x", "## x\n\nbody\n") == "## x\n\nbody\n"
    assert replace_section("## x\nold\n## y\n", "x", "## x\nnew") == "## x\nnew\n\n## y\n"


# -- end to end ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_end_to_end_then_rerun_skips(tmp_path_factory):
    """A 2-variant, 1-seed, 3-step sweep of recipes/small.yaml on a tiny synthetic set: reports written; a rerun skips."""
    from mvclip.datamodules.synthetic import ensure_synthetic_dataset

    data = ensure_synthetic_dataset(tmp_path_factory.mktemp("synthetic_sweep"), num_train=32, num_val=16, num_test=16,
                                    seed=0, frames=8, size=64, progress=False)
    tmp = tmp_path_factory.mktemp("sweep")
    path = write_sweep(tmp, """\
        name: e2e
        base: recipes/small.yaml
        seeds: [0]
        baseline: frame_mean
        variants:
          frame_mean:
            model.overrides: {video.stages.0.block: repmixer, video.stages.1.block: repmixer,
                              video.stages.2.block: repmixer, video.stages.3.block: attention}
          both: {}
    """)
    root = tmp / "root"
    args = ["sweep", "--sweep", str(path), "--root", str(root), "--docs", str(tmp / "docs" / "ablations.md"),
            "--set", f"data.train={data / 'train'}", "--set", f"data.val={data / 'val'}", "--set", f"data.test={data / 'test'}",
            "--set", "model.input={resolution: 64, frames: 4}", "--set", "data.batch_size=8", "--set", "data.eval_batch_size=16",
            "--set", "data.num_workers=0", "--set", "trainer.max_steps=3", "--set", "trainer.val_check_interval=3",
            "--set", "model.warmup_steps=1", "--set", "trainer.enable_progress_bar=false",
            # the recipe's callbacks, with a cheaper export (last only, no ONNX, one latency repeat)
            "--set", "trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {monitor: val/t2v/R@1, "
                     "mode: max, save_last: true}}, {class_path: mvclip.callbacks.FuseExport, "
                     "init_args: {checkpoints: [last], onnx: false, latency_repeats: 1}}]"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.run([sys.executable, "-m", "mvclip", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    logs = "\n".join(p.read_text()[-3000:] for p in root.glob("*/seed0/sweep.log"))
    assert first.returncode == 0, f"{first.stdout[-3000:]}\n{first.stderr[-3000:]}\n{logs}"
    assert "[1/2] frame_mean seed0: done" in first.stdout and "[2/2] both seed0: done" in first.stdout
    for name in ("ablation.md", "ablation.csv", "ablation_runs.csv", "ablation.png"):
        assert (root / name).is_file(), name
    with open(root / "ablation.csv") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"frame_mean", "both"} and all(r["status"] == "ok" for r in rows.values())
    assert all(0.0 <= float(r["t2v_r1_mean"]) <= 100.0 and float(r["latency_fused_ms"]) > 0 for r in rows.values())
    assert float(rows["frame_mean"]["t2v_r1_vs_baseline"]) == pytest.approx(1.0)
    assert "## e2e" in (tmp / "docs" / "ablations.md").read_text() and (tmp / "docs" / "ablations" / "e2e.png").is_file()
    runs_before = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())

    second = subprocess.run([sys.executable, "-m", "mvclip", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "skip frame_mean seed0: finished\n" in second.stdout and "skip both seed0: finished\n" in second.stdout
    assert "running" not in second.stdout and "checking" not in second.stdout
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()) == runs_before  # no new run dir/version
    assert "| frame_mean (baseline)" in second.stdout and "| both" in second.stdout
