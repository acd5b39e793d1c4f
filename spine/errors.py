"""The errors that reach a user, and the one way every command turns them into one line and an exit code.

Outside input enters at a few boundaries, and each has one error type, raised with a one-line message that
names the file (or the key) and says why and what to do:

==========================  ===========================================  ============  =========================
boundary                    error type                                   exit code     raised by
==========================  ===========================================  ============  =========================
the command line            `spine.cli.ConfigError`                   2 (input)     spine.cli (schemas),
                                                                                       spine.device
the competition CSVs        `spine.io.tables.TableError`                 2 (input)     spine.io.tables
the preprocessing cache     `spine.cache.CacheError`          1 (failure)   spine.cache
                            `spine.preprocess.lock.CacheBusyError`       1 (failure)   spine.preprocess.lock
a run folder                `spine.run_folder.RunFolderError`            1 (failure)   spine.run_folder
what a stage trains on      `TrainingDataError` (below)                  2 (input)     spine.train
nothing to predict          `spine.predict.study.PredictError`           1 (failure)   spine.predict
==========================  ===========================================  ============  =========================

All derive from `SpineError`; `InputError` marks bad input (exit code 2), anything else a failure (exit code 1).
A DICOM file or series that cannot be read is not an error of the run: it is skipped and reported
(`spine.io.dicom.SeriesReadError` stays inside preprocessing and inference).

`command` wraps a command's ``main(argv) -> int``: a `SpineError` that reaches it is printed as one line
``[command] error: message`` on stderr and the main returns the error's exit code. Nothing else is caught, so a
bug still shows its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence

__all__ = ["InputError", "SpineError", "TrainingDataError", "command", "one_line"]


class SpineError(Exception):
    """A run that cannot go on, for a reason the user can act on; the message is one line (exit code 1)."""

    exit_code = 1
    label = "error"  # what the one line printed by `command` says before the message

    def __str__(self) -> str:
        return one_line(super().__str__(), limit=1000)


class InputError(SpineError):
    """Input that cannot be used as given (a config value, a table, a label): exit code 2."""

    exit_code = 2


class TrainingDataError(InputError):
    """A training stage would learn from nothing (no labelled study, no label point of its conditions)."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line (runs of whitespace as one space), shortened to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


MainFunction = Callable[[Sequence[str] | None], int]


def command(name: str) -> Callable[[MainFunction], MainFunction]:
    """Decorator of a command's ``main``: a `SpineError` becomes one line on stderr and its exit code."""

    def wrap(main: MainFunction) -> MainFunction:
        @functools.wraps(main)
        def guarded(argv: Sequence[str] | None = None) -> int:
            try:
                return main(argv)
            except SpineError as err:
                print(f"[{name}] {err.label}: {err}", file=sys.stderr, flush=True)
                return err.exit_code

        return guarded

    return wrap
