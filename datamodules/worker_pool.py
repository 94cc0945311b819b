"""Worker processes that end with their parent, even when the parent is killed with SIGKILL.

A `ProcessPoolExecutor` worker waits on a pipe whose write end other workers also hold, so when the parent
dies without shutting the pool down (kill -9, the OOM killer) its workers never see end-of-file: they are
re-parented to init and live on. Each worker here asks Linux to send it SIGKILL when its parent dies
(`prctl(PR_SET_PDEATHSIG)`); elsewhere a daemon thread polls the parent's pid and exits when it changes.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_SECONDS = 1.0


def worker_pool(max_workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers die with the process that made it."""
    return ProcessPoolExecutor(max_workers=max_workers, initializer=die_with_parent, initargs=(os.getpid(),))


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this process when `parent_pid` ends."""
    if not _kill_on_parent_death():
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="die-with-parent", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before we were set up
        os._exit(1)


def _kill_on_parent_death() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    os._exit(1)
