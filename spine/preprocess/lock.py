"""One preprocessing run writes a cache at a time: an exclusive lock on ``<cache id>/.preprocess.lock``.

Two runs writing the same series at once delete each other's temporary files and records (a complete series
then ends up ``error``, its label voxels lost). `writer_lock` takes an advisory ``flock`` on the lock file for the
whole run; a second run finds it held and stops with `CacheBusyError` (one line naming the holder's pid and
host), before touching anything. The kernel releases the lock when the holder ends, however it ends (a killed
run leaves no stale lock). Where ``fcntl`` is missing (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from spine.errors import SpineError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks through fcntl
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "CacheBusyError", "writer_lock"]

log = logging.getLogger(__name__)
LOCK_NAME = ".preprocess.lock"


class CacheBusyError(SpineError):
    """Another preprocessing run is writing this cache (exit code 1)."""


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Hold the cache folder ``root``'s writer lock for the ``with`` block; raises `CacheBusyError` at once when
    another process holds it."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    if fcntl is None:
        log.debug("no fcntl: %s not locked", root)
        yield
        return
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise CacheBusyError(f"{root} is being written by another preprocessing run ({holder}); wait for it "
                                 "to end, then run again (a re-run skips what it completed)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
