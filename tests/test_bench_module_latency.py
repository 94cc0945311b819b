"""Smoke test of bench/module_latency.py: --quick writes its section with numeric rows to the given file."""
import re

from helpers import load_bench_script


def load_script():
    return load_bench_script("module_latency")


def test_quick_writes_section(tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n## Other section\n\nkept as is\n")
    assert load_script().main(["--quick", "--threads", "1", "--out", str(out)]) == 0

    text = out.read_text()
    assert "## Other section\n\nkept as is\n" in text
    section = text.split("## Module latency (fused, CPU)\n", 1)[1]
    assert "command: `python bench/module_latency.py --quick" in section
    assert "Reading: At width" in section

    number = r"-?\d+(?:\.\d+)?"
    # grid rows: width | size | tokens | FFN | ConvFFN | ratio | ST-RepMixer | attention | ratio | n | others
    grid = re.findall(rf"^\| (\d+) \| (\d+x\d+x\d+) \| (\d+) \| ({number}) \| ({number}) \| ({number})x \| ({number}) \| ({number}) \| ({number})x \| (\d+) \| ({number}|nan) \|$", section, re.M)
    assert len(grid) == 4
    for width, size, tokens, ffn, conv_ffn, ffn_ratio, mixer, attn, attn_ratio, n, _others in grid:
        t, h, w = map(int, size.split("x"))
        assert int(tokens) == t * h * w
        assert float(ffn) > 0 and float(conv_ffn) > 0 and float(mixer) > 0 and float(attn) > 0
        assert int(n) >= 3
    # stack rows: layers | ST-RepMixer | attention | ratio | difference | n | others
    stacks = re.findall(rf"^\| (\d+) \| ({number}) \| ({number}) \| ({number})x \| ({number}) \| (\d+) \| ({number}|nan) \|$", section, re.M)
    assert [int(row[0]) for row in stacks] == [1, 3]
