"""bench/gpu.py: the CPU smoke run measures every part and writes its section; the batch sweep stops at the first
out-of-memory error."""

import pytest
import torch

from helpers import load_bench_script


def load_script():
    return load_bench_script("gpu", on_path=True)


def _number(text: str) -> float:
    return float(text.split()[0])


def _table(section: str, header: str) -> list[list[str]]:
    """The body rows (as cells) of the Markdown table whose header line starts with `header`."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_tiny_run_writes_a_section_with_positive_numbers(tmp_path):
    bench = load_script()
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other (bench/other.py)\n\nkept\n")
    assert bench.main(["--tiny", "--settings", "eager", "checkpointing", "--docs", str(docs)]) == 0
    text = docs.read_text()
    assert "## Other (bench/other.py)\n\nkept" in text  # another script's section is left alone
    section = text.split(f"## {bench.SECTION}\n", 1)[1]
    assert "**Goal: at least 100 training clips/s for MobileViCLIP-Tiny at 8x256x256 on an H100/H200-class GPU.**" in section
    assert f"torch {torch.__version__}" in section and "python bench/gpu.py --tiny" in section
    train = _table(section, "| model | setting | batch | clips / s |")
    assert [row[:3] for row in train] == [["tiny_cpu", "eager", "2"], ["tiny_cpu", "checkpointing", "2"]]
    assert all(_number(row[3]) > 0 and _number(row[4]) > 0 for row in train), train  # clips/s, memory
    largest = _table(section, "| model | setting | largest batch |")
    assert [row[:3] for row in largest] == [["tiny_cpu", "eager", "2"], ["tiny_cpu", "checkpointing", "2"]]
    assert [row[3] for row in largest] == [f"{row[3]} (batch 2)" for row in train]
    fused = _table(section, "| model | form | batch | clips / s |")
    assert [row[:3] for row in fused] == [["tiny_cpu", "fused, eager", "2"]] and _number(fused[0][3]) > 0
    [loader] = _table(section, "| loader workers |")
    workers, loader_rate, train_rate, ratio = int(loader[0]), float(loader[1]), float(loader[2]), float(loader[3].rstrip("x"))
    assert workers >= 1 and loader_rate > 0 and train_rate == max(_number(row[3]) for row in largest)  # the best training rate
    assert ratio == pytest.approx(loader_rate / train_rate, rel=0.02, abs=0.01)


def test_batch_sweep_stops_at_the_first_out_of_memory_error():
    bench = load_script()
    seen = []

    def measure(batch):
        seen.append(batch)
        if batch > 32:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return bench.Row("m", "eager", batch, 10.0 * batch, 1.0)

    rows, largest = bench.sweep_batches(measure, 8, 1024)
    assert seen == [8, 16, 32, 64] and largest == 32
    assert [(r.batch, r.note) for r in rows] == [(8, ""), (16, ""), (32, ""), (64, "out of memory")]
    rows, largest = bench.sweep_batches(measure, 8, 16)
    assert [r.batch for r in rows] == [8, 16] and largest == 16  # --max-batch ends it first

    def broken(batch):
        raise ValueError("a real bug")

    with pytest.raises(ValueError, match="a real bug"):  # only memory errors end a sweep quietly
        bench.sweep_batches(broken, 8, 16)
