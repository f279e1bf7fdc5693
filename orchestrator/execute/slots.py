"""Slots and their long-lived point processes: plan the slots, start, hand over jobs, replace, stop.

A slot is a GPU × runs-per-gpu position (``CUDA_VISIBLE_DEVICES``) or one of N CPU workers
sharing the cores. A slot's points run one after another in one ``python -m
orchestrator.execute.point`` process (jobs in on stdin, events out on stdout), so imports and
the CUDA context are paid once; a process that dies fails only its point. Children die with
the scheduler (``PR_SET_PDEATHSIG``). A failed point's part of the log is kept as
``<point>-attempt<n>.log``; the rest is removed.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from orchestrator.execute.job import Job, encode, slurm_tags
from orchestrator.processes import death_signal
from orchestrator.store.schema import Tag

STOP_GRACE_SECONDS = 20.0  # a signalled point checkpoints and closes its run KILLED within this, or is killed
IDLE_EXIT_SECONDS = 2.0  # an idle process exits at once on end of input; one still importing is killed after this
POINT_COMMAND = (sys.executable, "-m", "orchestrator.execute.point")


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
    gpus = (gpus or visible_gpus()) if device != "cpu" else None
    if gpus:
        return [Slot(i, gpu, 0) for i, gpu in enumerate(g for g in gpus for _ in range(runs_per_gpu))]
    threads = cpu_threads(workers)
    return [Slot(i, None, threads) for i in range(workers)]


def _count(name: str) -> int | None:
    """An environment variable that holds a positive ASCII count, else None."""
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdecimal() and value.isascii() and int(value) > 0 else None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, narrowed in a Slurm job to
    ``SLURM_CPUS_ON_NODE`` (a cluster without CPU binding leaves it out of the mask)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    if os.environ.get("SLURM_JOB_ID"):
        cpus = min(cpus, _count("SLURM_CPUS_ON_NODE") or cpus)
    return max(1, cpus)


def cpu_threads(workers: int) -> int:
    """Torch threads per CPU slot: ``OMP_NUM_THREADS`` when set, else the usable CPUs shared out."""
    return _count("OMP_NUM_THREADS") or max(1, usable_cpus() // max(1, workers))


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


@dataclass
class Task:
    """One attempt at a job: where it runs and how far it got."""

    job: Job
    attempt: int = 1
    ticket: Any = None  # the source's handle on the claim (a queue trial)
    claim: dict | None = None  # what the point process checks its claim against (orchestrator.store.claims)
    run_id: str | None = None
    step: int = 0  # the last step the point logged
    started: float = 0.0
    slot: Slot | None = None
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    summary: dict = field(default_factory=dict)
    score: tuple[str, float] | None = None  # the point's last headline value (entry.progress_keys)
    job_id: int = 0  # the point process's id for this attempt

    @property
    def name(self) -> str:
        return self.job.name


@dataclass
class SlotProcess:
    proc: subprocess.Popen
    log_path: Path
    job_offset: int = 0  # the log's size when its current job was handed over
    retiring: bool = False  # it said it exits after its current point


class PointProcesses:
    """The slots' point processes; their events arrive on ``events`` as (slot index, process, event),
    None once the process exited. ``command`` speaks :mod:`orchestrator.execute.point`'s protocol."""

    def __init__(self, log_dir: Path, *, command: Sequence[str] = POINT_COMMAND):
        self.log_dir, self.command = log_dir, list(command)
        self.slots: dict[int, SlotProcess] = {}
        self.events: queue.Queue[tuple[int, subprocess.Popen, dict | None]] = queue.Queue()
        self._ids = itertools.count(1)
        self._n_started = 0

    def _start(self, slot: Slot) -> SlotProcess:
        self._n_started += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)  # a scheduler removes it when a run leaves it empty
        log_path = self.log_dir / f"slot{slot.index}-process{self._n_started}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": slot.gpu if slot.gpu is not None else ""}
        if slot.gpu is None:
            env["ORCH_THREADS"] = env["OMP_NUM_THREADS"] = str(slot.threads)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, text=True,
                start_new_session=True,  # Ctrl-C reaches the scheduler only; it stops children itself
                preexec_fn=death_signal())
        threading.Thread(target=self._read_events, args=(slot.index, proc), daemon=True).start()
        return SlotProcess(proc, log_path)

    def _read_events(self, index: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                self.events.put((index, proc, json.loads(line)))
            except json.JSONDecodeError:
                continue  # not an event: the child writes its chatter to stderr, but be safe
        proc.wait()
        self.events.put((index, proc, None))  # the process is gone

    def launch(self, task: Task, slot: Slot) -> int:
        """Hand ``task`` to the slot's process (started if it has none); returns the job id."""
        job_id = next(self._ids)
        tags = {**task.job.tags, Tag.ATTEMPT: str(task.attempt), Tag.SLOT: slot.label, **slurm_tags()}
        job = replace(task.job, tags=tags)
        payload = encode(job, job=job_id, claim=task.claim) + "\n"
        current = self.slots.get(slot.index)
        for attempt in range(2):  # an idle process can die between poll() and the write: then a fresh one
            if current is None or current.retiring or current.proc.poll() is not None:
                current = self.slots[slot.index] = self._start(slot)
            offset = current.log_path.stat().st_size
            try:
                current.proc.stdin.write(payload)
                current.proc.stdin.flush()
                break
            except (BrokenPipeError, OSError):
                if attempt:
                    raise
                current = None
        current.job_offset = offset
        task.proc, task.log_path = current.proc, current.log_path
        return job_id

    def exited(self, index: int, proc: subprocess.Popen) -> None:
        current = self.slots.get(index)
        if current is not None and current.proc is proc:
            del self.slots[index]

    def keep_log(self, task: Task, index: int) -> Path | None:
        """Copy the part of the slot's log written during ``task`` to ``<point>-attempt<n>.log``."""
        current = self.slots.get(index)
        offset = current.job_offset if current is not None and current.proc is task.proc else 0
        kept = self.log_dir / f"{task.name}-attempt{task.attempt}.log"
        try:
            with open(task.log_path, errors="replace") as src:
                src.seek(offset)
                kept.write_text(src.read())
        except OSError:
            return None
        return kept

    def mark_retiring(self, index: int, proc: subprocess.Popen) -> None:
        current = self.slots.get(index)
        if current is not None and current.proc is proc:
            current.retiring = True

    def close(self) -> None:
        """End every process: idle ones exit on end of input; a late one is killed. Logs are removed."""
        procs = [s.proc for s in self.slots.values()]
        for proc in procs:
            with contextlib.suppress(OSError):  # a process that died has a broken pipe
                proc.stdin.close()
        _wait_or_kill(procs, IDLE_EXIT_SECONDS)
        self.slots = {}
        for log in self.log_dir.glob("slot*-process*.log"):
            log.unlink(missing_ok=True)

    def send(self, signum: int) -> None:
        """Send ``signum`` to every live process; safe in a signal handler (it waits for nothing)."""
        for current in list(self.slots.values()):
            if current.proc.returncode is None:
                with contextlib.suppress(OSError):
                    os.kill(current.proc.pid, signum)

    def stop(self, signum: int) -> None:
        """Send ``signum`` to every process (its point checkpoints and closes its run KILLED),
        then kill what outlives :data:`STOP_GRACE_SECONDS`."""
        self.send(signum)
        _wait_or_kill([s.proc for s in self.slots.values()], STOP_GRACE_SECONDS)


def _wait_or_kill(procs: Sequence[subprocess.Popen], grace: float) -> None:
    deadline = time.time() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
