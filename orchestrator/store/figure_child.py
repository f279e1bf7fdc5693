"""Draw figures to PNG files in a forked child while the parent process goes on.

A run's last steps are single-threaded: drawing its figures (most of it matplotlib's
text layout, about 0.1 s a figure, holding the GIL), saving the model, writing to the
store. A thread cannot draw beside them; a forked child can, on a second core: the
parent hands it some figures, draws the others and saves the model meanwhile, then logs
the child's files. This shortens the tail of a run wherever a core is free (on a GPU
machine nearly always; on a CPU-only one the training has finished by then).

Why a fork is safe here although the parent has threads (MLflow's logging thread, the
system-metrics monitor, torch's workers): the child touches only the already-built
figures, matplotlib's Agg renderer, PIL's PNG encoder (all imported before the fork) and
its own output files, and leaves with ``os._exit`` (no atexit handler, no buffer flush,
so MLflow's end-of-process hooks and the parent's unwritten output stay the parent's).
The stop signals (SIGTERM, SIGINT, SIGUSR1) and SIGALRM are blocked across the fork: the
child never runs the parent's handlers (which raise into the parent's code); it sets
their default actions before it unblocks them, so a preempted job's child just ends.
Its standard streams point at /dev/null (a point process's stdout is the scheduler's
pipe), and it dies with its parent (``PR_SET_PDEATHSIG``), so it never holds the parent's
pipes or devices open after the parent is gone.

Every way the child can fail ends in the same defined state: the parent draws the
figures the child did not deliver itself. A child that exits non-zero, is killed, or
whose status someone else reaped (SIGCHLD ignored) costs that redraw. One that has not
finished ``deadline`` seconds after the fork (a lock some parent thread held at the
fork, say) is killed, and this process stops forking for figures; the child's own
alarm ends it a little later in any case.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import select
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

PIL_PNG = {"compress_level": 1}  # small figures: fast compression (drawing them costs enough)
PNG_OPTIONS = {"format": "png", "pil_kwargs": PIL_PNG}
DEADLINE_SECONDS = 30.0  # from the fork; the child's figures take well under a second
ALARM_MARGIN_SECONDS = 10.0  # the child's own alarm, after the parent's deadline: the parent's kill comes first
PR_SET_PDEATHSIG = 1
BLOCKED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGALRM)
_forking = {"allowed": True}  # False after a child missed its deadline: this process draws in-process


def save_png(figure: Any, file: Path) -> None:
    """The one way orch writes a figure's PNG (in the child and in the parent alike)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(file, **PNG_OPTIONS)


def can_fork() -> bool:
    """Fork only where it is cheap and well-defined (Linux) and a second core exists."""
    if not (_forking["allowed"] and hasattr(os, "fork") and sys.platform.startswith("linux")):
        return False
    return len(os.sched_getaffinity(0)) > 1


class ChildDrawing:
    """The child's figures: ``files()`` waits for it and returns ``{name: PNG file}``."""

    def __init__(self, figures: Mapping[str, Any], out_dir: Path, deadline: float):
        self.figures = dict(figures)
        self.files_by_name = {name: out_dir / name for name in self.figures}
        self.deadline = deadline
        self.pid: int | None = None
        self.pidfd: int | None = None  # names exactly this child: a signal never reaches a reused pid
        self.forked_at = 0.0
        self.outcome = "not started"

    def start(self) -> None:
        if not self.figures or not can_fork():
            self.outcome = "drawn in-process (no fork here)"
            return
        _prepare_child_imports()
        for stream in (sys.stdout, sys.stderr):  # nothing buffered now can be written twice
            with contextlib.suppress(Exception):
                stream.flush()
        parent = os.getpid()
        with _blocked(BLOCKED), warnings.catch_warnings():  # Python >= 3.12 warns on a fork of a threaded process
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                self.forked_at = time.monotonic()
                pid = os.fork()
            except OSError as err:  # no memory for the fork, process limit: draw here instead
                self.outcome = f"drawn in-process (fork failed: {err})"
                return
            if pid == 0:  # the child; it never returns from here
                _child(parent, self.figures, self.files_by_name, self.deadline + ALARM_MARGIN_SECONDS)
            self.pid = pid
        with contextlib.suppress(AttributeError, OSError):  # pidfd_open: Linux >= 5.3
            self.pidfd = os.pidfd_open(pid)

    def files(self) -> dict[str, Path]:
        """Wait for the child; draw here whatever it did not deliver. Never raises for the child."""
        if self.pid is not None:
            code = self._wait()
            self.outcome = "drawn by the child" if code == 0 else f"drawn in-process (child {_describe(code)})"
            if code is None or code == -signal.SIGALRM:  # missed its deadline: this process stops forking
                _forking["allowed"] = False
            self._forget()
        if self.outcome != "drawn by the child":  # a child exits 0 only once every file is written
            for name, figure in self.figures.items():
                save_png(figure, self.files_by_name[name])
        return dict(self.files_by_name)

    def abandon(self) -> None:
        """The parent failed before collecting: end the child and reap it."""
        if self.pid is not None:
            self._kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self._forget()

    def _wait(self) -> int | str | None:
        """The child's exit code (negative: killed by that signal); None when it missed the
        deadline and was killed; ``"reaped"`` when its status was collected elsewhere."""
        end = self.forked_at + self.deadline
        pause = 0.001
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # SIGCHLD ignored: the kernel reaped it, its status is gone
                return "reaped"
            if pid:
                return os.waitstatus_to_exitcode(status)
            left = end - time.monotonic()
            if left <= 0:
                self._kill()
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
                return None
            if self.pidfd is not None:  # readable once the child has ended
                select.select([self.pidfd], [], [], left)
            else:
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.02)

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)

    def _forget(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
        self.pid = self.pidfd = None


@contextlib.contextmanager
def drawn_aside(figures: Mapping[str, Any], out_dir: Path, deadline: float = DEADLINE_SECONDS) -> Iterator[ChildDrawing]:
    """Start drawing ``figures`` (name → Figure; the name is the PNG's path under ``out_dir``)
    in a child; the body does other work, then calls ``.files()``. The figures must not be
    changed until then. Leaving the block early kills the child."""
    drawing = ChildDrawing(figures, Path(out_dir), deadline)
    try:
        drawing.start()
        yield drawing
    finally:
        drawing.abandon()


@contextlib.contextmanager
def _blocked(signals: tuple[int, ...]) -> Iterator[None]:
    """These signals stay pending (not handled) in this thread, and in a child forked meanwhile."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _child(parent: int, figures: Mapping[str, Any], files: Mapping[str, Path], alarm: float) -> None:
    code = 1
    try:
        for sig in BLOCKED:  # still blocked: a signal that came since the fork waits for these
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above
            return
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        signal.alarm(max(1, math.ceil(alarm)))  # SIGALRM's default action ends the process
        signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED)
        for name, figure in figures.items():
            save_png(figure, files[name])
        code = 0
    except BaseException:  # noqa: BLE001 - the parent redraws; the child only reports by its code
        pass
    finally:
        os._exit(code)


def _prepare_child_imports() -> None:
    """Import what drawing a PNG imports lazily, so the child imports nothing (an import
    lock a parent thread held at the fork would never be released in the child)."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import PIL.Image

    PIL.Image.preinit()  # the image plugins PIL's first save imports


def _describe(code: int | str | None) -> str:
    if code is None:
        return "missed its deadline and was killed"
    if code == "reaped":
        return "was reaped elsewhere (SIGCHLD ignored): its outcome is unknown"
    if code == -signal.SIGALRM:
        return "missed its deadline and ended itself"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exited with code {code}"
