"""Ablation sweeps: run a recipe once per (variant, seed), read each run's export, write the paper-style table.

A sweep file (YAML) names a base recipe, the seeds, overrides common to every run and an ordered set of
variants, each a few dotted-key overrides of the recipe (see `docs/ablations.md`):

    name: block_design                  # default: the file's stem
    base: recipes/small.yaml            # `--config` overrides it
    description: one paragraph for the report
    seeds: [0, 1]
    checkpoint: last                    # which export's metrics to read: last | best
    overrides: {trainer.max_steps: 150}
    baseline: frame_mean                # optional: the table shows T2V R@1 relative to it
    variants:
      frame_mean: {model.overrides: {video.stages.3.block: attention}}
      both: {}                          # the recipe as it is

Every run is a subprocess `python -m mvclip fit --config BASE --seed_everything S ... --key=value` whose
TensorBoard logger writes to `<root>/<variant>/seed<S>` (the run directory; checkpoints in `checkpoints/`,
the subprocess output in `sweep.log`). A run is finished when the `FuseExport` callback wrote the
`metrics.json` of the chosen kind beside its checkpoint (`checkpoints/<stem>.export/metrics.json`);
finished runs are skipped, so an interrupted sweep continues where it stopped.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mvclip.atomic import atomic_write
from mvclip.errors import ConfigError
from mvclip.extras import installed, missing_note
from mvclip.markdown import table, write_section

SWEEP_KEYS = ("name", "base", "description", "seeds", "checkpoint", "overrides", "variants", "baseline")
CHECKPOINT_KINDS = ("last", "best")
# Set by the sweep for every run: a sweep file (or --set) may not set them.
RESERVED_KEYS = {
    "config": "the recipe is `base` (or --config)",
    "seed_everything": "the sweep sets it from `seeds`",
    "trainer.logger": "the sweep points the logger at the run directory",
    "trainer.logger.init_args.save_dir": "the sweep sets it (the sweep root, see --root)",
    "trainer.logger.init_args.name": "the sweep sets it (the variant name)",
    "trainer.logger.init_args.version": "the sweep sets it (seed<S>)",
    "trainer.default_root_dir": "the run directory is the logger's",
}
SECTIONS = ("trainer", "model", "data", "optimizer", "lr_scheduler")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_RUN_RECORD = "sweep.json"
_RUN_LOG = "sweep.log"

# (column key, table header, path in metrics.json, scale)
QUALITY = (
    ("t2v_r1", "T2V R@1", ("validation", "val/t2v/R@1"), 1.0),
    ("t2v_r5", "T2V R@5", ("validation", "val/t2v/R@5"), 1.0),
    ("v2t_r1", "V2T R@1", ("validation", "val/v2t/R@1"), 1.0),
    ("v2t_r5", "V2T R@5", ("validation", "val/v2t/R@5"), 1.0),
    ("zs_top1", "ZS top-1", ("validation", "val/zeroshot/top1"), 1.0),
    ("twin_acc", "twin acc", ("validation", "val/temporal/twin_acc"), 1.0),
    ("reverse", "reverse Δ", ("validation", "val/temporal/reverse"), 1.0),
)
# columns shown only when some run reported them (datasets without labels or groups, older exports)
OPTIONAL_QUALITY = ("zs_top1", "twin_acc", "reverse")
COSTS = (
    ("params_trainable_m", ("params", "trainable"), 1e-6),
    ("params_total_m", ("params", "total"), 1e-6),
    ("params_video_fused_m", ("params", "video_fused"), 1e-6),
    ("flops_video_g", ("flops", "video_clip"), 1e-9),
    ("flops_text_g", ("flops", "text"), 1e-9),
    ("latency_fused_ms", ("latency_ms", "video_fused"), 1.0),
    ("latency_unfused_ms", ("latency_ms", "video_unfused"), 1.0),
    ("fused_speedup", ("latency_ms", "fused_speedup"), 1.0),
    ("train_time_min", ("train", "time_s"), 1 / 60),
    ("peak_memory_mb", ("train", "peak_memory_mb"), 1.0),
    ("steps", ("train", "steps"), 1.0),
)


# -- the sweep file ------------------------------------------------------------------------------------


@dataclass
class Sweep:
    """A validated sweep file (with the command line's --config/--set/--only applied)."""

    name: str
    base: str
    seeds: list[int]
    variants: dict[str, dict[str, Any]]
    overrides: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = "last"
    baseline: str | None = None
    description: str = ""
    path: Path | None = None
    only: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # --set: over everything else

    def variant_overrides(self, variant: str) -> dict[str, Any]:
        """The common overrides, then the variant's, then --set's (the later wins on the same key)."""
        return {**self.overrides, **self.variants[variant], **self.extra}

    @property
    def selected(self) -> list[str]:
        return [v for v in self.variants if not self.only or v in self.only]


def _check_overrides(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of dotted keys to values (e.g. {{trainer.max_steps: 150}}), got {value!r}")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise ConfigError(f"{where}: {key!r} is not a dotted config key (like data.sampling or model.overrides)")
        for reserved, why in RESERVED_KEYS.items():
            if key == reserved or key.startswith(reserved + "."):
                raise ConfigError(f"{where}.{key}: may not be set in a sweep: {why}")
        if key in SECTIONS:
            raise ConfigError(
                f"{where}.{key}: a whole section would replace the recipe's; give dotted keys instead "
                f"(e.g. {key}.{next(iter(val)) if isinstance(val, dict) and val else 'x'}: ...)"
            )
        out[key] = val
    return out


def parse_assignments(items: Iterable[str], where: str = "--set") -> dict[str, Any]:
    """`key=value` strings (value read as YAML: `150`, `fps`, `[text]`, `{a.b: c}`) -> a mapping."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"{where} {item!r}: expected KEY=VALUE (e.g. --set trainer.max_steps=20)")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"{where} {item!r}: the value is not valid YAML: {error}") from error
    return _check_overrides(out, where)


def load_sweep(
    path: str | os.PathLike[str],
    *,
    config: str | None = None,
    extra: dict[str, Any] | None = None,
    only: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
) -> Sweep:
    """Read and validate a sweep file; nothing runs before this has passed. Errors name the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level (name, base, seeds, overrides, variants, ...)")
    unknown = [k for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(SWEEP_KEYS)}")

    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{path}: name: {name!r} must be letters, digits, '_', '-' or '.' (it names the output folder)")

    base = config or data.get("base")
    if not base:
        raise ConfigError(f"{path}: base: no recipe; set `base:` in the sweep file or pass --config")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a recipe path, got {base!r}")
    if not Path(base).is_file():
        beside = path.parent / base
        if config is None and beside.is_file():
            base = str(beside)
        else:
            where = "--config" if config else f"{path}: base"
            raise ConfigError(f"{where}: recipe not found: {base}")

    where = "--seeds" if seeds is not None else f"{path}: seeds"
    seeds = list(seeds) if seeds is not None else data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"{where}: expected a non-empty list of integers (e.g. [0, 1]), got {seeds!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: every seed must be a non-negative integer, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: {seeds!r} repeats a seed")

    checkpoint = data.get("checkpoint", "last")
    if checkpoint not in CHECKPOINT_KINDS:
        raise ConfigError(f"{path}: checkpoint: expected one of {', '.join(CHECKPOINT_KINDS)}, got {checkpoint!r}")

    description = data.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"{path}: description: expected text, got {description!r}")

    overrides = _check_overrides(data.get("overrides"), f"{path}: overrides")

    variants_raw = data.get("variants")
    if not isinstance(variants_raw, dict) or not variants_raw:
        raise ConfigError(f"{path}: variants: expected a non-empty mapping of variant name -> overrides, got {variants_raw!r}")
    variants: dict[str, dict[str, Any]] = {}
    for vname, vover in variants_raw.items():
        if not isinstance(vname, str) or not _NAME.match(vname):
            raise ConfigError(f"{path}: variants: {vname!r} is not a valid name (letters, digits, '_', '-', '.'; it names a folder)")
        variants[vname] = _check_overrides(vover, f"{path}: variants.{vname}")

    baseline = data.get("baseline")
    if baseline is not None and baseline not in variants:
        raise ConfigError(f"{path}: baseline: {baseline!r} is not one of the variants ({', '.join(variants)})")

    for wanted in only:
        if wanted not in variants:
            raise ConfigError(f"--only {wanted}: not a variant of {path} ({', '.join(variants)})")
    return Sweep(name=name, base=str(base), seeds=list(seeds), variants=variants, overrides=overrides,
                 checkpoint=checkpoint, baseline=baseline, description=description.strip(), path=path, only=list(only),
                 extra=dict(extra or {}))


# -- command lines --------------------------------------------------------------------------------------


def _float_text(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:  # YAML 1.1 reads 1e-05 as a string; 1.0e-05 is a float
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def cli_value(value: Any, nested: bool = False) -> str:
    """A value as YAML flow text that jsonargparse reads back unchanged: `150`, `fps`, `[text]`, `{"a.b": "c"}`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, str):
        if not nested and value and not value[0].isspace() and not value[-1].isspace():
            try:
                if yaml.safe_load(value) == value and not any(c in value for c in "{}[],#&*!|>'\"%@`"):
                    return value
            except yaml.YAMLError:
                pass
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {cli_value(v, True)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(cli_value(v, True) for v in value) + "]"
    raise ConfigError(f"cannot pass a {type(value).__name__} ({value!r}) on the command line")


@dataclass
class Run:
    """One (variant, seed) training run."""

    variant: str
    seed: int
    run_dir: Path
    args: list[str]  # after `python -m mvclip`
    base: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.variant} seed{self.seed}"

    def shell_command(self) -> str:
        return "python -m mvclip " + shlex.join(self.args)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "mvclip", *self.args]


def default_root(sweep: Sweep) -> Path:
    return Path("runs") / "sweeps" / sweep.name


def plan_runs(sweep: Sweep, root: Path, variants: Sequence[str] | None = None) -> list[Run]:
    """Every (variant, seed) of the selected variants, in file order, seeds inner."""
    runs = []
    for variant in variants if variants is not None else sweep.selected:
        for seed in sweep.seeds:
            args = [
                "fit", "--config", sweep.base, "--seed_everything", str(seed),
                f"--trainer.logger.init_args.save_dir={root}",
                f"--trainer.logger.init_args.name={variant}",
                f"--trainer.logger.init_args.version=seed{seed}",
            ]
            overrides = sweep.variant_overrides(variant)
            if "data.seed" not in overrides:  # the seed varies the data order and augmentation too, not only the init
                args.append(f"--data.seed={seed}")
            args += [f"--{key}={cli_value(value)}" for key, value in overrides.items()]
            runs.append(Run(variant, seed, root / variant / f"seed{seed}", args, sweep.base, overrides))
    return runs


# -- finished, failed, pending --------------------------------------------------------------------------


def find_export(run_dir: Path, kind: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest `checkpoints/*.export/metrics.json` of this kind (`last` or `best`), or None."""
    found = []
    for metrics in (Path(run_dir) / "checkpoints").glob("*.export/metrics.json"):
        try:
            data = json.loads(metrics.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("kind") == kind:
            found.append((metrics.stat().st_mtime, metrics, data))
    if not found:
        return None
    _, metrics, data = max(found, key=lambda item: item[0])
    return metrics, data


_ERROR_LINE = re.compile(
    r"^\s*(?:[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b.*|error:.*|.*\bKilled\b.*|.*\bout of memory\b.*)$", re.I
)
_NOISE = re.compile(r"(Warning|warn\(|^\s*(File |Traceback)|^\s*\^+\s*$)")


def error_line(log_text: str) -> str:
    """The last meaningful error line of a run's output (a Python exception, a parser `error:`), else its last line."""
    lines = [line.rstrip() for line in log_text.splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if _ERROR_LINE.match(line) and "Warning" not in line:
            text = line.strip()
            follow = [l.strip() for l in lines[i + 1 : i + 4] if l.strip()]
            if text.endswith(":") and follow:  # jsonargparse: "error: Parser key "model":" then the reason
                text = f"{text} {' '.join(follow[:2])}"
            return text[:300]
    for line in reversed(lines):
        if line.strip() and not _NOISE.search(line):
            return line.strip()[:300]
    return "(no output)"


@dataclass
class RunResult:
    """What one (variant, seed) left on disk."""

    variant: str
    seed: int
    run_dir: Path
    status: str  # done | failed | pending
    metrics: dict[str, Any] | None = None
    metrics_path: Path | None = None
    error: str = ""

    def value(self, path: tuple[str, str], scale: float = 1.0) -> float | None:
        if self.metrics is None:
            return None
        node = self.metrics.get(path[0])
        value = node.get(path[1]) if isinstance(node, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value) * scale


def _read_record(run_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((Path(run_dir) / _RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def changed_settings(run: Run) -> str:
    """How the settings a finished run recorded differ from the ones planned now ('' when they match or are unknown)."""
    record = _read_record(run.run_dir)
    if "overrides" not in record:
        return ""
    now = json.loads(json.dumps(run.overrides))
    before = record.get("overrides") or {}
    diffs = [f"{k}: {cli_value(before.get(k))} -> {cli_value(now.get(k))}" for k in dict.fromkeys([*before, *now]) if before.get(k) != now.get(k)]
    if record.get("base") != run.base:
        diffs.insert(0, f"base: {record.get('base')} -> {run.base}")
    return "; ".join(diffs)


def collect_run(run_dir: Path, variant: str, seed: int, kind: str) -> RunResult:
    export = find_export(run_dir, kind)
    if export is not None:
        return RunResult(variant, seed, run_dir, "done", export[1], export[0])
    record = _read_record(run_dir)
    if record.get("status") == "failed":
        return RunResult(variant, seed, run_dir, "failed", error=str(record.get("error") or "failed"))
    note = "unfinished (interrupted?)" if (run_dir / _RUN_LOG).is_file() else ""
    return RunResult(variant, seed, run_dir, "pending", error=note)


# -- running --------------------------------------------------------------------------------------------


def preflight(sweep: Sweep, runs: Sequence[Run], *, cwd: str | None = None) -> None:
    """Before any training: parse each variant's command with `--print_config` and plan its model with the
    `model.overrides` applied, so a typo fails in seconds rather than after the first runs."""
    from omegaconf import OmegaConf

    from mvclip.builder import apply_overrides, load_config, plan_model

    seen = set()
    for run in runs:
        if run.variant in seen:
            continue
        seen.add(run.variant)
        where = f"{sweep.path}: variants.{run.variant}"
        proc = subprocess.run([*run.argv(), "--print_config"], capture_output=True, text=True, cwd=cwd,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
        if proc.returncode != 0:
            raise ConfigError(f"{where}: the recipe does not parse with these overrides: {error_line(proc.stderr + proc.stdout)}")
        try:
            config = yaml.safe_load(proc.stdout)
            model = config["model"]
        except (yaml.YAMLError, KeyError, TypeError):
            continue  # not our LightningModule's layout: the run itself will tell
        if not isinstance(model, dict) or not isinstance(model.get("model"), (str, dict)):
            continue
        try:
            cfg, base_dir = load_config(model["model"])
            cfg = apply_overrides(OmegaConf.create(OmegaConf.to_container(cfg)), model.get("overrides"))
            plan_model(cfg, path="model.model", base_dir=base_dir)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from error
        except Exception as error:  # a block's own argument check
            raise ConfigError(f"{where}: the model does not build: {type(error).__name__}: {error}") from error


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def execute(run: Run, kind: str, *, cwd: str | None = None) -> RunResult:
    """Run one training subprocess, output to `<run_dir>/sweep.log`; record why it failed if it did."""
    if run.run_dir.exists():  # unfinished leftovers (no export): start clean, or Lightning would write last-v1.ckpt
        shutil.rmtree(run.run_dir)
    run.run_dir.mkdir(parents=True)
    log = run.run_dir / _RUN_LOG
    started = time.time()
    record = {"variant": run.variant, "seed": run.seed, "command": run.shell_command(), "base": run.base,
              "overrides": run.overrides, "started": _dt.datetime.now().isoformat(timespec="seconds"), "status": "running"}
    _write_json(run.run_dir / _RUN_RECORD, record)
    with open(log, "w") as out:
        out.write(f"$ {run.shell_command()}\n\n")
        out.flush()
        proc = subprocess.run(run.argv(), stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    export = find_export(run.run_dir, kind)
    error = ""
    if proc.returncode != 0:
        why = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        error = f"{why}: {error_line(log.read_text(errors='replace'))}"
    elif export is None:
        error = (f"finished without a {kind} export (checkpoints/*.export/metrics.json); "
                 f"is mvclip.callbacks.FuseExport among the recipe's callbacks?")
    record.update(returncode=proc.returncode, duration_s=round(time.time() - started, 1),
                  status="failed" if error else "done", error=error)
    _write_json(run.run_dir / _RUN_RECORD, record)
    if error:
        return RunResult(run.variant, run.seed, run.run_dir, "failed", error=error)
    return RunResult(run.variant, run.seed, run.run_dir, "done", export[1], export[0])


# -- aggregation ----------------------------------------------------------------------------------------


@dataclass
class Stat:
    mean: float | None
    std: float | None  # sample std; None with fewer than two values
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        vals = [v for v in values if v is not None]
        if not vals:
            return cls(None, None, 0)
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))

    def text(self, digits: int = 2) -> str:
        if self.mean is None:
            return "–"
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass
class VariantRow:
    name: str
    overrides: dict[str, Any]
    runs: list[RunResult]
    stats: dict[str, Stat]
    ratio: float | None = None  # T2V R@1 mean / the baseline's

    @property
    def done(self) -> int:
        return sum(r.status == "done" for r in self.runs)

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.runs)

    @property
    def pending(self) -> int:
        return sum(r.status == "pending" for r in self.runs)

    @property
    def status(self) -> str:
        if self.done == len(self.runs):
            return "ok"
        parts = []
        if self.failed:
            first = next(r for r in self.runs if r.status == "failed")
            label = "failed" if self.failed == len(self.runs) else f"{self.failed} failed"
            parts.append(f"{label} (seed{first.seed}: {first.error})")
        if self.pending:
            parts.append(f"{self.pending} pending")
        return "; ".join(parts)

    @property
    def error(self) -> str:
        return " | ".join(f"seed{r.seed}: {r.error}" for r in self.runs if r.status == "failed")


def aggregate(sweep: Sweep, results: Sequence[RunResult]) -> list[VariantRow]:
    """Per variant, over its finished seeds: mean and sample std of every metric; cost columns too."""
    rows = []
    for variant in sweep.variants:
        runs = [r for r in results if r.variant == variant]
        done = [r for r in runs if r.status == "done"]
        stats = {key: Stat.of(r.value(path, scale) for r in done) for key, _, path, scale in QUALITY}
        stats.update({key: Stat.of(r.value(path, scale) for r in done) for key, path, scale in COSTS})
        stats["peak_memory_mb"] = Stat(max((v for r in done if (v := r.value(("train", "peak_memory_mb"))) is not None), default=None), None,
                                       stats["peak_memory_mb"].n)
        rows.append(VariantRow(variant, sweep.variants[variant], runs, stats))
    base = next((r for r in rows if r.name == sweep.baseline), None)
    if base is not None and base.stats["t2v_r1"].mean:
        for row in rows:
            if row.stats["t2v_r1"].mean is not None:
                row.ratio = row.stats["t2v_r1"].mean / base.stats["t2v_r1"].mean
    return rows


def side_by_side_latency(rows: Sequence[VariantRow], repeats: int = 20) -> dict[str, float]:
    """Fused CPU latency of one clip for each variant, timed in this one process with the variants interleaved.

    Each run's own `metrics.json` latency was taken right after its training, under whatever load the
    machine had then; timing every variant's fused export together makes the column comparable.
    """
    import torch

    from mvclip.export import interleaved_latency_ms, load_export

    candidates = {}
    for row in rows:
        run = next((r for r in row.runs if r.status == "done" and r.metrics_path is not None
                    and (r.metrics_path.parent / "model.safetensors").is_file()), None)
        if run is None:  # keep the runs' own measurements
            continue
        model = load_export(run.metrics_path.parent)
        shape = run.metrics.get("input", {}) if isinstance(run.metrics.get("input"), dict) else {}
        frames, res = int(shape.get("frames", model.video.num_frames)), int(shape.get("resolution", 224))
        clip = torch.rand(1, frames, 3, res, res, generator=torch.Generator().manual_seed(0))
        candidates[row.name] = lambda m=model, x=clip: m.encode_video(x)
    if not candidates:
        return {}
    with torch.no_grad():
        return interleaved_latency_ms(candidates, repeats=repeats, warmup=3)


def collect(sweep: Sweep, root: Path) -> list[VariantRow]:
    results = [collect_run(run.run_dir, run.variant, run.seed, sweep.checkpoint) for run in plan_runs(sweep, root, list(sweep.variants))]
    return aggregate(sweep, results)


# -- reports --------------------------------------------------------------------------------------------


def _cost(stat: Stat, digits: int = 2) -> str:
    return "–" if stat.mean is None else f"{stat.mean:.{digits}f}"


def table_rows(sweep: Sweep, rows: Sequence[VariantRow]) -> tuple[list[str], list[list[str]]]:
    shown = [(key, label) for key, label, *_ in QUALITY if key in OPTIONAL_QUALITY and any(row.stats[key].n for row in rows)]
    header = ["variant", "T2V R@1"]
    if sweep.baseline:
        header.append(f"vs {sweep.baseline}")
    header += ["T2V R@5", "V2T R@1", "V2T R@5"] + [label for _, label in shown]
    header += ["params M (train / total)", "GFLOPs / clip", "fused CPU ms", "train min", "peak MB", "seeds ok / failed", "status"]
    body = []
    for row in rows:
        s = row.stats
        name = f"{row.name} (baseline)" if row.name == sweep.baseline else row.name
        cells = [name, s["t2v_r1"].text()]
        if sweep.baseline:
            cells.append("–" if row.ratio is None else f"{row.ratio:.2f}×")
        cells += [s["t2v_r5"].text(), s["v2t_r1"].text(), s["v2t_r5"].text()] + [s[key].text() for key, _ in shown]
        params = "–" if s["params_total_m"].mean is None else f"{_cost(s['params_trainable_m'])} / {_cost(s['params_total_m'])}"
        cells += [params, _cost(s["flops_video_g"], 3), _cost(s["latency_fused_ms"]), _cost(s["train_time_min"], 1),
                  _cost(s["peak_memory_mb"], 0), f"{row.done} / {row.failed}", _short(row.status, 90)]
        body.append(cells)
    return header, body


def _short(text: str, limit: int) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown_table(sweep: Sweep, rows: Sequence[VariantRow]) -> str:
    header, body = table_rows(sweep, rows)
    return "\n".join(table(header, body))


def _notes(sweep: Sweep, rows: Sequence[VariantRow]) -> list[str]:
    done = [r for row in rows for r in row.runs if r.status == "done"]
    memory_kinds = sorted({str(r.metrics.get("train", {}).get("peak_memory_kind")) for r in done
                           if isinstance(r.metrics.get("train"), dict) and r.metrics["train"].get("peak_memory_kind")})
    inputs = sorted({(r.metrics["input"].get("frames"), r.metrics["input"].get("resolution")) for r in done
                     if isinstance(r.metrics.get("input"), dict)})
    steps = sorted({int(v) for r in done if (v := r.value(("train", "steps"))) is not None})
    seeds = ", ".join(map(str, sweep.seeds))
    clip = "; ".join(f"{f} frames at {res} px" for f, res in inputs) or "see the recipe"
    notes = [
        f"Validation retrieval (%) of each run's `{sweep.checkpoint}` checkpoint; mean ± sample std over seeds [{seeds}] "
        f"(a single value when one seed finished); a seed sets the initialization, the data order and the augmentation "
        f"(`--seed_everything S --data.seed=S`).",
    ]
    if any(row.stats["twin_acc"].n or row.stats["reverse"].n for row in rows):
        notes.append(
            "`twin acc`: how often a clip is closer to its own captions than to its group partner's (its time-reversed "
            "twin on the synthetic set; about 50 % for a model blind to frame order); `reverse Δ`: how far a clip's "
            "embedding moves when its frames are reversed, in % of the mean distance between different clips (0 for a "
            "frame-mean model). See `mvclip.temporal_metrics`."
        )
    if sweep.baseline:
        notes.append(f"`vs {sweep.baseline}`: mean T2V R@1 divided by the baseline's.")
    notes.append(
        f"Costs of the fused video encoder for one clip ({clip}): GFLOPs; CPU latency in ms, every variant's fused export "
        f"timed side by side in one process (interleaved, median of 20, {_threads()} threads); "
        f"training time in minutes (mean{', ' + '/'.join(map(str, steps)) + ' steps' if steps else ''}); "
        f"peak memory in MB (max over seeds{', ' + ', '.join(memory_kinds) if memory_kinds else ''})."
    )
    return notes


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _variant_lines(sweep: Sweep) -> list[str]:
    lines = []
    for name, overrides in sweep.variants.items():
        text = ", ".join(f"`{k}={cli_value(v)}`" for k, v in overrides.items()) or "the recipe as it is"
        lines.append(f"- `{name}`{' (baseline)' if name == sweep.baseline else ''}: {text}")
    if sweep.overrides:
        lines.append("- every variant: " + ", ".join(f"`{k}={cli_value(v)}`" for k, v in sweep.overrides.items()))
    if sweep.extra:
        lines.append("- every variant, from `--set` (over the above): " + ", ".join(f"`{k}={cli_value(v)}`" for k, v in sweep.extra.items()))
    return lines


def report_body(sweep: Sweep, rows: Sequence[VariantRow], command: str, date: str, image: str | None) -> str:
    """The report without its title: description, command, table, notes, variants, plot."""
    parts = []
    if sweep.description:
        parts += [sweep.description, ""]
    parts += [f"Command (run {date}):", "", "```", command, "```", "", markdown_table(sweep, rows), ""]
    parts += [f"- {note}" for note in _notes(sweep, rows)]
    parts += ["", "Variants (dotted overrides of `" + sweep.base + "`):", "", *_variant_lines(sweep), ""]
    if image is not None:
        parts += [f"![{sweep.name}: T2V R@1 against fused CPU latency]({image})", ""]
    return "\n".join(parts)


def _csv_text(header: list[str], rows: Iterable[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else (round(v, 6) if isinstance(v, float) else v) for v in row])
    return buffer.getvalue()


def variants_csv(sweep: Sweep, rows: Sequence[VariantRow]) -> str:
    header = ["variant", "baseline", "status", "seeds", "seeds_done", "seeds_failed", "seeds_pending"]
    for key, *_ in QUALITY:
        header += [f"{key}_mean", f"{key}_std"]
    header += ["t2v_r1_vs_baseline", *(key for key, *_ in COSTS), "error", "overrides"]
    out = []
    for row in rows:
        values: list[Any] = [row.name, row.name == sweep.baseline, row.status, len(row.runs), row.done, row.failed, row.pending]
        for key, *_ in QUALITY:
            values += [row.stats[key].mean, row.stats[key].std]
        values += [row.ratio, *(row.stats[key].mean for key, *_ in COSTS), row.error, json.dumps(row.overrides)]
        out.append(values)
    return _csv_text(header, out)


def runs_csv(sweep: Sweep, rows: Sequence[VariantRow]) -> str:
    header = ["variant", "seed", "status", "run_dir", "metrics_json", "step", *(key for key, *_ in QUALITY),
              *(key for key, *_ in COSTS), "peak_memory_kind", "error"]
    out = []
    for row in rows:
        for r in row.runs:
            train = (r.metrics or {}).get("train")
            out.append([r.variant, r.seed, r.status, str(r.run_dir), str(r.metrics_path or ""), (r.metrics or {}).get("step"),
                        *(r.value(path, scale) for _, _, path, scale in QUALITY), *(r.value(path, scale) for _, path, scale in COSTS),
                        train.get("peak_memory_kind") if isinstance(train, dict) else None, r.error])
    return _csv_text(header, out)


def write_plot(path: Path, sweep: Sweep, rows: Sequence[VariantRow]) -> Path | None:
    """Fused latency (x) against T2V R@1 (y), std error bars, one labelled point per variant (Figure 1's view);
    None, with a note, where matplotlib is not installed."""
    if not installed("plot"):
        print(missing_note("plot", "the latency-vs-R@1 plot"), file=sys.stderr)
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = [r for r in rows if r.stats["t2v_r1"].mean is not None and r.stats["latency_fused_ms"].mean is not None]
    for row in points:
        x, y = row.stats["latency_fused_ms"], row.stats["t2v_r1"]
        baseline = row.name == sweep.baseline
        ax.errorbar(x.mean, y.mean, yerr=y.std or 0.0, xerr=x.std or 0.0, fmt="s" if baseline else "o", capsize=4,
                    markersize=7, color="tab:gray" if baseline else "tab:blue", ecolor="0.55", elinewidth=1)
        label = row.name + (" (baseline)" if baseline else "") + (f" ({y.n} of {len(row.runs)} seeds)" if y.n < len(row.runs) else "")
        ax.annotate(label, (x.mean, y.mean), xytext=(6, 5),
                    textcoords="offset points", fontsize=9)
    if not points:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes, color="0.4")
    else:
        ax.margins(x=0.25, y=0.2)
    ax.set_xlabel("fused video encoder latency per clip, CPU (ms)")
    ax.set_ylabel("text-to-video R@1 (%)")
    seeds = len(sweep.seeds)
    ax.set_title(f"{sweep.name}: retrieval vs latency" + (f" (mean ± std, {seeds} seeds)" if seeds > 1 else ""), fontsize=11)
    ax.grid(True, alpha=0.3)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def write_reports(sweep: Sweep, rows: Sequence[VariantRow], root: Path, command: str,
                  docs: Path | None = None, date: str | None = None) -> list[Path]:
    """`ablation.md`, `ablation.csv` (one row per variant), `ablation_runs.csv` (one row per run), `ablation.png`;
    with `docs`, also the `## <name>` section of that Markdown file and its copy of the plot."""
    date = date or _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    written = []
    png = write_plot(root / "ablation.png", sweep, rows)
    md = f"# Ablation: {sweep.name}\n\n" + report_body(sweep, rows, command, date, png and png.name)
    written.append(atomic_write(root / "ablation.md", lambda tmp: tmp.write_text(md)))
    written.append(atomic_write(root / "ablation.csv", lambda tmp: tmp.write_text(variants_csv(sweep, rows))))
    written.append(atomic_write(root / "ablation_runs.csv", lambda tmp: tmp.write_text(runs_csv(sweep, rows))))
    written += [png] if png else []
    if docs is not None:
        docs = Path(docs)
        image = docs.parent / docs.stem / f"{sweep.name}.png" if png else None
        if image is not None:
            atomic_write(image, lambda tmp: shutil.copyfile(png, tmp))
        link = image and os.path.relpath(image, docs.parent).replace(os.sep, "/")
        write_section(docs, sweep.name, report_body(sweep, rows, command, date, link))
        written += [docs] + ([image] if image else [])
    return written


# -- the whole sweep -----------------------------------------------------------------------------------


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def run_sweep(
    sweep: Sweep,
    *,
    root: Path | None = None,
    command: str = "",
    print_commands: bool = False,
    check: bool = True,
    docs: Path | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Plan, skip the finished, run the rest one after another, then aggregate and write the reports.

    Returns 0 when every selected run finished, 1 when some failed (the reports are written either way).
    """
    root = Path(root) if root is not None else default_root(sweep)
    runs = plan_runs(sweep, root)
    pending = []
    for run in runs:
        if find_export(run.run_dir, sweep.checkpoint) is not None:
            if not print_commands:
                changed = changed_settings(run)
                echo(f"skip {run.label}: finished" + (f" (NOTE: with other settings than now: {changed}; delete "
                                                      f"{run.run_dir} or use another --root to rerun it)" if changed else ""))
        else:
            pending.append(run)
    if print_commands:
        for run in pending:
            echo(run.shell_command())
        return 0
    if pending and check:
        echo(f"checking {len({r.variant for r in pending})} variant(s) against {sweep.base} ...")
        preflight(sweep, pending)
    failed = 0
    durations: list[float] = []
    for i, run in enumerate(pending, 1):
        left = f"; about {_minutes(statistics.fmean(durations) * (len(pending) - i + 1))} left" if durations else ""
        echo(f"[{i}/{len(pending)}] {run.label}: running, log in {run.run_dir / _RUN_LOG}{left}")
        started = time.time()
        try:
            result = execute(run, sweep.checkpoint)
        except KeyboardInterrupt:
            echo(f"\ninterrupted during {run.label}; run the same command again to continue (finished runs are skipped)")
            return 130
        durations.append(time.time() - started)
        if result.status == "done":
            r1 = result.value(("validation", "val/t2v/R@1"))
            echo(f"[{i}/{len(pending)}] {run.label}: done in {_minutes(durations[-1])}" + (f", T2V R@1 {r1:.2f}" if r1 is not None else ""))
        else:
            failed += 1
            echo(f"[{i}/{len(pending)}] {run.label}: FAILED after {_minutes(durations[-1])}: {result.error}")
    rows = collect(sweep, root)
    latency = side_by_side_latency(rows)
    for row in rows:
        if row.name in latency:
            row.stats["latency_fused_ms"] = Stat(latency[row.name], None, 1)
    written = write_reports(sweep, rows, root, command, docs=docs)
    echo("")
    echo(f"## {sweep.name}" + (f" ({failed} run(s) failed)" if failed else ""))
    echo("")
    echo(markdown_table(sweep, rows))
    echo("")
    echo("wrote " + ", ".join(str(p) for p in written))
    return 1 if failed else 0
