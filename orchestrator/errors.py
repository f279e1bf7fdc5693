"""Errors and exit codes of ``orch``: one base for bad input, one table of exit codes.

Every error that the user must fix derives from :class:`UserError` (config, grid, data,
tracking store, storage URL, comparison arguments); the CLI catches that base and exits
with :attr:`ExitCode.BAD_INPUT`. Nothing else is mapped to exit 2. A tracking store that
fails while a command works (full disk, a store that vanished or stays locked, a server
that stopped answering) is a :class:`StoreFailure`: exit 1, one message, no traceback.
"""

from __future__ import annotations

import enum

from experiments.errors import UserError

__all__ = ["ExitCode", "RunFailed", "StoreFailure", "UserError"]


class ExitCode(enum.IntEnum):
    """Exit codes of every ``orch`` command."""

    OK = 0  # everything asked for finished
    FAILED = 1  # some run failed (recorded FAILED with its reason)
    BAD_INPUT = 2  # nothing was started: one message names the problem and the fix
    LOST_CLAIM = 3  # a point process: another process took its point over; it wrote no final state
    INTERRUPTED = 130  # Ctrl-C: running runs were recorded KILLED
    PREEMPTED = 143  # SIGTERM: running runs checkpointed and recorded KILLED (preempted); rerun to resume


class StoreFailure(Exception):
    """The tracking store failed during the work: a write or read raised from the store itself.

    Raised by :class:`orchestrator.store.tracking.TrackingStore` in place of MLflow's, SQLAlchemy's
    or the file system's exception (kept as ``__cause__``), so that the orchestrator can stop
    starting work and say what happened, instead of crashing half-way through closing runs.
    What could not be written is repaired by the next invocation (orphaned RUNNING runs are
    closed, unfinished points run again). Exit code: :attr:`ExitCode.FAILED`.
    """

    def __init__(self, uri: str, cause: str):
        super().__init__(f"the tracking store {uri} failed: {cause}")
        self.uri, self.cause = uri, cause


class RunFailed(RuntimeError):
    """A run's failure whose message is the whole reason the run records (no exception class
    name before it): e.g. a command entry's ``exit status 3: <its stderr's last lines>``."""
