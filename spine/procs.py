"""Worker processes that end with their parent, however the parent ends (SIGKILL, SIGTERM, a crash).

A forked pool worker inherits the write end of its own task pipe, so it never sees end-of-file when the main
process dies: without help it waits forever (about 165 MB each for the preprocessing and inference workers).
:func:`exit_with_parent`, called in a pool's ``initializer`` with the parent's pid (``os.getpid()`` of the main
process, passed in the pool's ``initargs``: a worker that read it itself after the fork would take init's pid
for its parent's if the parent had already died), makes it end:

* on Linux, the kernel kills it when its parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``, through ctypes);
* everywhere, a daemon thread polls ``os.getppid()`` and ends the process once it is not the given parent (an
  orphan is re-parented to init or a subreaper), within ``poll_s`` seconds; at once if the parent died before
  the call (prctl then sends nothing).

Linux sends the death signal when the *thread* that forked the worker ends, not only the process: pools must be
created by a thread that outlives them (the main thread, in every command here).

torch DataLoader workers (``spine-train``) get the same with :class:`WorkerInit` as their ``worker_init_fn``:
without it they notice a dead parent only at their next queue timeout (about 5 s).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

__all__ = ["WorkerInit", "exit_with_parent", "worker_pool"]

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 1.0

log = logging.getLogger(__name__)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool (fork where available) whose workers end with this process, even a SIGKILLed one: the one
    pool of preprocessing, inference and the generator."""
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),))


class WorkerInit:
    """A DataLoader ``worker_init_fn`` that makes the worker end with the process that created the loader
    (:func:`exit_with_parent`), then calls ``then(worker_id)`` (the loader's own ``worker_init_fn``, if any).

    Build it in the main process: it keeps that process's pid. A plain picklable object, so that spawned
    workers (macOS, Windows) can receive it too.
    """

    def __init__(self, then: Callable[[int], None] | None = None, parent: int | None = None) -> None:
        self.parent = os.getpid() if parent is None else int(parent)
        self.then = then

    def __call__(self, worker_id: int) -> None:
        exit_with_parent(self.parent)
        if self.then is not None:
            self.then(worker_id)


def exit_with_parent(parent: int, poll_s: float = POLL_S) -> None:
    """End this process when its parent process ``parent`` (a pid the parent passed) dies, or at once if it
    already has (call it first thing in a worker process)."""
    _set_pdeathsig(signal.SIGKILL)
    watcher = threading.Thread(target=_watch_parent, args=(parent, poll_s), name="exit-with-parent", daemon=True)
    watcher.start()


def _set_pdeathsig(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        return False
    return True


def _watch_parent(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    log.warning("worker %d: parent process %d is gone, exiting", os.getpid(), parent)
    os._exit(1)  # no cleanup: the parent that would collect our results is dead
