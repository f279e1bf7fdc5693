"""Draw figures to PNG files in a forked child while the parent process goes on.

A run's last steps are single-threaded: drawing its figures (most of it matplotlib's
text layout, about 0.1 s a figure, holding the GIL), saving the model, writing to the
store. A thread cannot draw beside them; a forked child can, on a second core: the
parent hands it some figures, draws the others and saves the model meanwhile, then logs
the child's files. This halves the tail of a run wherever a core is free (on a GPU
machine nearly always; on a CPU-only one the training has finished by then).

Why a fork is safe here although the parent has threads (MLflow's logging thread, the
system-metrics monitor, torch's workers): the child touches only the already-built
figures, matplotlib's Agg renderer, PIL's PNG encoder (all imported before the fork) and
its own output files, and leaves with ``os._exit`` (no atexit handler, no buffer flush,
so MLflow's end-of-process hooks and the parent's unwritten output stay the parent's).

Every way the child can fail ends in the same defined state: the parent draws the
figures the child did not deliver itself. A child that exits non-zero or is killed costs
that redraw; one that has not finished by ``deadline`` seconds (a lock a parent thread
held at the fork, say) is killed, and this process stops forking for figures. The child
also ends itself at its deadline (``alarm``), so it cannot outlive a parent killed
meanwhile, and takes the default action of the stop signals (SIGTERM, SIGINT, SIGUSR1)
rather than the parent's handlers: a preempted job's child just ends.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

PNG_OPTIONS = {"format": "png", "pil_kwargs": {"compress_level": 1}}  # small figures: fast compression
DEADLINE_SECONDS = 30.0
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
        self.outcome = "not started"

    def start(self) -> None:
        if not self.figures or not can_fork():
            self.outcome = "drawn in-process (no fork here)"
            return
        _prepare_child_imports()
        for stream in (sys.stdout, sys.stderr):  # nothing buffered now can be written twice
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            with warnings.catch_warnings():  # Python >= 3.12 warns on any fork of a threaded process
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError as err:  # no memory for the fork, process limit: draw here instead
            self.outcome = f"drawn in-process (fork failed: {err})"
            return
        if pid == 0:  # the child
            _draw_and_exit(self.figures, self.files_by_name, self.deadline)
        self.pid = pid

    def files(self) -> dict[str, Path]:
        """Wait for the child; draw here whatever it did not deliver. Never raises for the child."""
        if self.pid is not None:
            code = self._wait()
            self.outcome = "drawn by the child" if code == 0 else f"drawn in-process (child {_describe(code)})"
            self.pid = None
        delivered = self.outcome == "drawn by the child"
        for name, figure in self.figures.items():
            if not delivered or not self.files_by_name[name].is_file():
                save_png(figure, self.files_by_name[name])
        return dict(self.files_by_name)

    def _wait(self) -> int | None:
        """The child's exit code (negative: killed by that signal); None when it missed the deadline."""
        end = time.monotonic() + self.deadline
        pause = 0.001
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() >= end:
                _forking["allowed"] = False
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def abandon(self) -> None:
        """The parent failed before collecting: end the child and reap it."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None


@contextlib.contextmanager
def drawn_aside(figures: Mapping[str, Any], out_dir: Path, deadline: float = DEADLINE_SECONDS) -> Iterator[ChildDrawing]:
    """Start drawing ``figures`` (name → Figure; the name is the PNG's path under ``out_dir``)
    in a child; the body does other work, then calls ``.files()``. The figures must not be
    changed until then. Leaving the block early kills the child."""
    drawing = ChildDrawing(figures, Path(out_dir), deadline)
    drawing.start()
    try:
        yield drawing
    finally:
        drawing.abandon()


def _draw_and_exit(figures: Mapping[str, Any], files: Mapping[str, Path], deadline: float) -> None:
    code = 1
    try:
        for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.alarm(max(1, math.ceil(deadline)))  # SIGALRM's default action ends the process
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
    import PIL.PngImagePlugin  # noqa: F401


def _describe(code: int | None) -> str:
    if code is None:
        return "missed its deadline and was killed"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exited with code {code}"
