"""The `python -m mvclip` commands of the foundation: blocks and summary."""
import subprocess
import sys
from pathlib import Path

import pytest

from mvclip.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_blocks_lists_every_block_with_details(capsys):
    assert main(["blocks"]) == 0
    out = capsys.readouterr().out
    assert "st_repmixer  [video; built-in; reparameterizable]" in out
    assert "text_transformer  [text; built-in; not reparameterizable]" in out
    assert "parameters: dim, kernel_size=3, mlp_ratio=3.0" in out
    import mvclip

    assert f"{len(mvclip.list_blocks())} block(s)" in out


def test_blocks_loads_imports_of_a_config(tmp_path, capsys, isolated_registry):
    plugin = tmp_path / "extra.py"
    plugin.write_text(
        "import torch, mvclip\n"
        "@mvclip.register_block('cli_extra')\n"
        "class CliExtra(torch.nn.Module):\n"
        "    '''An extra block for the CLI test.'''\n"
        "    def __init__(self, dim: int, gain: float = 1.0):\n"
        "        super().__init__()\n"
    )
    config = tmp_path / "model.yaml"
    config.write_text(f"imports: [{plugin}]\nvideo: {{}}\n")
    assert main(["blocks", "--config", str(config), "cli_extra"]) == 0
    out = capsys.readouterr().out
    assert f"cli_extra  [video; imported file {plugin.resolve()}; not reparameterizable]" in out
    assert "An extra block for the CLI test." in out and "gain=1.0" in out


def test_summary_prints_stages_params_and_flops(capsys):
    assert main(["summary", "--config", str(ROOT / "recipes/models/tiny_cpu.yaml"), "--frames", "4", "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    assert "| video | stages[3] | patch_embed, tpe_cpe, tpe_attention | 4x256x2x2 |" in out
    assert "**video total**" in out and "**text total**" in out


def test_unknown_command_is_an_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "mvclip", "--help"], capture_output=True, text=True, check=True)
    assert "summary" in result.stdout and "blocks" in result.stdout
