"""A sweep's results: per-variant statistics over seeds, the Markdown table, CSVs and the latency-accuracy plot."""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import shutil
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvclip.atomic import atomic_write
from mvclip.extras import installed, missing_note
from mvclip.markdown import table, write_section
from mvclip.sweep_config import Sweep, cli_value
from mvclip.sweep_runs import RunResult, collect_run, plan_runs


# (column key, table header, path in metrics.json, scale)
QUALITY = (
    ("t2v_r1", "T2V R@1", ("validation", "val/t2v/R@1"), 1.0),
    ("t2v_r5", "T2V R@5", ("validation", "val/t2v/R@5"), 1.0),
    ("v2t_r1", "V2T R@1", ("validation", "val/v2t/R@1"), 1.0),
    ("v2t_r5", "V2T R@5", ("validation", "val/v2t/R@5"), 1.0),
    ("zs_top1", "ZS top-1", ("validation", "val/zeroshot/top1"), 1.0),
    ("twin_acc", "twin acc", ("validation", "val/temporal/twin_acc"), 1.0),
    ("twin_text_cos", "twin text cos", ("validation", "val/temporal/twin_text_cos"), 1.0),
    ("reverse", "reverse Δ", ("validation", "val/temporal/reverse"), 1.0),
)
# columns shown only when some run reported them (datasets without labels or groups, older exports)
OPTIONAL_QUALITY = ("zs_top1", "twin_acc", "twin_text_cos", "reverse")
DIGITS = {"twin_text_cos": 3}  # decimals where 2 would hide the difference (cosines of 0.985 and 0.995)
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
        cells += [s["t2v_r5"].text(), s["v2t_r1"].text(), s["v2t_r5"].text()] + [s[key].text(DIGITS.get(key, 2)) for key, _ in shown]
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
            "twin on the synthetic set; about 50 % for a model blind to frame order); `twin text cos`: the cosine "
            "between the two partners' caption embeddings, the text tower's side of it (near 1, no video tower can "
            "tell the pair apart against it); `reverse Δ`: how far a clip's "
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
