"""Errors and exit codes of ``orch``: every error the user must fix derives from :class:`UserError`
(exit 2, and nothing else is); a tracking store failing during the work is a :class:`StoreFailure`
(exit 1, one message, no traceback).
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
    """The tracking store failed during the work (the store's own exception is ``__cause__``); the
    next invocation repairs what could not be written."""

    def __init__(self, uri: str, cause: str):
        super().__init__(f"the tracking store {uri} failed: {cause}")


class RunFailed(RuntimeError):
    """A run's failure whose message is the whole reason the run records (no exception class
    name before it): e.g. a command entry's ``exit status 3: <its stderr's last lines>``."""
