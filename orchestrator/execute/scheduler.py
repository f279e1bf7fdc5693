"""Local scheduler: points from a :class:`PointSource` over slots, with retries and stops.

One process hands out the points, so no two slots claim the same one. A stop signal
(:mod:`orchestrator.execute.stop`) goes on to every point process, whose point checkpoints
and ends KILLED; a second kills them. Children die with the scheduler: a SIGKILLed sweep leaves
only runs left RUNNING, which the next invocation fails and resumes. A store failure stops it
as ``fail_fast`` does: nothing more is started or written (:attr:`Outcome.store_failure`).
"""

from __future__ import annotations

import bisect
import contextlib
import queue
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from orchestrator.errors import ExitCode, StoreFailure
from orchestrator.execute import stop
from orchestrator.execute.display import PlainDisplay
from orchestrator.execute.job import Job
from orchestrator.execute.plan import find_run
from orchestrator.execute.slots import POINT_COMMAND, PointProcesses, Slot, Task
from orchestrator.store.schema import Status
from orchestrator.store.tracking import TrackingStore

EVENT_WAIT_SECONDS = 0.5  # the display ticks at least this often while points run
STOP_CODES = (ExitCode.INTERRUPTED, ExitCode.PREEMPTED)  # a point stopped by a signal, checkpointed


class PointSource(Protocol):
    """Where a scheduler gets its points, and whom it tells how each went; it never sees a process."""

    total: int | None  # points to run (the display's denominator); None: not known (a queue)

    def claim(self) -> Task | None:
        """The next point to run, or None when there is none right now."""

    def started(self, task: Task) -> None:
        """The task's MLflow run exists (``task.run_id`` is set)."""

    def finished(self, task: Task) -> None:
        """Its run is FINISHED (``task.summary`` holds its metrics)."""

    def failed(self, task: Task, reason: str) -> bool:
        """The task failed for ``reason``; True when the source will offer the point again."""

    def abandon(self, task: Task) -> None:
        """A stop of the scheduler interrupted it: not the point's failure."""

    def lost(self, task: Task, reason: str) -> None:
        """Another process took the point over (:mod:`orchestrator.store.claims`): neither finished nor failed."""

    def unstarted(self) -> list[str]:
        """Names of the points left unclaimed at the end."""


class ListSource(PointSource):
    """A fixed list of points; a failed point goes back to the front until its retries run out."""

    def __init__(self, jobs: Sequence[Job], max_retries: int):
        self.pending = [Task(j) for j in jobs]
        self.total = len(self.pending)
        self.max_retries = max_retries

    def claim(self) -> Task | None:
        return self.pending.pop(0) if self.pending else None

    def started(self, task: Task) -> None:
        pass  # the run id lives on the task; nothing to record

    def finished(self, task: Task) -> None:
        pass

    def failed(self, task: Task, reason: str) -> bool:
        if task.attempt <= self.max_retries:
            self.pending.insert(0, Task(task.job, attempt=task.attempt + 1))
            return True
        return False

    def abandon(self, task: Task) -> None:
        pass  # an interrupted sweep is resumed by running it again

    def lost(self, task: Task, reason: str) -> None:
        pass

    def unstarted(self) -> list[str]:
        return [t.name for t in self.pending]


class Stores(dict):
    """Tracking stores by URI, each opened once: ``stores[uri]``."""

    def __missing__(self, uri: str) -> TrackingStore:
        store = self[uri] = TrackingStore(uri)
        return store


@dataclass
class Outcome:
    finished: list[str] = field(default_factory=list)  # point names
    failed: dict[str, str] = field(default_factory=dict)  # point name -> last reason
    lost: dict[str, str] = field(default_factory=dict)  # point name -> who took it over
    skipped: list[str] = field(default_factory=list)
    interrupted: bool = False
    signal: int | None = None  # the signal that stopped the scheduler
    store_failure: str | None = None  # the tracking store failed: nothing more was started
    seconds: float = 0.0


class Scheduler:
    """Runs a source's points over slots; reports through ``display``.

    Failed attempts keep their logs in ``log_dir`` (default: a temporary ``orch-logs-*``, removed
    when nothing failed). ``idle_poll``: seconds between claims while idle (None: stop when idle);
    ``on_idle()`` runs while idle, True when it did some work. ``keep_processes``: keep the slots'
    processes after a clean run for the next one; the owner then calls :meth:`close`.
    """

    def __init__(self, *, slots: list[Slot], fail_fast: bool = False, display: PlainDisplay | None = None,
                 log_dir: Path | None = None, idle_poll: float | None = None,
                 on_idle: Callable[[], bool] | None = None, point_command: Sequence[str] = POINT_COMMAND,
                 keep_processes: bool = False):
        self.slots, self.fail_fast, self.keep_processes = slots, fail_fast, keep_processes
        self.display = display or PlainDisplay(quiet=True)
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="orch-logs-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.idle_poll, self.on_idle = idle_poll, on_idle
        self.processes = PointProcesses(self.log_dir, command=point_command)
        self.flag = stop.StopFlag()  # the stop request, while run() runs
        self.store_failure: str | None = None  # the first store failure: start nothing, write nothing more
        self.running: dict[int, Task] = {}  # slot index -> task
        self.free: list[Slot] = []
        self.stores = Stores()

    def run(self, source: PointSource) -> Outcome:
        outcome = Outcome()
        self.running, self.free, self.store_failure = {}, list(self.slots), None
        t0 = time.time()
        self.display.start(source.total, self.slots)
        # a second signal kills the points at once, and the clean-up below still finishes
        with stop.handling() as self.flag, self.flag.deferred(on_second=lambda: self.processes.send(signal.SIGKILL)):
            try:
                self._loop(source, outcome)
                outcome.skipped = source.unstarted()
            finally:
                stopped = bool(self.running) or self.flag.is_set()
                if stopped:
                    outcome.interrupted, outcome.signal = self.flag.is_set(), self.flag.signum
                    self._stop_all(source)
                if stopped or not self.keep_processes or self.store_failure is not None:
                    self.close()
                outcome.store_failure = self.store_failure
                outcome.seconds = time.time() - t0
                self.display.stop()
        return outcome

    def close(self) -> None:
        """End the slots' processes; remove the log folder unless a failed point's log is in it."""
        self.processes.close()
        with contextlib.suppress(OSError):
            self.log_dir.rmdir()  # only when empty: nothing failed

    def _loop(self, source: PointSource, outcome: Outcome) -> None:
        while not self.flag.is_set():
            self._fill_slots(source, outcome)
            if not self.running:
                if not self._wait_idle(outcome):
                    return
                continue
            try:
                index, proc, event = self.processes.events.get(timeout=EVENT_WAIT_SECONDS)
            except queue.Empty:
                self.display.tick()
                continue
            self._on_event(index, proc, event, source, outcome)
        self.display.note("stopping: running points checkpoint and are closed as KILLED (Ctrl-C again to force)")

    def _halted(self, outcome: Outcome) -> bool:
        return self.store_failure is not None or (self.fail_fast and bool(outcome.failed))

    def _use_store(self, call: Callable[[], Any]) -> Any:
        """``call()`` unless the store already failed; a failure is kept, not raised."""
        if self.store_failure is not None:
            return None
        try:
            return call()
        except StoreFailure as err:
            self.store_failure = str(err)
            return None

    def _fill_slots(self, source: PointSource, outcome: Outcome) -> None:
        while self.free and not self._halted(outcome):
            task = source.claim()
            if task is None:
                return
            slot = self.free.pop(0)
            task.job_id = self.processes.launch(task, slot)
            task.slot, task.started = slot, time.time()
            self.running[slot.index] = task
            self.display.started(task)

    def _wait_idle(self, outcome: Outcome) -> bool:
        """Nothing runs: False to stop, True after waiting (or after ``on_idle`` did some work)."""
        if self.idle_poll is None or self._halted(outcome):
            return False
        if self.on_idle is None or not self.on_idle():
            time.sleep(self.idle_poll)
        return True

    def _on_event(self, index: int, proc: subprocess.Popen, event: dict | None, source: PointSource,
                  outcome: Outcome) -> None:
        task = self.running.get(index)
        if event is None:  # a process exited
            if task is not None and task.proc is proc:  # in the middle of a point: it died
                self._on_point_end(task, proc.returncode, source, outcome, died=True)
            self.processes.exited(index, proc)
            return
        if task is None or event.get("job") != task.job_id:
            return  # an event of a point already dealt with
        kind = event.get("event")
        if kind == "warning":
            self.display.warning(task, str(event.get("text", "")))
        elif kind == "started":
            task.run_id = event.get("run_id")
            source.started(task)
        elif kind == "step":
            task.step, task.score = event.get("step", 0), event.get("score")
            self.display.progress(task, event)
        elif kind == "end":
            task.summary = event.get("summary") or {}
            if event.get("store_failure") and self.store_failure is None:
                self.store_failure = event["store_failure"]
            if event.get("retire"):
                self.processes.mark_retiring(index, proc)
            self._on_point_end(task, int(event.get("code", ExitCode.FAILED)), source, outcome)

    def _on_point_end(self, task: Task, code: int, source: PointSource, outcome: Outcome, *,
                      died: bool = False) -> None:
        del self.running[task.slot.index]  # its slot is free again
        bisect.insort(self.free, task.slot, key=lambda s: s.index)
        if code == ExitCode.LOST_CLAIM and not died:  # its run is as the process that took it over left it
            marked = task.run_id and self._use_store(lambda: self.stores[task.job.uri].failure_reason(task.run_id))
            reason = f"lost its claim: another process took the point over ({marked or 'its run was ended'})"
            source.lost(task, reason)
            outcome.lost[task.name] = reason
            self.display.note(f"  lost    {task.name}: {reason}; nothing final was written here")
            return
        if (code != ExitCode.OK or died) and self._finished_anyway(task):
            code, died = ExitCode.OK, False  # ended FINISHED, then its process died or was signalled
        if code == ExitCode.OK and not died:
            source.finished(task)
            outcome.finished.append(task.name)
            self.display.finished(task)
            return
        reason = self._close_dead_run(task, code, died)
        if (code in STOP_CODES and self.flag.is_set()) or self.store_failure is not None:
            source.abandon(task)  # not the point's failure: the next invocation runs it again
            return
        kept = self.processes.keep_log(task, task.slot.index)
        if kept is not None:
            reason += f"; log: {kept}"
        if not self.flag.is_set() and source.failed(task, reason):
            self.display.retrying(task, reason)
        else:
            outcome.failed[task.name] = reason
            self.display.failed(task, reason)

    def _finished_anyway(self, task: Task) -> bool:
        """The point's run is FINISHED although its process did not report so: never run it twice."""
        run = self._use_store(lambda: find_run(self.stores[task.job.uri], task.run_id)) if task.run_id else None
        if run is None or run.info.status != Status.FINISHED:  # None: it never reached the store
            return False
        task.summary = task.summary or dict(run.data.metrics)
        return True

    def _close_dead_run(self, task: Task, code: int, died: bool) -> str:
        """Make sure the run of a point that did not finish is closed, and say why."""
        uri, run_id = task.job.uri, task.run_id
        recorded = self._use_store(lambda: self.stores[uri].failure_reason(run_id)) if run_id and not died else None
        if code in STOP_CODES and not died:
            return recorded or "stopped by a signal"
        if not died:
            reason = recorded or "training raised an exception"
        elif code is not None and code < 0:
            reason = f"process died ({signal.Signals(-code).name})"
        else:
            reason = f"process exited with code {code}"
        if run_id:
            self._use_store(lambda: self.stores[uri].close_if_live(run_id, Status.FAILED, reason, _log_tail(task)))
        elif died:
            reason += " before its MLflow run started"
            tail = _log_tail(task).strip().splitlines()
            if tail:
                reason += f" ({tail[-1][:300]})"
        return reason

    def _stop_all(self, source: PointSource) -> None:
        """Pass the stop on, let the points close their runs, then close what they left."""
        self.processes.stop(self.flag.signum or signal.SIGTERM)
        while True:  # the events the processes sent while stopping: run ids and ends
            try:
                index, proc, event = self.processes.events.get_nowait()
            except queue.Empty:
                break
            task = self.running.get(index)
            if task is not None and event and event.get("job") == task.job_id and event.get("event") == "started":
                task.run_id = event.get("run_id")
        reason = "interrupted: the sweep was stopped"  # not a signal: e.g. an error in the scheduler itself
        if self.flag.is_set():  # the point's process ended without closing its run (the grace ran out)
            reason = f"{self.flag.reason}: stopped before its checkpoint"
        for task in list(self.running.values()):
            if task.run_id:
                uri, run_id = task.job.uri, task.run_id
                self._use_store(lambda: self.stores[uri].close_if_live(run_id, Status.KILLED, reason))
            source.abandon(task)
        self.running = {}


def _log_tail(task: Task, lines: int = 60) -> str:
    try:
        return "\n".join(task.log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
