"""Errors and exit codes of ``orch``: one base for bad input, one table of exit codes.

Every error that the user must fix derives from :class:`UserError` (config, grid, data,
tracking store, storage URL, comparison arguments); the CLI catches that base and exits
with :attr:`ExitCode.BAD_INPUT`. Nothing else is mapped to exit 2.
"""

from __future__ import annotations

import enum

from experiments.errors import UserError

__all__ = ["ExitCode", "UserError"]


class ExitCode(enum.IntEnum):
    """Exit codes of every ``orch`` command."""

    OK = 0  # everything asked for finished
    FAILED = 1  # some run failed (recorded FAILED with its reason)
    BAD_INPUT = 2  # nothing was started: one message names the problem and the fix
    INTERRUPTED = 130  # Ctrl-C: running runs were recorded KILLED
    PREEMPTED = 143  # SIGTERM: running runs checkpointed and recorded KILLED (preempted); rerun to resume
