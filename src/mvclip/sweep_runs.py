"""Running a sweep: one `python -m mvclip fit` subprocess per (variant, seed), and what each left on disk.

A run is finished when its export's `metrics.json` exists; a failed run records why in `sweep.json` beside its
`sweep.log`, so a rerun of the sweep skips the finished and reports the failed.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mvclip.atomic import atomic_write
from mvclip.config_checks import is_finite_real
from mvclip.errors import ConfigError
from mvclip.sweep_config import Sweep, cli_value


_RUN_RECORD = "sweep.json"
_RUN_LOG = "sweep.log"


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
        if not is_finite_real(value):
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


def preflight(sweep: Sweep, runs: Sequence[Run], *, cwd: str | None = None) -> None:
    """Before any training: parse each variant's command with `--print_config`, check that its `model.init_from`
    checkpoint exists and plan its model with the `model.overrides` applied, so a typo or a missing first step fails
    in seconds rather than after the first runs."""
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
        init_from = model.get("init_from")  # a local checkpoint every run of the variant loads: missing, all would fail
        if isinstance(init_from, str) and not (Path(cwd or ".") / Path(init_from).expanduser()).is_file():
            raise ConfigError(f"{where}: model.init_from: checkpoint {init_from} not found (the sweep file's header says "
                              "how it is made)")
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
