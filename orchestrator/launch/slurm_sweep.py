"""The Slurm launcher: submit a sweep's missing points as a job array, follow it, close it once.

:class:`orchestrator.launch.sweep.SlurmLauncher` calls :func:`check_sweep` before anything is
recorded and :func:`submit_sweep` with the plan's missing points (as jobs) under the sweep
lock. Points that a live task of the sweep already holds are left out (the parent's
``slurm/<job id>.json`` says which task holds which), so a rerun submits only what is missing.

Closing (the summary and the parent's end, :func:`orchestrator.launch.sweep.close_sweep`) is
:func:`close_if_done`: each array task runs it as it ends, and so do ``orch status``,
``--wait`` and a rerun with nothing to submit. It closes only when no other job of the
sweep is live in squeue, and the closers take turns under a lock of the sweep. squeue lags a
task's end (it shows RUNNING for a moment after the process ended, then COMPLETING), so a
task that finds it is not the last records on the parent that it has ended (``Tag.SLURM_ENDED``)
before it lets the next closer in, and a closer counts neither those nor COMPLETING tasks.
Of tasks that end together the last to take the lock closes: once, with no job of its own.

Why not the close job of before (``--dependency=afterany``): ``scontrol requeue`` also takes a
task that has ended, which satisfies ``afterany`` and then runs again, so the close job had to
wait for COMPLETING tasks, hand the closing on to a successor after requeued ones, chain after
earlier submissions' close jobs and be queued again when cancelled. Here a requeued task is
simply not the last, and if a closer ends the sweep in the seconds a requeued task shows
COMPLETING, that task closes it again when it ends (a task closes even a closed parent), as a
rerun does after a sweep ended with points missing. Why not submitit: it pickles a function
onto the shared disk and owns the signals, where a task here is a plain process whose script
``--dry-run`` prints, and a sweep's closing would still be ours to write.

Known limits, for ``orch status``, ``--wait`` or a rerun to close: a task killed hard
(SIGKILL, a dead node) does not close, and tasks cancelled before they started never run.
The lock is a file beside a SQLite store (shared with the nodes), and for a tracking server in
``~/.cache/orch`` (:mod:`orchestrator.store.locks`): unless that is shared too, tasks on two
nodes that end within the same second may both write the summary (the same both times).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

from experiments.metric_names import DEFAULT_OBJECTIVE
from orchestrator.errors import ExitCode
from orchestrator.execute.job import Job, encode
from orchestrator.execute.plan import Plan
from orchestrator.grid.load import SweepSpec
from orchestrator.launch import slurm
from orchestrator.store import locks
from orchestrator.store.schema import Artifact, Kind, Status, Tag
from orchestrator.store.tracking import TrackingStore

log = logging.getLogger(__name__)

FOLLOW_POLL_SECONDS = 2.0
ARRAY, QUEUE = "slurm", "slurm-queue"  # Tag.LAUNCHER of a sweep parent


@dataclass
class Submission:
    job_ids: list[str]  # the array submitted now (none when nothing was missing)
    points: int  # points submitted
    skipped_live: int  # missing points already held by live tasks


def check_sweep(spec: SweepSpec, uri: str, options: slurm.SlurmOptions, *, storage: str | None, shared: bool,
                device: str, max_retries: int, metric: str) -> None:  # noqa: ARG001
    """Every check before anything is recorded or submitted, down to ``sbatch --test-only``."""
    slurm.check(options, uri, shared=shared, storage=storage)
    slurm.test_only(dry_run_script(spec, uri, options, device=device, max_retries=max_retries, storage=storage))


def submit_sweep(plan: Plan, jobs: Sequence[Job], options: slurm.SlurmOptions, *, storage: str | None, wait: bool,
                 device: str, max_retries: int, metric: str) -> int:
    """Submit ``jobs`` as an array (or, with ``storage``, queue them for worker tasks); with
    ``wait``, follow the jobs until they end. The exit code."""
    spec, store = plan.spec, TrackingStore(plan.uri)
    since_ms = int(time.time() * 1000)
    if storage:
        sub = _submit_workers(plan, jobs, options, storage, device=device, max_retries=max_retries)
    else:
        sub = _submit_points(store, plan, jobs, options, device=device, max_retries=max_retries, metric=metric)
    if sub.job_ids:
        log.info(f"sweep {spec.name} [{spec.sweep_id}]: submitted {sub.points} point(s) as Slurm job {sub.job_ids[0]}; "
                 f"{len(plan.done)} already finished, {sub.skipped_live} queued or running in earlier jobs\n"
                 f"follow it with: squeue -n {slurm.job_name(spec.sweep_id)}  or  orch status --tracking-uri "
                 f"{plan.uri}\ntask logs: {slurm.log_dir(options)}")
    if wait and (sub.job_ids or sub.skipped_live):
        return wait_and_close(store, plan, sub, metric=metric, since_ms=since_ms)
    return ExitCode.OK


def _submit_points(store: TrackingStore, plan: Plan, jobs: Sequence[Job], options: slurm.SlurmOptions, *,
                   device: str, max_retries: int, metric: str) -> Submission:
    """Array mode: the jobs that no live task holds, as one array."""
    spec = plan.spec
    live = slurm.live_jobs(spec.sweep_id)
    held = held_points(store, plan.parent_run_id, live)
    todo = [job for job in jobs if job.run_key not in held]
    if todo:
        script = points_script(spec, todo, options, device=device, max_retries=max_retries, metric=metric)
        return Submission([_submit(store, plan.parent_run_id, script, options, todo)], len(todo), len(jobs) - len(todo))
    what = (f"all {len(jobs)} unfinished point(s) are queued or running in Slurm job(s) "
            f"{', '.join(sorted({j.array for j in live}))}" if jobs else f"all {len(spec.runs)} points are finished")
    log.info(f"sweep {spec.name} [{spec.sweep_id}]: {what}; nothing submitted")
    if not live and not plan.closed:  # nothing missing, nothing running, the parent open: close it now
        store.set_tags(plan.parent_run_id, {Tag.LAUNCHER: ARRAY})
        log.info(close_if_done(store, plan.parent_run_id, by="orch sweep (rerun)", metric=metric, wait=True))
    return Submission([], 0, len(jobs))


def _submit_workers(plan: Plan, jobs: Sequence[Job], options: slurm.SlurmOptions, storage: str, *, device: str,
                    max_retries: int) -> Submission:
    """Queue mode: queue the jobs on PostgreSQL, then K worker tasks (unless enough are live)."""
    from orchestrator.launch import queue

    spec = plan.spec
    sub = queue.submit(plan, jobs, storage)
    waiting = sub.enqueued + sub.queued_before
    live = slurm.live_jobs(spec.sweep_id)
    k = min(options.array_parallelism or 4, max(waiting, 1))
    if not waiting or len(live) >= k:
        log.info(f"sweep {spec.name} [{spec.sweep_id}]: {sub.enqueued} point(s) queued, {sub.queued_before} already "
                 f"queued, {sub.done} finished; {len(live)} worker task(s) live; no task submitted")
        return Submission([], sub.enqueued, sub.queued_before)
    script = worker_script(spec, plan.uri, options, storage, n_tasks=k - len(live), device=device,
                           max_retries=max_retries)
    job_id = _submit(TrackingStore(plan.uri), plan.parent_run_id, script, options, (), launcher=QUEUE)
    return Submission([job_id], sub.enqueued, sub.queued_before)


def points_script(spec: SweepSpec, jobs: Sequence[Job], options: slurm.SlurmOptions, *, device: str,
                  max_retries: int, metric: str) -> str:
    """The job script of an array that runs ``jobs``, ``--runs-per-gpu`` of them per task."""
    per, first = options.runs_per_gpu, jobs[0]
    header = {"mode": "points", "uri": first.uri, "parent_run_id": first.parent_run_id, "per_task": per,
              "device": device, "max_retries": max_retries, "metric": metric}
    comment = (f"orch sweep {spec.name} [{spec.sweep_id}]: {len(jobs)} point(s), {per} per array task\n"
               f"tracking URI {first.uri}; parent run {first.parent_run_id}")
    return slurm.job_script(options, name=slurm.job_name(spec.sweep_id), n_tasks=-(-len(jobs) // per),
                            task_input=[json.dumps(header), *map(encode, jobs)], comment=comment)


def worker_script(spec: SweepSpec, uri: str, options: slurm.SlurmOptions, storage: str, *, n_tasks: int,
                  device: str, max_retries: int) -> str:
    """The job script of ``n_tasks`` array tasks, each an ``orch worker`` on the sweep's queue."""
    header = {"mode": "worker", "uri": uri, "storage": storage, "sweep_id": spec.sweep_id,
              "per_task": options.runs_per_gpu, "device": device, "max_retries": max_retries}
    comment = (f"orch sweep {spec.name} [{spec.sweep_id}]: {n_tasks} orch worker task(s) on the queue "
               f"{storage.split('@')[-1]}")
    opts = slurm.SlurmOptions(**{**options.__dict__, "array_parallelism": None})
    return slurm.job_script(opts, name=slurm.job_name(spec.sweep_id), n_tasks=n_tasks,
                            task_input=[json.dumps(header)], comment=comment)


def dry_run_script(spec: SweepSpec, uri: str, options: slurm.SlurmOptions, *, device: str, max_retries: int,
                   storage: str | None = None) -> str:
    """The job script ``orch sweep --launcher slurm`` would submit now (every point; ids unknown)."""
    if storage:
        return worker_script(spec, uri, options, storage, n_tasks=options.array_parallelism or 4, device=device,
                             max_retries=max_retries)
    jobs = [Job.from_spec(r, uri=uri, experiment_id="<experiment id>", parent_run_id="<parent run id>",
                          sweep_id=spec.sweep_id) for r in spec.runs]
    return points_script(spec, jobs, options, device=device, max_retries=max_retries, metric=DEFAULT_OBJECTIVE)


def _submit(store: TrackingStore, parent_run_id: str, script: str, options: slurm.SlurmOptions, jobs: Sequence[Job],
            launcher: str = ARRAY) -> str:
    """Submit ``script``; keep it, and which task holds which points, on the parent. The job id."""
    slurm.log_dir(options).mkdir(parents=True, exist_ok=True)
    try:
        job_id = slurm.submit(script)
    except slurm.SlurmError as err:  # checked with --test-only, so rare: the parent must not stay RUNNING
        store.end_run(parent_run_id, Status.FAILED, f"submission refused by Slurm: {err}")
        raise
    per = options.runs_per_gpu
    tasks = [[job.run_key for job in jobs[i:i + per]] for i in range(0, len(jobs), per)]
    store.log_text(parent_run_id, script, f"{Artifact.SLURM_DIR}/{job_id}.sh")
    store.log_text(parent_run_id, json.dumps({"job_id": job_id, "tasks": tasks}), f"{Artifact.SLURM_DIR}/{job_id}.json")
    before = store.get_run(parent_run_id).data.tags.get(Tag.SLURM_JOBS, "")
    store.set_tags(parent_run_id, {Tag.SLURM_JOBS: ",".join([*filter(None, before.split(",")), job_id]),
                                   Tag.LAUNCHER: launcher})
    return job_id


def held_points(store: TrackingStore, parent_run_id: str, live: Sequence[slurm.LiveJob]) -> dict[str, str]:
    """run key -> the live array task (``12_3``) that holds it, from the parent's manifests."""
    held: dict[str, str] = {}
    manifests: dict[str, Any] = {}
    for job in live:
        array, _, index = job.id.partition("_")
        if array not in manifests:
            manifests[array] = store.download_json_if_any(parent_run_id, f"{Artifact.SLURM_DIR}/{array}.json")
        tasks = (manifests[array] or {}).get("tasks", [])
        if index.isdigit() and int(index) < len(tasks):
            held.update(dict.fromkeys(tasks[int(index)], job.id))
    return held


# --------------------------------------------------------------------------- closing


def close_if_done(store: TrackingStore, parent_run_id: str, *, by: str, own_job: str = "",
                  metric: str | None = None, wait: bool = False) -> str:
    """Write the summary and end the parent if no other job of the sweep is live; what it did.

    ``own_job`` is the calling task (``12_3``): it does not count, and it closes the parent
    even when another closer has ended it (see the module's docstring). ``wait``: wait for
    a closer that holds the sweep's closing lock, else leave the closing to it.
    """
    sweep_id = store.get_run(parent_run_id).data.tags[Tag.SWEEP]
    try:
        with locks.hold(store.uri, f"slurm-close-{sweep_id}", wait=wait, say=log.info,
                        refusal=lambda who: f"sweep [{sweep_id}] not closed now: {who} is closing it"):
            return _close(store, parent_run_id, by=by, own_job=own_job, metric=metric)
    except locks.SweepBusy as err:
        return str(err)


def _close(store: TrackingStore, parent_run_id: str, *, by: str, own_job: str, metric: str | None) -> str:
    from orchestrator.launch.sweep import close_sweep

    parent = store.get_run(parent_run_id)  # fresh: another closer may have ended it
    sweep_id = parent.data.tags[Tag.SWEEP]
    if parent.data.tags.get(Tag.LAUNCHER) != ARRAY:  # a local sweep, or the queue's: closed by their own rules
        return f"sweep [{sweep_id}] is not a Slurm array sweep; left as it is"
    if parent.info.status not in Status.LIVE and not own_job:
        return f"sweep [{sweep_id}] already closed ({parent.info.status})"
    live = slurm.live_jobs(sweep_id)
    ended = set(parent.data.tags.get(Tag.SLURM_ENDED, "").split(","))
    others = [j for j in live if j.id != own_job and not (j.id in ended and j.state in ("RUNNING", "COMPLETING"))]
    if others:
        if own_job:  # for the next closer: this task has ended, whatever squeue shows for a moment
            ended = {j.id for j in live if j.id in ended} | {own_job}
            store.set_tags(parent_run_id, {Tag.SLURM_ENDED: ",".join(sorted(ended))})
        return f"sweep [{sweep_id}]: {len(others)} Slurm job(s) of it still queued or running; the last to end closes it"
    for run in store.sweep_children(parent.info.experiment_id, sweep_id):
        if run.info.status in Status.LIVE:
            job = run.data.tags.get(Tag.SLURM_JOB, "?")
            store.end_run(run.info.run_id, Status.FAILED, f"its Slurm task {job} ended without closing the run")
    store.set_tags(parent_run_id, {Tag.SUMMARIZED_BY: by})
    missing = close_sweep(store, parent_run_id, metric=metric or DEFAULT_OBJECTIVE)
    if missing:
        return f"sweep [{sweep_id}] closed FAILED: {len(missing)} point(s) not finished; rerun the sweep to run them"
    return f"sweep [{sweep_id}] closed FINISHED: summary written on run {parent_run_id}"


# --------------------------------------------------------------------------- following (--wait), orch status


@dataclass(frozen=True)
class _JobSlot:
    label: str
    index: int = 0
    gpu: str | None = None


def follow(store: TrackingStore, plan: Plan, display, since_ms: int, poll: float = FOLLOW_POLL_SECONDS) -> None:
    """Show the sweep's points starting and ending until no job of the sweep is left in Slurm."""
    from orchestrator.execute.slots import Task

    sweep_id = plan.spec.sweep_id
    display.start(len(plan.spec.runs), [_JobSlot("slurm")])
    seen: dict[str, str] = {}
    tasks: dict[str, Task] = {}
    try:
        while True:
            live = slurm.live_jobs(sweep_id)
            for run in sorted(store.sweep_children(plan.experiment_id, sweep_id), key=lambda r: r.info.start_time):
                rid, status = run.info.run_id, run.info.status
                if run.info.start_time < since_ms or seen.get(rid) == status:
                    continue
                if rid not in tasks:
                    job = Job(run.info.run_name or rid, {}, plan.uri, plan.experiment_id, plan.parent_run_id, {})
                    slot = _JobSlot(f"job {run.data.tags.get(Tag.SLURM_JOB, '?')}")
                    tasks[rid] = Task(job, started=run.info.start_time / 1000, slot=slot)
                    display.started(tasks[rid])
                if status == Status.FINISHED:
                    tasks[rid].summary = dict(run.data.metrics)
                    display.finished(tasks[rid])
                elif status in (Status.FAILED, Status.KILLED):
                    display.failed(tasks[rid], run.data.tags.get(Tag.FAILURE_REASON, status))
                seen[rid] = status
            if not live:
                return
            display.tick()
            time.sleep(poll)
    finally:
        display.stop()


def wait_and_close(store: TrackingStore, plan: Plan, sub: Submission, *, metric: str, since_ms: int) -> int:
    """``--wait``: follow the jobs, close the sweep if no task did, print the table; the exit code."""
    from orchestrator.analyze import compare, sweep_summary
    from orchestrator.execute.display import make_display
    from orchestrator.execute.plan import expected_points

    try:
        follow(store, plan, make_display(not log.isEnabledFor(logging.INFO)), since_ms)
    except KeyboardInterrupt:
        log.info(f"stopped following; the jobs go on (scancel {' '.join(sub.job_ids) or 'JOBID'} stops them)")
        return ExitCode.INTERRUPTED
    if store.get_run(plan.parent_run_id).data.tags.get(Tag.LAUNCHER) == ARRAY:  # the queue's worker closes its own
        log.info(close_if_done(store, plan.parent_run_id, by="orch sweep --wait", metric=metric, wait=True))
    spec = plan.spec
    records = sweep_summary.sweep_records(store, plan.experiment_id, spec.sweep_id, [r.run_key for r in spec.runs])
    result = sweep_summary.compare_sweep(records, expected_points(spec), metric)
    if result is not None:
        print(compare.render(result, "table"), flush=True)
    status = store.run_status(plan.parent_run_id)
    if status == Status.FINISHED:
        return ExitCode.OK
    log.info(f"sweep {spec.name} ended {status}: {store.failure_reason(plan.parent_run_id) or ''}")
    return ExitCode.FAILED


def status_rows(store: TrackingStore, parent, *, close: bool = True) -> tuple[list[dict], str | None]:
    """Per point: name, MLflow status, Slurm job (tag), its state in squeue; and what closing did."""
    import shutil

    from orchestrator.analyze.report import sweep_points

    sweep_id = parent.data.tags[Tag.SWEEP]
    points = sweep_points(store, parent)  # none recorded: one message, exit 2
    latest: dict[str, Any] = {}  # run key -> its finished run, else its newest
    for run in sorted(store.sweep_children(parent.info.experiment_id, sweep_id), key=lambda r: r.info.start_time):
        key = run.data.tags.get(Tag.RUN_KEY)
        if key and run.data.tags.get(Tag.KIND) == Kind.POINT and (
                key not in latest or latest[key].info.status != Status.FINISHED):
            latest[key] = run
    squeue = shutil.which("squeue") is not None
    live = slurm.live_jobs(sweep_id) if squeue else []
    held = held_points(store, parent.info.run_id, live)
    states = slurm.job_states([r.data.tags[Tag.SLURM_JOB] for r in latest.values() if Tag.SLURM_JOB in r.data.tags])
    states.update({j.id: j.state for j in live})
    rows = []
    for p in points:
        run = latest.get(p.run_key)
        tags = run.data.tags if run is not None else {}
        job = tags.get(Tag.SLURM_JOB) or held.get(p.run_key, "")
        rows.append({"name": p.name, "status": run.info.status if run is not None else ("queued" if job else "missing"),
                     "job": job, "slurm": states.get(job, ""), "run_id": run.info.run_id if run is not None else "",
                     "reason": tags.get(Tag.FAILURE_REASON, "")})
    closed = None
    if close and squeue and parent.data.tags.get(Tag.LAUNCHER) == ARRAY and parent.info.status in Status.LIVE:
        closed = close_if_done(store, parent.info.run_id, by="orch status")
    return rows, closed
