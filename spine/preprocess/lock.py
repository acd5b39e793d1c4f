"""Preprocessing runs that write one cache never write the same series at once: advisory ``flock`` locks.

Two runs writing the same series at once delete each other's temporary files and records (a complete series
then ends up ``error``, its label voxels lost). A whole run (no shard) holds ``<cache id>/.preprocess.lock``
exclusively; a shard run (``shard=K/N``, which builds only its share of the series) holds it shared, so the N
shards run side by side, plus ``.preprocess.shard-K-of-N.lock`` exclusively, so one shard never runs twice at
once. A run that finds its lock taken stops with `CacheBusyError` (one line naming the holder's pid and host)
before touching anything: a second whole run, a whole run while shards are running, or a shard twice. The
kernel releases a lock however its holder ends (a killed run leaves no stale lock). Where ``fcntl`` is missing
(Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from spine.errors import SpineError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks through fcntl
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "CacheBusyError", "shard_lock_name", "writer_lock"]

log = logging.getLogger(__name__)
LOCK_NAME = ".preprocess.lock"


class CacheBusyError(SpineError):
    """Another preprocessing run is writing this cache (or this shard of it): exit code 1."""


def shard_lock_name(shard: tuple[int, int]) -> str:
    return f".preprocess.shard-{shard[0]}-of-{shard[1]}.lock"


@contextlib.contextmanager
def writer_lock(root: Path, shard: tuple[int, int] | None = None) -> Iterator[None]:
    """Hold the cache folder ``root``'s writer lock for the ``with`` block: exclusive for a whole run, shared plus
    the shard's own exclusive lock for ``shard`` = (K, N). Raises `CacheBusyError` at once when it is taken."""
    root.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        log.debug("no fcntl: %s not locked", root)
        yield
        return
    with contextlib.ExitStack() as held:
        if shard is None:
            held.enter_context(_locked(root / LOCK_NAME, fcntl.LOCK_EX, "another preprocessing run"))
        else:
            held.enter_context(_locked(root / LOCK_NAME, fcntl.LOCK_SH, "a preprocessing run without shard"))
            held.enter_context(_locked(root / shard_lock_name(shard), fcntl.LOCK_EX,
                                       f"another run of shard {shard[0]}/{shard[1]}"))
        yield


@contextlib.contextmanager
def _locked(path: Path, mode: int, holder: str) -> Iterator[None]:
    """``flock(mode)`` on ``path`` for the block, the holder's pid written into it while held exclusively."""
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheBusyError(f"{path.parent} is being written by {holder} ({_holder(handle)}); wait for it to "
                                 "end, then run again (a re-run skips what it completed)") from None
        _note(handle, f"pid {os.getpid()} on {socket.gethostname()}" if mode == fcntl.LOCK_EX else None)
        try:
            yield
        finally:
            _note(handle, "" if mode == fcntl.LOCK_EX else None)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip() or "pid unknown: shards hold it together"


def _note(handle: IO[str], text: str | None) -> None:
    """Write who holds the lock (only the exclusive holder writes; shared holders leave it alone)."""
    if text is None:
        return
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()
