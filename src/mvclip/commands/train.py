"""`python -m mvclip fit|validate|test|predict --config RECIPE.yaml`: LightningCLI over VideoTextModule and the data module.

OmegaConf mode is on (interpolation in recipes), dotted overrides work (`--model.freeze=[text]`,
`--data.frames=16`), and `--print_config` shows the resolved recipe.
"""
from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from mvclip.callbacks import EmbeddingWriter
from mvclip.datamodules.datamodule import VideoTextDataModule
from mvclip.lightning_module import VideoTextModule
from mvclip.metrics import print_table


class MVClipCLI(LightningCLI):
    """LightningCLI with mvclip's defaults and an end-of-fit report (best checkpoint, logs, last results)."""

    def before_instantiate_classes(self) -> None:
        """`fit --ckpt_path last` continues the latest run directory instead of opening a new `version_N`,
        so Lightning finds that run's `last.ckpt` and keeps writing beside it."""
        if self.subcommand != "fit":
            return
        config = self.config["fit"]
        logger = config.trainer.get("logger")
        if config.get("ckpt_path") != "last" or not logger or not hasattr(logger, "init_args"):
            return
        args = logger.init_args
        if args.get("version") is not None or "save_dir" not in args:
            return
        run_root = Path(args.save_dir) / (args.get("name") or "lightning_logs")
        versions = [int(p.name.split("_", 1)[1]) for p in run_root.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
        if versions:
            args.version = max(versions)

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


def main(argv: list[str]) -> int:
    # LightningCLI reads sys.argv itself; `python -m mvclip fit ...` already has the right argv.
    sys.argv = [sys.argv[0], *argv]
    MVClipCLI(
        VideoTextModule,
        VideoTextDataModule,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    return 0
