"""Shared by the tests: the repository root, `python -m mvclip` in a subprocess, and the end of a spawned worker."""
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


def exit_spawned_worker() -> None:
    """End a spawned distributed-test worker after `destroy_process_group`, skipping C++ static destructors: torch 2.13's
    gloo sometimes aborts the exiting process after a clean teardown (`terminate called without an active exception`,
    about 1 run in 4 on one CI machine), which `mp.spawn` reports as a failed rank."""
    os._exit(0)
