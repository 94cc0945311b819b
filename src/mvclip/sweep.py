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

The work is split by concern: `mvclip.sweep_config` reads and checks the sweep file, `mvclip.sweep_runs` runs and
inspects the training subprocesses, `mvclip.sweep_report` aggregates and writes the reports; this module drives them
(`run_sweep`) and re-exports their public names, so `mvclip.sweep.<name>` keeps working.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from mvclip.sweep_config import (
    CHECKPOINT_KINDS, RESERVED_KEYS, SECTIONS, SWEEP_KEYS, Sweep, cli_value, load_sweep, parse_assignments,
)
from mvclip.sweep_report import (
    COSTS, OPTIONAL_QUALITY, QUALITY, Stat, VariantRow, aggregate, collect, markdown_table, report_body, runs_csv,
    side_by_side_latency, table_rows, variants_csv, write_plot, write_reports,
)
from mvclip.sweep_runs import (
    _RUN_LOG, Run, RunResult, changed_settings, collect_run, default_root, error_line, execute, find_export, plan_runs,
    preflight,
)

__all__ = [
    "CHECKPOINT_KINDS", "COSTS", "OPTIONAL_QUALITY", "QUALITY", "RESERVED_KEYS", "SECTIONS", "SWEEP_KEYS", "Run",
    "RunResult", "Stat", "Sweep", "VariantRow", "aggregate", "changed_settings", "cli_value", "collect", "collect_run",
    "default_root", "error_line", "execute", "find_export", "load_sweep", "markdown_table", "parse_assignments",
    "plan_runs", "preflight", "report_body", "run_sweep", "runs_csv", "side_by_side_latency", "table_rows",
    "variants_csv", "write_plot", "write_reports",
]


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
