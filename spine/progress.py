"""Progress of a long loop: a tqdm bar on a terminal, a few plain lines in a file or a pipe.

A bar redraws itself with carriage returns, which fills a log file (CI, ``nohup``, the demo's log) with
frames. :func:`progress` gives the bar only when its stream is a terminal; elsewhere a :class:`LineProgress`
writes at most ``lines`` lines (one each time another ``1/lines`` of the total is done), or nothing with
``lines=0`` (for loops that already print their own line per round, like the training epochs).

Both have the same small interface: ``update(n)``, ``set_postfix(**values)``, ``write(message, file=None)``
(a message that does not break the bar), ``close()``, and use as a context manager.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

LINES = 10  # lines per loop when the output is not a terminal: one per 10 %


def progress(total: int, desc: str = "", unit: str = "it", *, enabled: bool = True, stream: TextIO | None = None,
             lines: int = LINES, leave: bool = True):
    """A progress display for ``total`` items on ``stream`` (default stderr): tqdm on a terminal, else lines.

    ``enabled=False`` shows no progress (messages given to ``write`` are still written).
    """
    stream = sys.stderr if stream is None else stream
    if enabled and is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc or None, unit=unit, file=stream, leave=leave)
    return LineProgress(total, desc, unit, stream=stream, lines=lines if enabled else 0)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """At most ``lines`` plain lines for a loop of ``total`` items, each ending with a newline."""

    def __init__(self, total: int, desc: str = "", unit: str = "it", *, stream: TextIO | None = None,
                 lines: int = LINES):
        self.total, self.desc, self.unit = max(int(total or 0), 0), desc, unit
        self.stream = sys.stderr if stream is None else stream
        self.lines = max(int(lines), 0)
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.started = time.perf_counter()
        self._step = 0  # the last 1/lines step a line was written for

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.lines or not self.total:
            return
        step = min(math.floor(self.n * self.lines / self.total), self.lines)
        if step > self._step:
            self._step = step
            self._emit()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def write(self, message: str, file: TextIO | None = None) -> None:
        print(message, file=self.stream if file is None else file, flush=True)

    def close(self) -> None:
        """Nothing to erase; a loop cut short says where it stopped."""
        if self.lines and self.total and 0 < self.n < self.total and self._step < self.lines:
            self._emit()
            self._step = self.lines

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _emit(self) -> None:
        elapsed = time.perf_counter() - self.started
        rate = self.n / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc + ': ' if self.desc else ''}{self.n}/{self.total} {self.unit} " \
               f"({100 * self.n / self.total:.0f}%) in {elapsed:.0f} s, {rate:.2f} {self.unit}/s"
        if self.n < self.total and rate > 0:
            text += f", {(self.total - self.n) / rate:.0f} s left"
        if self.postfix:
            text += ", " + ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        self.write(text)
