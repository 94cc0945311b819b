"""Shared by the tests: the repository root, `python -m mvclip` in a subprocess, a bench script as a module, and the
end of a spawned worker."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT, check=True, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "-m", "mvclip", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"mvclip {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def load_bench_script(name: str, *, on_path: bool = False):
    """`bench/<name>.py` imported as the module `bench_<name>` (registered in sys.modules: dataclasses look their
    module up there); `on_path` also puts bench/ on sys.path for scripts that import their neighbours."""
    script = ROOT / "bench" / f"{name}.py"
    if on_path:
        sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def exit_spawned_worker() -> None:
    """End a spawned distributed-test worker after `destroy_process_group`, skipping C++ static destructors: torch 2.13's
    gloo sometimes aborts the exiting process after a clean teardown (`terminate called without an active exception`,
    about 1 run in 4 on one CI machine), which `mp.spawn` reports as a failed rank."""
    os._exit(0)
