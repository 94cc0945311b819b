"""The `python -m mvclip` commands of the foundation (blocks, summary) and the one option language of every command."""
import subprocess
import sys
from pathlib import Path

import pytest

from mvclip.cli import COMMANDS, main
from mvclip.commands.options import snake_case_options

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


@pytest.mark.parametrize("config", ["mobileviclip_tiny", "recipes/mobileviclip_tiny.yaml"])
def test_summary_takes_a_preset_name_or_a_recipe(config, capsys):
    assert main(["summary", "--config", config, "--frames", "2", "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    assert "| video | stages[3] | patch_embed, tpe_cpe, tpe_attention x2 | 2x512x2x2 |" in out  # MobileViCLIP-Tiny's


def test_summary_builds_a_recipes_model_with_its_overrides(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("trainer: {max_steps: 1}\nmodel:\n  model: tiny_cpu\n  overrides: {video.stages.2.block: attention}\n")
    assert main(["summary", "--config", str(recipe), "--frames", "2", "--resolution", "64"]) == 0
    assert "| video | stages[2] | patch_embed, rep_cpe, attention x2 | 2x128x4x4 |" in capsys.readouterr().out


def test_summary_of_an_unknown_name_is_one_line_listing_the_presets(capsys):
    assert main(["summary", "--config", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mvclip summary: model config 'no_such_model': no such file and no such preset")
    assert "mobileviclip_tiny" in err and len(err.strip().splitlines()) == 1


def test_options_are_snake_case_and_the_old_spellings_still_work():
    assert snake_case_options(["--no-onnx", "--ckpt", "a-b.ckpt", "--latency-repeats=2", "--text", "--", "--keep-me"]) == [
        "--no_onnx", "--ckpt_path", "a-b.ckpt", "--latency_repeats=2", "--text", "--", "--keep-me"]
    assert snake_case_options(["--ckpt-path=x", "--model.init-from=y", "-c", "z"]) == ["--ckpt_path=x", "--model.init_from=y", "-c", "z"]


@pytest.mark.parametrize("spelling", ["--ckpt_path", "--ckpt-path", "--ckpt"])
def test_export_reads_the_checkpoint_under_every_spelling(spelling, tmp_path, capsys):
    assert main(["export", spelling, str(tmp_path / "missing.ckpt"), "--no-onnx"]) == 2
    assert "missing.ckpt" in capsys.readouterr().err


@pytest.mark.parametrize("name", [n for n, (module, _) in COMMANDS.items() if module != "mvclip.commands.train"])
def test_every_command_names_itself_as_python_m_mvclip(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m mvclip {name} ")
    assert not [word for word in out.split() if word.startswith("--") and "-" in word[2:].split("=")[0]], "a kebab-case option"


def test_fit_names_itself_and_every_option_has_its_own_help():
    result = subprocess.run([sys.executable, "-m", "mvclip", "fit", "--help"], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.startswith("usage: python -m mvclip [options] fit ")
    lines = result.stdout[result.stdout.index("--model CONFIG"):].splitlines()
    without_help = [line.split()[0] for line, after in zip(lines, lines[1:] + [""])
                    if line.startswith(("  --model.", "  --data.")) and (line.split(None, 2)[2:] or [after.strip()])[0].startswith("(type")]
    assert without_help == []


def test_fit_reads_kebab_case_options(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mvclip", "fit", "--config", "recipes/small.yaml", "--data.sampling-fps=3",
                             "--model.model=tiny_cpu", "--print-config"], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "sampling_fps: 3.0" in result.stdout and "model: tiny_cpu" in result.stdout


def test_unknown_command_is_an_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "mvclip", "--help"], capture_output=True, text=True, check=True)
    assert "summary" in result.stdout and "blocks" in result.stdout
