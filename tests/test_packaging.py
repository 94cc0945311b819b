"""A built wheel (not only the editable install) provides mvclip, mvclip.blocks and mvclip.datamodules."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_imports_the_registry(tmp_path):
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    wheel = next(wheel_dir.glob("mvclip-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # Dependencies (torch, ...) come from this environment; mvclip itself only from the wheel.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = (
        "import mvclip, mvclip.blocks, mvclip.datamodules, mvclip.registry as r;"
        "print(mvclip.__file__); print(mvclip.blocks.__file__);"
        "print(','.join(mvclip.list_blocks())); print(r.REGISTRY.get('st_repmixer').origin);"
        "print(mvclip.tokenize('a dog').shape)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path, env=env).stdout.splitlines()
    assert out[0].startswith(site) and out[1].startswith(site), out
    assert "st_repmixer" in out[2].split(",") and "tpe_attention" in out[2].split(",")
    assert out[3] == "built-in"
    assert out[4] == "torch.Size([1, 77])"
