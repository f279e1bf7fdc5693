"""A running sweep's progress: one line per event (:class:`PlainDisplay`) or a live table
(:class:`LiveDisplay`, rich imported inside the functions that draw)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Sequence


if TYPE_CHECKING:
    from orchestrator.execute.slots import Slot, Task


class PlainDisplay:
    """One line per event, for logs, CI and pipes."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.total: int | None = 0  # None: not known (a queue's points keep coming)
        self.n_done = 0
        self.n_failed = 0

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def start(self, total: int | None, slots: Sequence[Slot]) -> None:
        self.total = total
        where = ", ".join(s.label for s in slots)
        what = "points from the queue" if total is None else f"{total} point(s)"
        self._say(f"running {what} on {len(slots)} slot(s): {where}")

    def count(self) -> str:
        """``[3/12]``: points ended of the total; ``[3 ended]`` when the total is not known."""
        ended = self.n_done + self.n_failed
        return f"[{ended} ended]" if self.total is None else f"[{ended}/{self.total}]"

    def started(self, task: Task) -> None:
        retry = f" (attempt {task.attempt})" if task.attempt > 1 else ""
        self._say(f"  start   {task.name} on {task.slot.label}{retry}")

    def progress(self, task: Task, event: dict) -> None:
        pass

    def tick(self) -> None:
        pass

    def finished(self, task: Task) -> None:
        self.n_done += 1
        secs = time.time() - task.started
        key = task.score[0] if task.score else None  # the headline value's summary twin, if any
        final = task.summary.get(key.split("/")[-1]) if key else None
        score = f"  {key.split('/')[-1]} {final:.4f}" if isinstance(final, (int, float)) else ""
        self._say(f"  done    {task.name}  {self.count()}  {secs:.1f}s{score}")

    def retrying(self, task: Task, reason: str) -> None:
        self._say(f"  retry   {task.name}: {reason}")

    def warning(self, task: Task, text: str) -> None:
        """Something the user should know about a point (a skipped checkpoint); shown with --quiet too."""
        print(f"  warning {task.name}: {text}", file=sys.stderr, flush=True)

    def failed(self, task: Task, reason: str) -> None:
        self.n_failed += 1
        self._say(f"  FAILED  {task.name}  {self.count()}: {reason}")

    def note(self, text: str) -> None:
        self._say(text)

    def stop(self) -> None:
        pass


class LiveDisplay(PlainDisplay):
    """A live table on a terminal: counts, elapsed, ETA, and each running point's epoch."""

    def __init__(self):
        super().__init__()
        self.running: dict[str, Task] = {}
        self.durations: list[float] = []
        self.t0 = time.time()
        self.live = None
        self.slots = 1
        self.notes: list[str] = []

    def start(self, total: int | None, slots: Sequence[Slot]) -> None:
        from rich.console import Console
        from rich.live import Live

        self.total, self.slots, self.t0 = total, max(1, len(slots)), time.time()
        self.live = Live(self._render(), console=Console(stderr=True), refresh_per_second=4, transient=False)
        self.live.start()

    def _render(self):
        from rich.table import Column, Table

        elapsed = time.time() - self.t0
        eta, pending = "–", "?"  # a queue's total is not known
        if self.total is not None:
            remaining = self.total - self.n_done - self.n_failed
            pending = str(remaining - len(self.running))
            if self.durations:
                mean = sum(self.durations) / len(self.durations)
                eta = _fmt_seconds(mean * remaining / self.slots)
        head = (f"done {self.n_done}  running {len(self.running)}  failed {self.n_failed}  "
                f"pending {pending}   elapsed {_fmt_seconds(elapsed)}  eta {eta}")
        table = Table("point", "slot", *(Column(name, justify="right") for name in ("step", "score", "time")),
                      title=head, title_justify="left", expand=False)
        for task in self.running.values():
            score = f"{task.score[0]} {task.score[1]:.4f}" if task.score else ""
            table.add_row(task.name, task.slot.label, str(task.step) if task.step else "starting", score,
                          _fmt_seconds(time.time() - task.started))
        for text in self.notes[-5:]:
            table.add_row(f"[dim]{text}[/dim]", "", "", "", "")
        return table

    def tick(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def started(self, task: Task) -> None:
        self.running[task.name] = task
        self.tick()

    def progress(self, task: Task, event: dict) -> None:
        self.tick()

    def finished(self, task: Task) -> None:
        self.running.pop(task.name, None)
        self.durations.append(time.time() - task.started)
        self.n_done += 1
        self.tick()

    def retrying(self, task: Task, reason: str) -> None:
        self.running.pop(task.name, None)
        self.note(f"retry {task.name}: {reason}")

    def failed(self, task: Task, reason: str) -> None:
        self.running.pop(task.name, None)
        self.n_failed += 1
        self.note(f"FAILED {task.name}: {reason}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.tick()

    def warning(self, task: Task, text: str) -> None:
        if self.live is None:
            return super().warning(task, text)
        self.live.console.print(f"warning {task.name}: {text}", markup=False, highlight=False)  # above the table, kept

    def stop(self) -> None:
        if self.live is not None:
            self.tick()
            self.live.stop()


def _fmt_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def make_display(quiet: bool) -> PlainDisplay:
    """The live table on an interactive terminal, else one line per event (none with ``quiet``)."""
    if not quiet and sys.stderr.isatty():
        return LiveDisplay()
    return PlainDisplay(quiet=quiet)
