"""bench/memory.py: its activation accounting and its goal lines are computed from the measurements."""
import torch

from helpers import load_bench_script


def load_script():
    return load_bench_script("memory")


def test_saved_for_backward_counts_activations_not_weights():
    bench = load_script()
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256))
    x = torch.randn(64, 256)
    # Linear 1 keeps its input (64x256), ReLU its output (64x1024) which Linear 2 shares: 4 bytes each
    expected = (64 * 256 + 64 * 1024) * 4 / 2**20
    assert abs(bench._saved_for_backward_mib(model, lambda: model(x).sum()) - expected) < 1e-9
    frozen_input = torch.nn.Linear(256, 256).requires_grad_(False)
    assert bench._saved_for_backward_mib(frozen_input, lambda: frozen_input(x).sum()) == 0.0  # nothing needs a gradient


def test_goal_lines_follow_the_numbers():
    bench = load_script()
    row = dict(trainable_m=1.0, before_mib=100.0, peak_mib=0.0, saved_mib=0.0, step_s=1.0, batch=2, frames=8, resolution=224)
    rows = [dict(row, name="mci0/full", step_mib=1000.0), dict(row, name="mci0/peft", step_mib=800.0),
            dict(row, name="mci0/side", step_mib=400.0), dict(row, name="vit_b16/full", step_mib=1000.0),
            dict(row, name="vit_b16/peft", step_mib=500.0), dict(row, name="vit_b16/side", step_mib=600.0)]
    text = bench.table(rows)
    assert "- mci0: side network 400 MiB = 0.40x full fine-tuning (meets the at-most-half goal) and 0.50x the temporal-only run (below it)." in text
    assert "- vit_b16: side network 600 MiB = 0.60x full fine-tuning (misses the at-most-half goal) and 1.20x the temporal-only run (NOT below it)." in text
    assert "| mci0 | side: " in text and "| 400 | 0.40x |" in text
