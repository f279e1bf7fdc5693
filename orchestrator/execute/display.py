"""What ``orch`` shows on a terminal: the progress of a running sweep, the dry-run listing
of a grid and the state of the queue.

:class:`PlainDisplay` writes one line per event (logs, CI, pipes); :class:`LiveDisplay`
keeps a live table on a terminal; :func:`make_display` picks one. rich is imported inside
the functions that draw, and nothing here imports torch or mlflow, so ``orch sweep
--dry-run`` stays fast.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Sequence

from experiments.metric_names import DEFAULT_OBJECTIVE

if TYPE_CHECKING:
    from orchestrator.grid.load import SweepSpec
    from orchestrator.execute.slots import Slot, Task


# --------------------------------------------------------------------------- a running sweep


class PlainDisplay:
    """One line per event, for logs, CI and pipes."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.total: int | None = 0  # None: not known (a queue's points keep coming)
        self.n_done = 0
        self.n_failed = 0

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

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
        f1 = task.summary.get(DEFAULT_OBJECTIVE)
        score = f"  {DEFAULT_OBJECTIVE} {f1:.4f}" if isinstance(f1, (int, float)) else ""
        self._say(f"  done    {task.name}  {self.count()}  {secs:.1f}s{score}")

    def retrying(self, task: Task, reason: str) -> None:
        self._say(f"  retry   {task.name}: {reason}")

    def warning(self, task: Task, text: str) -> None:
        """Something the user should know about a point (a skipped checkpoint); shown with --quiet too."""
        print(f"  warning {task.name}: {text}", file=self.stream, flush=True)

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
        from rich.table import Table

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
        table = Table(title=head, title_justify="left", expand=False)
        table.add_column("point")
        table.add_column("slot")
        table.add_column("epoch", justify="right")
        table.add_column(DEFAULT_OBJECTIVE, justify="right")
        table.add_column("time", justify="right")
        for task in self.running.values():
            f1 = task.last_f1
            table.add_row(task.name, task.slot.label,
                          f"{task.epoch}/{task.max_epochs}" if task.max_epochs else "starting",
                          f"{f1:.4f}" if isinstance(f1, float) else "", _fmt_seconds(time.time() - task.started))
        for text in self.notes[-5:]:
            table.add_row(f"[dim]{text}[/dim]", "", "", "", "")
        return table

    def _update(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def started(self, task: Task) -> None:
        self.running[task.name] = task
        self._update()

    def progress(self, task: Task, event: dict) -> None:
        task.last_f1 = event.get(DEFAULT_OBJECTIVE)
        self._update()

    def tick(self) -> None:
        self._update()

    def finished(self, task: Task) -> None:
        self.running.pop(task.name, None)
        self.durations.append(time.time() - task.started)
        self.n_done += 1
        self._update()

    def retrying(self, task: Task, reason: str) -> None:
        self.running.pop(task.name, None)
        self.notes.append(f"retry {task.name}: {reason}")
        self._update()

    def failed(self, task: Task, reason: str) -> None:
        self.running.pop(task.name, None)
        self.n_failed += 1
        self.notes.append(f"FAILED {task.name}: {reason}")
        self._update()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self._update()

    def warning(self, task: Task, text: str) -> None:
        if self.live is None:
            return super().warning(task, text)
        self.live.console.print(f"warning {task.name}: {text}", markup=False, highlight=False)  # above the table, kept

    def stop(self) -> None:
        if self.live is not None:
            self._update()
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


# --------------------------------------------------------------------------- orch sweep --dry-run


def print_dry_run(spec: SweepSpec, uri: str) -> None:
    """Every point of the grid with whether the store already holds it finished."""
    from rich.console import Console
    from rich.table import Table

    from orchestrator.store import peek

    done = peek.finished_keys(uri, spec.name)  # the done rule of every path: a finished result of the run key
    columns = (*spec.axes, "seed")
    table = Table(title=f"{spec.name} [{spec.sweep_id}]  {spec.path}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("run name")
    for axis in columns:
        table.add_column(axis)
    table.add_column("status")
    n_done = 0
    for r in spec.runs:
        status = "?" if done is None else ("done" if r.run_key in done else "pending")
        n_done += status == "done"
        table.add_row(str(r.index), r.name, *(str(r.point.get(a, "")) for a in columns), status)
    console = Console(width=200 if not sys.stdout.isatty() else None)
    console.print(table)
    if done is None:
        console.print(f"{len(spec.runs)} points; status unknown (store {uri} not readable without mlflow)")
    else:
        console.print(f"{len(spec.runs)} points: {n_done} done, {len(spec.runs) - n_done} pending  (store {uri})")
    missing = _missing_data_root(spec)
    if missing:
        console.print(f"note: {missing}")


def _missing_data_root(spec: SweepSpec) -> str | None:
    """What a real run would stop on that the dry run does not check (a missing dataset root)."""
    from experiments.config import ConfigError, check

    for r in spec.runs:
        try:
            check(r.config)
        except ConfigError as err:
            return f"a real run would stop here: {err}"
    return None


# --------------------------------------------------------------------------- orch status


def print_queue_status(rows: Sequence[dict[str, Any]], where: str) -> None:
    """Per queued sweep: counts, then the running points (worker, since) and the failed ones."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    if not rows:
        console.print(f"no queued sweeps in {where}")
        return
    for row in rows:
        running, failed = row["running"], row["failed"]
        done = row["points"] - row["pending"] - len(running) - len(failed)
        console.print(f"[bold]{row['name']}[/bold] [{row['sweep']}]  points {row['points']}: "
                      f"pending {row['pending']}  running {len(running)}  done {done}  failed {len(failed)}")
        if not (running or failed):
            continue
        table = Table(show_header=True)
        for column in ("point", "state", "worker / reason", "since"):
            table.add_column(column)
        for name, who, since in running:
            table.add_row(name, "running", who, since.strftime("%Y-%m-%d %H:%M:%S") if since else "")
        for name, reason in failed:
            table.add_row(name, "failed", reason, "")
        console.print(table)


def print_sweep_status(rows: Sequence[dict[str, Any]], parent: Any) -> None:
    """A sweep's points: MLflow status, Slurm job (array task) and its state in squeue."""
    from rich.console import Console
    from rich.table import Table

    from orchestrator.store.schema import Tag

    console = Console(width=None if sys.stdout.isatty() else 200)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    tags = parent.data.tags
    console.print(f"[bold]{parent.info.run_name}[/bold] [{tags.get(Tag.SWEEP, '')}]  parent {parent.info.status}  "
                  f"points {len(rows)}: " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    table = Table(show_header=True)
    for column in ("point", "status", "slurm job", "slurm state", "run", "reason"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["status"], row["job"], row["slurm"], row["run_id"], row["reason"][:80])
    console.print(table)
