"""bench/text_tower_from_annotations.py: the frozen-text control's captions, targets and training are what it says."""
import pytest
import torch

from mvclip.builder import build_model
from mvclip.checkpoints import load_weights
from mvclip.datamodules.synthetic import COLOURS, SHAPES, TEMPLATES
from mvclip.freezing import parts_filter

from helpers import ROOT, load_bench_script

MODEL = ROOT / "recipes" / "models" / "tiny_cpu.yaml"


def load_script():
    return load_bench_script("text_tower_from_annotations")


def test_every_caption_the_generator_writes_is_listed_with_its_annotation():
    bench = load_script()
    pairs = bench.annotated_captions()
    wordings = 4
    plain = (len(TEMPLATES) - 1) * len(SHAPES) * len(COLOURS) * wordings
    colour_changes = len(SHAPES) * len(COLOURS) * (len(COLOURS) - 1) * wordings
    assert len(pairs) == plain + colour_changes == 1960
    assert len({text for text, _ in pairs}) == len(pairs)
    notes = dict(pairs)
    assert notes["a red circle moves to the left"] == {"event": "move_left", "shape": "circle", "colour": "red"}
    assert notes["a square changes colour from blue to white"] == {
        "event": "change_colour", "shape": "square", "colour": "blue", "colour_to": "white"}


def test_twin_annotation_reverses_the_event_and_swaps_the_colours():
    bench = load_script()
    note = {"event": "grow", "shape": "cross", "colour": "green"}
    assert bench.twin_annotation(note) == {"event": "shrink", "shape": "cross", "colour": "green"}
    change = {"event": "change_colour", "shape": "circle", "colour": "red", "colour_to": "blue"}
    assert bench.twin_annotation(change) == {"event": "change_colour", "shape": "circle", "colour": "blue",
                                             "colour_to": "red"}
    for _, note in bench.annotated_captions()[::97]:
        assert bench.twin_annotation(bench.twin_annotation(note)) == note


def test_targets_depend_on_the_annotation_only_and_split_twins():
    bench = load_script()
    left = {"event": "move_left", "shape": "circle", "colour": "red"}
    right = {"event": "move_right", "shape": "circle", "colour": "red"}
    other = {"event": "move_left", "shape": "square", "colour": "blue"}
    goal = bench.targets([left, right, left, other], dim=256, seed=0)
    assert torch.allclose(goal.norm(dim=-1), torch.ones(4), atol=1e-6)
    assert torch.equal(goal[0], goal[2])
    assert torch.equal(goal, bench.targets([left, right, left, other], dim=256, seed=0))
    # two of three unit vectors shared: cosine (2 + noise) / (3 + noise), random 256-d unit vectors nearly orthogonal
    assert 0.5 < float(goal[0] @ goal[1]) < 0.85
    assert 0.15 < float(goal[0] @ goal[3]) < 0.5  # one field (the event) shared


def test_training_points_the_tower_at_its_targets_and_loads_as_a_text_part(tmp_path):
    bench = load_script()
    out = tmp_path / "text.safetensors"
    result = bench.main(["--steps", "25", "--batch", "16", "--warmup", "2", "--lr", "2e-3", "--threads", "2",
                         "--out", str(out)])
    assert result["captions"] == 1960
    assert result["after"]["target_cos"] > result["before"]["target_cos"] + 0.2
    model = build_model(MODEL)
    report = load_weights(model, out, include=parts_filter(["text"], path="model.init_parts"))
    assert report.loaded and not report.missing and not report.unexpected
    assert all(key.startswith("text.") for key in report.loaded)


def test_bad_arguments_are_one_line_errors_and_write_nothing(tmp_path, capsys):
    bench = load_script()
    out = tmp_path / "text.safetensors"
    cases = {("--steps", "0"): "--steps: expected an integer >= 1, got 0",
             ("--batch", "-3"): "--batch: expected an integer >= 1, got -3",
             ("--model", str(tmp_path / "missing.yaml")): "model config file not found"}
    for args, message in cases.items():
        with pytest.raises(SystemExit):
            bench.main([*args, "--out", str(out)])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--out", str(tmp_path)])
    assert "is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
