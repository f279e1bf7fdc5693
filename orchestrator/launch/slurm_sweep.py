"""``orch sweep --launcher slurm``: submit what is missing, follow it, close the sweep once.

Submission finds or creates the sweep's parent run (as a local sweep does), leaves out
the points that are finished and those that a live task of the sweep already covers
(queued or running: the ``slurm/<job id>.json`` manifests on the parent say which task
holds which points), and submits the rest as one array plus its close job. A rerun
therefore submits only what is missing.

Closing: the summary (summary.csv, plots) is written and the parent ended by
:func:`close_if_done`, which acts only when no job of the sweep is left in Slurm and the
parent is still RUNNING. The close job runs it after its array (``afterany``), each
close job also after the close jobs submitted before it, so they never race; ``orch
status``, a rerun and ``--wait`` run it too, which covers a close job that never ran.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from experiments.metric_names import DEFAULT_OBJECTIVE
from orchestrator.store import locks
from orchestrator.launch import slurm
from orchestrator.errors import ExitCode
from orchestrator.grid.load import SweepSpec
from orchestrator.store.schema import Artifact, Kind, Status, Tag, read_points
from orchestrator.store.tracking import TrackingStore

FOLLOW_POLL_SECONDS = 2.0
ARRAY, QUEUE = "slurm", "slurm-queue"  # Tag.LAUNCHER of a sweep parent


@dataclass
class Submission:
    job_ids: list[str]  # the sweep jobs submitted now (array, close job)
    points: int  # points submitted
    skipped_live: int  # unfinished points already covered by live tasks
    done: int


def covered_run_keys(store: TrackingStore, parent_run_id: str, live: Sequence[tuple[str, str, str]]) -> set[str]:
    """Run keys of the points that live array tasks of the sweep hold (from the parent's manifests)."""
    return set(covered_jobs(store, parent_run_id, live))


def submit_sweep(spec: SweepSpec, store: TrackingStore, options: slurm.SlurmOptions, *, rerun: bool = False,
                 device: str = "auto", max_retries: int = 1, metric: str = DEFAULT_OBJECTIVE,
                 dry_run: bool = False, wait: bool = False,
                 say: Callable[[str], None] = print) -> tuple[Submission | None, Any]:
    """Submit the sweep's missing points (array mode); returns (what was submitted, the sweep state).

    The experiment's sweep lock is held while submitting, so two submissions of the sweep
    never both submit a point: the second is refused (naming the holder) or, with ``wait``,
    waits and then submits only what the first did not.
    """
    from orchestrator.launch.sweep import open_sweep

    with locks.hold(store.uri, spec.name, wait=wait, say=say):
        exp_id = store.ensure_experiment(spec.name)
        parent = store.find_sweep_parent(exp_id, spec.sweep_id)
        finished = set() if rerun else store.finished_run_keys(exp_id)
        pending = [r for r in spec.runs if r.run_key not in finished]
        live = slurm.live_jobs(spec.sweep_id)
        live_arrays = sorted({j[0].split("_")[0] for j in live if j[2] == slurm.job_name(spec.sweep_id)})
        covered = covered_run_keys(store, parent.info.run_id, live) if parent is not None and live else set()
        todo = [r for r in pending if r.run_key not in covered]
        if not todo:
            if parent is not None and parent.info.status in Status.LIVE and not live:
                say(close_if_done(store, parent, by="orch sweep (rerun)", metric=metric))
            elif (parent is not None and parent.info.status in Status.LIVE
                  and not any(j[2] == slurm.job_name(spec.sweep_id, close=True) for j in live)):
                # tasks but no close job (it was cancelled): without one the parent would stay open
                close_id = _submit_close(store, spec, options, parent.info.run_id, live_arrays, metric, say)
                if close_id:
                    say(f"sweep {spec.name} [{spec.sweep_id}]: no close job of it was queued; close job {close_id} "
                        f"closes it after job(s) {', '.join(live_arrays)}")
            what = (f"all {len(pending)} unfinished point(s) are queued or running in Slurm job(s) "
                    f"{', '.join(live_arrays)}" if pending else f"all {len(spec.runs)} points are finished")
            say(f"sweep {spec.name} [{spec.sweep_id}]: {what}; nothing submitted")
            return Submission([], 0, len(pending), len(spec.runs) - len(pending)), None
        state = open_sweep(store, spec, rerun=rerun)
        per = options.runs_per_gpu
        tasks = [todo[i:i + per] for i in range(0, len(todo), per)]
        header = {"mode": "points", "uri": store.uri, "experiment_id": state.experiment_id,
                  "parent_run_id": state.parent_run_id, "sweep_id": spec.sweep_id, "per_task": per,
                  "device": device, "max_retries": max_retries,
                  "warn_seconds": slurm.warn_seconds(options), "resume": not rerun}
        jobs = [{"name": r.name, "run_key": r.run_key, "config": _config(r),
                 "tags": {Tag.KIND: Kind.POINT, Tag.SWEEP: spec.sweep_id, Tag.POINT: r.point_label,
                          Tag.SETTING: r.setting}} for r in todo]
        comment = (f"orch sweep {spec.name} [{spec.sweep_id}]: {len(todo)} point(s), {per} per array task\n"
                   f"tracking URI {store.uri}; parent run {state.parent_run_id}")
        script = slurm.task_script(options, name=slurm.job_name(spec.sweep_id), n_tasks=len(tasks), header=header,
                                   jobs=jobs, comment=comment)
        slurm.log_dir(options).mkdir(parents=True, exist_ok=True)
        try:
            array_id = slurm.submit(script)
        except slurm.SlurmError as err:  # checked with --test-only, so rare: the parent must not stay RUNNING
            store.end_run(state.parent_run_id, Status.FAILED, f"submission refused by Slurm: {err}")
            raise
        manifest = slurm.Manifest(array_id, "points", [[r.run_key for r in t] for t in tasks])
        # after every live job of the sweep: earlier arrays too, in case their close job was cancelled
        after = [array_id, *sorted({j[0].split("_")[0] for j in live})]
        close_id = _submit_close(store, spec, options, state.parent_run_id, after, metric, say, record=False)
        _record(store, state.parent_run_id, array_id, script, manifest, close_id, launcher=ARRAY)
        return Submission([array_id] + ([close_id] if close_id else []), len(todo), len(pending) - len(todo),
                          len(spec.runs) - len(pending)), state


def _submit_close(store: TrackingStore, spec: SweepSpec, options: slurm.SlurmOptions, parent_run_id: str,
                  after: Sequence[str], metric: str, say: Callable[[str], None], *, record: bool = True) -> str | None:
    """Submit the sweep's close job, to run once every job in ``after`` has ended; its id, or None
    (said) when Slurm refuses it."""
    header = {"mode": "close", "uri": store.uri, "parent_run_id": parent_run_id, "metric": metric}
    slurm.log_dir(options).mkdir(parents=True, exist_ok=True)
    try:
        close_id = slurm.submit(slurm.close_script(
            options, name=slurm.job_name(spec.sweep_id, close=True), after=after, header=header,
            comment=f"closes sweep {spec.name} [{spec.sweep_id}] once its tasks ended"))
    except slurm.SlurmError as err:
        say(f"warning: {err}; the tasks run, and `orch status` closes the sweep once they have ended")
        return None
    if record:
        before = store.get_run(parent_run_id).data.tags.get(Tag.SLURM_JOBS, "")
        store.set_tags(parent_run_id, {Tag.SLURM_JOBS: ",".join([i for i in before.split(",") if i] + [close_id])})
    return close_id


def dry_run_script(spec: SweepSpec, uri: str, options: slurm.SlurmOptions, *, device: str, max_retries: int,
                   storage: str | None = None) -> str:
    """The job script ``orch sweep --launcher slurm`` would submit now (every point; ids unknown)."""
    per = options.runs_per_gpu
    if storage:
        return _worker_script(spec, uri, options, storage, n_tasks=options.array_parallelism or 4, device=device,
                              max_retries=max_retries)
    header = {"mode": "points", "uri": uri, "experiment_id": "<experiment id>", "parent_run_id": "<parent run id>",
              "sweep_id": spec.sweep_id, "per_task": per, "device": device, "max_retries": max_retries,
                  "warn_seconds": slurm.warn_seconds(options),
              "resume": True}
    jobs = [{"name": r.name, "run_key": r.run_key, "config": _config(r),
             "tags": {Tag.KIND: Kind.POINT, Tag.SWEEP: spec.sweep_id, Tag.POINT: r.point_label,
                      Tag.SETTING: r.setting}} for r in spec.runs]
    n_tasks = -(-len(jobs) // per)
    comment = (f"orch sweep {spec.name} [{spec.sweep_id}]: {len(jobs)} point(s), {per} per array task "
               "(finished points are left out at submission)\n"
               f"tracking URI {uri}; a close job (--dependency=afterany:<this job>) writes the summary")
    return slurm.task_script(options, name=slurm.job_name(spec.sweep_id), n_tasks=n_tasks, header=header, jobs=jobs,
                             comment=comment)


def _worker_script(spec: SweepSpec, uri: str, options: slurm.SlurmOptions, storage: str, *, n_tasks: int,
                   device: str, max_retries: int) -> str:
    header = {"mode": "worker", "uri": uri, "storage": storage, "sweep_id": spec.sweep_id,
              "per_task": options.runs_per_gpu, "device": device, "max_retries": max_retries,
                  "warn_seconds": slurm.warn_seconds(options)}
    comment = (f"orch sweep {spec.name} [{spec.sweep_id}]: {n_tasks} orch worker task(s) on the queue "
               f"{storage.split('@')[-1]}")
    opts = slurm.SlurmOptions(**{**options.__dict__, "array_parallelism": None})
    return slurm.task_script(opts, name=slurm.job_name(spec.sweep_id), n_tasks=n_tasks, header=header, jobs=(),
                             comment=comment)


def submit_workers(spec: SweepSpec, store: TrackingStore, options: slurm.SlurmOptions, storage: str, *,
                   rerun: bool = False, device: str = "auto", max_retries: int = 1,
                   say: Callable[[str], None] = print) -> Submission:
    """Queue mode: queue the missing points on PostgreSQL, then K worker tasks (unless enough are live)."""
    from orchestrator.launch import queue

    sub = queue.submit(spec, store, storage, rerun=rerun)
    waiting = sub.enqueued + sub.queued_before
    live = [j for j in slurm.live_jobs(spec.sweep_id) if j[2] == slurm.job_name(spec.sweep_id)]
    k = min(options.array_parallelism or 4, max(waiting, 1))
    if not waiting or len(live) >= k:
        say(f"sweep {spec.name} [{spec.sweep_id}]: {sub.enqueued} point(s) queued, {sub.queued_before} already "
            f"queued, {sub.done} finished; {len(live)} worker task(s) live; no task submitted")
        return Submission([], sub.enqueued, sub.queued_before, sub.done)
    slurm.log_dir(options).mkdir(parents=True, exist_ok=True)
    script = _worker_script(spec, store.uri, options, storage, n_tasks=k - len(live), device=device,
                            max_retries=max_retries)
    job_id = slurm.submit(script)
    parent = store.find_sweep_parent(store.ensure_experiment(spec.name), spec.sweep_id)
    _record(store, parent.info.run_id, job_id, script, slurm.Manifest(job_id, "worker"), None, launcher=QUEUE)
    return Submission([job_id], sub.enqueued, sub.queued_before, sub.done)


def _config(r) -> dict:
    from experiments.config import to_dict

    return to_dict(r.config)


def _record(store: TrackingStore, parent_run_id: str, job_id: str, script: str, manifest: slurm.Manifest,
            close_id: str | None, *, launcher: str) -> None:
    """The job script and its manifest on the parent run; the job ids as a tag."""
    store.log_text(parent_run_id, script, f"{Artifact.SLURM_DIR}/{job_id}.sh")
    store.log_text(parent_run_id, manifest.to_json(), f"{Artifact.SLURM_DIR}/{job_id}.json")
    before = store.get_run(parent_run_id).data.tags.get(Tag.SLURM_JOBS, "")
    ids = [i for i in before.split(",") if i] + [job_id] + ([close_id] if close_id else [])
    store.set_tags(parent_run_id, {Tag.SLURM_JOBS: ",".join(ids), Tag.LAUNCHER: launcher})


# --------------------------------------------------------------------------- closing


def close_if_done(store: TrackingStore, parent, *, by: str, own_job: str = "", metric: str | None = None) -> str:
    """Write the summary and end the parent, if no job of the sweep is left and it is still open.

    ``own_job`` (the caller's Slurm job) does not count as left. A task that is COMPLETING
    does: it may be requeueing itself (see :func:`orchestrator.launch.slurm_task.close`).
    Runs left RUNNING by tasks that are gone are closed FAILED first. Only a sweep
    submitted as Slurm arrays is touched: a local sweep closes itself, and a queued one is
    closed by the worker that ends its last point. Returns what it did.
    """
    from orchestrator.analyze import compare
    from orchestrator.analyze.report import sweep_records
    from orchestrator.analyze.sweep_summary import write_summary

    sweep_id = parent.data.tags[Tag.SWEEP]
    parent = store.get_run(parent.info.run_id)  # fresh: another process may have closed it
    if parent.data.tags.get(Tag.LAUNCHER) != ARRAY:  # a local sweep, or the queue's: closed by their own rules
        return f"sweep [{sweep_id}] is not a Slurm array sweep; left as it is"
    if parent.info.status not in Status.LIVE:
        return f"sweep [{sweep_id}] already closed ({parent.info.status})"
    live = [j for j in slurm.live_jobs(sweep_id) if j[0] != own_job]
    if live:
        if own_job or any(j[2] == slurm.job_name(sweep_id, close=True) for j in live):
            return f"sweep [{sweep_id}]: {len(live)} Slurm job(s) of it still queued or running; its close job closes it"
        return (f"sweep [{sweep_id}]: {len(live)} Slurm job(s) of it still queued or running, and no close job (was it "
                "cancelled?): rerun the sweep to queue one, or run `orch status` again once they have ended")
    exp_id = parent.info.experiment_id
    for run in store.sweep_children(exp_id, sweep_id):
        if run.info.status in Status.LIVE:
            job = run.data.tags.get(Tag.SLURM_JOB, "?")
            store.end_run(run.info.run_id, Status.FAILED, f"its Slurm task {job} ended without closing the run")
    points = read_points(store.download_json(parent.info.run_id, Artifact.POINTS))
    records = sweep_records(store, exp_id, sweep_id, [p.run_key for p in points])
    axes = [k for k in (points[0].point if points else {}) if k != "seed"]
    write_summary(store, parent.info.run_id, records, points, axes, metric or DEFAULT_OBJECTIVE)
    finished = {r.tags.get(Tag.RUN_KEY) for r in compare.select_finished(records)}
    missing = [p.name for p in points if p.run_key not in finished]
    store.set_tags(parent.info.run_id, {Tag.SUMMARIZED_BY: by})
    if missing:
        store.end_run(parent.info.run_id, Status.FAILED,
                      f"{len(missing)} point(s) not finished ({', '.join(missing[:10])}); rerun the sweep to run them")
        return f"sweep [{sweep_id}] closed FAILED: {len(missing)} point(s) not finished; rerun the sweep to run them"
    store.end_run(parent.info.run_id, Status.FINISHED)
    return f"sweep [{sweep_id}] closed FINISHED: summary written on run {parent.info.run_id}"


# --------------------------------------------------------------------------- following (--wait)


@dataclass(frozen=True)
class _JobSlot:
    label: str
    index: int = 0
    gpu: str | None = None


def follow(store: TrackingStore, spec: SweepSpec, experiment_id: str, parent_run_id: str, total: int, display,
           since_ms: int, poll: float = FOLLOW_POLL_SECONDS) -> None:
    """Show the sweep's points starting and ending until no job of the sweep is left in Slurm."""
    from orchestrator.execute.scheduler import Job, Task

    display.start(total, [_JobSlot("slurm")])
    seen: dict[str, str] = {}
    tasks: dict[str, Task] = {}
    try:
        while True:
            live = slurm.live_jobs(spec.sweep_id)
            for run in sorted(store.sweep_children(experiment_id, spec.sweep_id), key=lambda r: r.info.start_time):
                rid, status = run.info.run_id, run.info.status
                if run.info.start_time < since_ms or seen.get(rid) == status:
                    continue
                task = tasks.get(rid)
                if task is None:
                    task = tasks[rid] = Task(Job(run.info.run_name or rid, {}, store.uri, experiment_id, parent_run_id,
                                                 {}), started=run.info.start_time / 1000,
                                             slot=_JobSlot(f"job {run.data.tags.get(Tag.SLURM_JOB, '?')}"))
                    display.started(task)
                if status == Status.FINISHED:
                    task.summary = dict(run.data.metrics)
                    display.finished(task)
                elif status in (Status.FAILED, Status.KILLED):
                    display.failed(task, run.data.tags.get(Tag.FAILURE_REASON, status))
                seen[rid] = status
            if not live:
                return
            display.tick()
            time.sleep(poll)
    finally:
        display.stop()


def wait_and_close(store: TrackingStore, spec: SweepSpec, state, sub: Submission, *, quiet: bool, metric: str,
                   since_ms: int, say: Callable[[str], None]) -> int:
    """``--wait``: follow the jobs, close the sweep if its close job did not, print the table; exit code."""
    from orchestrator.analyze import compare
    from orchestrator.execute.display import make_display
    from orchestrator.analyze.report import sweep_records
    from orchestrator.execute.plan import expected_points

    exp_id = state.experiment_id if state else store.ensure_experiment(spec.name)
    parent = store.find_sweep_parent(exp_id, spec.sweep_id)
    try:
        follow(store, spec, exp_id, parent.info.run_id, sub.points + sub.skipped_live, make_display(quiet), since_ms)
    except KeyboardInterrupt:
        say(f"stopped following; the jobs go on (scancel {' '.join(sub.job_ids) or 'JOBID'} stops them)")
        return ExitCode.INTERRUPTED
    if store.get_run(parent.info.run_id).data.tags.get(Tag.LAUNCHER) == ARRAY:  # the queue's worker closes its own
        say(close_if_done(store, parent, by="orch sweep --wait", metric=metric))
    records = sweep_records(store, exp_id, spec.sweep_id, [r.run_key for r in spec.runs])
    try:
        print(compare.render(compare.compare(records, expected_points(spec), metric), "table"))
    except compare.CompareError:
        pass
    status = store.run_status(parent.info.run_id)
    if status == Status.FINISHED:
        return ExitCode.OK
    say(f"sweep {spec.name} ended {status}: {store.failure_reason(parent.info.run_id) or ''}")
    return ExitCode.FAILED


# --------------------------------------------------------------------------- orch status


def status_rows(store: TrackingStore, parent, *, close: bool = True) -> tuple[list[dict], str | None]:
    """Per point: name, MLflow status, Slurm job (tag), its state in squeue; and what closing did."""
    sweep_id = parent.data.tags[Tag.SWEEP]
    exp_id = parent.info.experiment_id
    from orchestrator.analyze.report import sweep_points

    points = sweep_points(store, parent)  # none recorded: one message, exit 2
    latest: dict[str, Any] = {}
    for run in sorted(store.search([exp_id], f"tags.`{Tag.SWEEP}` = '{sweep_id}'"), key=lambda r: r.info.start_time):
        key = run.data.tags.get(Tag.RUN_KEY)
        if key and run.data.tags.get(Tag.KIND) == Kind.POINT:
            if latest.get(key) is None or latest[key].info.status != Status.FINISHED:
                latest[key] = run
    live = slurm.live_jobs(sweep_id) if _has_squeue() else []
    covered = covered_jobs(store, parent.info.run_id, live)
    states = slurm.job_states([r.data.tags[Tag.SLURM_JOB] for r in latest.values() if Tag.SLURM_JOB in r.data.tags])
    rows = []
    for p in points:
        run = latest.get(p.run_key)
        job = run.data.tags.get(Tag.SLURM_JOB, "") if run is not None else covered.get(p.run_key, "")
        rows.append({"name": p.name, "status": run.info.status if run is not None else ("queued" if job else "missing"),
                     "job": job, "slurm": states.get(job) or next((s for j, s, _ in live if j == job), ""),
                     "run_id": run.info.run_id if run is not None else "",
                     "reason": run.data.tags.get(Tag.FAILURE_REASON, "") if run is not None else ""})
    closed = None
    array = parent.data.tags.get(Tag.LAUNCHER) == ARRAY
    if close and array and _has_squeue() and parent.info.status in Status.LIVE:
        closed = close_if_done(store, parent, by="orch status")
    return rows, closed


def covered_jobs(store: TrackingStore, parent_run_id: str, live: Sequence[tuple[str, str, str]]) -> dict[str, str]:
    """run key -> the live array task (``12_3``) that holds it."""
    out: dict[str, str] = {}
    for job, _, _ in live:
        array, _, index = job.partition("_")
        if not index.isdigit():
            continue
        try:
            data = store.download_json(parent_run_id, f"{Artifact.SLURM_DIR}/{array}.json")
            manifest = slurm.Manifest.from_json(data)
        except Exception:  # noqa: BLE001 - another sweep's job, or no manifest
            continue
        if int(index) < len(manifest.tasks):
            for key in manifest.tasks[int(index)]:
                out[key] = job
    return out


def _has_squeue() -> bool:
    import shutil

    return shutil.which("squeue") is not None


def say_to_stderr(quiet: bool) -> Callable[[str], None]:
    return (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
