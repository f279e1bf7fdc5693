"""Local scheduler: slots, one child process per point, retries, Ctrl-C, resume.

One scheduler process hands out the points, so no two slots ever claim the same point.
A slot is a GPU × runs-per-gpu position pinned through ``CUDA_VISIBLE_DEVICES``, or one
of N CPU workers with the cores divided among them. Each point runs in its own process
(``python -m orchestrator.point``) for fault isolation and a clean CUDA state; it logs
straight to MLflow under the sweep's parent run and reports progress as JSON lines.
While a slot's point trains, the slot's next process is already started ("spare"): it
imports torch and mlflow, then waits for its job, so that a point's start-up (seconds)
overlaps the previous point's training instead of following it.

Children die with the scheduler (``PR_SET_PDEATHSIG``): a SIGKILLed sweep leaves no
orphans, only runs left RUNNING, which the next invocation marks FAILED and reruns.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from experiments.config import to_dict
from experiments.metric_names import DEFAULT_OBJECTIVE
from orchestrator.errors import ExitCode
from orchestrator.grid import RunSpec
from orchestrator.schema import Kind, Status, Tag

PR_SET_PDEATHSIG = 1
STOP_GRACE_SECONDS = 20.0


@dataclass(frozen=True)
class Slot:
    index: int
    gpu: str | None  # CUDA_VISIBLE_DEVICES value, None on the CPU
    threads: int  # torch threads on the CPU (0: torch's default)

    @property
    def label(self) -> str:
        return f"gpu{self.gpu}" if self.gpu is not None else f"cpu{self.index}"


def plan_slots(workers: int, gpus: Sequence[str] | None, runs_per_gpu: int, device: str) -> list[Slot]:
    """GPUs × runs-per-gpu slots when GPUs are given or found; otherwise ``workers`` CPU slots."""
    if device != "cpu" and not gpus:
        gpus = visible_gpus() if device in ("auto", "cuda") else []
    if gpus and device != "cpu":
        slots = [Slot(i, g, 0) for i, (g, _) in enumerate((g, k) for g in gpus for k in range(runs_per_gpu))]
        return slots
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    return [Slot(i, None, threads) for i in range(workers)]


def visible_gpus() -> list[str]:
    """GPU indices that ``nvidia-smi`` lists (respecting CUDA_VISIBLE_DEVICES), without importing torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


@dataclass(frozen=True)
class Job:
    """What a child process needs to run one point."""

    name: str
    config: dict  # experiments.config.to_dict form
    uri: str
    experiment_id: str
    parent_run_id: str | None
    tags: dict  # orch.kind, orch.sweep, orch.point, orch.setting, ...

    @classmethod
    def from_spec(cls, spec: RunSpec, *, uri: str, experiment_id: str, parent_run_id: str, sweep_id: str) -> Job:
        return cls(spec.name, to_dict(spec.config), uri, experiment_id, parent_run_id,
                   {Tag.KIND: Kind.POINT, Tag.SWEEP: sweep_id, Tag.POINT: spec.point_label,
                    Tag.SETTING: spec.setting})


@dataclass
class Task:
    job: Job
    attempt: int = 1
    ticket: Any = None  # the source's handle on the claim (a queue trial)
    run_id: str | None = None
    epoch: int = 0
    max_epochs: int = 0
    started: float = 0.0
    slot: Slot | None = None
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    summary: dict = field(default_factory=dict)
    last_f1: float | None = None

    @property
    def name(self) -> str:
        return self.job.name


class ListSource:
    """A fixed list of points; a failed point goes back to the front until its retries run out."""

    def __init__(self, jobs: Sequence[Job], max_retries: int):
        self.pending = [Task(j) for j in jobs]
        self.total = len(self.pending)
        self.max_retries = max_retries

    def claim(self) -> Task | None:
        return self.pending.pop(0) if self.pending else None

    def exhausted(self) -> bool:
        return not self.pending

    def started(self, task: Task) -> None:
        pass

    def finished(self, task: Task) -> None:
        pass

    def failed(self, task: Task, reason: str) -> bool:
        if task.attempt <= self.max_retries:
            self.pending.insert(0, Task(task.job, attempt=task.attempt + 1))
            return True
        return False

    def abandon(self, task: Task) -> None:
        pass

    def unstarted(self) -> list[str]:
        return [t.name for t in self.pending]


@dataclass
class Outcome:
    finished: list[str] = field(default_factory=list)  # point names
    failed: dict[str, str] = field(default_factory=dict)  # point name -> last reason
    skipped: list[str] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0


def _exhausted(source: Any) -> bool:
    """True when the source says it has no further point (a queue never says so)."""
    check = getattr(source, "exhausted", None)
    return bool(check()) if check else False


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the scheduler dies, however it dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class Scheduler:
    """Runs the points of a source over slots, one child process each; reports through ``display``."""

    def __init__(self, *, slots: list[Slot], fail_fast: bool = False, display: Any = None,
                 log_dir: Path | None = None, idle_poll: float | None = None, on_idle: Any = None):
        self.slots, self.fail_fast = slots, fail_fast
        self.display = display or PlainDisplay(quiet=True)
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="orch-logs-"))
        self.idle_poll = idle_poll  # seconds between claims while idle; None: stop when idle
        self.on_idle = on_idle  # called while idle (with idle_poll); True: it did work, look again at once
        self.events: queue.Queue[tuple[Task, dict | None]] = queue.Queue()
        self.stop_requested = False
        # One pre-started point process per slot (ORCH_SPARES=0 turns it off).
        self.spares_enabled = os.environ.get("ORCH_SPARES", "1") != "0"
        self.spares: dict[int, tuple[subprocess.Popen, Path]] = {}
        self._n_spares = 0
        self._stores: dict[str, Any] = {}

    # -- child processes -------------------------------------------------------------
    def _slot_env(self, slot: Slot) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
            env["ORCH_THREADS"] = str(slot.threads)
            env["OMP_NUM_THREADS"] = str(slot.threads)
        return env

    def _start_process(self, slot: Slot, log_path: Path) -> subprocess.Popen:
        with open(log_path, "w") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "orchestrator.point"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self._slot_env(slot),
                text=True,
                start_new_session=True,  # Ctrl-C reaches the scheduler only; it stops children itself
                preexec_fn=_die_with_parent,
            )

    def _start_spare(self, slot: Slot) -> None:
        """Start the slot's next point process now: it imports torch and mlflow while the
        current point trains, then waits for its job on stdin."""
        if not self.spares_enabled or slot.index in self.spares:
            return
        self._n_spares += 1
        log_path = self.log_dir / f"spare-{slot.index}-{self._n_spares}.log"
        self.spares[slot.index] = (self._start_process(slot, log_path), log_path)

    def _take_spare(self, slot: Slot) -> tuple[subprocess.Popen, Path] | None:
        spare = self.spares.pop(slot.index, None)
        if spare is not None and spare[0].poll() is not None:  # it died while waiting
            return None
        return spare

    def _close_spares(self) -> None:
        """Idle spares exit on an empty job; one still importing is killed (it holds nothing)."""
        spares, self.spares = list(self.spares.values()), {}
        for proc, _ in spares:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc, log_path in spares:
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
            log_path.unlink(missing_ok=True)

    def _spawn(self, task: Task, slot: Slot) -> None:
        job = task.job
        payload = {
            "config": job.config,
            "uri": job.uri,
            "experiment_id": job.experiment_id,
            "parent_run_id": job.parent_run_id,
            "run_name": job.name,
            "device": "cuda" if slot.gpu is not None else "cpu",
            "tags": {**job.tags, Tag.ATTEMPT: str(task.attempt), Tag.SLOT: slot.label},
        }
        task.log_path = self.log_dir / f"{job.name}-attempt{task.attempt}.log"
        spare = self._take_spare(slot)
        if spare is not None:
            task.proc, spare_log = spare
            os.replace(spare_log, task.log_path)  # the child keeps writing to the renamed file
        else:
            task.proc = self._start_process(slot, task.log_path)
        task.proc.stdin.write(json.dumps(payload))
        task.proc.stdin.close()
        task.slot, task.started = slot, time.time()
        threading.Thread(target=self._read_events, args=(task, task.proc), daemon=True).start()

    def _read_events(self, task: Task, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                self.events.put((task, json.loads(line)))
            except json.JSONDecodeError:
                continue
        proc.wait()
        self.events.put((task, None))  # the process is gone

    # -- main loop ---------------------------------------------------------------------
    def store(self, uri: str):
        """The tracking store of a job's URI, opened once per scheduler."""
        from orchestrator.tracking import TrackingStore

        if uri not in self._stores:
            self._stores[uri] = TrackingStore(uri)
        return self._stores[uri]

    def run(self, source: Any) -> Outcome:
        outcome = Outcome()
        running: dict[int, Task] = {}  # slot index -> task
        free = list(self.slots)
        t0 = time.time()
        self.display.start(getattr(source, "total", 0), self.slots)
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        previous_term = signal.signal(signal.SIGTERM, self._on_sigint)
        try:
            while not self.stop_requested:
                while free and not (self.fail_fast and outcome.failed):
                    task = source.claim()
                    if task is None:
                        break
                    slot = free.pop(0)
                    self._spawn(task, slot)
                    running[slot.index] = task
                    self.display.started(task)
                    if not _exhausted(source):
                        self._start_spare(slot)
                if not running:
                    if self.idle_poll is None or (self.fail_fast and outcome.failed):
                        break
                    if self.on_idle is not None and self.on_idle():
                        continue
                    time.sleep(self.idle_poll)
                    continue
                try:
                    task, event = self.events.get(timeout=0.5)
                except queue.Empty:
                    self.display.tick()
                    continue
                if event is not None:
                    self._on_event(task, event, source)
                    continue
                # The child process has exited.
                del running[task.slot.index]
                free.append(task.slot)
                free.sort(key=lambda s: s.index)
                code = task.proc.returncode
                if code == 0:
                    task.log_path.unlink(missing_ok=True)  # the run is in MLflow; logs of failures stay
                    source.finished(task)
                    outcome.finished.append(task.name)
                    self.display.finished(task)
                    continue
                reason = self._close_dead_run(task, code)
                if code == ExitCode.INTERRUPTED and self.stop_requested:
                    source.abandon(task)
                    continue
                if not self.stop_requested and source.failed(task, reason):
                    self.display.retrying(task, reason)
                else:
                    outcome.failed[task.name] = reason
                    self.display.failed(task, reason)
            outcome.skipped = source.unstarted() if hasattr(source, "unstarted") else []
        finally:
            self._close_spares()
            with contextlib.suppress(OSError):
                self.log_dir.rmdir()  # only when empty: nothing failed
            if running or self.stop_requested:
                outcome.interrupted = self.stop_requested
                self._stop_all(running, source)
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term)
            outcome.seconds = time.time() - t0
            self.display.stop()
        return outcome

    def _on_sigint(self, signum, frame) -> None:  # noqa: ARG002
        if self.stop_requested:  # a second Ctrl-C: stop waiting politely
            raise KeyboardInterrupt
        self.stop_requested = True
        self.display.note("stopping: running points are being closed as KILLED (Ctrl-C again to force)")

    def _on_event(self, task: Task, event: dict, source: Any) -> None:
        kind = event.get("event")
        if kind == "started":
            task.run_id = event.get("run_id")
            source.started(task)
        elif kind == "epoch":
            task.epoch, task.max_epochs = event.get("epoch", 0), event.get("max_epochs", 0)
            task.last_f1 = event.get(DEFAULT_OBJECTIVE)
            self.display.progress(task, event)
        elif kind == "end":
            task.summary = event.get("summary") or {}

    def _close_dead_run(self, task: Task, code: int) -> str:
        """Make sure the run of a child that did not finish is closed, and say why."""
        store = self.store(task.job.uri)
        if code == ExitCode.FAILED:
            reason = (store.failure_reason(task.run_id) if task.run_id else None) or "training raised an exception"
        elif code == ExitCode.INTERRUPTED:
            return "interrupted"
        elif code < 0:
            reason = f"process died ({signal.Signals(-code).name})"
        else:
            reason = f"process exited with code {code}"
        if task.run_id:
            store.close_if_live(task.run_id, Status.FAILED, reason, self._log_tail(task))
        else:
            reason += f" before its MLflow run started; log: {task.log_path}"
            tail = self._log_tail(task).strip().splitlines()
            if tail:
                reason += f" ({tail[-1][:300]})"
        return reason

    @staticmethod
    def _log_tail(task: Task, lines: int = 60) -> str:
        try:
            return "\n".join(task.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _stop_all(self, running: dict[int, Task], source: Any) -> None:
        """SIGTERM every child, wait for them to close their runs KILLED, then make sure."""
        for task in running.values():
            if task.proc and task.proc.poll() is None:
                task.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + STOP_GRACE_SECONDS
        for task in running.values():
            if not task.proc:
                continue
            try:
                task.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                task.proc.kill()
                task.proc.wait()
        self._drain_run_ids()
        for task in running.values():
            if task.run_id:
                self.store(task.job.uri).close_if_live(task.run_id, Status.KILLED, "interrupted: the sweep was stopped")
            source.abandon(task)

    def _drain_run_ids(self) -> None:
        while True:
            try:
                task, event = self.events.get_nowait()
            except queue.Empty:
                return
            if event and event.get("event") == "started":
                task.run_id = event.get("run_id")


# ------------------------------------------------------------------------- display


class PlainDisplay:
    """One line per event, for logs, CI and pipes."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.total = 0
        self.n_done = 0
        self.n_failed = 0

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def start(self, total: int, slots: Sequence[Slot]) -> None:
        self.total = total
        where = ", ".join(s.label for s in slots)
        self._say(f"running {total} point(s) on {len(slots)} slot(s): {where}")

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
        self._say(f"  done    {task.name}  [{self.n_done + self.n_failed}/{self.total}]  {secs:.1f}s{score}")

    def retrying(self, task: Task, reason: str) -> None:
        self._say(f"  retry   {task.name}: {reason}")

    def failed(self, task: Task, reason: str) -> None:
        self.n_failed += 1
        self._say(f"  FAILED  {task.name}  [{self.n_done + self.n_failed}/{self.total}]: {reason}")

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

    def start(self, total: int, slots: Sequence[Slot]) -> None:
        from rich.console import Console
        from rich.live import Live

        self.total, self.slots, self.t0 = total, max(1, len(slots)), time.time()
        self.live = Live(self._render(), console=Console(stderr=True), refresh_per_second=4, transient=False)
        self.live.start()

    def _render(self):
        from rich.table import Table

        elapsed = time.time() - self.t0
        remaining = self.total - self.n_done - self.n_failed
        eta = "–"
        if self.durations:
            mean = sum(self.durations) / len(self.durations)
            eta = _fmt_seconds(mean * remaining / self.slots)
        head = (f"done {self.n_done}  running {len(self.running)}  failed {self.n_failed}  "
                f"pending {remaining - len(self.running)}   elapsed {_fmt_seconds(elapsed)}  eta {eta}")
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

    def stop(self) -> None:
        if self.live is not None:
            self._update()
            self.live.stop()


def _fmt_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def make_display(quiet: bool) -> PlainDisplay:
    if not quiet and sys.stderr.isatty():
        return LiveDisplay()
    return PlainDisplay(quiet=quiet)

