"""CPU latency of single blocks and block stacks: joint space-time attention vs the convolutional mixer.

Reproduces the MobileViCLIP latency analysis on CPU. All candidates are fused (eval + reparameterize),
float32, one clip laid out (T, C, H, W) with `frames=T`, under `torch.no_grad`:

- per width and clip size (T x H x W of the feature map): one ST-RepMixer block (`st_repmixer`), one
  TPE-attention block (`tpe_attention`, joint attention over T*H*W tokens; the stage-level TPE+CPE is
  not part of the block and is not timed), the plain transformer FFN (1x1 C->3C, GELU, 1x1 3C->C) and
  the ConvFFN (`conv_ffn`: depthwise 7x7 + BN, then the same MLP);
- stacks of 1/10/30 layers at width 512 on 8x14x14, ST-RepMixer vs TPE-attention.

Within each configuration the candidates run round-robin (the starting candidate rotates each round),
so drift in machine load hits all of them alike; the table reports the median per candidate and the
ratios of medians measured side by side in the same run. The number of timed rounds is --repeats,
lowered for slow configurations so one configuration takes about --budget seconds (never below 3).

On a shared machine other processes can take CPU mid-run; each configuration records how many cores they
used while it was timed (from /proc/stat), and a configuration during which they used more than the cores
this run leaves free (visible cores - threads) + 0.25 is measured again after a pause (up to --retries times, while the run is under --max-minutes), keeping the
least contended attempt. The section names any configuration that stayed contended.

    python bench/module_latency.py [--repeats 21] [--budget 20] [--retries 2] [--threads N] [--quick] [--out docs/benchmarks.md] [--no-write]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import BENCHMARKS_MD, machine, today, write_section  # noqa: E402

from mvclip.fusion import fuse  # noqa: E402
from mvclip.registry import REGISTRY  # noqa: E402

HEADING = "Module latency (fused, CPU)"
WARMUP = 2
MIN_REPEATS = 3
MARGIN = 0.25  # a configuration is contended when other processes used more than the free cores + this


def contention_limit(threads: int) -> float:
    """Cores other processes may use without competing with this run's threads: the cores it leaves free, plus MARGIN."""
    return max(0, default_threads() - threads) + MARGIN

FULL = dict(widths=(256, 512, 1024), sizes=((8, 14, 14), (8, 16, 16), (8, 28, 28)), stack_width=512, stack_size=(8, 14, 14), depths=(1, 10, 30))
QUICK = dict(widths=(32, 64), sizes=((2, 4, 4), (2, 8, 8)), stack_width=32, stack_size=(2, 4, 4), depths=(1, 3))

# name in the tables -> how it is built
ATTN, MIXER, FFN, CONV_FFN = "TPE-attention", "ST-RepMixer", "FFN", "ConvFFN"
BLOCKS = {ATTN: "tpe_attention", MIXER: "st_repmixer", CONV_FFN: "conv_ffn"}


class PlainFFN(nn.Module):
    """The transformer MLP on a feature map: 1x1 conv C->rC, GELU, 1x1 conv rC->C (no registered block is exactly this)."""

    def __init__(self, dim: int, mlp_ratio: float = 3.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Stack(nn.Module):
    """`depth` blocks of one kind applied in sequence, each given `frames`."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, frames)
        return x


def build(kind: str, dim: int, depth: int = 1) -> nn.Module:
    """A fused (eval, reparameterized, no grad), float32 module: one block, or a stack of `depth`."""
    def one() -> nn.Module:
        if kind == FFN:
            return PlainFFN(dim)
        return REGISTRY.build({"block": BLOCKS[kind], "dim": dim})

    module = one() if depth == 1 else Stack([one() for _ in range(depth)])
    return fuse(module.float())


@dataclass
class Timing:
    medians_ms: dict[str, float]
    repeats: int
    others_cores: float  # CPU that other processes used while this configuration was timed, in cores (nan: unknown)


def cpu_busy_seconds() -> float:
    """Busy CPU time of the whole machine since boot, from /proc/stat (nan where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def measure(models: dict[str, nn.Module], x: torch.Tensor, frames: int, repeats: int, budget_s: float,
            retries: int, deadline: float, pause_s: float, limit: float) -> tuple[Timing, int]:
    """`time_interleaved`, repeated while contended (at most `retries` more times, not past `deadline`); the least contended attempt and the attempt count."""
    best = time_interleaved(models, x, frames, repeats, budget_s)
    attempts = 1
    while not best.others_cores <= limit and attempts <= retries and time.perf_counter() < deadline:
        print(f"  other processes used {best.others_cores:.2f} cores; measuring again in {pause_s:g} s", flush=True)
        time.sleep(pause_s)
        attempt = time_interleaved(models, x, frames, repeats, budget_s)
        attempts += 1
        if not attempt.others_cores >= best.others_cores:
            best = attempt
    return best, attempts


@torch.no_grad()
def time_interleaved(models: dict[str, nn.Module], x: torch.Tensor, frames: int, repeats: int, budget_s: float) -> Timing:
    """Warm up, then time `models` round-robin; the number of rounds fits `budget_s` (at most `repeats`, at least 3)."""
    names = list(models)
    round_s = 0.0
    for _ in range(WARMUP):
        start = time.perf_counter()
        for name in names:
            models[name](x, frames)
        round_s = time.perf_counter() - start  # the last warm-up round sizes the run
    n = max(MIN_REPEATS, min(repeats, math.floor(budget_s / max(round_s, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in names}
    busy0, own0, wall0 = cpu_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    for i in range(n):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            start = time.perf_counter()
            models[name](x, frames)
            times[name].append(time.perf_counter() - start)
    others = max(0.0, (cpu_busy_seconds() - busy0) - (own_cpu_seconds() - own0)) / (time.perf_counter() - wall0)
    return Timing({name: statistics.median(t) * 1e3 for name, t in times.items()}, n, others)


def ms(value: float) -> str:
    """Milliseconds with enough digits to stay informative for sub-millisecond modules."""
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def size_str(size: tuple[int, int, int]) -> str:
    return "x".join(map(str, size))


def tokens(size: tuple[int, int, int]) -> int:
    return math.prod(size)


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def reading(grid: dict[tuple[int, tuple[int, int, int]], Timing], stacks: dict[int, Timing], cfg: dict) -> str:
    """One paragraph computed from the measured numbers."""
    widths, sizes, depths = cfg["widths"], cfg["sizes"], cfg["depths"]
    width = cfg["stack_width"] if cfg["stack_width"] in widths else widths[len(widths) // 2]
    small, large = sizes[0], sizes[-1]
    a, b = grid[(width, small)].medians_ms, grid[(width, large)].medians_ms
    token_factor = tokens(large) / tokens(small)
    growth = {k: b[k] / a[k] for k in (ATTN, MIXER, FFN, CONV_FFN)}
    parts = [
        f"At width {width}, going from {size_str(small)} to {size_str(large)} ({token_factor:.1f}x tokens: "
        f"{tokens(small)} -> {tokens(large)}) multiplies the TPE-attention block's latency by {growth[ATTN]:.1f}x "
        f"and the ST-RepMixer block's by {growth[MIXER]:.1f}x (FFN {growth[FFN]:.1f}x, ConvFFN {growth[CONV_FFN]:.1f}x); "
        f"the attention/RepMixer ratio goes from {a[ATTN] / a[MIXER]:.2f}x to {b[ATTN] / b[MIXER]:.2f}x."
    ]
    ratios = {key: grid[key].medians_ms[ATTN] / grid[key].medians_ms[MIXER] for key in grid}
    lo, hi = min(ratios, key=ratios.get), max(ratios, key=ratios.get)
    parts.append(
        f"Over the whole grid attention/RepMixer ranges from {ratios[lo]:.2f}x (width {lo[0]}, {size_str(lo[1])}) "
        f"to {ratios[hi]:.2f}x (width {hi[0]}, {size_str(hi[1])})."
    )
    ffn_ratios = {key: grid[key].medians_ms[CONV_FFN] / grid[key].medians_ms[FFN] for key in grid}
    parts.append(
        f"ConvFFN/FFN, the price of the depthwise 7x7 in front of the MLP, ranges from {min(ffn_ratios.values()):.2f}x to "
        f"{max(ffn_ratios.values()):.2f}x (median {statistics.median(ffn_ratios.values()):.2f}x)."
    )
    d0, d1 = depths[0], depths[-1]
    s0, s1 = stacks[d0].medians_ms, stacks[d1].medians_ms
    added_attn, added_mixer = s1[ATTN] - s0[ATTN], s1[MIXER] - s0[MIXER]
    parts.append(
        f"Stacked at width {cfg['stack_width']} on {size_str(cfg['stack_size'])}, {d1} layers take {ms(s1[ATTN])} ms "
        f"(TPE-attention) vs {ms(s1[MIXER])} ms (ST-RepMixer), {s1[ATTN] / s1[MIXER]:.2f}x; going from {d0} to {d1} "
        f"layer{'s' if d1 > 1 else ''} adds {ms(added_attn)} ms for attention and {ms(added_mixer)} ms for RepMixer "
        f"({ms(added_attn / (d1 - d0))} vs {ms(added_mixer / (d1 - d0))} ms per extra layer), so the absolute gap goes from "
        f"{ms(s0[ATTN] - s0[MIXER])} ms to {ms(s1[ATTN] - s1[MIXER])} ms while the ratio goes from "
        f"{s0[ATTN] / s0[MIXER]:.2f}x to {s1[ATTN] / s1[MIXER]:.2f}x."
    )
    return " ".join(parts)


def contention_note(grid: dict, stacks: dict[int, Timing], limit: float) -> str:
    """A sentence naming the configurations that ran while other processes took CPU (empty if none)."""
    busy = [f"width {w} {size_str(s)}" for (w, s), t in grid.items() if not t.others_cores <= limit]
    busy += [f"{d}-layer stack" for d, t in stacks.items() if not t.others_cores <= limit]
    if not busy:
        return ""
    worst = max(t.others_cores for t in [*grid.values(), *stacks.values()])
    return (f" Caution: other processes used more than {limit:g} cores (up to {worst:.2f}) while {len(busy)} of "
            f"{len(grid) + len(stacks)} configurations ran ({', '.join(busy)}); those numbers are inflated and the "
            "comparisons above that involve them are unreliable.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per configuration, at most (default 21; 3 with --quick)")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timed rounds per configuration; fewer rounds for slow ones (default 20; 0.5 with --quick)")
    parser.add_argument("--retries", type=int, default=None, help="re-measure a configuration during which other processes competed for this run's cores (used more than the free cores + 0.25), up to this many times (default 2; 0 with --quick)")
    parser.add_argument("--max-minutes", type=float, default=6.0, help="no re-measuring once the run has taken this long (default 6)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores this process may use)")
    parser.add_argument("--quick", action="store_true", help="tiny widths and clips: a smoke test of a few seconds, not a measurement")
    parser.add_argument("--out", type=Path, default=BENCHMARKS_MD, help="Markdown file whose section is replaced (default docs/benchmarks.md)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave --out alone")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 21)
    budget = args.budget if args.budget is not None else (0.5 if args.quick else 20.0)
    retries = args.retries if args.retries is not None else (0 if args.quick else 2)
    pause = 0.0 if args.quick else 10.0
    threads = args.threads or default_threads()
    limit = contention_limit(threads)
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    deadline = started + 60 * args.max_minutes
    attempts_total = 0
    grid: dict[tuple[int, tuple[int, int, int]], Timing] = {}
    for width in cfg["widths"]:
        for size in cfg["sizes"]:
            x = torch.randn(size[0], width, size[1], size[2])
            models = {name: build(name, width) for name in (FFN, CONV_FFN, MIXER, ATTN)}
            t, attempts = measure(models, x, size[0], repeats, budget, retries, deadline, pause, limit)
            grid[(width, size)] = t
            attempts_total += attempts
            del models
            m = t.medians_ms
            print(f"width {width:5d} {size_str(size):>8s} ({tokens(size):5d} tokens, n={t.repeats:2d}): "
                  f"FFN {m[FFN]:8.1f}  ConvFFN {m[CONV_FFN]:8.1f}  ST-RepMixer {m[MIXER]:8.1f}  TPE-attention {m[ATTN]:8.1f} ms  "
                  f"attn/mixer {m[ATTN] / m[MIXER]:.2f}x  others {t.others_cores:.2f} cores", flush=True)
    stacks: dict[int, Timing] = {}
    width, size = cfg["stack_width"], cfg["stack_size"]
    x = torch.randn(size[0], width, size[1], size[2])
    for depth in cfg["depths"]:
        models = {name: build(name, width, depth) for name in (MIXER, ATTN)}
        t, attempts = measure(models, x, size[0], repeats, budget, retries, deadline, pause, limit)
        stacks[depth] = t
        attempts_total += attempts
        del models
        m = t.medians_ms
        print(f"{depth:3d} layers, width {width}, {size_str(size)} (n={t.repeats:2d}): ST-RepMixer {m[MIXER]:8.1f}  "
              f"TPE-attention {m[ATTN]:8.1f} ms  attn/mixer {m[ATTN] / m[MIXER]:.2f}x  others {t.others_cores:.2f} cores", flush=True)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()[0]

    command = "python bench/module_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = [
        *(["**--quick: a smoke test on tiny shapes, not a measurement.**", ""] if args.quick else []),
        "One clip per call, CPU, eager PyTorch, `torch.no_grad`, float32, layout (T, C, H, W) with `frames=T`; every "
        "module fused (eval + `reparameterize`, via `mvclip.fuse`). Blocks: `st_repmixer` (temporal dwconv + RepMixer + "
        "ConvFFN), `tpe_attention` (joint attention over all T*H*W tokens, head_dim 32, + ConvFFN; the stage's TPE+CPE "
        "is not included), FFN = transformer MLP (1x1 C->3C, GELU, 1x1 3C->C), ConvFFN = `conv_ffn` (depthwise 7x7 + "
        "the same MLP). Method: per configuration, "
        f"{WARMUP} warm-up rounds, then the candidates run interleaved round-robin (starting candidate rotated each round) "
        f"for n rounds, n = min({repeats}, {budget:g} s / round time) but at least {MIN_REPEATS}; each cell is the median of "
        "its n runs and every ratio is of medians measured side by side in the same configuration.",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {machine()}",
        f"- date: {today()}",
        f"- total time: {elapsed:.0f} s; {attempts_total - len(grid) - len(stacks)} contended configuration(s) measured again "
        f"(up to {retries} retries each, {pause:g} s pause, none after {args.max_minutes:g} min)",
        f"- 1-minute load average before / after: {load_before:.1f} / {load_after:.1f} (the after value includes this "
        "benchmark's own threads; the per-row others column below is the direct measure)",
        f"- others (cores): CPU time that other processes used during each configuration's timed rounds, from /proc/stat "
        f"minus this process, per second of wall time (0 = the machine to itself). With {torch.get_num_threads()} threads on {default_threads()} cores, "
        f"rows above {limit:g} ran contended (others took cores this run's threads needed): their latencies are high and "
        "their ratios unreliable.",
        "",
        "| width | T x H x W | tokens | FFN (ms) | ConvFFN (ms) | ConvFFN / FFN | ST-RepMixer (ms) | TPE-attention (ms) | attention / RepMixer | n | others (cores) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (w, s), t in grid.items():
        m = t.medians_ms
        body.append(f"| {w} | {size_str(s)} | {tokens(s)} | {ms(m[FFN])} | {ms(m[CONV_FFN])} | {m[CONV_FFN] / m[FFN]:.2f}x | "
                    f"{ms(m[MIXER])} | {ms(m[ATTN])} | {m[ATTN] / m[MIXER]:.2f}x | {t.repeats} | {t.others_cores:.2f} |")
    body += [
        "",
        f"Stacks of identical blocks, width {width}, {size_str(size)} ({tokens(size)} tokens):",
        "",
        "| layers | ST-RepMixer (ms) | TPE-attention (ms) | attention / RepMixer | attention - RepMixer (ms) | n | others (cores) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for depth, t in stacks.items():
        m = t.medians_ms
        body.append(f"| {depth} | {ms(m[MIXER])} | {ms(m[ATTN])} | {m[ATTN] / m[MIXER]:.2f}x | {ms(m[ATTN] - m[MIXER])} | {t.repeats} | {t.others_cores:.2f} |")
    body += ["", "Reading: " + reading(grid, stacks, cfg) + contention_note(grid, stacks, limit)]
    text = "\n".join(body)
    print("\n" + text)
    if not args.no_write:
        write_section(HEADING, text, path=args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
