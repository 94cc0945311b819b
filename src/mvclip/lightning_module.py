"""VideoTextModule: the LightningModule that trains and evaluates a VideoTextModel with the loss a recipe chooses (VTC by default)."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.plugins.precision import MixedPrecision
import torch
from omegaconf import OmegaConf

from mvclip.builder import DEFAULT_MODEL_CONFIG, apply_input, apply_overrides, build_model, load_config
from mvclip.checkpointing import checkpoint_stages
from mvclip.checkpoints import LoadReport, load_weights
from mvclip.config_checks import is_finite_real
from mvclip.contracts import no_decay_names
from mvclip.layers.memory_format import to_channels_last
from mvclip.errors import ConfigError
from mvclip.eval_card import CARD_KEY, EvalCard, EvalProtocol, make_card, split_record, write_card
from mvclip.freezing import FreezePlan, apply_freezing, parts_filter, plan_freezing
from mvclip.losses import ModelOutputs, build_loss, clamp_logit_scale_
from mvclip.markdown import print_table
from mvclip.metrics import RetrievalMetric
from mvclip.portable_config import CHECKPOINT_KEY, plain_data, portable_config
from mvclip.pretrained import PretrainedReport, declared_keys, load_pretrained
from mvclip.resume import SPEC_KEY, check_restored_checkpoint, rescale_learning_rates
from mvclip.schedule import warmup_cosine
from mvclip.temporal_metrics import TemporalMetric, shuffle_order
from mvclip.zeroshot import ZeroShotAccuracy, build_classifier, class_names_of, templates_of

TEMPORAL_EVAL = ("reverse", "shuffle")


def prefix_lr_multipliers(model: torch.nn.Module, lr_mult: dict[str, float]) -> dict[str, str]:
    """Parameter name -> the `lr_mult` prefix that applies to it (the longest matching one, on a dot boundary).

    A prefix matching no parameter, or a negative multiplier, is a config error before the first step."""
    names = [n for n, _ in model.named_parameters()]
    matched: dict[str, str] = {}
    for prefix in sorted(lr_mult, key=len):
        value = lr_mult[prefix]
        if not is_finite_real(value) or value < 0:
            raise ConfigError(f"model.lr_mult.{prefix}: expected a finite number >= 0, got {value!r}")
        hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            roots = sorted({n.split(".")[0] for n in names})
            raise ConfigError(f"model.lr_mult.{prefix}: matches no parameter (names start with {roots}, e.g. 'text', 'video.stages.3')")
        matched.update(dict.fromkeys(hits, prefix))  # longer prefixes come later and win
    return matched


def fused_adamw_applies(groups: list[dict[str, Any]]) -> bool | None:
    """True when every parameter is a floating tensor on the CPU or a CUDA device: AdamW's fused kernel then does the
    same update in one pass over all tensors instead of a dozen ops per tensor (`optimizer.step()` on the demo's model
    52 -> 9 ms, docs/training.md). None (PyTorch's choice) elsewhere."""
    params = [p for group in groups for p in group["params"]]
    return True if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) else None


class VideoTextModule(L.LightningModule):
    """Video-text contrastive training of a model composed in YAML, with retrieval and zero-shot evaluation.

    Args:
        model: the model to train: a model YAML path, a preset name of `recipes/models/` (`mobileviclip_tiny`) or the
            YAML's mapping.
        overrides: dotted-key edits of the model config (`{video.stages.3.block: attention}`), for sweeps.
        input: changes to the model's input description (`{resolution: 64, frames: 4}`; `mvclip.input_spec`): what
            the data module then reads, and what checkpoints and exports carry. The data section states none of it.
        freeze: parameter patterns not to train (`[text]` is MobileViCLIP's default).
        trainable: if given, the only parameter patterns to train (e.g. `[temporal]`).
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay; none on norms, biases and what blocks declare (`no_decay_state`: layer
            scales, TPE, positional tables; the logit scale).
        betas: AdamW's betas.
        eps: AdamW's epsilon.
        warmup_steps: steps of linear warmup, then cosine decay over the run's optimizer steps.
        min_lr_ratio: where the cosine decay ends, as a fraction of `lr`.
        logit_scale: initial log scale (default: the model config's, ln(1/0.07)).
        learn_logit_scale: train the logit scale; false holds it fixed.
        max_logit_scale: the learned scale is clamped to at most this (as a scale, 100 by default) after every step.
        pretrained: image-text weights to start from (Apple's mobileclip_s0.pt / s2.pt, timm fastvit_mci*, open_clip
            MobileCLIP, or mvclip names; see docs/weights.md): spatial weights, text tower and logit scale are loaded,
            temporal additions start as the identity. The load report is printed.
        init_from: an mvclip checkpoint to start from (fine-tuning), loaded after `pretrained`. An explicit
            `logit_scale` wins over the files' value.
        init_strict: every tensor of `pretrained` and `init_from` must land in the model and every model tensor their
            layout carries must be in them (false: load what fits).
        init_parts: take only these parts from `init_from` (parameter patterns in `freeze`'s syntax, e.g. `[text]`: a
            trained text tower from another run, as MobileViCLIP starts from a pretrained one); the rest keeps its
            initialization, and `init_strict` applies within the parts.
        pretrained_lr_mult: learning-rate multiplier for parameters that came from `pretrained` or `init_from`,
            relative to new ones.
        temporal_lr_mult: learning-rate multiplier for the parameters blocks declare as temporal (`temporal_state`:
            temporal convs, TPE, side networks), on top of `pretrained_lr_mult` where that applies.
        lr_mult: learning-rate multipliers by parameter-name prefix (`{text: 0.1}`), the longest matching prefix
            wins, on top of the two above. A text tower trained from scratch beside a video tower that cannot yet
            see time drops the words the video cannot show (docs/blocks.md, "Starting the temporal branch"); a
            slower text tower keeps them.
        zero_shot: optional `{class_names: [...], templates: [...]}` evaluated on labelled val/test batches; class_names
            may be a file (one per line) or a benchmark's shards folder, templates a prompt ensemble name (`kinetics`).
        evaluation: the benchmark protocol (`mvclip.eval_card.EvalProtocol`: benchmark, dual_softmax, dsl_scale,
            split_hash lock, retrieval); every evaluation leaves an evaluation card (docs/evaluation.md).
        temporal_eval: order tests run at validation and test (`reverse`, `shuffle`; default both): how far a clip's
            embedding moves when its frames are reversed or shuffled (`mvclip.temporal_metrics`). Twin accuracy is
            reported whenever the evaluation samples declare a `group`, at no extra cost.
        gather_with_grad: gather features across ranks with gradients (open_clip's local loss scheme).
        loss: the training loss, `{class_path: mvclip.losses.DistillationLoss, init_args: {weight: 0.5}}` (default:
            VTC); see docs/losses.md. Its parameters (SigLIP's bias) train with the model, without weight decay.
        channels_last: train with the 2-D conv weights (and so the feature maps) in `torch.channels_last`, the
            layout GPU and oneDNN kernels prefer (`mvclip.layers.memory_format`). Machine-dependent on CPU: 0.97x on the
            project's 2-core machine of 2026-11-29, 0.97x-1.34x on that of 2026-11-30 (`bench/train_speed.py`), so
            the demo recipe states it.
            A state dict does not record the layout.
        checkpointing: video stages (indices into `video.stages`, or `all`) whose block activations are recomputed in
            the backward instead of stored: less memory, about one more forward of those stages (`mvclip.checkpointing`).
            `side` for a model with a side network: its fusion points are recomputed instead.
    """

    def __init__(
        self,
        model: str | dict[str, Any] = DEFAULT_MODEL_CONFIG,
        overrides: dict[str, Any] | None = None,
        input: dict[str, Any] | None = None,
        freeze: list[str] | None = None,
        trainable: list[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.0,
        logit_scale: float | None = None,
        learn_logit_scale: bool = True,
        max_logit_scale: float = 100.0,
        pretrained: str | None = None,
        init_from: str | None = None,
        init_strict: bool = True,
        init_parts: list[str] | None = None,
        pretrained_lr_mult: float = 1.0,
        temporal_lr_mult: float = 1.0,
        lr_mult: dict[str, float] | None = None,
        zero_shot: dict[str, Any] | None = None,
        temporal_eval: list[str] | None = None,
        evaluation: dict[str, Any] | None = None,
        gather_with_grad: bool = True,
        channels_last: bool = False,
        loss: dict[str, Any] | str | None = None,
        checkpointing: list[int] | str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        loss_fn = build_loss(loss, gather_with_grad=gather_with_grad)  # first: a bad `model.loss` fails at once
        cfg, base_dir = load_config(model if isinstance(model, str) else dict(model))
        cfg = apply_input(apply_overrides(copy.deepcopy(cfg), overrides), input)
        self.model = build_model(cfg, base_dir=base_dir)
        # what an export needs to rebuild this model (with `inference_mode: true`)
        self.model_config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
        self.model_config_dir = base_dir
        # what checkpoints carry, so they rebuild this model whatever happens to its YAML (mvclip.portable_config)
        self.portable_model_config = portable_config(self.model_config, base_dir)
        self.model_spec: dict[str, Any] = {"model": plain_data(model), "overrides": plain_data(overrides)}
        self._resume_lr_ratio: float | None = None
        self.pretrained_report: PretrainedReport | None = None
        self.init_report: LoadReport | None = None
        self.pretrained_names: set[str] = set()
        if pretrained:
            self.pretrained_report = load_pretrained(self.model, pretrained, strict=init_strict)
            self.pretrained_names |= set(self.pretrained_report.loaded)
            print(f"pretrained {self.pretrained_report}")
        if init_parts is not None and not init_from:
            raise ConfigError(f"model.init_parts {init_parts!r}: set model.init_from to the checkpoint to take them from")
        if init_from:
            include = parts_filter(init_parts, path="model.init_parts") if init_parts is not None else None
            self.init_report = load_weights(self.model, init_from, strict=init_strict, include=include)
            if include is not None and not self.init_report.loaded:
                raise ConfigError(f"model.init_parts {list(init_parts or [])}: {init_from} holds none of these parts")
            self.pretrained_names |= set(self.init_report.loaded)
            if not init_strict:
                print(f"init_from {init_from}: {self.init_report}")
        if logit_scale is not None:
            self.model.logit_scale.data.fill_(float(logit_scale))
        self.model.logit_scale.requires_grad_(learn_logit_scale)
        self.max_log_scale = math.log(max_logit_scale)
        self.freeze_plan: FreezePlan = plan_freezing(self.model, freeze or [], trainable)
        if not learn_logit_scale:
            self.freeze_plan = FreezePlan(self.freeze_plan.frozen_parameters | {"logit_scale"}, self.freeze_plan.frozen_modules)
        apply_freezing(self.model, self.freeze_plan)
        if channels_last:
            to_channels_last(self.model)
        self.checkpointed_stages = checkpoint_stages(self.model.video, checkpointing)
        self.loss = loss_fn
        self.evaluation = EvalProtocol.from_config(evaluation)
        self.val_retrieval = RetrievalMetric(**self.evaluation.metric_options())
        self.test_retrieval = RetrievalMetric(**self.evaluation.metric_options())
        self.eval_card: EvalCard | None = None  # of the last evaluation; checkpoints carry it
        self.temporal_eval = tuple(TEMPORAL_EVAL if temporal_eval is None else temporal_eval)
        unknown = set(self.temporal_eval) - set(TEMPORAL_EVAL)
        if unknown:
            raise ConfigError(f"model.temporal_eval: {sorted(unknown)} not among {list(TEMPORAL_EVAL)}")
        self.val_temporal = TemporalMetric()
        self.test_temporal = TemporalMetric()
        self.temporal_names = {n for n, _ in self.model.named_parameters()} & declared_keys(self.model, "temporal_state")
        self.no_decay_names = no_decay_names(self.model)  # biases, norms and what blocks declare (`no_decay_state`)
        self.lr_mult_of = prefix_lr_multipliers(self.model, lr_mult or {})
        self.zero_shot_cfg = zero_shot
        self.val_zero_shot = ZeroShotAccuracy() if zero_shot else None
        self.test_zero_shot = ZeroShotAccuracy() if zero_shot else None
        self._text_cache: dict[bytes, torch.Tensor] = {}
        self.last_results: dict[str, dict[str, float]] = {}

    def setup(self, stage: str) -> None:
        """Hand the model's input description to the data module before anything is loaded: a data section that
        states another frame count, resolution, normalization or sampling is a ConfigError before step 1. So is a
        distillation feature term whose teachers (the training manifest's `embed_dim`) differ from the student's width."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "adopt_input"):
            spec = self.model_spec.get("model")
            datamodule.adopt_input(self.model.input_spec, f"model {spec}" if isinstance(spec, str) else "the model")
        check_widths = getattr(self.loss, "check_teacher_widths", None)
        projection = getattr(self.model.text, "projection", None)
        if stage == "fit" and check_widths and hasattr(datamodule, "training_teacher_embed_dims") and projection is not None:
            check_widths(datamodule.training_teacher_embed_dims(), int(projection.shape[-1]),
                         f"data.train ({datamodule.paths.get('train')}) with model.loss")

    # -- modes ------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> VideoTextModule:
        """Frozen parts stay in eval mode whatever Lightning asks, so their BatchNorm statistics stay."""
        super().train(mode)
        apply_freezing(self.model, self.freeze_plan)
        return self

    @property
    def text_frozen(self) -> bool:
        return self.model.text is not None and not any(p.requires_grad for p in self.model.text.parameters())

    # -- training ---------------------------------------------------------------------------
    def forward(self, video: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model(video, text)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        video_emb = self.model.encode_video(batch["video"], normalize=True)
        if self.text_frozen:
            with torch.no_grad():
                text_emb = self.model.encode_text(batch["text"], normalize=True)
        else:
            text_emb = self.model.encode_text(batch["text"], normalize=True)
        terms = self.loss(ModelOutputs(video_emb, text_emb, self.model.logit_scale.exp()), batch)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else float("nan")
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step} (batch {batch_idx}); "
                f"last learning rate {lr:.3g}. Lower the learning rate, raise warmup_steps, or check the data."
            )
        batch_size = batch["video"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, part in terms.items():
            if name != "loss":
                self.log(f"train/loss/{name}", part.detach(), batch_size=batch_size)
        self.log("train/logit_scale", self.model.logit_scale.exp(), batch_size=batch_size)
        return loss

    def on_train_start(self) -> None:
        """A resumed run with another `lr`: the restored optimizer and schedule follow it (see mvclip.resume)."""
        if self._resume_lr_ratio is not None:
            rescale_learning_rates(self.trainer, self._resume_lr_ratio)
            if self.trainer.is_global_zero:
                print(f"resumed with lr {self.hparams.lr:g}: learning rates of every parameter group and of the schedule "
                      f"scaled by {self._resume_lr_ratio:g}")
            self._resume_lr_ratio = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        clamp_logit_scale_(self.model.logit_scale, self.max_log_scale)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: (decay | no decay) x (from a file | new) x (temporal | not) x `lr_mult` prefix, frozen parameters
        left out; the loss's own parameters (`model.loss`, e.g. SigLIP's bias) join as new ones."""
        groups: dict[tuple[bool, bool, bool, str], list[torch.nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            no_decay = name in self.no_decay_names
            key = (no_decay, name in self.pretrained_names, name in self.temporal_names, self.lr_mult_of.get(name, ""))
            groups.setdefault(key, []).append(param)
        hp = self.hparams
        if not groups:
            raise ConfigError("model: every parameter is frozen; nothing to train (check model.freeze / model.trainable)")
        loss_no_decay = no_decay_names(self.loss)
        for name, param in self.loss.named_parameters():  # the loss's own (SigLIP's bias): new, plain learning rate
            if param.requires_grad:
                groups.setdefault((name in loss_no_decay, False, False, ""), []).append(param)
        return [
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else hp.weight_decay,
                "lr": hp.lr * (hp.pretrained_lr_mult if pretrained else 1.0) * (hp.temporal_lr_mult if temporal else 1.0)
                * (hp.lr_mult[prefix] if prefix else 1.0),
                "name": f"{'pretrained' if pretrained else 'new'}{'/temporal' if temporal else ''}{f'/{prefix}' if prefix else ''}"
                f"/{'no_decay' if no_decay else 'decay'}",
            }
            for (no_decay, pretrained, temporal, prefix), params in sorted(groups.items())
        ]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = self.parameter_groups()
        # Lightning's mixed-precision plugin refuses gradient clipping with a fused optimizer: there, PyTorch's choice
        mixed = isinstance(getattr(self.trainer, "precision_plugin", None), MixedPrecision)
        fused = None if mixed else fused_adamw_applies(groups)
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, fused=fused)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- checkpoints ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Frozen weights that came from `init_from` are not saved again: the file is the source of truth."""
        frozen_modules = tuple(f"{m}." for m in self.freeze_plan.frozen_modules)
        frozen = lambda key: key in self.freeze_plan.frozen_parameters or key.startswith(frozen_modules)  # noqa: E731
        skip = {f"model.{key}" for key in self.pretrained_names if frozen(key)}  # parameters and BatchNorm buffers
        for key in skip:
            checkpoint["state_dict"].pop(key, None)
        checkpoint["mvclip_omitted_frozen"] = sorted(skip)
        checkpoint[CHECKPOINT_KEY] = self.portable_model_config
        checkpoint[SPEC_KEY] = self.model_spec
        if self.eval_card is not None:
            checkpoint[CARD_KEY] = self.eval_card.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses a checkpoint of another model or other settings (mvclip.resume), then fills in omitted frozen weights."""
        self._resume_lr_ratio = check_restored_checkpoint(self, checkpoint)
        own = self.state_dict()
        for key in checkpoint.get("mvclip_omitted_frozen", []):
            checkpoint["state_dict"].setdefault(key, own[key])

    # -- evaluation -------------------------------------------------------------------------
    def _encode_eval_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings; with a frozen text branch each distinct caption is encoded once per run."""
        if not self.text_frozen:
            return self.model.encode_text(tokens, normalize=True)
        rows = [row.cpu().numpy().tobytes() for row in tokens]
        missing = [i for i, r in enumerate(rows) if r not in self._text_cache]
        if missing:
            fresh = self.model.encode_text(tokens[missing], normalize=True)
            for i, emb in zip(missing, fresh):
                self._text_cache[rows[i]] = emb.detach()
        return torch.stack([self._text_cache[r] for r in rows]).to(tokens.device)

    def _eval_step(self, batch: dict[str, Any], retrieval: RetrievalMetric, zero_shot: ZeroShotAccuracy | None,
                   temporal: TemporalMetric) -> dict[str, torch.Tensor]:
        """Updates the metrics and returns the batch's unit-norm embeddings, which callbacks get as `outputs`
        (`mvclip.callbacks.ResultGrid` draws its grid from them; Lightning keeps no step outputs, so this costs nothing)."""
        video = batch["video"]
        video_emb = self.model.encode_video(video, normalize=True)
        text_emb = self._encode_eval_text(batch["text"])
        keys = list(batch["key"])
        text_keys = [keys[i] for i in batch["text_video_index"].tolist()]
        if self.evaluation.retrieval:
            retrieval.update(video_emb, keys, text_emb, text_keys)
        if zero_shot is not None and "label" in batch:
            zero_shot.update(video_emb, batch["label"], keys)
        frames = video.shape[1]
        reordered = {
            "reversed_video": video.flip(1) if "reverse" in self.temporal_eval else None,
            "shuffled_video": video[:, shuffle_order(frames)] if "shuffle" in self.temporal_eval else None,
        }
        temporal.update(
            video_emb, keys, text_emb, batch["text_video_index"], groups=batch.get("group"),
            captions=[row.cpu().numpy().tobytes().hex() for row in batch["text"]],
            **{k: self.model.encode_video(v, normalize=True) if v is not None and frames > 1 else None for k, v in reordered.items()},
        )
        return {"video_emb": video_emb.detach(), "text_emb": text_emb.detach()}

    def _zero_shot_classifier(self) -> torch.Tensor:
        from mvclip.tokenizer import tokenize

        cfg = self.zero_shot_cfg or {}
        try:
            names, templates = class_names_of(cfg.get("class_names")), list(templates_of(cfg.get("templates")))
        except ValueError as error:
            raise ConfigError(str(error)) from error
        encode = lambda tokens: self.model.encode_text(tokens.to(self.device))  # noqa: E731
        return build_classifier(encode, tokenize, names, templates)

    def _start_eval(self, zero_shot: ZeroShotAccuracy | None, stage: str = "val") -> None:
        self.evaluation.check_split(split_record(self._split_pattern(stage)), f"data.{stage}")
        if zero_shot is not None:
            zero_shot.set_classifier(self._zero_shot_classifier())

    def on_validation_epoch_start(self) -> None:
        self._start_eval(self.val_zero_shot)

    def on_test_epoch_start(self) -> None:
        self._start_eval(self.test_zero_shot, "test")

    def _split_pattern(self, stage: str) -> str | None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return (getattr(datamodule, "paths", None) or {}).get(stage)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, self.val_retrieval, self.val_zero_shot, self.val_temporal)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, self.test_retrieval, self.test_zero_shot, self.test_temporal)

    def _finish_eval(self, stage: str, retrieval: RetrievalMetric, zero_shot: ZeroShotAccuracy | None,
                     temporal: TemporalMetric) -> None:
        results = dict(retrieval.compute()) if self.evaluation.retrieval else {}
        retrieval.reset()
        if temporal.update_called:
            results.update({f"temporal/{k}": v for k, v in temporal.compute().items()})
            temporal.reset()
        classified = zero_shot is not None and zero_shot.update_called  # labelled clips: the prompts were used
        if classified:
            results.update({f"zeroshot/{k}": v for k, v in zero_shot.compute().items()})
            zero_shot.reset()
        self.log_dict({f"{stage}/{k}": float(v) for k, v in results.items()}, sync_dist=False, rank_zero_only=True)
        self.last_results[stage] = {k: float(v) for k, v in results.items()}
        self.eval_card = make_card(self.evaluation, split_record(self._split_pattern(stage)), self.model.input_spec, stage,
                                   self.last_results[stage], int(self.global_step), self.zero_shot_cfg if classified else None)
        if stage == "test" and self.trainer.is_global_zero and self.trainer.log_dir:
            print(f"evaluation card: {write_card(self.eval_card, Path(self.trainer.log_dir) / 'eval_card.json')}")
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            print("\n" + print_table(results, title=f"{stage} (epoch {self.current_epoch}, step {self.global_step})"))

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val", self.val_retrieval, self.val_zero_shot, self.val_temporal)

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test", self.test_retrieval, self.test_zero_shot, self.test_temporal)

    # -- prediction -------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Embeddings with their keys, for search outside mvclip (see `mvclip.callbacks.EmbeddingWriter`)."""
        keys = list(batch["key"])
        out = {"key": keys, "video": self.model.encode_video(batch["video"], normalize=True).cpu()}
        if "text" in batch:
            index = batch.get("text_video_index", torch.arange(len(keys)))
            out["text"] = self.model.encode_text(batch["text"], normalize=True).cpu()
            out["text_key"] = [keys[i] for i in index.tolist()]
        return out

