"""Logging for the command lines: one stderr handler, ``[command] message`` (``warning:`` / ``error:`` before
messages at those levels), set up once by :func:`spine.cli.compose_or_exit`.

Library modules only ever call ``logging.getLogger(__name__)``; a program embedding spine keeps its own
logging setup (nothing is configured on import). Records still propagate to the root logger, which has no
handler in a command (so nothing prints twice) and pytest's capture handler in the tests.
"""

from __future__ import annotations

import logging
import sys

_HANDLER_NAME = "spine-cli"


class _Formatter(logging.Formatter):
    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        text = f"[{self.command}] {level}{record.getMessage()}"
        return text + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (a test may swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always reads sys.stderr
        pass


def configure(command: str, level: int = logging.INFO) -> None:
    """Send spine's log records at ``level`` and above to stderr as ``[command] ...`` (idempotent)."""
    logger = logging.getLogger("spine")
    for handler in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_Formatter(command))
    logger.addHandler(handler)
    logger.setLevel(level)
