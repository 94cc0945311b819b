"""`python -m mvclip fit|validate|test|predict --config RECIPE.yaml`: LightningCLI over VideoTextModule and the data module.

OmegaConf mode is on (interpolation in recipes), dotted overrides work (`--model.freeze=[text]`,
`--data.frames=16`), and `--print_config` shows the resolved recipe. Options are snake_case, as in every mvclip
command; kebab-case spellings (`--ckpt-path`) and `--ckpt` for `--ckpt_path` are accepted too. With `--ckpt_path` (a
file or `last`) the checkpoint's model is rebuilt from the config stored in it and its settings are checked against the
command line's (`mvclip.resume`). Configuration errors end the command with one line naming the key, and exit code 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.trainer.states import TrainerFn

from mvclip.callbacks import EmbeddingWriter
from mvclip.commands.options import program, snake_case_options
from mvclip.datamodules.datamodule import VideoTextDataModule
from mvclip.errors import USER_ERRORS, CheckpointError
from mvclip.lightning_module import VideoTextModule
from mvclip.markdown import print_table
from mvclip.resume import (
    OMITTED_KEY, conflict_error, hparam_conflicts, model_config_to_build, same_value, saved_hparams, saved_spec,
)

CHECKPOINT_SUBCOMMANDS = ("fit", "validate", "test", "predict")
LIGHTNING_ONLY_CKPT_PATHS = ("best", "hpc", "registry")


class MVClipCLI(LightningCLI):
    """LightningCLI with mvclip's defaults and an end-of-fit report (best checkpoint, logs, last results)."""

    def before_instantiate_classes(self) -> None:
        """`fit --ckpt_path last` continues the latest run directory instead of opening a new `version_N`,
        so Lightning finds that run's `last.ckpt` and keeps writing beside it; a checkpoint named by its path
        continues its own run directory (`<save_dir>/<name>/version_N/checkpoints/...`) the same way."""
        if self.subcommand != "fit":
            return
        config = self.config["fit"]
        logger = config.trainer.get("logger")
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or not logger or not hasattr(logger, "init_args"):
            return
        args = logger.init_args
        if args.get("version") is not None or "save_dir" not in args:
            return
        run_root = Path(args.save_dir) / (args.get("name") or "lightning_logs")
        if ckpt_path != "last":
            run_dir = Path(ckpt_path).resolve().parent.parent
            if run_dir.parent == run_root.resolve() and run_dir.name.startswith("version_") and run_dir.name[8:].isdigit():
                args.version = int(run_dir.name[8:])
            return
        versions = [int(p.name.split("_", 1)[1]) for p in run_root.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
        if versions:
            args.version = max(versions)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        self._cli_args = args  # kept to parse again with a checkpoint's settings as defaults
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Lightning would overwrite the parsed `model.*` with the checkpoint's hyperparameters (dropping the
        command line's values without a word, for a file but not for `last`); `after_instantiate_classes` does it."""

    def after_instantiate_classes(self) -> None:
        """With `--ckpt_path` (a file, or `last` resolved as Lightning does): read it safely, take its settings as the
        defaults, refuse command-line or recipe values that differ (naming the keys; `lr` and evaluation options
        may change, see mvclip.resume), and rebuild its model from the config stored in it."""
        subcommand = self.subcommand
        if subcommand not in CHECKPOINT_SUBCOMMANDS or not self.config_init[subcommand].get("ckpt_path"):
            return
        from mvclip.export import read_checkpoint

        path = self._resolved_ckpt_path(subcommand, self.config_init[subcommand]["ckpt_path"])
        if path is None:
            return  # `last` with nothing to resume from (Lightning warns and starts afresh), or `best`/`hpc`
        checkpoint = read_checkpoint(path)
        if "pytorch-lightning_version" not in checkpoint or (subcommand == "fit" and "optimizer_states" not in checkpoint):
            raise CheckpointError(
                f"{path}: holds weights but not the training state Lightning {'resumes' if subcommand == 'fit' else 'restores'} "
                f"(not written by `fit`); start from its weights with --model.init_from={path} instead of --ckpt_path"
            )
        self._parse_with_checkpoint_defaults(subcommand, {**saved_hparams(checkpoint), **saved_spec(checkpoint)})
        args = self.config[subcommand]["model"].as_dict()
        spec = _spec(args)
        stored = model_config_to_build(checkpoint, path, spec, warn=lambda line: print(f"warning: {line}", file=sys.stderr))
        training = subcommand == "fit"
        errors, _ = hparam_conflicts(saved_hparams(checkpoint), args, training=training, omitted_frozen=bool(checkpoint.get(OMITTED_KEY)))
        if errors:
            raise conflict_error(path, errors, training=training)
        if stored is not None:
            args.update(model=stored, overrides=None)
        if self._needs_rebuild(args, stored):
            self.model = VideoTextModule(**args)
        self.model.model_spec = spec
        self.config_init[subcommand]["ckpt_path"] = str(path)  # the file checked is the file restored

    def _resolved_ckpt_path(self, subcommand: str, ckpt_path: str) -> Path | None:
        if str(ckpt_path).lower() in LIGHTNING_ONLY_CKPT_PATHS or str(ckpt_path).lower().startswith("registry:"):
            return None  # meaningful to Lightning alone (the best model of this process's fit, SLURM, a registry)
        if ckpt_path != "last":
            return Path(ckpt_path)
        # Lightning's own resolution (the newest last*.ckpt of the run's checkpoint folders), so both agree
        resolved = self.trainer._checkpoint_connector._parse_ckpt_path(TrainerFn(subcommand), "last", model_provided=True, model_connected=False)
        return Path(resolved) if resolved else None

    def _parse_with_checkpoint_defaults(self, subcommand: str, hparams: dict[str, Any]) -> None:
        """Parse the command line again over the checkpoint's settings: what then differs was asked for explicitly."""
        parser = self._subcommand_parsers[subcommand]
        known = parser.get_defaults()
        parser.set_defaults({f"model.{k}": v for k, v in hparams.items() if f"model.{k}" in known})
        super().parse_arguments(self.parser, self._cli_args)
        for callback in self.trainer.callbacks:
            if isinstance(callback, SaveConfigCallback):
                callback.config = self.config[subcommand]  # the run's config.yaml records what is used

    def _needs_rebuild(self, args: dict[str, Any], stored: dict[str, Any] | None) -> bool:
        module = self.model
        if stored is not None and not same_value(stored, module.portable_model_config):
            return True
        current = {k: v for k, v in module.hparams.items() if not str(k).startswith("_")}
        return any(not same_value(current.get(k), v) for k, v in args.items() if k not in ("model", "overrides"))

    def before_predict(self) -> None:
        """`predict` writes embeddings without extra configuration: add an EmbeddingWriter unless the recipe has one."""
        if not any(isinstance(cb, EmbeddingWriter) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(EmbeddingWriter(output_dir=str(Path(self.trainer.default_root_dir) / "embeddings")))

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        lines = []
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "best_model_path", ""):
            score = f" ({ckpt.monitor} = {float(ckpt.best_model_score):.2f})" if ckpt.best_model_score is not None else ""
            lines.append(f"best checkpoint: {ckpt.best_model_path}{score}")
        if ckpt is not None and getattr(ckpt, "last_model_path", ""):
            lines.append(f"last checkpoint: {ckpt.last_model_path}")
        if trainer.logger is not None and trainer.logger.log_dir:
            lines.append(f"logs: {trainer.logger.log_dir}  (tensorboard --logdir {trainer.logger.save_dir})")
        results = getattr(self.model, "last_results", {}).get("val")
        if results:
            lines.insert(0, print_table(results, title=f"final validation (step {trainer.global_step})"))
        print("\n" + "\n".join(lines))


def _spec(args: dict[str, Any]) -> dict[str, Any]:
    return {"model": args.get("model"), "overrides": args.get("overrides")}


def main(argv: list[str]) -> int:
    # LightningCLI reads sys.argv itself; `--ckpt-path`/`--ckpt` and other kebab-case spellings become its snake_case
    argv = snake_case_options(argv)
    sys.argv = [sys.argv[0], *argv]
    try:
        MVClipCLI(
            VideoTextModule,
            VideoTextDataModule,
            parser_kwargs={"parser_mode": "omegaconf", "prog": program()},
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    except USER_ERRORS as error:  # a bad config or input: one line naming it, as every mvclip command prints
        print(f"mvclip {argv[0] if argv else 'fit'}: {error}", file=sys.stderr)
        return 2
    return 0
