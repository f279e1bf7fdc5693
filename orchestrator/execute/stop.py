"""Stop requests: the one module that turns signals into a stop, a reason and an exit code.

Which signals: SIGTERM (a preemption, ``scancel``, ``kill``), SIGINT (Ctrl-C) and SIGUSR1
(Slurm's time-limit warning, ``--signal=B:USR1@N``) each ask the process to stop. SIGHUP
(a closed terminal) is ignored by the commands that record runs (:func:`ignore_hangup`):
their work and its records must not depend on who reads their output.

Usage, modelled on submitit's one ``SignalHandler`` and Optuna's/MLflow's context managers::

    from orchestrator.execute import stop

    with stop.handling() as flag:          # installs the handlers; restores the previous ones after
        prepare()                          # a signal here raises stop.Stopped where it lands
        with flag.deferred():              # work that stops by itself: a signal only sets the flag
            train(cfg, should_stop=flag.is_set)   # polled at every batch; checkpoint, then return
        if flag.is_set():
            return flag.exit_code

The rules, all here:

* The first signal sets the flag (``flag.signum``). Outside :meth:`StopFlag.deferred` it also
  raises :class:`Stopped` where it lands, so that code which does not poll ends in a defined
  state (a sweep opening its store, a tuner between trials); inside, the work polls
  :meth:`StopFlag.is_set` and ends itself (a training loop checkpoints at its next batch).
* A second signal while deferred raises :class:`Stopped` at once ("a second Ctrl-C stops at
  once"), or calls the deferral's ``on_second`` instead (the scheduler kills its point
  processes, and lets its own clean-up finish).
* The same signal again within :data:`REPEAT_WINDOW_SECONDS` of the first is the same
  request: a parent that dies sends its ``PR_SET_PDEATHSIG`` once per exiting thread.
* ``handling()`` nests: an inner block shares the outer block's flag and handlers, so a
  scheduler inside a sweep, or a tuning trial inside a worker, sees the process's one stop
  request; only the outermost block installs and restores handlers. Outside the main thread
  nothing is installed (Python allows handlers there only) and no signal sets the flag.
* What a signal means is the outermost block's ``accept(signum) -> bool``: a signal it
  refuses is ignored. Default: every stop signal counts.

The one stop type is :class:`Stopped` (``.signum``, ``.reason``, ``.exit_code``). It derives
from ``KeyboardInterrupt`` so that ``except Exception`` (a run's failure handler, Optuna's
``catch``) never takes a stop for a failure. ``experiments/`` cannot import this module: its
``train()`` gets ``should_stop=flag.is_set``, checkpoints and returns None when it is true, and
the runner (:func:`orchestrator.execute.runner.run_tracked`) turns that into the run's end.

Reason texts (the ``orch.failure_reason`` of a run or parent ended by a stop, relied on by
tests and docs/how-to/resume.md): ``preempted (SIGTERM)``, ``preempted (SIGUSR1)``, ``interrupted
(SIGINT)``, each optionally followed by where it stopped. Exit codes: 130 for Ctrl-C
(SIGINT), 143 for a preemption (SIGTERM and SIGUSR1 alike).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Callable, Iterator

from orchestrator.errors import ExitCode

__all__ = ["REPEAT_WINDOW_SECONDS", "SIGNALS", "StopFlag", "Stopped", "exit_code", "handling", "ignore",
           "ignore_hangup", "reason", "signal_of"]

# Ctrl-C, a preemption (scancel, kill), and Slurm's time-limit warning: each asks for a stop
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
    """The signal behind an interrupt: a :class:`Stopped`'s own, SIGINT for Python's (Ctrl-C
    where no handler of this module was installed)."""
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
    """The process's stop request: set by the first accepted signal, read by the work."""

    def __init__(self, accept: Callable[[int], bool] | None = None):
        self.signum: int | None = None
        self.accept = accept
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
        if self.accept is not None and not self.accept(signum):
            return
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
def handling(accept: Callable[[int], bool] | None = None) -> Iterator[StopFlag]:
    """Stop signals set (and, outside a deferral, raise) the yielded flag for the block.

    A block inside another shares its flag (``accept`` then is the outer one's)."""
    global _current
    if _current is not None:
        yield _current
        return
    if threading.current_thread() is not threading.main_thread():
        yield StopFlag(accept)
        return
    flag = _current = StopFlag(accept)
    previous = {sig: signal.signal(sig, flag._on_signal) for sig in SIGNALS}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: a handler not installed from Python, which cannot be restored
                signal.signal(sig, handler)
        _current = None


def ignore(*signums: int) -> None:
    """Ignore these signals from now on in this process (and the children it starts)."""
    for signum in signums:
        signal.signal(signum, signal.SIG_IGN)


def ignore_hangup() -> None:
    """A closed terminal (SIGHUP) no longer ends this process: it finishes its work, output dropped."""
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
