"""Running preprocessing jobs: `execute` yields the record of every `Job`, in this process or in a process pool.

A worker process that dies (segfault, out of memory) is detected; the series it held are retried one at a time,
and the one that kills its worker again is recorded as an error (`spine.preprocess.job.crash_record`). Workers
end with the main process, also when it is killed (`spine.procs.worker_pool`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool

from spine.preprocess.job import Job, crash_record, process_series
from spine.procs import worker_pool

__all__ = ["execute"]


def execute(jobs: list[Job], workers: int) -> Iterator[dict]:
    """Yield the record of every job, in completion order. ``workers=1`` runs them in this process."""
    if workers <= 1:
        for job in jobs:
            yield process_series(job)
        return
    pending = deque(jobs)
    while pending:
        suspects: list[Job] = []
        pool = worker_pool(workers)
        running: dict = {}
        try:
            while pending or running:
                while pending and len(running) < workers:  # never more queued than running: on a
                    job = pending.popleft()                 # crash, the suspects are exactly these
                    running[pool.submit(process_series, job)] = job
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    record = future.result()  # BrokenProcessPool if a worker died
                    running.pop(future)
                    yield record
        except BrokenProcessPool:
            suspects = list(running.values())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for job in suspects:  # each alone, so that only the culprit is blamed
            yield _run_alone(job)


def _run_alone(job: Job) -> dict:
    with worker_pool(1) as pool:
        try:
            return pool.submit(process_series, job).result()
        except BrokenProcessPool:
            return crash_record(job)
