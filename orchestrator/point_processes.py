"""The point processes of the slots: start, hand over a job, keep a spare, stop.

The scheduler (:mod:`orchestrator.scheduler`) decides what runs where; this module alone
knows that a point runs as ``python -m orchestrator.point`` reading a JSON job on stdin,
so another way of running points (long-lived slot processes, say) replaces this class
without touching the scheduling.

A spare is the slot's next process started ahead of time: it imports torch and mlflow
(seconds) while the slot's current point trains, then waits for its job on stdin.
``ORCH_SPARES=0`` turns spares off. Children die with the scheduler
(``PR_SET_PDEATHSIG``), however it dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from orchestrator.schema import Tag

if TYPE_CHECKING:
    from orchestrator.scheduler import Slot, Task

PR_SET_PDEATHSIG = 1
STOP_GRACE_SECONDS = 20.0  # a SIGTERMed point closes its run KILLED within this, or is killed
SPARE_EXIT_SECONDS = 0.5  # an idle spare exits at once on an empty job; one still importing is killed
POINT_COMMAND = (sys.executable, "-m", "orchestrator.point")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the scheduler dies, however it dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # no glibc (not Linux): children then outlive a SIGKILLed scheduler
        pass


def job_payload(task: Task, slot: Slot) -> dict:
    """The JSON job a point process reads on stdin (see :mod:`orchestrator.point`)."""
    job = task.job
    return {
        "config": job.config,
        "uri": job.uri,
        "experiment_id": job.experiment_id,
        "parent_run_id": job.parent_run_id,
        "run_name": job.name,
        "device": "cuda" if slot.gpu is not None else "cpu",
        "tags": {**job.tags, Tag.ATTEMPT: str(task.attempt), Tag.SLOT: slot.label},
    }


class PointProcesses:
    """Starts, hands jobs to and stops the point processes of the slots.

    With spares on (default: ``ORCH_SPARES`` unless it is 0), each slot keeps one process
    started ahead; :meth:`launch` uses it when it is there and alive, else starts a fresh
    one. ``command`` is the child's command line: anything that reads the job on stdin and
    speaks :mod:`orchestrator.point`'s events on stdout.
    """

    def __init__(self, log_dir: Path, *, spares: bool | None = None, command: Sequence[str] = POINT_COMMAND):
        if spares is None:
            spares = os.environ.get("ORCH_SPARES", "1") != "0"
        self.log_dir, self.spares_enabled, self.command = log_dir, spares, list(command)
        self.spares: dict[int, tuple[subprocess.Popen, Path]] = {}  # slot index -> (process, log)
        self.n_spares = 0

    @staticmethod
    def slot_env(slot: Slot) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
            env["ORCH_THREADS"] = str(slot.threads)
            env["OMP_NUM_THREADS"] = str(slot.threads)
        return env

    def start(self, slot: Slot, log_path: Path) -> subprocess.Popen:
        """A fresh point process for ``slot``; its stderr goes to ``log_path``."""
        with open(log_path, "w") as log:
            return subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self.slot_env(slot),
                text=True,
                start_new_session=True,  # Ctrl-C reaches the scheduler only; it stops children itself
                preexec_fn=_die_with_parent,
            )

    def start_spare(self, slot: Slot) -> None:
        """Start the slot's next point process now: it imports torch and mlflow while the
        current point trains, then waits for its job on stdin."""
        if not self.spares_enabled or slot.index in self.spares:
            return
        self.n_spares += 1
        log_path = self.log_dir / f"spare-{slot.index}-{self.n_spares}.log"
        self.spares[slot.index] = (self.start(slot, log_path), log_path)

    def take_spare(self, slot: Slot) -> tuple[subprocess.Popen, Path] | None:
        spare = self.spares.pop(slot.index, None)
        if spare is not None and spare[0].poll() is not None:  # it died while waiting
            return None
        return spare

    def launch(self, task: Task, slot: Slot) -> None:
        """Run ``task`` on ``slot``: sets ``task.proc`` and ``task.log_path`` and sends the job."""
        task.log_path = self.log_dir / f"{task.name}-attempt{task.attempt}.log"
        spare = self.take_spare(slot)
        if spare is not None:
            task.proc, spare_log = spare
            os.replace(spare_log, task.log_path)  # the child keeps writing to the renamed file
        else:
            task.proc = self.start(slot, task.log_path)
        task.proc.stdin.write(json.dumps(job_payload(task, slot)))
        task.proc.stdin.close()

    def close_spares(self) -> None:
        """Idle spares exit on an empty job; one still importing is killed (it holds nothing)."""
        spares, self.spares = list(self.spares.values()), {}
        for proc, _ in spares:
            with contextlib.suppress(OSError):  # a spare that died has a broken pipe
                proc.stdin.close()
        for proc, log_path in spares:
            try:
                proc.wait(timeout=SPARE_EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
            log_path.unlink(missing_ok=True)

    @staticmethod
    def stop(procs: Iterable[subprocess.Popen], grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM every live process (it closes its run KILLED), then kill what outlives ``grace``."""
        procs = list(procs)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.time() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
