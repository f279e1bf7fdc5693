"""One Slurm array task of a sweep: ``python -m orchestrator.launch.slurm_task``, its input on stdin.

Input: a JSON header (mode, tracking URI, parent run, options), then in array mode one job per
point; task i runs points ``[i*K, (i+1)*K)`` (K = ``--runs-per-gpu``), leaving out those finished
or RUNNING in another live job, and closes the sweep if it is the last job. In queue mode it is an
``orch worker`` of the sweep. SIGUSR1 (the time-limit warning) makes the points checkpoint and the
task requeue itself; SIGTERM stops the same way without a requeue. Slurm may warn up to a minute
before the lead it was given: with limits of minutes, choose the lead with that in mind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from typing import Any

from orchestrator import processes
from orchestrator.errors import ExitCode, StoreFailure
from orchestrator.execute import stop
from orchestrator.execute.display import PlainDisplay
from orchestrator.execute.job import Job, decode, slurm_tags
from orchestrator.execute.plan import finished_results
from orchestrator.execute.scheduler import ListSource, Scheduler
from orchestrator.execute.slots import plan_slots
from orchestrator.launch import queue, slurm
from orchestrator.launch.slurm_sweep import close_if_done
from orchestrator.store.schema import Status, Tag, tag_filter
from orchestrator.store.tracking import TrackingStore

log = logging.getLogger("orchestrator.launch.slurm_task")  # not __name__: it runs as __main__


def left_out(store, job: Job, me: dict[str, str]) -> str | None:
    """Why this task must not run the job's point (finished, or running in another live job), or None;
    a run left RUNNING by a task or process that is gone is closed FAILED, to be resumed."""
    if finished_results(store, job.experiment_id, [job.run_key]):
        return "already finished"
    for run in store.search([job.experiment_id], f"{tag_filter(Tag.RUN_KEY, job.run_key)} and "
                                                 f"attributes.status = '{Status.RUNNING}'"):
        tags = run.data.tags
        other = tags.get(Tag.SLURM_JOB_ID)
        if other and other != me.get(Tag.SLURM_JOB_ID):
            try:
                live = slurm.is_live(other)
            except slurm.SlurmError as err:  # unknown is not "ended": the point may be running there
                return f"Slurm did not say whether job {other} still runs it ({err}); rerun the sweep later"
            if live:
                return f"running in Slurm job {tags.get(Tag.SLURM_JOB, other)} (run {run.info.run_id})"
        if not other and not processes.is_orphan(tags.get(Tag.HOST), tags.get(Tag.PID)):
            return f"running on {tags.get(Tag.HOST)} (pid {tags.get(Tag.PID)}, run {run.info.run_id})"
        who = f"Slurm task {tags.get(Tag.SLURM_JOB, other)}" if other else f"process {tags.get(Tag.PID)}"
        store.end_run(run.info.run_id, Status.FAILED, f"{who} ended without closing the run; resumed elsewhere")
    return None


class StoreGaveOut(Exception):
    """The store failed while the task's points ran: they were given up unfinished (the message says so)."""


def run_points(header: dict[str, Any], lines: list[str]) -> int:
    """Array mode: this task's points; the exit code."""
    per = int(header["per_task"])
    index = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    store, me = TrackingStore(header["uri"]), slurm_tags()
    jobs = []
    for job, _ in map(decode, lines[index * per:(index + 1) * per]):
        why = left_out(store, job, me)
        if why:
            log.info(f"{job.name}: {why}; not run here")
        else:
            jobs.append(job)
    if not jobs:
        return ExitCode.OK
    slots = task_slots(len(jobs), per, header["device"])
    outcome = Scheduler(slots=slots, display=PlainDisplay()).run(ListSource(jobs, int(header["max_retries"])))
    if outcome.store_failure:  # its points were given up unfinished: the next run of the sweep resumes them
        raise StoreGaveOut(f"{outcome.store_failure}; fix the store, then rerun the sweep to resume its points")
    if outcome.interrupted:
        return stop.exit_code(outcome.signal)
    return ExitCode.FAILED if outcome.failed else ExitCode.OK


def task_slots(n_points: int, per: int, device: str) -> list:
    """The slots of a task's ``n_points``; CPU slots share the CPUs Slurm gave the task."""
    return plan_slots(max(1, n_points), None, per, device)


def own_threads() -> None:
    """Forget the submitting shell's ``OMP_NUM_THREADS`` (``--export=ALL`` passes it on): the task's
    points divide what Slurm gave it."""
    os.environ.pop("OMP_NUM_THREADS", None)


def run_worker(header: dict[str, Any]) -> int:
    """Queue mode: an ``orch worker`` for this sweep; the exit code."""
    per = int(header["per_task"])
    return queue.run_worker(header["storage"], task_slots(per, per, header["device"]), sweep=header["sweep_id"],
                            tracking_uri=header["uri"], max_retries=int(header["max_retries"]), quiet=False)


def requeue(code: int) -> int:
    """Requeue this task; its next start resumes its points. ``scontrol requeue`` ends the job at once,
    so the task execs it as its last act, the work saved; returns only when scontrol cannot start."""
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        log.info("time limit near: points checkpointed; task requeued, its next start resumes them")
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execvp("scontrol", ["scontrol", "requeue", job])
        except OSError as err:
            log.warning(f"could not requeue ({err}); rerun the sweep to resume the points")
    return code


def main() -> int:
    own_threads()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[orch slurm task {os.environ.get('SLURM_JOB_ID', '?')}] %(message)s"))
    logging.getLogger("orchestrator").addHandler(handler)
    logging.getLogger("orchestrator").setLevel(logging.INFO)
    header = json.loads(sys.stdin.readline())
    lines = [line for line in sys.stdin if line.strip()]
    with stop.handling() as flag, flag.deferred():  # a signal only sets the flag; the work stops itself
        try:
            code = run_worker(header) if header["mode"] == "worker" else run_points(header, lines)
        except (StoreFailure, StoreGaveOut) as err:
            log.error(f"error: {err}")
            return ExitCode.FAILED
        if flag.signum == signal.SIGUSR1 and code == ExitCode.PREEMPTED:
            return requeue(code)
        if header["mode"] == "worker":
            return code
        me = slurm_tags().get(Tag.SLURM_JOB, "")  # the sweep closes if this task is its last job
        try:
            log.info(close_if_done(TrackingStore(header["uri"]), header["parent_run_id"], by=f"Slurm task {me}",
                                   own_job=me, metric=header.get("metric"), wait=True))
        except slurm.SlurmError as err:  # squeue failed: the sweep's jobs are in an unknown state
            log.warning(f"error: {err}; `orch status` or a rerun closes the sweep once Slurm answers")
        return code


if __name__ == "__main__":
    sys.exit(main())
