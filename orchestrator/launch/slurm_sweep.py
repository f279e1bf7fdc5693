"""``orch sweep --launcher slurm``: submit what is missing, follow it, close the sweep once.

Submission opens the sweep as a local sweep does (:func:`orchestrator.launch.sweep.open_sweep`:
parent run, orphans, which points are done), leaves out the points that a live task of the
sweep already holds (the parent's ``slurm/<job id>.json`` says which task holds which
points), and submits the rest as one array. A rerun therefore submits only what is missing.

Closing (the summary and the parent's final status) is :func:`close_if_done`, run by each
array task as it ends, and by ``orch status``, ``--wait`` and a rerun that has nothing to
submit. It acts only when no other job of the sweep is live in ``squeue``, and it runs under
the experiment's sweep lock (:func:`orchestrator.store.locks.hold`), which serialises the
closers and the submissions: of two tasks that end together, the first to take the lock
sees the other still RUNNING and leaves it, the second sees the first COMPLETING or gone and
closes. So the last task closes the sweep, once, with no job of its own.

Why not a close job (``--dependency=afterany``), as before: ``scontrol requeue`` also takes
a job that has ended, which satisfies ``afterany`` and then runs again, so a close job had to
wait for COMPLETING tasks, hand the closing on to a successor after requeued ones, chain
after the close jobs of earlier submissions and be re-queued when cancelled: four
mechanisms for one summary. A task that was requeued is simply not the last one, and if a
closer did close the sweep in the seconds a requeued task shows COMPLETING, that task is
the last to end when it comes back and closes the sweep again (a task closes even a closed
parent), as a rerun reopens and closes a sweep that ended with points missing. Why not
submitit: it pickles the function onto the shared disk and owns the signal handling, where
here a task is an ordinary process whose script ``--dry-run`` prints, and submitit has no
notion of a sweep to close either.

Known limits: a task killed hard (SIGKILL, a dead node) does not close; neither does a
sweep whose tasks were cancelled before they started. ``orch status``, ``--wait`` or a rerun
closes such a sweep. Through a tracking server the sweep lock is per machine (see
:mod:`orchestrator.store.locks`): unless ``~/.cache/orch`` is shared, tasks on two nodes
that end within the same second can both close the sweep (the summary is written twice,
the same both times).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

from experiments.config import to_dict
from experiments.metric_names import DEFAULT_OBJECTIVE
from orchestrator.errors import ExitCode
from orchestrator.grid.load import SweepSpec
from orchestrator.launch import slurm
from orchestrator.store import locks
from orchestrator.store.schema import Artifact, Kind, Status, Tag, read_points
from orchestrator.store.tracking import TrackingStore

log = logging.getLogger(__name__)

FOLLOW_POLL_SECONDS = 2.0
ARRAY, QUEUE = "slurm", "slurm-queue"  # Tag.LAUNCHER of a sweep parent


@dataclass
class Submission:
    job_ids: list[str]  # the array submitted now (none when nothing was missing)
    points: int  # points submitted
    skipped_live: int  # unfinished points already held by live tasks
    done: int


def submit_sweep(spec: SweepSpec, store: TrackingStore, options: slurm.SlurmOptions, *, rerun: bool = False,
                 device: str = "auto", max_retries: int = 1, metric: str = DEFAULT_OBJECTIVE,
                 wait: bool = False) -> Submission:
    """Open the sweep and submit its missing points as one array (array mode).

    The experiment's sweep lock is held meanwhile, so two submissions of the sweep never
    both submit a point: the second is refused (naming the holder) or, with ``wait``, waits
    and then submits only what the first did not.
    """
    from orchestrator.launch.sweep import open_sweep

    with locks.hold(store.uri, spec.name, wait=wait, say=log.info):
        live = slurm.live_jobs(spec.sweep_id)
        state = open_sweep(store, spec, rerun=rerun)
        store.set_tags(state.parent_run_id, {Tag.LAUNCHER: ARRAY})
        held = held_points(store, state.parent_run_id, live)
        todo = [r for r in state.pending if r.run_key not in held]
        sub = Submission([], len(todo), len(state.pending) - len(todo), len(state.done))
        if todo:
            script = points_script(spec, todo, store.uri, options, experiment_id=state.experiment_id,
                                   parent_run_id=state.parent_run_id, device=device, max_retries=max_retries,
                                   metric=metric, resume=not rerun)
            sub.job_ids.append(_submit(store, state.parent_run_id, script, options, todo))
            return sub
        if not live:  # nothing missing and nothing running: the rerun closes the sweep
            log.info(_close(store, state.parent_run_id, by="orch sweep (rerun)", metric=metric))
    arrays = sorted({j.array for j in live})
    what = (f"all {sub.skipped_live} unfinished point(s) are queued or running in Slurm job(s) {', '.join(arrays)}"
            if sub.skipped_live else f"all {len(spec.runs)} points are finished")
    log.info(f"sweep {spec.name} [{spec.sweep_id}]: {what}; nothing submitted")
    return sub


def points_script(spec: SweepSpec, runs: Sequence, uri: str, options: slurm.SlurmOptions, *, experiment_id: str,
                  parent_run_id: str, device: str, max_retries: int, metric: str, resume: bool) -> str:
    """The job script of an array that runs ``runs``, ``--runs-per-gpu`` points per task."""
    from orchestrator.execute.scheduler import Job

    per = options.runs_per_gpu
    header = {"mode": "points", "uri": uri, "experiment_id": experiment_id, "parent_run_id": parent_run_id,
              "per_task": per, "device": device, "max_retries": max_retries, "metric": metric, "resume": resume}
    jobs = [Job.from_spec(r, uri=uri, experiment_id=experiment_id, parent_run_id=parent_run_id,
                          sweep_id=spec.sweep_id) for r in runs]
    lines = [{"name": j.name, "run_key": r.run_key, "config": j.config, "tags": j.tags} for j, r in zip(jobs, runs)]
    comment = (f"orch sweep {spec.name} [{spec.sweep_id}]: {len(runs)} point(s), {per} per array task\n"
               f"tracking URI {uri}; parent run {parent_run_id}")
    return slurm.job_script(options, name=slurm.job_name(spec.sweep_id), n_tasks=-(-len(runs) // per),
                            task_input=_task_input(header, lines), comment=comment)


def worker_script(spec: SweepSpec, uri: str, options: slurm.SlurmOptions, storage: str, *, n_tasks: int,
                  device: str, max_retries: int) -> str:
    """The job script of ``n_tasks`` array tasks, each an ``orch worker`` on the sweep's queue."""
    header = {"mode": "worker", "uri": uri, "storage": storage, "sweep_id": spec.sweep_id,
              "per_task": options.runs_per_gpu, "device": device, "max_retries": max_retries}
    comment = (f"orch sweep {spec.name} [{spec.sweep_id}]: {n_tasks} orch worker task(s) on the queue "
               f"{storage.split('@')[-1]}")
    opts = slurm.SlurmOptions(**{**options.__dict__, "array_parallelism": None})
    return slurm.job_script(opts, name=slurm.job_name(spec.sweep_id), n_tasks=n_tasks,
                            task_input=_task_input(header, ()), comment=comment)


def dry_run_script(spec: SweepSpec, uri: str, options: slurm.SlurmOptions, *, device: str, max_retries: int,
                   storage: str | None = None) -> str:
    """The job script ``orch sweep --launcher slurm`` would submit now (every point; ids unknown)."""
    if storage:
        return worker_script(spec, uri, options, storage, n_tasks=options.array_parallelism or 4, device=device,
                             max_retries=max_retries)
    return points_script(spec, spec.runs, uri, options, experiment_id="<experiment id>",
                         parent_run_id="<parent run id>", device=device, max_retries=max_retries,
                         metric=DEFAULT_OBJECTIVE, resume=True)


def _task_input(header: dict, lines: Sequence[dict]) -> list[str]:
    import json

    return [json.dumps(header), *(json.dumps(line) for line in lines)]


def _submit(store: TrackingStore, parent_run_id: str, script: str, options: slurm.SlurmOptions, runs: Sequence,
            launcher: str = ARRAY) -> str:
    """Submit ``script``; keep it and which task holds which points on the parent. The job id."""
    import json

    slurm.log_dir(options).mkdir(parents=True, exist_ok=True)
    try:
        job_id = slurm.submit(script)
    except slurm.SlurmError as err:  # checked with --test-only, so rare: the parent must not stay RUNNING
        store.end_run(parent_run_id, Status.FAILED, f"submission refused by Slurm: {err}")
        raise
    per = options.runs_per_gpu
    tasks = [[r.run_key for r in runs[i:i + per]] for i in range(0, len(runs), per)]
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


def submit_workers(spec: SweepSpec, store: TrackingStore, options: slurm.SlurmOptions, storage: str, *,
                   rerun: bool = False, device: str = "auto", max_retries: int = 1) -> Submission:
    """Queue mode: queue the missing points on PostgreSQL, then K worker tasks (unless enough are live)."""
    from orchestrator.launch import queue

    sub = queue.submit(spec, store, storage, rerun=rerun)
    waiting = sub.enqueued + sub.queued_before
    live = slurm.live_jobs(spec.sweep_id)
    k = min(options.array_parallelism or 4, max(waiting, 1))
    if not waiting or len(live) >= k:
        log.info(f"sweep {spec.name} [{spec.sweep_id}]: {sub.enqueued} point(s) queued, {sub.queued_before} already "
                 f"queued, {sub.done} finished; {len(live)} worker task(s) live; no task submitted")
        return Submission([], sub.enqueued, sub.queued_before, sub.done)
    script = worker_script(spec, store.uri, options, storage, n_tasks=k - len(live), device=device,
                           max_retries=max_retries)
    parent = store.find_sweep_parent(store.ensure_experiment(spec.name), spec.sweep_id)
    job_id = _submit(store, parent.info.run_id, script, options, (), launcher=QUEUE)
    return Submission([job_id], sub.enqueued, sub.queued_before, sub.done)


# --------------------------------------------------------------------------- closing


def close_if_done(store: TrackingStore, parent_run_id: str, *, by: str, own_job: str = "",
                  metric: str | None = None, wait: bool = False) -> str:
    """Write the summary and end the parent, if no other job of the sweep is live; returns what it did.

    ``own_job`` is the calling task (``12_3``), which is not counted, and which closes the
    parent even when another closer ended it already (see the module's docstring). The
    sweep lock is taken first: with ``wait`` a busy lock is waited for, else nothing is done.
    """
    parent = store.get_run(parent_run_id)
    experiment = store.client.get_experiment(parent.info.experiment_id).name
    try:
        with locks.hold(store.uri, experiment, wait=wait, say=log.info):
            return _close(store, parent_run_id, by=by, own_job=own_job, metric=metric)
    except locks.SweepBusy as err:
        return f"sweep [{parent.data.tags.get(Tag.SWEEP)}] not closed now: {err}"


def _close(store: TrackingStore, parent_run_id: str, *, by: str, own_job: str = "", metric: str | None = None) -> str:
    """:func:`close_if_done` under the sweep lock.

    A task that decided it is not the last one records that it has ended (``Tag.SLURM_ENDED``)
    before it exits, because squeue goes on showing it RUNNING for a moment after its
    process ends, and then COMPLETING for a few seconds: a closer counts neither (a task
    being requeued shows COMPLETING too; see the module's docstring).
    """
    from orchestrator.analyze import compare
    from orchestrator.launch.sweep import summarize_records, sweep_records

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
        if own_job:  # what the next closer needs to know: this task has ended, whatever squeue says
            ended = {j.id for j in live if j.id in ended} | {own_job}
            store.set_tags(parent_run_id, {Tag.SLURM_ENDED: ",".join(sorted(ended))})
        return (f"sweep [{sweep_id}]: {len(others)} Slurm job(s) of it still queued or running; the last of them "
                "to end closes it")
    exp_id = parent.info.experiment_id
    for run in store.sweep_children(exp_id, sweep_id):
        if run.info.status in Status.LIVE:
            job = run.data.tags.get(Tag.SLURM_JOB, "?")
            store.end_run(run.info.run_id, Status.FAILED, f"its Slurm task {job} ended without closing the run")
    points = read_points(store.download_json(parent_run_id, Artifact.POINTS))
    records = sweep_records(store, exp_id, sweep_id, [p.run_key for p in points])
    axes = [k for k in (points[0].point if points else {}) if k != "seed"]
    summarize_records(store, parent_run_id, records, points, axes, metric or DEFAULT_OBJECTIVE)
    finished = {r.tags.get(Tag.RUN_KEY) for r in compare.select_finished(records)}
    missing = [p.name for p in points if p.run_key not in finished]
    store.set_tags(parent_run_id, {Tag.SUMMARIZED_BY: by})
    if missing:
        store.end_run(parent_run_id, Status.FAILED,
                      f"{len(missing)} point(s) not finished ({', '.join(missing[:10])}); rerun the sweep to run them")
        return f"sweep [{sweep_id}] closed FAILED: {len(missing)} point(s) not finished; rerun the sweep to run them"
    store.end_run(parent_run_id, Status.FINISHED)
    return f"sweep [{sweep_id}] closed FINISHED: summary written on run {parent_run_id}"


# --------------------------------------------------------------------------- following (--wait), orch status


@dataclass(frozen=True)
class _JobSlot:
    label: str
    index: int = 0
    gpu: str | None = None


def follow(store: TrackingStore, spec: SweepSpec, parent, display, since_ms: int,
           poll: float = FOLLOW_POLL_SECONDS) -> None:
    """Show the sweep's points starting and ending until no job of the sweep is left in Slurm."""
    from orchestrator.execute.scheduler import Job, Task

    exp_id, parent_run_id = parent.info.experiment_id, parent.info.run_id
    display.start(len(spec.runs), [_JobSlot("slurm")])
    seen: dict[str, str] = {}
    tasks: dict[str, Task] = {}
    try:
        while True:
            live = slurm.live_jobs(spec.sweep_id)
            for run in sorted(store.sweep_children(exp_id, spec.sweep_id), key=lambda r: r.info.start_time):
                rid, status = run.info.run_id, run.info.status
                if run.info.start_time < since_ms or seen.get(rid) == status:
                    continue
                if rid not in tasks:
                    job = Job(run.info.run_name or rid, {}, store.uri, exp_id, parent_run_id, {})
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


def wait_and_close(store: TrackingStore, spec: SweepSpec, sub: Submission, *, quiet: bool, metric: str,
                   since_ms: int) -> int:
    """``--wait``: follow the jobs, close the sweep if no task did, print the table; the exit code."""
    from orchestrator.analyze import compare
    from orchestrator.execute.display import make_display
    from orchestrator.launch.sweep import expected_points, sweep_records

    parent = store.find_sweep_parent(store.ensure_experiment(spec.name), spec.sweep_id)
    try:
        follow(store, spec, parent, make_display(quiet), since_ms)
    except KeyboardInterrupt:
        log.info(f"stopped following; the jobs go on (scancel {' '.join(sub.job_ids) or 'JOBID'} stops them)")
        return ExitCode.INTERRUPTED
    if parent.data.tags.get(Tag.LAUNCHER) == ARRAY:  # the queue's worker closes its own
        log.info(close_if_done(store, parent.info.run_id, by="orch sweep --wait", metric=metric, wait=True))
    records = sweep_records(store, parent.info.experiment_id, spec.sweep_id, [r.run_key for r in spec.runs])
    try:
        print(compare.render(compare.compare(records, expected_points(spec), metric), "table"))
    except compare.CompareError:
        pass
    status = store.run_status(parent.info.run_id)
    if status == Status.FINISHED:
        return ExitCode.OK
    log.info(f"sweep {spec.name} ended {status}: {store.failure_reason(parent.info.run_id) or ''}")
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
