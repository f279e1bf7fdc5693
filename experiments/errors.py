"""The one exception base for problems the user must fix (exit code 2 at the CLI).

It lives here, at the bottom of the import chain (``orchestrator`` → ``experiments`` →
``models``), so that config and data errors can derive from it; ``orchestrator.errors``
re-exports it beside the exit codes. Raising a :class:`UserError` means: nothing was
started or recorded, and the message alone tells the user what is wrong and how to fix it.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: a grid, config, dataset, store or URL that the user must fix.

    The message names the problem and the fix. Subclasses add context (a key, a source
    file) but every one of them maps to the same exit code.
    """


class ConfigError(UserError):
    """Bad configuration input: names the source, the dotted key and the fix."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        self.key = key
        self.source = source
        self.problem = message
        where = ": ".join(p for p in (source, key) if p)
        super().__init__(f"{where}: {message}" if where else message)
