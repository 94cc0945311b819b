"""mvclip.allocator: freed blocks are reused instead of faulted in again, and the CLI's opt-out is checked."""
import platform
import subprocess
import sys

import pytest

from mvclip import allocator
from mvclip.cli import main

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")

# 20 rounds of: malloc 64 MiB (above glibc's largest automatic mmap threshold, 32 MiB), write every byte, free.
_ROUNDS = """
import ctypes, resource, sys
from mvclip.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
from mvclip.allocator import freed_memory_kept
assert freed_memory_kept() is kept, "the recorded state must be what keep_freed_memory() reported"
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@glibc_only
def test_kept_memory_is_reused_instead_of_faulted_in_every_round():
    kept, kept_faults = _faults("keep")
    _, system_faults = _faults("system")
    pages = (64 << 20) // 4096
    assert kept == "True"
    assert system_faults >= 19 * pages * 0.9  # glibc's defaults: a fresh mapping, so every page faults, every round
    assert kept_faults <= 2 * pages  # kept: the first round faults the pages in, the other 19 reuse them


def test_the_environment_chooses_and_a_bad_choice_is_named():
    assert allocator.apply_env_choice({allocator.ENV_VAR: "system"}) is False
    with pytest.raises(ValueError, match="MVCLIP_ALLOCATOR='fast': expected one of keep, system"):
        allocator.apply_env_choice({allocator.ENV_VAR: "fast"})


def test_cli_refuses_an_unknown_allocator_choice_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv(allocator.ENV_VAR, "fast")
    assert main(["models"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "MVCLIP_ALLOCATOR='fast'" in err
