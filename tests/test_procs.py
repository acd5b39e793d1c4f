"""Worker processes end with their parent (spine.procs); progress in a log file is a few plain lines
(spine.progress)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spine.progress import LineProgress, progress

# A main process that starts a pool as a command does, prints the worker pids and waits.
POOL_SCRIPT = """
import importlib, os, sys, time
module = importlib.import_module(sys.argv[1])
if sys.argv[2] == "fallback":  # no prctl: only the thread that polls os.getppid()
    import spine.procs
    spine.procs._set_pdeathsig = lambda sig: False

def work(_):
    time.sleep(0.2)
    return os.getpid()

pool = module.worker_pool(2)  # the pool the module runs its workers in
list(pool.map(work, range(4)))
print(" ".join(str(pid) for pid in pool._processes), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie left for a reaper that does not reap counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("module, how, sig", [
    ("spine.preprocess.pool", "prctl", signal.SIGKILL),
    ("spine.predict.volumes", "prctl", signal.SIGTERM),
    ("spine.preprocess.pool", "fallback", signal.SIGKILL),
])
def test_workers_end_when_their_parent_is_killed(module, how, sig, tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    survivors = _survivors_of_killed_parent([sys.executable, str(script), module, how], sig, within_s=10)
    assert not survivors, "workers outlived their parent"


def _survivors_of_killed_parent(command: list[str], sig: int, within_s: float) -> list[int]:
    """Start ``command`` (it prints its two workers' pids on one line), send it ``sig``, and return the workers
    still alive ``within_s`` seconds after it died (those are then killed)."""
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        parent.send_signal(sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + within_s
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        return [pid for pid in workers if _alive(pid)]
    finally:
        parent.kill()
        parent.wait()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# A parent that starts a worker and exits at once; the worker calls exit_with_parent with the pid it was given
# only after its parent is gone (the race of a worker that would read its parent's pid itself, too late).
ORPHAN_SCRIPT = """
import os, subprocess, sys, time

if sys.argv[1] == "parent":
    worker = subprocess.Popen([sys.executable, __file__, "worker", str(os.getpid())])
    print(worker.pid, flush=True)
else:
    import spine.procs
    spine.procs._set_pdeathsig = lambda sig: False  # prctl after the parent died would send nothing anyway
    parent = int(sys.argv[2])
    while os.getppid() == parent:
        time.sleep(0.01)
    spine.procs.exit_with_parent(parent, poll_s=0.05)
    time.sleep(60)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")
def test_a_worker_whose_parent_died_before_it_started_watching_exits(tmp_path):
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN_SCRIPT)
    parent = subprocess.run([sys.executable, str(script), "parent"], stdout=subprocess.PIPE, text=True, timeout=60,
                            check=True)
    worker = int(parent.stdout.split()[0])
    try:
        deadline = time.monotonic() + 20
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "a worker orphaned before exit_with_parent lived on"
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- progress
def test_progress_in_a_file_is_a_few_plain_lines():
    stream = io.StringIO()  # not a terminal
    with progress(1000, "predict", "study", stream=stream) as bar:
        for i in range(1000):
            bar.update()
            bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
            if i == 500:
                bar.write("[predict] 123: fallback (priors): no series", file=stream)
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert 10 <= len(lines) <= 11 and "[predict] 123: fallback (priors): no series" in lines
    assert lines[-1].startswith("predict: 1000/1000 study (100%)") and "loss=0.001" in lines[-1]


def test_progress_without_lines_or_disabled_writes_only_messages():
    stream = io.StringIO()
    for bar in (progress(50, stream=stream, enabled=False), progress(50, stream=stream, lines=0)):
        for _ in range(50):
            bar.update()
        bar.write("a message")
        bar.close()
    assert stream.getvalue() == "a message\na message\n"


def test_progress_cut_short_says_where_it_stopped_and_a_terminal_gets_the_bar():
    stream = io.StringIO()
    bar = LineProgress(100, "epoch", "step", stream=stream, lines=4)
    bar.update(30)
    bar.close()
    assert stream.getvalue().splitlines()[-1].startswith("epoch: 30/100 step (30%)")
    assert len(stream.getvalue().splitlines()) == 2  # 25 %, then where it stopped

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    from tqdm import tqdm

    bar = progress(10, "x", stream=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()


def test_preprocess_logs_progress_lines_not_bar_frames(tiny_dataset, tmp_path, capfd):
    from spine.preprocess.__main__ import main

    assert main([f"data_dir={tiny_dataset}", f"cache_dir={tmp_path}", "split=test", "workers=1"]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("preprocess: ")]
    assert 1 <= len(lines) <= 10 and "(100%)" in lines[-1]


# ------------------------------------------------------------------- 5. DataLoader workers die with the command
DATALOADER_SCRIPT = """
import os, sys, time
from types import SimpleNamespace
import torch
from spine.train.engine import _loader

class Slow:
    def __len__(self):
        return 64
    def __getitem__(self, index):
        time.sleep(0.01)
        return torch.zeros(1)

loader = _loader(Slow(), 1, None, 2, SimpleNamespace(device=torch.device("cpu")))
batches = iter(loader)
next(batches), next(batches)  # both workers have started (and run their worker_init_fn)
print(" ".join(str(w.pid) for w in batches._workers), flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_dataloader_workers_end_when_training_is_killed(tmp_path):
    script = tmp_path / "loader.py"
    script.write_text(DATALOADER_SCRIPT)
    # within 2 s: torch's own watchdog would take about 5 s
    survivors = _survivors_of_killed_parent([sys.executable, str(script)], signal.SIGKILL, within_s=2)
    assert not survivors, "DataLoader workers outlived the killed command"


def test_worker_init_keeps_the_parent_pid_chains_the_loaders_own_and_pickles():
    """Spawned workers (macOS) receive it pickled; it is built in the main process, so it holds that pid."""
    import pickle

    from spine.procs import WorkerInit

    init = pickle.loads(pickle.dumps(WorkerInit(os.getcwd, parent=12345)))
    assert init.parent == 12345 and init.then is os.getcwd
    assert WorkerInit().parent == os.getpid()
