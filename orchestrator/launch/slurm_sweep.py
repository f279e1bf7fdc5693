"""The Slurm launcher: submit a sweep's missing points as a job array, follow it, close it once.

Points a live task holds (the parent's ``slurm/<job id>.json``) are not submitted again.
:func:`close_if_done` runs in each array task as it ends, and in ``orch status``, ``--wait``
and a rerun, one at a time under the sweep's lock; it closes only when no other job of the
sweep is live. squeue lags a task's end (RUNNING, then COMPLETING, which a cancelled task
also shows), so a task that is not the last records ``Tag.SLURM_ENDED`` on the parent first;
of tasks ending together the last to take the lock closes, once (seen on Slurm 22.05: without
that record, both tasks of a cancelled array closed). Not a ``--dependency=afterany`` close
job: ``scontrol requeue`` of an ended task satisfies ``afterany``; a requeued task is live,
and one closed under it closes the sweep again as it ends. Left to ``orch status``,
``--wait`` or a rerun: a sweep whose last task was killed hard or cancelled before it
started. Where the lock (:mod:`orchestrator.store.locks`) is not shared, tasks on two nodes
ending within a second may both close the sweep (the same summary, twice).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from typing import Any, Sequence

from orchestrator.analyze.render import render
from orchestrator.analyze.report import sweep_points, sweep_records
from orchestrator.analyze.sweep_summary import compare_sweep, entry_metric
from orchestrator.errors import ExitCode
from orchestrator.execute import stop
from orchestrator.execute.job import Job, encode
from orchestrator.execute.plan import Plan, expected_points
from orchestrator.grid.load import SweepSpec
from orchestrator.launch import queue, slurm
from orchestrator.store import locks
from orchestrator.store.schema import Artifact, Kind, Status, Tag
from orchestrator.store.tracking import TrackingStore

log = logging.getLogger(__name__)

FOLLOW_POLL_SECONDS = 2.0
ARRAY, QUEUE = "slurm", "slurm-queue"  # Tag.LAUNCHER of a sweep parent


def _submit_workers(store: TrackingStore, plan: Plan, jobs: Sequence[Job], options: slurm.SlurmOptions, storage: str,
                    live: Sequence[slurm.LiveJob], settings: dict[str, Any]) -> None:
    """Queue mode: queue the jobs on PostgreSQL, then K worker tasks (unless enough are live)."""
    spec = plan.spec
    sub = queue.submit(plan, jobs, storage, settings.get("metric"))
    waiting = sub.enqueued + sub.queued_before
    k = min(options.array_parallelism or 4, max(waiting, 1))
    what = f"{sub.enqueued} point(s) queued, {sub.queued_before} already queued, {sub.done} finished"
    if not waiting or len(live) >= k:
        log.info(f"sweep {spec.name} [{spec.sweep_id}]: {what}; {len(live)} worker task(s) live; no task submitted")
        return
    script = worker_script(spec, plan.uri, options, storage, k - len(live), settings)
    _submit(store, plan, script, options, (), f"{k - len(live)} worker task(s)", what, QUEUE)


def points_script(spec: SweepSpec, jobs: Sequence[Job], options: slurm.SlurmOptions, settings: dict[str, Any]) -> str:
    """The job script of an array that runs ``jobs``, ``--runs-per-gpu`` of them per task."""
    per, first = options.runs_per_gpu, jobs[0]
    header = {"mode": "points", "uri": first.uri, "parent_run_id": first.parent_run_id, "per_task": per, **settings}
    comment = f"orch sweep {spec.name} [{spec.sweep_id}]: {len(jobs)} point(s), {per} per array task"
    return slurm.job_script(options, name=slurm.job_name(spec.sweep_id), n_tasks=-(-len(jobs) // per),
                            task_input=[json.dumps(header), *map(encode, jobs)], comment=comment)


def worker_script(spec: SweepSpec, uri: str, options: slurm.SlurmOptions, storage: str, n_tasks: int,
                  settings: dict[str, Any]) -> str:
    """The job script of ``n_tasks`` array tasks, each an ``orch worker`` on the sweep's queue."""
    header = {"mode": "worker", "uri": uri, "storage": storage, "sweep_id": spec.sweep_id,
              "per_task": options.runs_per_gpu, **settings}
    comment = f"orch sweep {spec.name} [{spec.sweep_id}]: {n_tasks} orch worker task(s) on the queue"
    opts = slurm.SlurmOptions(**{**options.__dict__, "array_parallelism": None})
    return slurm.job_script(opts, name=slurm.job_name(spec.sweep_id), n_tasks=n_tasks,
                            task_input=[json.dumps(header)], comment=comment)


def dry_run_script(spec: SweepSpec, uri: str, options: slurm.SlurmOptions, *, storage: str | None = None,
                   **settings: Any) -> str:
    """The job script ``orch sweep --launcher slurm`` would submit now (every point; ids unknown)."""
    if storage:
        return worker_script(spec, uri, options, storage, options.array_parallelism or 4, settings)
    jobs = [Job.from_spec(r, spec.entry, uri=uri, experiment_id="<experiment id>", parent_run_id="<parent run id>",
                          sweep_id=spec.sweep_id) for r in spec.runs]
    return points_script(spec, jobs, options, settings)


def _submit(store: TrackingStore, plan: Plan, script: str, options: slurm.SlurmOptions, jobs: Sequence[Job],
            what: str, note: str, launcher: str = ARRAY) -> str:
    """Submit ``script``; keep it, and which task holds which points, on the parent; say so. The job id."""
    slurm.log_dir(options).mkdir(parents=True, exist_ok=True)
    try:
        job_id = slurm.submit(script)
    except slurm.SlurmError as err:  # checked with --test-only, so rare: the parent must not stay RUNNING
        store.end_run(plan.parent_run_id, Status.FAILED, f"submission refused by Slurm: {err}")
        raise
    per = options.runs_per_gpu
    tasks = [[job.run_key for job in jobs[i:i + per]] for i in range(0, len(jobs), per)]
    store.log_text(plan.parent_run_id, script, f"{Artifact.SLURM_DIR}/{job_id}.sh")
    store.log_text(plan.parent_run_id, json.dumps({"job_id": job_id, "tasks": tasks}),
                   f"{Artifact.SLURM_DIR}/{job_id}.json")
    before = store.get_run(plan.parent_run_id).data.tags.get(Tag.SLURM_JOBS, "")
    store.set_tags(plan.parent_run_id, {Tag.SLURM_JOBS: ",".join([*filter(None, before.split(",")), job_id]),
                                        Tag.LAUNCHER: launcher})
    log.info(f"sweep {plan.spec.name} [{plan.spec.sweep_id}]: submitted {what} as Slurm job {job_id}; {note}\nfollow it "
             f"with: squeue -n {slurm.job_name(plan.spec.sweep_id)}  or  orch status --tracking-uri {plan.uri}\n"
             f"task logs: {slurm.log_dir(options)}")
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


def close_if_done(store: TrackingStore, parent_run_id: str, *, by: str, own_job: str = "",
                  metric: str | None = None, wait: bool = False) -> str:
    """Write the summary and end the parent if no other job of the sweep is live; what it did.
    ``own_job`` (``12_3``) does not count, and closes even a closed parent; ``wait``: wait for
    a closer holding the lock, else leave the closing to it."""
    sweep_id = store.get_run(parent_run_id).data.tags[Tag.SWEEP]
    try:
        with locks.hold(store.uri, f"slurm-close-{sweep_id}", wait=wait,
                        refusal=lambda who: f"sweep [{sweep_id}] not closed now: {who} is closing it"):
            return _close(store, parent_run_id, by=by, own_job=own_job, metric=metric)
    except locks.SweepBusy as err:
        return str(err)


def _close(store: TrackingStore, parent_run_id: str, *, by: str, own_job: str, metric: str | None) -> str:
    from orchestrator.launch.sweep import close_sweep  # not at the top: it imports numpy

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
    missing = close_sweep(store, parent_run_id, metric=metric)
    if missing:
        return f"sweep [{sweep_id}] closed FAILED: {len(missing)} point(s) not finished; rerun the sweep to run them"
    return f"sweep [{sweep_id}] closed FINISHED: summary written on run {parent_run_id}"


def follow(store: TrackingStore, plan: Plan, metric: str | None, since_ms: int) -> None:
    """Say each of the sweep's points as it starts and ends, until no job of the sweep is left in Slurm."""
    seen: dict[str, str] = {}
    while True:
        live = slurm.live_jobs(plan.spec.sweep_id)
        runs = store.sweep_children(plan.experiment_id, plan.spec.sweep_id)
        for run in sorted(runs, key=lambda r: r.info.start_time):
            status, tags = run.info.status, run.data.tags
            if run.info.start_time < since_ms or seen.get(run.info.run_id) == status:
                continue
            seen[run.info.run_id] = status
            value = run.data.metrics.get(metric) if metric else None
            what = f"{metric} {value:.4f}" if value is not None else tags.get(Tag.FAILURE_REASON, "")
            log.info(f"  {status.lower():9} {run.info.run_name} (Slurm job {tags.get(Tag.SLURM_JOB, '?')}) {what}")
        if not live:
            return
        time.sleep(FOLLOW_POLL_SECONDS)


def status_rows(store: TrackingStore, parent) -> tuple[list[dict], str | None]:
    """Per point: name, MLflow status, Slurm job (tag), its state in squeue; and what closing did."""
    sweep_id = parent.data.tags[Tag.SWEEP]
    points = sweep_points(store, parent)  # none recorded: one message, exit 2
    latest: dict[str, Any] = {}  # run key -> its finished run, else its newest
    for run in sorted(store.sweep_children(parent.info.experiment_id, sweep_id), key=lambda r: r.info.start_time):
        key = run.data.tags.get(Tag.RUN_KEY)
        if key and run.data.tags.get(Tag.KIND) == Kind.POINT and (
                key not in latest or latest[key].info.status != Status.FINISHED):
            latest[key] = run
    # only a sweep submitted to Slurm asks squeue: a local one reads the same on a machine whose Slurm is down
    squeue = parent.data.tags.get(Tag.LAUNCHER) in (ARRAY, QUEUE) and shutil.which("squeue") is not None
    live = slurm.live_jobs(sweep_id) if squeue else []
    held, states = held_points(store, parent.info.run_id, live), {j.id: j.state for j in live}
    rows = []
    for p in points:
        run = latest.get(p.run_key)
        tags = run.data.tags if run is not None else {}
        job = tags.get(Tag.SLURM_JOB) or held.get(p.run_key, "")
        rows.append({"name": p.name, "status": run.info.status if run is not None else ("queued" if job else "missing"),
                     "job": job, "slurm": states.get(job, ""), "run_id": run.info.run_id if run is not None else "",
                     "reason": tags.get(Tag.FAILURE_REASON, "")})
    closed = None
    if squeue and parent.data.tags.get(Tag.LAUNCHER) == ARRAY and parent.info.status in Status.LIVE:
        closed = close_if_done(store, parent.info.run_id, by="orch status")
    return rows, closed


class SlurmLauncher:
    """A Slurm job array: returns once submitted; its last task closes the sweep. With ``--wait``,
    :func:`run_sweep` calls :meth:`follow` once it has let go of the sweep lock."""

    runs_here = False

    def __init__(self, options: Any, *, device: str, max_retries: int, storage: str | None, shared: bool,
                 metric: str | None):
        self.options, self.storage, self.shared = options, storage, shared
        self.settings = {"device": device, "max_retries": max_retries, "metric": metric}

    def setup(self, spec: SweepSpec, uri: str) -> None:
        """Every check before anything is recorded, down to ``sbatch --test-only``."""
        self.settings["metric"] = self.settings["metric"] or entry_metric(spec.entry)
        slurm.check(self.options, uri, shared=self.shared, storage=self.storage)
        slurm.test_only(dry_run_script(spec, uri, self.options, storage=self.storage, **self.settings))

    def launch(self, plan: Plan, jobs: Sequence[Job]) -> int:
        """Submit ``jobs`` as an array (or, with ``storage``, queue them for worker tasks); the exit code."""
        self.since_ms = int(time.time() * 1000)
        store, spec, options, settings = TrackingStore(plan.uri), plan.spec, self.options, self.settings
        live = slurm.live_jobs(spec.sweep_id)
        if self.storage:
            _submit_workers(store, plan, jobs, options, self.storage, live, settings)
            return ExitCode.OK
        held = held_points(store, plan.parent_run_id, live)
        todo = [job for job in jobs if job.run_key not in held]
        if todo:
            note = f"{len(plan.done)} already finished, {len(jobs) - len(todo)} queued or running in earlier jobs"
            _submit(store, plan, points_script(spec, todo, options, settings), options, todo, f"{len(todo)} point(s)",
                    note)
            return ExitCode.OK
        arrays = ", ".join(sorted({j.id.split("_")[0] for j in live}))
        what = (f"all {len(jobs)} unfinished point(s) are queued or running in Slurm job(s) {arrays}" if jobs
                else f"all {len(spec.runs)} points are finished")
        log.info(f"sweep {spec.name} [{spec.sweep_id}]: {what}; nothing submitted")
        if not live and not plan.closed:  # nothing missing, nothing running, the parent open: close it now
            store.set_tags(plan.parent_run_id, {Tag.LAUNCHER: ARRAY})
            log.info(close_if_done(store, plan.parent_run_id, by="orch sweep (rerun)", metric=settings.get("metric"),
                                   wait=True))
        return ExitCode.OK

    def follow(self, plan: Plan) -> int:
        """``--wait``: follow the sweep's jobs, close the sweep if no task did, print the table; the exit code."""
        store, metric, spec = TrackingStore(plan.uri), self.settings["metric"], plan.spec
        try:
            follow(store, plan, metric, self.since_ms)
        except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (execute.stop): the jobs are Slurm's
            log.info(f"stopped following; the jobs go on (scancel -n {slurm.job_name(spec.sweep_id)} stops them)")
            return stop.exit_code(stop.signal_of(err))
        if store.get_run(plan.parent_run_id).data.tags.get(Tag.LAUNCHER) == ARRAY:  # the queue's worker closes its own
            log.info(close_if_done(store, plan.parent_run_id, by="orch sweep --wait", metric=metric, wait=True))
        records = sweep_records(store, plan.experiment_id, spec.sweep_id, [r.run_key for r in spec.runs])
        result = compare_sweep(records, expected_points(spec), metric)
        if result is not None:
            print(render(result, "table"), flush=True)
        status = store.run_status(plan.parent_run_id)
        if status == Status.FINISHED:
            return ExitCode.OK
        log.info(f"sweep {spec.name} ended {status}: {store.failure_reason(plan.parent_run_id) or ''}")
        return ExitCode.FAILED

    def close(self) -> None:
        pass
