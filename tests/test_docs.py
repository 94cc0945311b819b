"""The examples in the docs run as written."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_custom_block_guide_runs(isolated_registry, capsys):
    blocks = python_blocks(ROOT / "docs" / "blocks.md")
    assert blocks, "docs/blocks.md lost its example"
    for code in blocks:
        exec(compile(code, "docs/blocks.md", "exec"), {"__name__": "docs_example"})
    assert "torch.Size([1, 64])" in capsys.readouterr().out
