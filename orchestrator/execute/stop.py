"""Stop requests: the one module that turns signals into a stop, a reason and an exit code.

SIGTERM (preemption, ``scancel``), SIGINT (Ctrl-C) and SIGUSR1 (Slurm's time-limit warning) ask
for a stop; commands that record runs ignore SIGHUP (:func:`ignore_hangup`). Usage::

    with stop.handling() as flag:          # installs the handlers; restores the previous ones after
        prepare()                          # a signal here raises stop.Stopped where it lands
        with flag.deferred():              # a signal only sets the flag: the work polls it and stops
            train(cfg, should_stop=flag.is_set)

* The first signal sets the flag; outside :meth:`StopFlag.deferred` it also raises
  :class:`Stopped`, so code that does not poll ends in a defined state.
* A second signal while deferred raises :class:`Stopped`, or calls the deferral's ``on_second``.
* The same signal again within :data:`REPEAT_WINDOW_SECONDS` is the same request: a dying
  parent sends its ``PR_SET_PDEATHSIG`` once per exiting thread.
* ``handling()`` nests: inner blocks share the outermost one's flag; outside the main thread
  nothing is installed.

:class:`Stopped` derives from ``KeyboardInterrupt`` so that ``except Exception`` never takes a
stop for a failure. Reasons (relied on by tests and docs/how-to/resume.md): ``preempted
(SIGTERM)``, ``preempted (SIGUSR1)``, ``interrupted (SIGINT)``; exit codes 130 (SIGINT), 143.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Callable, Iterator

from orchestrator.errors import ExitCode

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
REPEAT_WINDOW_SECONDS = 1.0  # the same signal again within this is the same request


def reason(signum: int) -> str:
    """``interrupted (SIGINT)`` for Ctrl-C, ``preempted (SIGTERM)`` / ``preempted (SIGUSR1)`` otherwise."""
    name = signal.Signals(signum).name
    return f"{'interrupted' if signum == signal.SIGINT else 'preempted'} ({name})"


def exit_code(signum: int | None) -> int:
    """130 for Ctrl-C (SIGINT), 143 for a preemption (SIGTERM, SIGUSR1)."""
    return ExitCode.INTERRUPTED if signum == signal.SIGINT else ExitCode.PREEMPTED


def signal_of(err: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: a :class:`Stopped`'s own, else SIGINT (Python's Ctrl-C)."""
    return getattr(err, "signum", signal.SIGINT)


class Stopped(KeyboardInterrupt):
    """A stop signal ended the work where it was: the one stop exception of ``orch``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def reason(self) -> str:
        return reason(self.signum)

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


class StopFlag:
    """The process's stop request: set by the first signal, read by the work."""

    def __init__(self):
        self.signum: int | None = None
        self._at = 0.0  # when the first signal came (time.monotonic())
        self._deferrals: list[Callable[[], None] | None] = []  # innermost last: its on_second

    def is_set(self) -> bool:
        return self.signum is not None

    @property
    def reason(self) -> str | None:
        return None if self.signum is None else reason(self.signum)

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)

    @contextlib.contextmanager
    def deferred(self, on_second: Callable[[], None] | None = None) -> Iterator[StopFlag]:
        """In the block a first signal only sets the flag; a second raises :class:`Stopped`,
        or calls ``on_second`` when given."""
        self._deferrals.append(on_second)
        try:
            yield self
        finally:
            self._deferrals.pop()

    def _on_signal(self, signum: int, frame) -> None:  # noqa: ARG002
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._at = signum, now
            if not self._deferrals:
                raise Stopped(signum)
            return
        if signum == self.signum and now - self._at < REPEAT_WINDOW_SECONDS:
            return  # the same request again (one PR_SET_PDEATHSIG per exiting thread of a dead parent)
        if self._deferrals and self._deferrals[-1] is not None:
            self._deferrals[-1]()
            return
        raise Stopped(signum)


_current: StopFlag | None = None  # the flag of the outermost handling() block, while one is open


@contextlib.contextmanager
def handling() -> Iterator[StopFlag]:
    """Stop signals set (and, outside a deferral, raise) the yielded flag; an inner block shares it."""
    global _current
    if _current is not None:
        yield _current
        return
    if threading.current_thread() is not threading.main_thread():
        yield StopFlag()
        return
    flag = _current = StopFlag()
    previous = {sig: signal.signal(sig, flag._on_signal) for sig in SIGNALS}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: a handler not installed from Python, which cannot be restored
                signal.signal(sig, handler)
        _current = None


def ignore_hangup() -> None:
    """A closed terminal (SIGHUP) no longer ends this process: it finishes its work, output dropped."""
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
