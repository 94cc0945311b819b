"""`python -m mvclip summary --config MODEL`: stages, output shapes, parameters and FLOPs (unfused and fused).

MODEL is a model YAML (recipes/models/mobileviclip_tiny.yaml), a preset name (mobileviclip_tiny) or a training
recipe (recipes/mobileviclip_tiny.yaml: the model it trains, with its `model.overrides`).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mvclip.builder import DEFAULT_MODEL_CONFIG, apply_overrides, build_model, load_config
from mvclip.commands.options import CommandParser
from mvclip.errors import USER_ERRORS
from mvclip.summary import format_table, summarize

RECIPE_KEYS = {"model", "trainer", "data", "seed_everything"}


def model_config(source: str) -> tuple[DictConfig, Path | None]:
    """The model config `source` names, and the folder its relative imports resolve from.

    A recipe is told from a model YAML by its LightningCLI sections (a model YAML has `video:`); the model a recipe
    trains is its `model.model` (or `model.init_args.model`), with `model.overrides` applied as `fit` applies them."""
    cfg, base_dir = load_config(source)
    if "video" in cfg or not RECIPE_KEYS & set(cfg):
        return cfg, base_dir
    section = OmegaConf.to_container(cfg.model, resolve=True) if isinstance(cfg.get("model"), DictConfig) else {}
    section = section.get("init_args", section) if "class_path" in section else section
    model = section.get("model") or DEFAULT_MODEL_CONFIG
    model_cfg, model_dir = load_config(model)
    return apply_overrides(copy.deepcopy(model_cfg), section.get("overrides")), model_dir


def main(argv: list[str]) -> int:
    parser = CommandParser("summary", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a model YAML, a preset name (e.g. mobileviclip_tiny) or a training recipe")
    parser.add_argument("--frames", type=int, default=8, help="clip length T (default 8)")
    parser.add_argument("--resolution", type=int, default=256, help="frame height and width (default 256)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    try:
        cfg, base_dir = model_config(args.config)
        model = build_model(cfg, base_dir=base_dir)
    except USER_ERRORS as error:
        print(f"mvclip summary: {error}", file=sys.stderr)
        return 2
    print(format_table(summarize(model, args.frames, args.resolution), args.frames, args.resolution))
    return 0
