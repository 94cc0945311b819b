"""The evaluation card: exact round trips through a dict, a checkpoint and an export's metrics.json; protocol
options and the split-hash lock; the eval recipes name real benchmarks and data options."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
import yaml

from mvclip.datamodules.benchmarks import BENCHMARKS
from mvclip.errors import ConfigError
from mvclip.eval_card import CARD_KEY, EvalCard, EvalProtocol, make_card
from mvclip.input_spec import InputSpec

ROOT = Path(__file__).resolve().parents[1]


def a_card() -> EvalCard:
    protocol = EvalProtocol(benchmark="msrvtt_1ka", dual_softmax=True, dsl_scale=50.0)
    record = {"benchmark": "msrvtt_1ka", "split_hash": "0123456789ab", "split_files": {"MSRVTT_JSFUSION_test.csv": "0123456789ab"}}
    results = {"t2v/R@1": 42.5, "t2v_dsl/R@1": 47.25, "num_videos": 1000.0}
    return make_card(protocol, record, InputSpec(frames=8, resolution=256, sampling="segments"), "test", results, step=1200)


def test_card_records_the_conditions_and_round_trips():
    card = a_card()
    assert (card.dataset, card.split_hash, card.frames, card.sampling, card.resolution, card.step) == (
        "msrvtt_1ka", "0123456789ab", 8, "segments", 256, 1200)
    assert card.protocol == {"dual_softmax": True, "retrieval": True, "dsl_scale": 50.0}
    data = card.to_dict()
    assert json.loads(json.dumps(data)) == data and EvalCard.from_dict(data) == card
    with pytest.raises(ValueError, match=r"evaluation card: missing keys \['split_hash'\], unknown keys \['splits'\]"):
        EvalCard.from_dict({**{k: v for k, v in data.items() if k != "split_hash"}, "splits": 1})


def test_card_of_a_zero_shot_run_names_its_prompt_ensemble():
    card = make_card(EvalProtocol(benchmark="kinetics400", retrieval=False), {"split_hash": "aa+bb"}, InputSpec(), "test",
                     {"zeroshot/top1": 30.0}, zero_shot={"class_names": ["a"], "templates": "kinetics"})
    assert card.protocol == {"dual_softmax": False, "retrieval": False, "prompt_ensemble": "kinetics", "prompt_templates": 12}
    assert card.dataset == "kinetics400" and card.split_hash == "aa+bb"


def test_protocol_options_and_the_split_lock():
    assert EvalProtocol.from_config(None) == EvalProtocol()
    assert EvalProtocol.from_config({"dual_softmax": True, "dsl_scale": 10}).metric_options() == {"dual_softmax": True, "dsl_scale": 10.0}
    for bad, message in (({"dual_softmax": "yes"}, "model.evaluation.dual_softmax: expected true or false"),
                         ({"dsl_scale": 0}, "model.evaluation.dsl_scale: expected a number > 0"),
                         ({"dual_softmx": True}, "model.evaluation.dual_softmx: unknown key")):
        with pytest.raises(ConfigError, match=message):
            EvalProtocol.from_config(bad)
    locked = EvalProtocol(split_hash="0123456789ab")
    locked.check_split({"split_hash": "0123456789ab"}, "data.test")
    with pytest.raises(ConfigError, match="data.test: shards built from split ffffffffffff, but model.evaluation.split_hash locks 0123456789ab"):
        locked.check_split({"split_hash": "ffffffffffff"}, "data.test")
    EvalProtocol().check_split({"split_hash": "ffffffffffff"}, "data.test")  # unlocked: any split


def test_card_round_trips_through_a_checkpoint_and_an_export(tmp_path, tiny_model_config):
    from mvclip.export import export_checkpoint, random_inputs, read_checkpoint
    from mvclip.lightning_module import VideoTextModule

    module = VideoTextModule(model=tiny_model_config, evaluation={"benchmark": "msrvtt_1ka", "dual_softmax": True})
    assert module.val_retrieval.dual_softmax and module.test_retrieval.dsl_scale == 100.0
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert CARD_KEY not in checkpoint  # no evaluation yet, no card
    card = a_card()
    module.eval_card = card
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 3}
    module.on_save_checkpoint(checkpoint)
    path = tmp_path / "run" / "last.ckpt"
    path.parent.mkdir()
    torch.save(checkpoint, path)
    assert EvalCard.from_dict(read_checkpoint(path)[CARD_KEY]) == card
    out, metrics = export_checkpoint(module, path, random_inputs(4, 64, batch=1), onnx=False, latency_repeats=1)
    written = json.loads((out / "metrics.json").read_text())
    assert EvalCard.from_dict(written["evaluation_card"]) == card == EvalCard.from_dict(metrics["evaluation_card"])


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes" / "eval").glob("*.yaml")))
def test_eval_recipes_name_a_benchmark_and_known_options(recipe):
    from mvclip.datamodules.datamodule import VideoTextDataModule
    from mvclip.lightning_module import VideoTextModule

    config = yaml.safe_load((ROOT / "recipes" / "eval" / recipe).read_text())
    protocol = EvalProtocol.from_config(config["model"]["evaluation"])
    assert protocol.benchmark == Path(recipe).stem and protocol.benchmark in BENCHMARKS
    assert (BENCHMARKS[protocol.benchmark].task == "retrieval") == protocol.retrieval == protocol.dual_softmax
    assert set(config["model"]) <= set(inspect.signature(VideoTextModule).parameters)
    assert set(config["data"]) <= set(inspect.signature(VideoTextDataModule).parameters)
    assert config["data"]["frames"] == 8 and config["data"]["sampling"] == "segments"
    assert f"recipes/eval/{recipe}" in (ROOT / "docs" / "evaluation.md").read_text()


@pytest.mark.parametrize("labelled", [False, True])
def test_module_card_lists_the_prompt_ensemble_only_when_clips_were_classified(tiny_model_config, labelled):
    """A retrieval benchmark (no labels) evaluated by a module that has zero-shot prompts for its training data: the
    card must not claim a prompt ensemble it never used; labelled clips get their prompts recorded."""
    from types import SimpleNamespace

    from mvclip.lightning_module import VideoTextModule
    from mvclip.tokenizer import tokenize

    module = VideoTextModule(model=tiny_model_config, zero_shot={"class_names": ["grows", "shrinks"], "templates": ["a {}", "the {}"]})
    module.eval()
    module.log_dict = lambda *args, **kwargs: None
    module._trainer = SimpleNamespace(is_global_zero=False, sanity_checking=False, log_dir=None, datamodule=None,
                                      global_step=0, current_epoch=0)
    batch = {"video": torch.rand(2, 4, 3, 64, 64), "text": tokenize(["a grows", "a shrinks"]), "key": ["x", "y"],
             "text_video_index": torch.tensor([0, 1])}
    if labelled:
        batch["label"] = torch.tensor([0, 1])
    with torch.no_grad():
        module.on_validation_epoch_start()
        module.validation_step(batch, 0)
        module.on_validation_epoch_end()
    card = module.eval_card
    assert ("zeroshot/top1" in card.results) == labelled
    assert ({"prompt_ensemble", "prompt_templates"} <= set(card.protocol)) == labelled
    assert card.results["t2v/R@1"] >= 0 and card.protocol["retrieval"] is True
