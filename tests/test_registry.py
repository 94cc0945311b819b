"""Registry behaviour: registering, building from mappings, and the errors users see."""
import sys
import textwrap
import warnings

import pytest
import torch

import mvclip
from mvclip.errors import ConfigError, RegistryError
from mvclip.registry import REGISTRY


def test_builtin_blocks_are_registered():
    names = mvclip.list_blocks()
    for expected in ["repmixer", "st_repmixer", "conv_ffn", "attention", "rep_cpe", "tpe_cpe", "tpe_attention",
                     "mobileone_stem", "patch_embed", "mci_head", "text_repmixer", "text_transformer"]:
        assert expected in names
    assert REGISTRY.get("st_repmixer").origin == "built-in"


def test_build_block_from_mapping():
    block = mvclip.build_block({"block": "st_repmixer", "dim": 32, "kernel_size": 3})
    out = block(torch.randn(2 * 4, 32, 8, 8), 4)
    assert out.shape == (8, 32, 8, 8)


def test_unknown_block_suggests_close_matches(tiny_model_config):
    tiny_model_config["video"]["stages"][1]["block"] = "st_repmixr"
    with pytest.raises(RegistryError) as info:
        mvclip.build_model(tiny_model_config)
    message = str(info.value)
    assert "model.video.stages[1]" in message
    assert "unknown block 'st_repmixr'" in message
    assert "st_repmixer" in message  # the difflib suggestion
    assert "python -m mvclip blocks" in message


def test_unknown_block_fails_before_any_block_is_built(tiny_model_config, isolated_registry, monkeypatch):
    built = []

    @mvclip.register_block("_counting_block")
    class Counting(torch.nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            built.append(dim)

        def forward(self, x, frames=1):
            return x

    tiny_model_config["video"]["stages"][0]["block"] = "_counting_block"
    tiny_model_config["video"]["stages"][2]["block"] = "no_such_block"
    with pytest.raises(RegistryError):
        mvclip.build_model(tiny_model_config)
    assert built == []


def test_bad_argument_names_path_block_and_accepted_parameters(tiny_model_config):
    tiny_model_config["video"]["stages"][1]["kernal_size"] = 5
    with pytest.raises(ConfigError) as info:
        mvclip.build_model(tiny_model_config)
    message = str(info.value)
    assert message.startswith("model.video.stages[1]: block 'st_repmixer' got unexpected argument(s) 'kernal_size'")
    assert "did you mean 'kernel_size'" in message
    assert "Accepted parameters: dim, kernel_size=3" in message


def test_missing_required_argument():
    with pytest.raises(ConfigError, match=r"stem: block 'patch_embed' is missing required argument\(s\) 'out_dim'"):
        mvclip.build_block({"block": "patch_embed", "dim": 16}, path="stem")


def test_invalid_value_is_reported_with_path(tiny_model_config):
    tiny_model_config["video"]["stages"][2]["attention_mode"] = "diagonal"
    with pytest.raises(ConfigError, match=r"model.video.stages\[2\]: building block 'tpe_attention' failed: attention_mode must be one of"):
        mvclip.build_model(tiny_model_config)


def test_structural_errors_name_their_path(tiny_model_config):
    bad = dict(tiny_model_config, vidoe={})
    with pytest.raises(ConfigError, match=r"model: unknown key\(s\) 'vidoe'"):
        mvclip.build_model(bad)
    tiny_model_config["video"]["stages"][1].pop("downsample")
    with pytest.raises(ConfigError, match=r"model.video.stages\[1\]: the previous part outputs 16 channels but this stage has dim=32"):
        mvclip.build_model(tiny_model_config)


def test_duplicate_name_names_both_sources(isolated_registry):
    @mvclip.register_block("_dup_block")
    class First(torch.nn.Module):
        pass

    with pytest.raises(RegistryError) as info:

        @mvclip.register_block("_dup_block")
        class Second(torch.nn.Module):
            pass

    message = str(info.value)
    assert "First" in message and "Second" in message and "override=True" in message

    @mvclip.register_block("_dup_block", override=True)
    class Third(torch.nn.Module):
        pass

    assert REGISTRY.get("_dup_block").cls is Third


def _write_plugin_distribution(root, dist_name, module_name, module_source, entry_points):
    """A minimal installed distribution (dist-info + module) on a sys.path entry."""
    (root / f"{module_name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{dist_name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[mvclip.blocks]\n{lines}\n")


def test_entry_point_plugin_is_loaded(tmp_path, monkeypatch, isolated_registry):
    _write_plugin_distribution(
        tmp_path, "mvclip_demo_plugin", "mvclip_demo_plugin_mod",
        """
        import torch
        import mvclip

        @mvclip.register_block("demo_shift")
        class DemoShift(torch.nn.Module):
            '''Adds a constant: a block from another package.'''
            def __init__(self, dim: int, amount: float = 1.0):
                super().__init__()
                self.amount = amount
            def forward(self, x, frames=1):
                return x + self.amount
        """,
        {"demo": "mvclip_demo_plugin_mod"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    REGISTRY._loaded = False
    REGISTRY.load()
    entry = REGISTRY.get("demo_shift")
    assert entry.origin == "entry point demo (mvclip_demo_plugin)"
    block = mvclip.build_block({"block": "demo_shift", "dim": 4, "amount": 2.0})
    assert torch.equal(block(torch.zeros(1, 4, 2, 2)), torch.full((1, 4, 2, 2), 2.0))


def test_failing_plugin_is_reported_and_builtins_survive(tmp_path, monkeypatch, isolated_registry):
    _write_plugin_distribution(
        tmp_path, "mvclip_broken_plugin", "mvclip_broken_plugin_mod",
        "raise ImportError('needs a library that is not installed')\n",
        {"broken": "mvclip_broken_plugin_mod"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    REGISTRY._loaded = False
    with pytest.warns(UserWarning, match=r"broken \(mvclip_broken_plugin_mod\): ImportError: needs a library"):
        REGISTRY.load()
    assert "st_repmixer" in REGISTRY.names()
    with pytest.raises(RegistryError, match="Some block plugins failed to import: broken"):
        REGISTRY.get("from_the_broken_plugin")


def test_yaml_imports_module_and_file(tmp_path, monkeypatch, tiny_model_config, isolated_registry):
    (tmp_path / "my_blocks_module.py").write_text(textwrap.dedent(
        """
        import torch
        import mvclip

        @mvclip.register_block("module_identity")
        class ModuleIdentity(torch.nn.Module):
            def __init__(self, dim: int):
                super().__init__()
            def forward(self, x, frames=1):
                return x
        """))
    plugin_file = tmp_path / "more_blocks.py"
    plugin_file.write_text(textwrap.dedent(
        """
        import torch
        import mvclip

        @mvclip.register_block("file_scale")
        class FileScale(torch.nn.Module):
            def __init__(self, dim: int, factor: float = 2.0):
                super().__init__()
                self.factor = factor
            def forward(self, x, frames=1):
                return x * self.factor
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny_model_config["imports"] = ["my_blocks_module", str(plugin_file)]
    tiny_model_config["video"]["stages"][0] = {"block": "file_scale", "depth": 1, "dim": 16, "factor": 3.0}
    tiny_model_config["video"]["stages"][1]["block"] = "module_identity"
    model = mvclip.build_model(tiny_model_config)
    assert model.video.stages[0].blocks[0].factor == 3.0
    assert REGISTRY.get("file_scale").origin == f"imported file {plugin_file.resolve()}"
    assert REGISTRY.get("module_identity").origin == "imported module my_blocks_module"


def test_yaml_import_failure_names_the_import(tiny_model_config, tmp_path):
    tiny_model_config["imports"] = [str(tmp_path / "missing_blocks.py")]
    with pytest.raises(ConfigError, match=r"model.imports\[0\]: could not import block plugin .*missing_blocks.py.*FileNotFoundError"):
        mvclip.build_model(tiny_model_config)
    broken = tmp_path / "broken_blocks.py"
    broken.write_text("1 / 0\n")
    tiny_model_config["imports"] = [str(broken)]
    with pytest.raises(ConfigError, match=r"ZeroDivisionError: division by zero"):
        mvclip.build_model(tiny_model_config)
    assert "st_repmixer" in mvclip.list_blocks()
