"""Standard output and error that a reader who went away cannot break.

A closed pipe (``orch sweep grid.yaml | head -1``) or terminal makes a write raise wherever it
happens, e.g. mid-sweep, leaving runs RUNNING. :func:`guard` wraps ``sys.stdout`` and
``sys.stderr``: the first failing write points that descriptor at ``/dev/null`` and the command
goes on. :func:`logging_to_stderr` prints the ``orchestrator`` logger's records for one command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Iterator, TextIO


class _Guarded:
    """A text stream whose failed writes are dropped, and every later one with them."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            self._drop()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self._drop()

    def _drop(self) -> None:
        """Point the descriptor at /dev/null: what is still buffered, and all that follows, goes there."""
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer, …
        return getattr(self._stream, name)


@contextlib.contextmanager
def logging_to_stderr() -> Iterator[None]:
    """While open, the ``orchestrator`` logger prints INFO and up on ``sys.stderr`` (as it is now)
    as bare lines, flushed, and does not propagate (a root handler would print each line twice);
    closing it puts the logger back as it was (a test process invoking many commands)."""
    logger = logging.getLogger("orchestrator")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler (mlflow.pytorch's basicConfig) would print each line again
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def guard() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` drop their output once their reader has gone."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Guarded):
            setattr(sys, name, _Guarded(stream))
