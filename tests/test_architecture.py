"""The import rules of docs/architecture.md, and that the code cites only documents inside the repository."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UTILITIES = {"mvclip.errors", "mvclip.config_checks", "mvclip.atomic", "mvclip.markdown", "mvclip.distributed", "mvclip.sample_keys", "mvclip.tokenizer", "mvclip.input_spec"}


def mvclip_imports(path: Path) -> set[str]:
    """Absolute `mvclip...` modules a file imports (relative imports inside datamodules/ count as datamodules)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mvclip"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "mvclip":
            found.add(node.module)
    return found


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", files("src/mvclip"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_reaches_blocks_only_through_the_registry(path):
    assert not {m for m in mvclip_imports(path) if m.startswith("mvclip.blocks")}


UTILITY_MODULES = UTILITIES | {"mvclip.checkpoints", "mvclip.extras"}


@pytest.mark.parametrize("module", sorted(UTILITY_MODULES))
def test_utilities_import_only_utilities(module):
    path = ROOT / "src" / (module.replace(".", "/") + ".py")
    assert mvclip_imports(path) <= UTILITY_MODULES


@pytest.mark.parametrize("path", files("src/mvclip/layers"), ids=lambda p: p.name)
def test_layers_import_nothing_but_layers(path):
    assert {m for m in mvclip_imports(path) if not m.startswith("mvclip.layers")} == set()


@pytest.mark.parametrize("path", files("blocks"), ids=lambda p: p.name)
def test_blocks_import_the_registry_layers_contracts_and_blocks(path):
    allowed = ("mvclip.blocks", "mvclip.layers", "mvclip.registry", "mvclip.contracts")
    assert {m for m in mvclip_imports(path) if not m.startswith(allowed)} == set()


@pytest.mark.parametrize("path", files("datamodules"), ids=lambda p: p.name)
def test_data_imports_only_utilities(path):
    assert {m for m in mvclip_imports(path) if not m.startswith("mvclip.datamodules")} <= UTILITIES


def test_cited_design_documents_live_in_docs():
    cited = re.compile(r"(?:\.\./)*(?:shared/)?(?:docs/)?(design\.md|stack-notes\.md)")
    for folder in ("src", "blocks", "datamodules", "bench", "tests", "docs"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in {".py", ".md"}:
                continue
            for match in cited.finditer(path.read_text()):
                assert "shared/" not in match.group(0), f"{path}: cites {match.group(0)} outside the repository"
                assert (ROOT / "docs" / match.group(1)).is_file(), f"{path}: cites {match.group(1)}, not in docs/"


def test_base_install_degrades_without_optional_extras(monkeypatch, capsys, tmp_path):
    """Without `mvclip[onnx]` / `mvclip[plot]` an export skips ONNX and a sweep skips its plot, each with one note."""
    import importlib.util

    from mvclip import extras, sweep

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("onnxruntime", "matplotlib") else real(name, *a))
    assert not extras.installed("onnx") and not extras.installed("plot")
    assert extras.missing_note("onnx", "ONNX graphs") == 'note: ONNX graphs skipped: onnx, onnxscript, onnxruntime not installed (pip install "mvclip[onnx]")'
    spec = sweep.Sweep(name="x", base="recipes/small.yaml", description="", seeds=[0], checkpoint="last", overrides={},
                       variants={"a": {}}, baseline=None, path=tmp_path / "x.yaml")
    assert sweep.write_plot(tmp_path / "plot.png", spec, []) is None and not (tmp_path / "plot.png").exists()
    assert "matplotlib not installed" in capsys.readouterr().err
