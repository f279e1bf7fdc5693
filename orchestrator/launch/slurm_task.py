"""One Slurm task of a sweep: ``python -m orchestrator.launch.slurm_task`` with its input on stdin.

The job script (:func:`orchestrator.launch.slurm.task_script`) feeds it a heredoc: a header
(JSON: the mode, the tracking URI, the sweep's parent run, options), then, in array
mode, one JSON line per point. The three modes:

* ``points``: array task i runs points ``[i*K, (i+1)*K)`` (K = ``--runs-per-gpu``) with
  the local scheduler, each in a point process, each resumed from its checkpoint when an
  earlier attempt left one. A point that is finished, or RUNNING in another live Slurm
  job, is skipped: a point never runs twice at once.
* ``worker``: an ``orch worker`` on the PostgreSQL queue, limited to this sweep.
* ``close``: the sweep's close job: once no task of the sweep is left, it writes the
  summary and ends the parent run (:func:`orchestrator.launch.slurm_sweep.close_if_done`).

Signals: Slurm's time-limit warning (``--signal=B:USR1@N``) makes the running points
checkpoint and end KILLED (``preempted (SIGUSR1)``); the task then requeues itself
(``scontrol requeue``) and its next start resumes them. SIGTERM (``scancel``, or a
preemption, which Slurm requeues itself when the partition says so) checkpoints the
same way without a requeue: rerunning the sweep submits what is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from orchestrator.launch import slurm
from orchestrator.errors import ExitCode
from orchestrator.store.schema import Status, Tag, tag_filter

EARLY: list[int] = []  # a stop signal that came before the scheduler took over
SLACK_SECONDS = 10  # a warning this much earlier than asked for still counts
SETTLE_SECONDS = 180  # how long the close job waits for the sweep's COMPLETING tasks to settle


def _note(text: str) -> None:
    print(f"[orch slurm task {os.environ.get('SLURM_JOB_ID', '?')}] {text}", file=sys.stderr, flush=True)


def _early_handler(signum, frame) -> None:  # noqa: ARG001
    if _accept(signum):
        EARLY.append(signum)


_WARN_AT: list[float] = []  # when the time-limit warning is due (epoch seconds), if known
_WARNED: list[float] = []  # when a time-limit warning was acted on


def _accept(signum: int) -> bool:
    """Slurm checks time limits every 30 s or so and sends the warning up to a minute early; an
    early one is ignored: this task's own timer raises SIGUSR1 when the warning is due. Only the
    first warning acted on counts (Slurm's own may follow the timer's)."""
    if signum != signal.SIGUSR1:
        return True
    if _WARNED:
        return False
    if _WARN_AT and time.time() < _WARN_AT[0] - SLACK_SECONDS:
        _note(f"time-limit warning came early; stopping at {time.strftime('%H:%M:%S', time.localtime(_WARN_AT[0]))}")
        return False
    _WARNED.append(time.time())
    return True


def arm_warning(lead_seconds: float) -> None:
    """Send this process SIGUSR1 ``lead_seconds`` before the job's time limit ends."""
    job = os.environ.get("SLURM_JOB_ID")
    end = slurm.job_end_time(job) if job else None
    if end is None:
        return
    _WARN_AT[:] = [end - lead_seconds]
    timer = threading.Timer(max(0.0, _WARN_AT[0] - time.time()), os.kill, (os.getpid(), signal.SIGUSR1))
    timer.daemon = True
    timer.start()


def requeue() -> None:
    """Put this task back in the queue; its next start resumes its points from their checkpoints.

    ``scontrol requeue`` ends this job at once (SIGTERM to its processes): the command and
    this process ignore that SIGTERM, the work being saved already.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    if out.returncode == 0:
        _note("time limit near: points checkpointed; task requeued, its next start resumes them")
    else:
        _note(f"could not requeue ({out.stderr.strip()}); rerun the sweep to resume the points")


def point_state(store, experiment_id: str, run_key: str, me: dict[str, str]) -> str | None:
    """Why this task must not run the point (finished, or running in another live job), or None.

    A run left RUNNING by a task that is gone (this task's own earlier start, killed before
    it could close it, or a dead job) is closed FAILED, so that its checkpoint can be resumed.
    """
    from orchestrator import processes
    from orchestrator.store.schema import is_finished_result

    runs = store.search([experiment_id], tag_filter(Tag.RUN_KEY, run_key), order_by=["attributes.start_time DESC"])
    if any(is_finished_result(r.info.status, r.data.tags) for r in runs):
        return "already finished"
    for run in runs:
        if run.info.status not in Status.LIVE:
            continue
        tags = run.data.tags
        other = tags.get(Tag.SLURM_JOB_ID)
        if other and other != me.get(Tag.SLURM_JOB_ID):
            try:
                state = slurm.job_states([other]).get(other)
            except slurm.SlurmError as err:  # unknown is not "ended": the point may be running there
                return f"Slurm did not say whether job {other} still runs it ({err}); rerun the sweep later"
            if state in slurm.LIVE_STATES:
                return f"running in Slurm job {tags.get(Tag.SLURM_JOB, other)} (run {run.info.run_id})"
        if not other and not processes.is_orphan(tags.get(Tag.HOST), tags.get(Tag.PID)):
            return f"running on {tags.get(Tag.HOST)} (pid {tags.get(Tag.PID)}, run {run.info.run_id})"
        who = f"Slurm task {tags.get(Tag.SLURM_JOB, other)}" if other else f"process {tags.get(Tag.PID)}"
        store.end_run(run.info.run_id, Status.FAILED, f"{who} ended without closing the run; resumed elsewhere")
    return None


def run_points(header: dict[str, Any], lines: list[dict[str, Any]]) -> tuple[int, int | None]:
    """Array mode: this task's points; (exit code, the signal that stopped it)."""
    from orchestrator.execute.display import PlainDisplay
    from orchestrator.execute import slots as point_processes
    from orchestrator.execute.scheduler import Job, ListSource, Scheduler

    per = int(header.get("per_task", 1))
    index = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    mine = lines[index * per:(index + 1) * per]
    device = header.get("device", "auto")
    point_processes.prewarm(task_slots(len(mine), per, device))  # importing while the store is read

    from orchestrator.store.tracking import TrackingStore

    store = TrackingStore(header["uri"])
    me = slurm.task_tags()
    jobs = []
    for line in mine:
        why = point_state(store, header["experiment_id"], line["run_key"], me)
        if why:
            _note(f"{line['name']}: {why}; not run here")
            continue
        jobs.append(Job(line["name"], line["config"], header["uri"], header["experiment_id"], header["parent_run_id"],
                        dict(line["tags"]), header.get("resume", True)))
    if not jobs:  # nothing left for this task: never requeue it
        return ExitCode.OK, None
    if EARLY:  # warned or cancelled before a point started
        return ExitCode.PREEMPTED, EARLY[0]
    slots = task_slots(len(jobs), per, device)
    point_processes.release_unadopted(keep=slots)  # started for points found finished: other slots
    outcome = Scheduler(slots=slots, display=PlainDisplay()).run(ListSource(jobs, int(header.get("max_retries", 1))))
    if outcome.store_failure:  # its points were given up unfinished: the next run of the sweep resumes them
        _note(f"error: {outcome.store_failure}; fix the store, then rerun the sweep to resume its points")
        return ExitCode.FAILED, None
    if outcome.interrupted:
        return ExitCode.PREEMPTED, outcome.signal
    if EARLY and outcome.skipped:
        return ExitCode.PREEMPTED, EARLY[0]
    return (ExitCode.FAILED if outcome.failed else ExitCode.OK), None


def task_slots(n_points: int, per: int, device: str) -> list:
    """The slots of a task's ``n_points``: its CPU slots share the CPUs Slurm gave the task
    (:func:`orchestrator.execute.scheduler.usable_cpus`)."""
    from orchestrator.execute.scheduler import plan_slots

    return plan_slots(max(1, n_points), None, per, device)


def own_threads() -> None:
    """Forget the submitting shell's ``OMP_NUM_THREADS`` (``--export=ALL`` passes it on, e.g. a
    ``1`` set for workers sharing a login node): the task's points divide what Slurm gave it."""
    os.environ.pop("OMP_NUM_THREADS", None)


def run_worker(header: dict[str, Any]) -> tuple[int, int | None]:
    """Queue mode: an ``orch worker`` for this sweep; (exit code, the signal that stopped it)."""
    from orchestrator.launch import queue

    if EARLY:
        return ExitCode.PREEMPTED, EARLY[0]
    stopped: list[int] = []
    per, device = int(header.get("per_task", 1)), header.get("device", "auto")
    code = queue.run_worker(header["storage"], task_slots(per, per, device), sweep=header["sweep_id"],
                            tracking_uri=header["uri"], max_retries=int(header.get("max_retries", 1)),
                            quiet=False, stopped=stopped)
    return code, stopped[0] if stopped else None


def settled_jobs(sweep_id: str, own_job: str, timeout: float = SETTLE_SECONDS) -> list[tuple[str, str, str]]:
    """The sweep's live jobs other than ``own_job``, once none of them is COMPLETING (at most ``timeout`` s).

    A task that ended is COMPLETING for a few seconds. ``scontrol requeue`` also takes a job
    that has ended (which satisfied the close job's ``afterany``), and the job comes back
    PENDING; only once a task has left COMPLETING can the close job tell the two apart."""
    deadline = time.monotonic() + timeout
    while True:
        live = [j for j in slurm.live_jobs(sweep_id) if j[0] != own_job]
        if time.monotonic() >= deadline or not any(j[1] == "COMPLETING" for j in live):
            return live
        time.sleep(2)


def close(header: dict[str, Any]) -> int:
    """The close job: close the sweep, or, where tasks of it are queued again (requeued), hand
    the closing on to a new close job that runs after them. A later close job of a rerun
    (which runs after this one) closes the sweep itself, so none is handed on then."""
    try:
        return _close(header)
    except slurm.SlurmError as err:  # squeue failed: the sweep's jobs are in an unknown state
        _note(f"error: {err}; `orch status` or a rerun closes the sweep once Slurm answers")
        return ExitCode.FAILED


def _close(header: dict[str, Any]) -> int:
    from orchestrator.launch import slurm_sweep
    from orchestrator.store.tracking import TrackingStore

    store = TrackingStore(header["uri"])
    parent = store.get_run(header["parent_run_id"])
    me = os.environ.get("SLURM_JOB_ID", "")
    sweep_id = parent.data.tags[Tag.SWEEP]
    live = settled_jobs(sweep_id, me)
    tasks = sorted({j[0].split("_")[0] for j in live if j[2] == slurm.job_name(sweep_id)})
    later_close = [j for j in live if j[2] == slurm.job_name(sweep_id, close=True)]
    if tasks and not later_close and parent.info.status in Status.LIVE:
        try:
            successor = slurm.resubmit_after(me, tasks)
        except slurm.SlurmError as err:
            _note(f"error: {err}; `orch status` closes the sweep once its tasks have ended")
            return ExitCode.FAILED
        _note(f"sweep [{sweep_id}]: Slurm job(s) {', '.join(tasks)} of it queued again; "
              f"close job {successor} closes it after them")
        return ExitCode.OK
    _note(slurm_sweep.close_if_done(store, parent, by=f"Slurm close job {me}", own_job=me,
                                    metric=header.get("metric")))
    return ExitCode.OK


def main() -> int:
    own_threads()
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, _early_handler)
    header = json.loads(sys.stdin.readline())
    if header["mode"] != "close" and header.get("warn_seconds"):
        from orchestrator.execute.scheduler import Scheduler

        Scheduler.accept_signal = staticmethod(_accept)
        arm_warning(float(header["warn_seconds"]))
    lines = [json.loads(line) for line in sys.stdin if line.strip()]
    mode = header["mode"]
    if mode == "close":
        return close(header)
    code, stopped_by = run_worker(header) if mode == "worker" else run_points(header, lines)
    if stopped_by == signal.SIGUSR1:
        requeue()
    return code


if __name__ == "__main__":
    code = main()
    from orchestrator.execute.slots import release_unadopted

    release_unadopted()  # os._exit skips atexit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))
