"""Standard output and error that a reader who went away cannot break.

``orch sweep grid.yaml | head -1`` closes the pipe after one line, and a closed terminal
makes every later write fail with EIO. Python ignores SIGPIPE, so such a write raises
(``BrokenPipeError``, ``OSError``) wherever it happens: in the middle of a sweep, which then
dies with its runs left RUNNING. The work and its records must not depend on whoever reads
the output, so :func:`guard` wraps ``sys.stdout`` and ``sys.stderr``: the first write that
fails points that file descriptor at ``/dev/null`` (the idiom of the Python docs' note on
SIGPIPE) and the command goes on, its further output dropped. :func:`ignore_hangup`
(:mod:`orchestrator.execute.stop`) keeps a command that records runs working when its
terminal closes (as ``nohup`` would). :func:`logging_to_stderr` prints the ``orchestrator``
logger's records on stderr for the length of one command, as bare lines.

The point processes never write to these streams: their stdout is the scheduler's event
pipe and their stderr a log file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Iterator, TextIO

from orchestrator.execute.stop import ignore_hangup  # the commands import it from here

__all__ = ["guard", "ignore_hangup", "logging_to_stderr"]


class _Guarded:
    """A text stream whose failed writes are dropped, and every later one with them."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self.closed_reader = False  # a write failed: the reader has gone

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
        self.closed_reader = True
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
    """While it is open, the ``orchestrator`` logger prints its records at INFO and up on
    ``sys.stderr`` (as it is now: guarded, or click's CliRunner's) as bare lines, flushed.

    Opened once per command by the ``orch`` group; a command's ``--quiet`` raises the level to
    WARNING. The records stop here: a library that logs through the root logger's module
    functions (``logging.info``) gives the root a handler of its own, which would print each line
    a second time. Closing it puts the logger back as it was, so a test process that invokes
    many commands, or calls the library directly, is left as it found it.
    """
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
