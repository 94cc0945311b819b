"""YAML -> VideoTextModel. Every block spec is checked (names and arguments) before anything is built.

A model config (see `recipes/models/`) has `video`, optionally `text`, `embed_dim`, `logit_scale`
and `imports` (plugin modules or `.py` files loaded first). `video.side` adds a side network beside
the (then frozen) video backbone (`docs/side_networks.md`). Errors name the config path, e.g.
`model.video.stages[2]`. `inference_mode: true` builds every block directly in its fused form
(what `mvclip.fuse` produces), so a fused model's state dict loads strictly into it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from mvclip.config_checks import check_kernel_sizes, finite_number, resolve_interpolations
from mvclip.errors import ConfigError
from mvclip.input_spec import InputSpec
from mvclip.model import TEXT_ATTENTION_MASKS, TEXT_POOLS, Stage, TextEncoder, VideoEncoder, VideoTextModel
from mvclip.registry import REGISTRY, BlockEntry
from mvclip.side import FUSION_LAYERS, FUSION_POINTS, SideNetwork, SideVideoEncoder, fusion_indices

MODEL_KEYS = {"imports", "embed_dim", "logit_scale", "video", "text", "name", "description", "inference_mode", "input", "weights"}
WEIGHT_KEYS = {"hub", "file", "revision", "input", "description"}
VIDEO_KEYS = {"in_channels", "num_frames", "stem", "stages", "head", "side", "temporal_init"}
SIDE_KEYS = {"width", "depth", "stem", "fusion_block", "block", "fusion", "fusion_every", "fusion_points", "patch_size", "grid", "head",
             "num_classes", "train_projection"}
# `head: retrieval` / `head: classification` are short for these registered side heads
SIDE_HEADS = {"retrieval": "side_retrieval_head", "classification": "side_classification_head"}
VIDEO_STAGE_KEYS = {"block", "depth", "dim", "downsample", "pos_embed"}
TEXT_KEYS = {"vocab_size", "context_length", "width", "stages", "attention_mask", "pool"}
TEXT_STAGE_KEYS = {"block", "depth"}
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # a source checkout's root (recipes/ lives there); meaningless in a wheel
PRESETS_DIR = Path(__file__).resolve().parent / "presets"  # shipped in the package; recipes/models links here
DEFAULT_MODEL_CONFIG = "recipes/models/tiny_cpu.yaml"  # what a recipe without `model.model` trains


# a context value that exists only once other parts are built (the backbone head a side head copies): planned with
# this placeholder, handed over by `_Planned.build(name=module)`
BUILT_LATER: Any = object()


@dataclass
class _Planned:
    """A resolved block: built only after the whole config has been checked."""

    path: str
    entry: BlockEntry
    kwargs: dict[str, Any]
    reparameterize: bool = False  # inference form of a block without `inference_mode`: fold right after building

    def build(self, **built: nn.Module) -> nn.Module:
        kwargs = {k: built[k] if v is BUILT_LATER else v for k, v in self.kwargs.items()}
        module = REGISTRY.instantiate(self.entry, kwargs, path=self.path)
        if self.reparameterize:
            module.eval().reparameterize()  # its random init is replaced when the fused weights load
        return module


@dataclass
class _StagePlan:
    blocks: list[_Planned]
    downsample: _Planned | None = None
    pos_embed: _Planned | None = None


@dataclass
class _SidePlan:
    """The `video.side` section, resolved: its stem, per fused backbone layer a fusion block and a group of `depth`
    side blocks, and its head."""

    stem: _Planned
    fusions: list[_Planned]
    blocks: list[list[_Planned]]
    head: _Planned  # gets the built backbone head as `backbone_head` when it takes one
    fusion_points: str
    fusion_layers: list[int]


@dataclass
class _ModelPlan:
    stem: _Planned
    stages: list[_StagePlan]
    head: _Planned
    num_frames: int
    side: _SidePlan | None
    text_blocks: list[_Planned] | None
    text_args: dict[str, Any] = field(default_factory=dict)
    logit_scale: float = math.log(1 / 0.07)
    inference_mode: bool = False
    input_spec: InputSpec = field(default_factory=InputSpec)


def load_config(config: str | Path | Mapping | DictConfig) -> tuple[DictConfig, Path | None]:
    """A path, dict or OmegaConf node -> (DictConfig, directory relative imports resolve against)."""
    if isinstance(config, (str, Path)):
        path = _find_config(Path(config))
        try:
            cfg = OmegaConf.load(path)
        except Exception as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        if not isinstance(cfg, DictConfig):
            raise ConfigError(f"{path}: expected a mapping at the top level, got a list")
        return cfg, path.parent
    if isinstance(config, DictConfig):
        return config, None
    if isinstance(config, Mapping):
        return OmegaConf.create(dict(config)), None
    raise ConfigError(f"model config must be a path, a mapping or an OmegaConf node, got {type(config).__name__}")


def apply_overrides(cfg: DictConfig, overrides: Mapping[str, Any] | None, *, new_keys: bool = False) -> DictConfig:
    """Set dotted keys of a model config in place (`{video.stages.3.block: attention}`), how sweeps swap blocks.

    A key that names nothing in the config is an error naming `model.overrides`, unless `new_keys` (adding a block argument
    the YAML leaves at its default, e.g. `video.stages.3.attention_mode`)."""
    for key, value in (overrides or {}).items():
        if not new_keys and OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"model.overrides: {key!r} names nothing in the model config")
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def apply_input(cfg: DictConfig, values: Mapping[str, Any] | None, path: str = "model.input") -> DictConfig:
    """Change a model config's input description in place (`{resolution: 64}`): `frames` sets `video.num_frames`,
    the rest the `input` section. Unknown keys are an error naming `path`."""
    if not values:
        return cfg
    if not isinstance(values, (Mapping, DictConfig)):
        raise ConfigError(f"{path}: expected a mapping such as {{resolution: 64}}, got {values!r}")
    InputSpec.from_mapping({k: v for k, v in values.items() if v is not None}, path)  # names a wrong key or value
    for key, value in values.items():
        if key == "frames" and "video" in cfg:
            cfg.video.num_frames = value
            if cfg.get("input") is not None and "frames" in cfg.input:
                cfg.input.frames = value
        else:
            if cfg.get("input") is None:
                cfg.input = {}
            cfg.input[key] = value
    return cfg


def list_presets() -> list[str]:
    """Names of the model YAMLs shipped in `mvclip/presets/` (also `recipes/models/`), which `build_model` and
    `--model.model` accept by name."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _find_config(path: Path) -> Path:
    """A relative path is looked up from the working directory, then from the project root (recipes/ lives there);
    a bare name without a suffix (`mobileviclip_tiny`) is a preset shipped in the package (`mvclip/presets/`)."""
    if path.is_file() or path.is_absolute():
        if not path.is_file():
            raise ConfigError(f"model config file not found: {path}")
        return path
    if (PROJECT_ROOT / path).is_file():
        return PROJECT_ROOT / path
    if len(path.parts) == 1 and not path.suffix:
        preset = PRESETS_DIR / f"{path}.yaml"
        if preset.is_file():
            return preset
        raise ConfigError(f"model config {str(path)!r}: no such file and no such preset (presets: {', '.join(list_presets())})")
    raise ConfigError(f"model config file not found: {path} (looked in {Path.cwd()} and {PROJECT_ROOT})")


def build_model(config: str | Path | Mapping | DictConfig, *, path: str = "model", base_dir: Path | None = None) -> VideoTextModel:
    """Build a VideoTextModel from a YAML file, dict or OmegaConf node (see `recipes/models/`).

    Relative `.py` imports resolve against the YAML's folder, or `base_dir` for an in-memory config.
    """
    cfg, file_dir = load_config(config)
    plan = plan_model(cfg, path=path, base_dir=file_dir or base_dir)
    return _build(plan)


def plan_model(cfg: DictConfig, *, path: str = "model", base_dir: Path | None = None) -> _ModelPlan:
    """Load plugins, then resolve every block spec against the registry without building anything."""
    cfg = resolve_interpolations(cfg, path)
    _check_keys(cfg, MODEL_KEYS, path)
    inference_mode = cfg.get("inference_mode", False)
    if not isinstance(inference_mode, bool):
        raise ConfigError(f"{path}.inference_mode: expected true or false, got {inference_mode!r}")
    imports = cfg.get("imports") or []
    if not isinstance(imports, (list, ListConfig)):
        raise ConfigError(f"{path}.imports: expected a list of module names or .py paths, got {imports!r}")
    for i, target in enumerate(imports):
        if str(target).lower().endswith(CONFIG_SUFFIXES):
            raise ConfigError(
                f"{path}.imports[{i}]: {target!r} is a config file, not a block plugin (a config cannot import another "
                "config, or itself); expected Python module names (my_package.blocks) or .py files that register blocks"
            )
        REGISTRY.import_plugin(str(target), path=f"{path}.imports[{i}]", base_dir=base_dir)
    embed_dim = _positive_int(cfg.get("embed_dim", 512), f"{path}.embed_dim")
    if "video" not in cfg:
        raise ConfigError(f"{path}: missing the `video` section (stem, stages, head)")
    if cfg.video.get("num_frames") is not None:
        _positive_int(cfg.video.num_frames, f"{path}.video.num_frames")
    input_spec = InputSpec.from_model_config(cfg, path)
    check_weights(cfg.get("weights"), f"{path}.weights")
    video = _plan_video(cfg.video, f"{path}.video", embed_dim, inference_mode, input_spec.frames)
    text_blocks, text_args = None, {}
    if cfg.get("text") is not None:
        text_blocks, text_args = _plan_text(cfg.text, f"{path}.text", embed_dim, inference_mode)
    logit_scale = finite_number(cfg.get("logit_scale", math.log(1 / 0.07)), f"{path}.logit_scale",
                                "the initial log of the logit scale, e.g. 2.659 = ln(1/0.07)")
    return _ModelPlan(*video, text_blocks=text_blocks, text_args=text_args, logit_scale=logit_scale, inference_mode=inference_mode,
                      input_spec=input_spec)


def check_weights(weights: Any, path: str) -> None:
    """A preset's `weights`: published files it loads by name, `{name: {hub: owner/repo, file: name.pt, revision?,
    input?: {mean, std, ...}}}` (`input`: how those weights want their pixels, over the preset's own)."""
    if weights is None:
        return
    if not isinstance(weights, (Mapping, DictConfig)):
        raise ConfigError(f"{path}: expected a mapping of names to {{hub: owner/repo, file: weights.pt}}, got {weights!r}")
    for name, entry in weights.items():
        where = f"{path}.{name}"
        _check_keys(entry, WEIGHT_KEYS, where)
        for key in ("hub", "file"):
            if not isinstance(entry.get(key), str) or not entry.get(key):
                raise ConfigError(f"{where}.{key}: expected a string ({'owner/repo on the Hugging Face hub' if key == 'hub' else 'a file name in that repo'})")
        if entry.get("input") is not None and not isinstance(entry.get("input"), (Mapping, DictConfig)):
            raise ConfigError(f"{where}.input: expected a mapping such as {{mean: null, std: null}}, got {entry.get('input')!r}")


def _plan_video(cfg: Any, path: str, embed_dim: int, inference_mode: bool = False, num_frames: int = 8) -> tuple[_Planned, list[_StagePlan], _Planned, int, _SidePlan | None]:
    _check_keys(cfg, VIDEO_KEYS, path)
    for key in ("stem", "stages", "head"):
        if cfg.get(key) is None:
            raise ConfigError(f"{path}: missing `{key}`")
    stages = cfg.stages
    if not isinstance(stages, (list, ListConfig)) or not stages:
        raise ConfigError(f"{path}.stages: expected a non-empty list of stages")
    in_channels = _positive_int(cfg.get("in_channels", 3), f"{path}.in_channels")
    first_dim = _positive_int(_get(stages[0], "dim", f"{path}.stages[0]"), f"{path}.stages[0].dim")
    mode = {"inference_mode": True} if inference_mode else {}  # context: only blocks that take it get it
    # how every temporal branch starts (`zero`, `mirror`, `active`): context for the stage blocks that take it, so an
    # ablation that swaps a block never meets a key the new block does not know; a stage's own value wins
    start = {"temporal_init": cfg.temporal_init} if cfg.get("temporal_init") is not None else {}
    stem = _resolve(cfg.stem, f"{path}.stem", dim=in_channels, out_dim=first_dim, num_frames=num_frames, **mode)
    channels = stem.kwargs.get("out_dim", first_dim)
    planned: list[_StagePlan] = []
    stage_shapes: list[tuple[int, int]] = []  # (dim, depth): what a side network fuses
    for i, stage in enumerate(stages):
        spath = f"{path}.stages[{i}]"
        if not isinstance(stage, (Mapping, DictConfig)):
            raise ConfigError(f"{spath}: expected a mapping such as {{block: st_repmixer, depth: 2, dim: 64}}, got {stage!r}")
        dim = _positive_int(_get(stage, "dim", spath), f"{spath}.dim")
        depth = _non_negative_int(stage.get("depth", 1), f"{spath}.depth")
        block_args = {k: v for k, v in stage.items() if k not in VIDEO_STAGE_KEYS}
        block_spec = {"block": _get(stage, "block", spath), **block_args}
        downsample = None
        if stage.get("downsample") is not None:
            downsample = _resolve(stage.downsample, f"{spath}.downsample", dim=channels, out_dim=dim, num_frames=num_frames, **mode)
        elif channels != dim:
            raise ConfigError(
                f"{spath}: the previous part outputs {channels} channels but this stage has dim={dim}; "
                f"add `downsample: {{block: patch_embed}}` (or another block that maps {channels} -> {dim})"
            )
        entry = REGISTRY.get(block_spec["block"], path=spath)
        if entry.kind != "video":
            raise ConfigError(f"{spath}: block {entry.name!r} is a {entry.kind} block; video stages need video blocks")
        blocks = [_resolve(block_spec, spath, dim=dim, num_frames=num_frames, **start, **mode) for _ in range(depth)]
        stage_shapes.append((dim, depth))
        pos_spec = stage.get("pos_embed", None) if "pos_embed" in stage else _default_pos_embed(entry)
        pos_embed = None
        if pos_spec is not None:
            pos_embed = _resolve(pos_spec, f"{spath}.pos_embed", dim=dim, num_frames=num_frames, **mode)
        planned.append(_StagePlan(blocks, downsample, pos_embed))
        channels = dim
    head = _resolve(cfg.head, f"{path}.head", dim=channels, out_dim=embed_dim, num_frames=num_frames, **mode)
    if head.kwargs.get("out_dim", embed_dim) != embed_dim:
        raise ConfigError(
            f"{path}.head.out_dim: {head.kwargs['out_dim']!r} differs from {path.rsplit('.', 1)[0]}.embed_dim ({embed_dim}); "
            f"video and text embeddings are compared, so the head must output embed_dim: remove out_dim or set it to {embed_dim}"
        )
    side = None
    if cfg.get("side") is not None:
        side = _plan_side(cfg.side, f"{path}.side", stage_shapes, head, num_frames, in_channels, inference_mode)
    return stem, planned, head, num_frames, side


def _plan_side(
    cfg: Any, path: str, stage_shapes: list[tuple[int, int]], head: _Planned, num_frames: int, in_channels: int, inference_mode: bool
) -> _SidePlan:
    """`video.side`: width, depth (side blocks per fused layer), the parts (`stem`, `fusion_block`, `block`, `head`:
    registered blocks, by default side_stem, side_fusion, side_block and the retrieval head), fusion (all/interval/top),
    fusion_every and fusion_points (blocks/stages). `patch_size`/`grid`, `num_classes` and `train_projection` are
    shorthands for arguments of the stem and the head."""
    _check_keys(cfg, SIDE_KEYS, path)
    width = _positive_int(cfg.get("width", 320), f"{path}.width")
    depth = _positive_int(cfg.get("depth", 1), f"{path}.depth")
    fusion = _choice(cfg.get("fusion", "all"), FUSION_LAYERS, f"{path}.fusion")
    every = _positive_int(cfg.get("fusion_every", 2), f"{path}.fusion_every")
    points = _choice(cfg.get("fusion_points", "blocks" if len(stage_shapes) == 1 else "stages"), FUSION_POINTS, f"{path}.fusion_points")
    point_dims = [dim for dim, d in stage_shapes for _ in range(d)] if points == "blocks" else [dim for dim, _ in stage_shapes]
    layers = fusion_indices(len(point_dims), fusion, every)
    if not layers:
        raise ConfigError(f"{path}: fusion={fusion!r} (fusion_every={every}) picks none of the backbone's {len(point_dims)} {points}")
    head_spec = cfg.get("head", "retrieval")
    if isinstance(head_spec, str) and head_spec not in SIDE_HEADS:
        _choice(head_spec, tuple(SIDE_HEADS), f"{path}.head")
    head_args: dict[str, Any] = {"backbone_head": BUILT_LATER}
    if head_spec == "classification" or "num_classes" in cfg:
        head_args["num_classes"] = _positive_int(cfg.get("num_classes"), f"{path}.num_classes")
    if not head.entry.traits.has_features:
        raise ConfigError(
            f"{path}: the backbone head {head.entry.name!r} has no `features(x, frames)` (with `norm` and `proj`), "
            "which a side network reads the frozen pre-projection feature from; use mci_head or vit_head"
        )
    if "train_projection" in cfg:
        if not isinstance(cfg.train_projection, bool):
            raise ConfigError(f"{path}.train_projection: expected true or false, got {cfg.train_projection!r}")
        head_args["train_projection"] = cfg.train_projection
    stem_args = {key: _positive_int(cfg[key], f"{path}.{key}") for key in ("patch_size", "grid") if key in cfg}
    context = {"dim": width, "num_frames": num_frames, **({"inference_mode": True} if inference_mode else {})}
    stem = _plan_side_part(cfg.get("stem", "side_stem"), f"{path}.stem", "side_stem", in_channels=in_channels, **stem_args, **context)
    fusions = [_plan_side_part(cfg.get("fusion_block", "side_fusion"), f"{path}.fusion_block", "side_fusion", in_dim=point_dims[i], **context)
               for i in layers]
    block = _side_part_spec(cfg.get("block", "side_block"), f"{path}.block")
    entry = REGISTRY.get(block["block"], path=f"{path}.block")
    if entry.kind != "side":
        raise ConfigError(f"{path}.block: block {entry.name!r} is a {entry.kind} block; a side network needs side blocks (e.g. side_block)")
    blocks = [[_resolve(block, f"{path}.block", **context) for _ in range(depth)] for _ in layers]
    side_head = _plan_side_part(SIDE_HEADS.get(head_spec, head_spec) if isinstance(head_spec, str) else head_spec,
                                f"{path}.head", "side_head", **head_args, **context)
    return _SidePlan(stem=stem, fusions=fusions, blocks=blocks, head=side_head, fusion_points=points, fusion_layers=layers)


def _side_part_spec(spec: Any, path: str) -> Mapping[str, Any]:
    """`block: side_block` is short for `{block: side_block}`."""
    spec = {"block": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, (Mapping, DictConfig)) or not isinstance(spec.get("block"), str):
        raise ConfigError(f"{path}: expected a block name or a mapping such as {{block: side_block, token_shift: false}}, got {spec!r}")
    return spec


def _plan_side_part(spec: Any, path: str, kind: str, **context: Any) -> _Planned:
    """One of a side network's parts other than its blocks: a registered block of `kind` (`mvclip.contracts`)."""
    planned = _resolve(_side_part_spec(spec, path), path, **context)
    if planned.entry.kind != kind:
        raise ConfigError(f"{path}: block {planned.entry.name!r} is a {planned.entry.kind} block; expected a {kind} block here")
    return planned


def _plan_text(cfg: Any, path: str, embed_dim: int, inference_mode: bool = False) -> tuple[list[_Planned], dict[str, Any]]:
    _check_keys(cfg, TEXT_KEYS, path)
    mode = {"inference_mode": True} if inference_mode else {}  # context: only blocks that take it get it
    width = _positive_int(cfg.get("width", 512), f"{path}.width")
    args = {
        "vocab_size": _positive_int(cfg.get("vocab_size", 49408), f"{path}.vocab_size"),
        "context_length": _positive_int(cfg.get("context_length", 77), f"{path}.context_length"),
        "width": width,
        "embed_dim": embed_dim,
        "attention_mask": cfg.get("attention_mask", "none"),
        "pool": cfg.get("pool", "eot"),
    }
    if args["attention_mask"] not in TEXT_ATTENTION_MASKS:
        raise ConfigError(f"{path}.attention_mask: expected one of {list(TEXT_ATTENTION_MASKS)}, got {args['attention_mask']!r}")
    if args["pool"] not in TEXT_POOLS:
        raise ConfigError(f"{path}.pool: expected one of {list(TEXT_POOLS)}, got {args['pool']!r}")
    stages = cfg.get("stages") or []
    if not isinstance(stages, (list, ListConfig)):
        raise ConfigError(f"{path}.stages: expected a list of {{block: ..., depth: N}} mappings")
    blocks: list[_Planned] = []
    for i, stage in enumerate(stages):
        spath = f"{path}.stages[{i}]"
        if not isinstance(stage, (Mapping, DictConfig)):
            raise ConfigError(f"{spath}: expected a mapping such as {{block: text_transformer, depth: 4}}, got {stage!r}")
        depth = _non_negative_int(stage.get("depth", 1), f"{spath}.depth")
        spec = {k: v for k, v in stage.items() if k != "depth"}
        planned = [_resolve(spec, spath, dim=width, **mode) for _ in range(depth)]
        if planned and planned[0].entry.kind != "text":
            raise ConfigError(f"{spath}: block {planned[0].entry.name!r} is a {planned[0].entry.kind} block; text stages need text blocks")
        blocks += planned
    return blocks, args


def _default_pos_embed(entry: BlockEntry) -> dict[str, Any] | None:
    """Attention blocks bring their stage's positional encoding (MCi: RepCPE; MobileViCLIP: TPE + CPE)."""
    name = entry.traits.stage_pos_embed
    return {"block": name} if name else None


def _resolve(spec: Any, path: str, **context: Any) -> _Planned:
    """`inference_mode=True` in `context` reaches blocks whose constructor takes it (the YAML may override);
    a reparameterizable block that does not take it is reparameterized right after it is built instead."""
    entry, kwargs = REGISTRY.resolve(spec, path=path, context=context)
    check_kernel_sizes(entry.name, kwargs, path, allow_even=entry.traits.allow_even_kernels)
    fold = bool(context.get("inference_mode")) and entry.reparameterizable and "inference_mode" not in kwargs
    return _Planned(path, entry, kwargs, fold)


def _build(plan: _ModelPlan) -> VideoTextModel:
    stages = [
        Stage(
            [b.build() for b in sp.blocks],
            sp.downsample.build() if sp.downsample else None,
            sp.pos_embed.build() if sp.pos_embed else None,
        )
        for sp in plan.stages
    ]
    if plan.side is None:
        video = VideoEncoder(plan.stem.build(), stages, plan.head.build(), plan.num_frames)
    else:
        video = _build_side_encoder(plan, stages)
    text = None
    if plan.text_blocks is not None:
        text = TextEncoder([b.build() for b in plan.text_blocks], **plan.text_args)
    model = VideoTextModel(video, text, plan.logit_scale)
    model.input_spec = plan.input_spec  # what its input clips must be (mvclip.input_spec): read by preprocess, export, data
    return model.eval() if plan.inference_mode else model  # like `fuse`: the inference form is for eval


def _build_side_encoder(plan: _ModelPlan, stages: list[Stage]) -> SideVideoEncoder:
    """Built in this order (backbone head, side stem, fusions, side blocks, side head, backbone stem) so a seed
    gives the same weights as before the parts were registered blocks."""
    side = plan.side
    head = plan.head.build()
    network = SideNetwork(side.stem.build(), [f.build() for f in side.fusions], [[b.build() for b in group] for group in side.blocks])
    side_head = side.head.build(backbone_head=head)
    return SideVideoEncoder(plan.stem.build(), stages, head, plan.num_frames, network, side_head, side.fusion_points, side.fusion_layers)


def _choice(value: Any, choices: tuple[str, ...], path: str) -> str:
    if value not in choices:
        raise ConfigError(f"{path}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _check_keys(cfg: Any, allowed: set[str], path: str) -> None:
    if not isinstance(cfg, (Mapping, DictConfig)):
        raise ConfigError(f"{path}: expected a mapping, got {cfg!r}")
    unknown = sorted(set(cfg.keys()) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(sorted(allowed))}")


def _get(cfg: Any, key: str, path: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ConfigError(f"{path}: missing `{key}`")
    return cfg[key]


def _positive_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{path}: expected a positive integer, got {value!r}")
    return value


def _non_negative_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{path}: expected a non-negative integer, got {value!r}")
    return value
