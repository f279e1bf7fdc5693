"""Multi-machine work queue: a sweep's points as waiting trials of an Optuna study.

``orch sweep GRID --storage postgresql://…`` enqueues every point that has no FINISHED run
yet as a WAITING trial of the study ``orch-sweep-<sweep id>`` (its user attributes carry
the point's resolved config and MLflow placement) and returns. ``orch worker`` on any
number of machines claims trials through ``Study.ask()``: on PostgreSQL the claim is a
row-locked state change, so each point is claimed exactly once. A worker keeps a
heartbeat on each trial it runs; when a worker dies, the next worker to look fails the
stale trial, marks its MLflow run FAILED and requeues the point (Optuna's
RetryHeartbeatStaleTrialCallback).

``ask()`` on a study with no waiting trial makes a fresh, empty trial; a worker that raced
another to the last point gets one of those, recognises it (no ``orch.run_key``) and
discards it. A claimed point whose run key already has a finished result (another worker,
a sweep or ``orch run --resume`` finished it meanwhile) is completed with that result, not
trained again.

Fencing (:mod:`orchestrator.store.claims`): a worker that was frozen past the grace period (a
paused VM, SIGSTOP) has lost its trial to the reaper. Its point process, thawed, finds that
out at its next epoch, checkpoint or end and stops without a final state; the worker checks
the trial before every ``tell`` and leaves a trial it no longer holds to its new owner.
"""

from __future__ import annotations

import os
import socket
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from experiments.metric_names import DEFAULT_OBJECTIVE
from orchestrator.store import optuna_storage as storage_mod
from orchestrator.execute.display import make_display
from orchestrator.errors import ExitCode
from orchestrator.grid.load import SweepSpec
from orchestrator.execute.scheduler import Job, PointSource, Scheduler, Slot, Task
from orchestrator.store.schema import (Artifact, Kind, Status, StudyAttr, Tag, TrialAttr, is_finished_result, read_points,
                                 tag_filter)
from orchestrator.store.tracking import TrackingStore

STUDY_PREFIX = "orch-sweep-"


def study_name(sweep_id: str) -> str:
    return f"{STUDY_PREFIX}{sweep_id}"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _serves(name: str, sweep: str | None) -> bool:
    """Whether the study ``name`` is a queued sweep, and the one asked for (a sweep id prefix)."""
    return name.startswith(STUDY_PREFIX) and (not sweep or name[len(STUDY_PREFIX):].startswith(sweep))


def queued_sweeps(url: str) -> list[str]:
    """The ids of the sweeps queued in storage ``url``."""
    import optuna

    names = optuna.get_all_study_names(storage_mod.open_storage(url))
    return [n[len(STUDY_PREFIX):] for n in names if n.startswith(STUDY_PREFIX)]


@dataclass
class Submitted:
    study: str
    enqueued: int
    done: int
    queued_before: int


def submit(spec: SweepSpec, store: TrackingStore, url: str, *, rerun: bool = False) -> Submitted:
    """Put the sweep's unfinished points on the queue (idempotent: queued points stay once)."""
    import optuna
    from optuna.trial import TrialState

    from orchestrator.launch.sweep import open_sweep

    state = open_sweep(store, spec, rerun=rerun)
    storage = storage_mod.open_storage(url)
    study = optuna.create_study(storage=storage, study_name=study_name(spec.sweep_id), load_if_exists=True)
    for key, value in {
        StudyAttr.KIND: Kind.SWEEP,
        StudyAttr.NAME: spec.name,
        StudyAttr.SWEEP: spec.sweep_id,
        StudyAttr.TRACKING_URI: store.uri,
        StudyAttr.EXPERIMENT_ID: state.experiment_id,
        StudyAttr.PARENT_RUN_ID: state.parent_run_id,
        StudyAttr.N_POINTS: len(spec.runs),
    }.items():
        study.set_user_attr(key, value)
    live = {t.user_attrs.get(TrialAttr.RUN_KEY)
            for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))}
    enqueued = 0
    for r in state.pending:
        if r.run_key in live:
            continue
        job = Job.from_spec(r, uri=store.uri, experiment_id=state.experiment_id, parent_run_id=state.parent_run_id,
                            sweep_id=spec.sweep_id)
        study.enqueue_trial({}, user_attrs={TrialAttr.RUN_KEY: r.run_key, TrialAttr.NAME: job.name,
                                            TrialAttr.CONFIG: job.config, TrialAttr.TAGS: job.tags,
                                            TrialAttr.ATTEMPT: 1})
        enqueued += 1
    return Submitted(study.study_name, enqueued, len(state.done), len(live - {None}))


class QueueSource(PointSource):
    """Claims points from the sweep studies of a storage, one trial at a time.

    A task's ticket is its ``(study, trial)``. While a task runs, a heartbeat thread keeps
    its trial alive; every outcome ends the trial (``tell``) and stops the heartbeat.
    """

    def __init__(self, url: str, *, sweep: str | None = None, tracking_uri: str | None = None,
                 max_retries: int = 1):
        self.url, self.sweep, self.tracking_uri = url, sweep, tracking_uri
        self.max_retries = max_retries
        self.storage = storage_mod.open_storage(url, heartbeat=True, on_stale=self._on_stale)
        self.total = None  # a queue does not know how many points will come
        self.beats: dict[int, threading.Event] = {}  # id(trial) -> stops its heartbeat
        self._stores: dict[str, TrackingStore] = {}

    def studies(self) -> list[Any]:
        """The sweep studies this worker serves, in name order."""
        import optuna

        names = [s.study_name for s in optuna.get_all_study_summaries(self.storage, include_best_trial=False)]
        return [optuna.load_study(study_name=n, storage=self.storage) for n in sorted(names) if _serves(n, self.sweep)]

    def claim(self) -> Task | None:
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        for study in self.studies():
            fail_stale_trials(study)
            if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                continue
            trial = study.ask()
            attrs = trial.user_attrs
            if TrialAttr.RUN_KEY not in attrs:  # raced to an empty queue: a fresh trial, not a point
                trial.set_user_attr(TrialAttr.DISCARDED, True)
                study.tell(trial, state=TrialState.FAIL)
                continue
            trial.set_user_attr(TrialAttr.WORKER, worker_id())
            self._start_heartbeat(trial)  # from here a worker that dies leaves a trial the reaper requeues
            uri = self.tracking_uri or study.user_attrs[StudyAttr.TRACKING_URI]
            exp_id = study.user_attrs[StudyAttr.EXPERIMENT_ID]
            done = self._finished_run(uri, exp_id, attrs[TrialAttr.RUN_KEY])
            if done is not None:  # finished meanwhile, by whoever: its result, never a second run
                self.beats.pop(id(trial)).set()
                trial.set_user_attr(TrialAttr.RUN_ID, done.info.run_id)
                study.tell(trial, float(done.data.metrics.get(DEFAULT_OBJECTIVE, 0.0)))
                self._maybe_close(study)
                continue
            job = Job(attrs[TrialAttr.NAME], attrs[TrialAttr.CONFIG], uri, exp_id,
                      study.user_attrs[StudyAttr.PARENT_RUN_ID], dict(attrs[TrialAttr.TAGS]))
            return Task(job, attempt=int(attrs.get(TrialAttr.ATTEMPT, 1)), ticket=(study, trial),
                        claim={"storage": self.url, "study": study.study_name, "trial_id": storage_mod.trial_id(trial),
                               "run_key": attrs[TrialAttr.RUN_KEY]})
        return None

    def _finished_run(self, uri: str, experiment_id: str, key: str):
        """A finished result of run key ``key`` (:func:`orchestrator.store.schema.is_finished_result`), or None."""
        runs = self.store(uri).search([experiment_id], f"{tag_filter(Tag.RUN_KEY, key)} and "
                                                       f"attributes.status = '{Status.FINISHED}'")
        return next((r for r in runs if is_finished_result(r.info.status, r.data.tags)), None)

    def _holds(self, task: Task) -> bool:
        """Whether this worker still holds the task's trial (the reaper fails a trial whose
        heartbeat went silent, e.g. while this worker was frozen, and requeues its point).
        Check, then tell: a reaper acting between the two makes ``tell`` raise, as before."""
        from optuna.trial import TrialState

        _, trial = task.ticket
        if self.storage.get_trial(storage_mod.trial_id(trial)).state == TrialState.RUNNING:
            return True
        self._stop_heartbeat(task)
        print(f"{task.name}: this worker lost its claim on the point (its trial was failed as stale and the "
              "point requeued); the trial is left to the worker that took it over", file=sys.stderr, flush=True)
        return False

    def exhausted(self) -> bool:
        return False  # points may be queued or requeued at any time, by any machine

    def unstarted(self) -> list[str]:
        return []  # a claimed point is started at once; the rest stays on the queue for others

    def _start_heartbeat(self, trial: Any) -> None:
        self.beats[id(trial)] = storage_mod.start_heartbeat(self.storage, trial)

    def _stop_heartbeat(self, task: Task) -> None:
        _, trial = task.ticket
        stop = self.beats.pop(id(trial), None)
        if stop is not None:
            stop.set()

    def started(self, task: Task) -> None:
        _, trial = task.ticket
        trial.set_user_attr(TrialAttr.RUN_ID, task.run_id)

    def finished(self, task: Task) -> None:
        study, trial = task.ticket
        if not self._holds(task):
            return
        self._stop_heartbeat(task)
        study.tell(trial, float(task.summary.get(DEFAULT_OBJECTIVE, 0.0)))
        self._maybe_close(study)

    def failed(self, task: Task, reason: str) -> bool:
        from optuna.trial import TrialState

        study, trial = task.ticket
        if not self._holds(task):
            return False
        self._stop_heartbeat(task)
        trial.set_user_attr(TrialAttr.FAILURE_REASON, reason[:1000])
        study.tell(trial, state=TrialState.FAIL)
        if task.attempt <= self.max_retries:
            _requeue(study, trial, attempt=task.attempt + 1)
            return True
        self._maybe_close(study)
        return False

    def abandon(self, task: Task) -> None:
        """Interrupted: give the point back to the queue for another worker."""
        from optuna.trial import TrialState

        study, trial = task.ticket
        if not self._holds(task):
            return
        self._stop_heartbeat(task)
        study.tell(trial, state=TrialState.FAIL)
        _requeue(study, trial, attempt=task.attempt)

    def lost(self, task: Task, reason: str) -> None:
        """Another worker took the point over: its trial is the reaper's and the new owner's."""
        self._stop_heartbeat(task)

    def _on_stale(self, study, trial) -> None:
        """A worker stopped beating: its MLflow run is FAILED (the point is requeued by Optuna)."""
        run_id = trial.user_attrs.get(TrialAttr.RUN_ID)
        if not run_id:
            return
        uri = self.tracking_uri or study.user_attrs.get(StudyAttr.TRACKING_URI)
        who = trial.user_attrs.get(TrialAttr.WORKER, "a worker")
        try:
            self.store(uri).end_run(run_id, Status.FAILED,
                                    f"worker {who} stopped sending heartbeats; the point was requeued")
        except Exception as err:  # noqa: BLE001 - the requeue matters more than the record
            print(f"could not mark run {run_id} FAILED ({type(err).__name__}: {err}); the point is requeued",
                  file=sys.stderr, flush=True)

    def store(self, uri: str) -> TrackingStore:
        if uri not in self._stores:
            self._stores[uri] = TrackingStore(uri)
        return self._stores[uri]

    def _maybe_close(self, study) -> None:
        """The worker that finishes a sweep's last point writes its summary and closes its parent."""
        from optuna.trial import TrialState

        live = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        if live:
            return
        try:
            attrs = study.user_attrs
            close_sweep(study, self.store(self.tracking_uri or attrs[StudyAttr.TRACKING_URI]))
        except Exception as err:  # noqa: BLE001 - the work is done; the summary can be redone
            print(f"could not write the summary of sweep {study.study_name} ({type(err).__name__}: {err})",
                  file=sys.stderr, flush=True)


def close_sweep(study, store: TrackingStore) -> None:
    """Write the sweep's summary on its parent run and end it (FAILED when points are missing).

    ``store`` is the worker's own view of the tracking server (``--tracking-uri``, else
    the URI recorded at submission).
    """
    from orchestrator.analyze import compare
    from orchestrator.launch.sweep import summarize_records, sweep_records

    attrs = study.user_attrs
    exp_id, parent = attrs[StudyAttr.EXPERIMENT_ID], attrs[StudyAttr.PARENT_RUN_ID]
    points = read_points(store.download_json(parent, Artifact.POINTS))
    records = sweep_records(store, exp_id, attrs[StudyAttr.SWEEP], [p.run_key for p in points])
    summarize_records(store, parent, records, points, axes=_axes(points), metric=DEFAULT_OBJECTIVE)
    finished = {r.tags.get(Tag.RUN_KEY) for r in compare.select_finished(records)}
    complete = all(p.run_key in finished for p in points)
    store.end_run(parent, Status.FINISHED if complete else Status.FAILED, None if complete else "some points failed")


def _axes(points: Sequence[Any]) -> list[str]:
    return [k for k in (points[0].point if points else {}) if k != "seed"]


def _requeue(study: Any, trial: Any, *, attempt: int) -> None:
    """Put a point back on the queue as a new WAITING trial with the same job."""
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in (TrialAttr.RUN_ID, TrialAttr.WORKER)}
    attrs[TrialAttr.ATTEMPT] = attempt
    study.enqueue_trial({}, user_attrs=attrs)


def run_worker(url: str, slots: Sequence[Slot], *, sweep: str | None = None, tracking_uri: str | None = None,
               device: str = "auto", max_retries: int = 1, wait: bool = False, poll: float = 5.0,
               quiet: bool = False, stopped: list[int] | None = None) -> int:
    """Claim and run points on ``slots`` (:func:`orchestrator.execute.scheduler.plan_slots`) until the
    queue is empty (or forever with ``wait``); exit code. Their point processes start now,
    unless the caller has started them already (:func:`orchestrator.execute.slots.prewarm`).

    ``stopped`` receives the signal that stopped the worker, if one did (a Slurm task
    requeues itself after SIGUSR1, its time-limit warning).

    Without ``--sweep``, the worker also joins the ``orch tune`` studies of the storage that
    still want trials (before the sweep points, after them, and whenever it is idle).
    """
    from orchestrator.execute import slots as point_processes
    from orchestrator.tune import tuning

    with point_processes.started_ahead(slots):  # their imports run while this process opens the queue
        tune_storage = None if sweep is not None else storage_mod.open_storage(url, heartbeat=True)

        def serve_tuning() -> bool:
            if tune_storage is None:
                return False
            with tuning.tuning_held(url, refuse=False) as held:  # SQLite: not beside an orch tune on it
                return held and tuning.serve_studies(tune_storage, tracking_uri=tracking_uri, device=device,
                                                     quiet=quiet) > 0

        source = QueueSource(url, sweep=sweep, tracking_uri=tracking_uri, max_retries=max_retries)
        scheduler = Scheduler(slots=slots, display=make_display(quiet), idle_poll=poll if wait else None,
                              on_idle=serve_tuning if wait else None)
        try:
            serve_tuning()
            outcome = scheduler.run(source)
            if not outcome.interrupted and not wait:
                serve_tuning()  # studies queued while the points ran
        except KeyboardInterrupt as err:  # e.g. while it ran a tuning trial: 143 for SIGTERM, 130 for Ctrl-C
            from orchestrator.execute.runner import interrupt_signal, stop_exit_code

            return stop_exit_code(interrupt_signal(err))
        if outcome.store_failure:  # its running points went back on the queue
            print(f"error: {outcome.store_failure}; the worker started no further point and gave its points back "
                  "to the queue; fix the store and start the worker again", file=sys.stderr, flush=True)
            return ExitCode.FAILED
        if outcome.interrupted:  # its points checkpointed and went back on the queue at once
            if stopped is not None and outcome.signal is not None:
                stopped.append(outcome.signal)
            return ExitCode.PREEMPTED if outcome.signal in (signal.SIGTERM, signal.SIGUSR1) else ExitCode.INTERRUPTED
        return ExitCode.FAILED if outcome.failed else ExitCode.OK


def register_worker(url: str, *, stale_after: float) -> None:
    """On SQLite, refuse a second live worker: SQLite cannot claim exactly once."""
    import optuna

    storage = storage_mod.open_storage(url)
    study = optuna.create_study(storage=storage, study_name="orch-workers", load_if_exists=True)
    now = time.time()
    others = {k: v for k, v in study.user_attrs.items() if k != worker_id() and now - float(v) < stale_after}
    if others:
        raise storage_mod.StorageError(
            f"storage {url}: another worker ({', '.join(others)}) is using this SQLite queue; SQLite cannot hand "
            "out points exactly once to several workers. Use a PostgreSQL storage for parallel workers"
        )
    study.set_user_attr(worker_id(), now)


def status_rows(url: str, sweep: str | None = None) -> list[dict]:
    """Per sweep study: pending, running (worker, since), done, failed counts."""
    import optuna
    from optuna.trial import TrialState

    storage = storage_mod.open_storage(url)
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        name = summary.study_name
        if not _serves(name, sweep):
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(TrialAttr.DISCARDED)]
        latest: dict[str, Any] = {}
        for t in trials:  # the latest attempt of each point decides its state
            key = t.user_attrs.get(TrialAttr.RUN_KEY)
            if key and (key not in latest or t.number > latest[key].number):
                latest[key] = t
        by_state = {s: [t for t in latest.values() if t.state == s] for s in TrialState}
        rows.append({
            "sweep": name[len(STUDY_PREFIX):],
            "name": study.user_attrs.get(StudyAttr.NAME, ""),
            "pending": len(by_state[TrialState.WAITING]),
            "running": [(t.user_attrs.get(TrialAttr.NAME), t.user_attrs.get(TrialAttr.WORKER, "?"), t.datetime_start)
                        for t in by_state[TrialState.RUNNING]],
            "done": len(by_state[TrialState.COMPLETE]),
            "failed": [(t.user_attrs.get(TrialAttr.NAME), t.user_attrs.get(TrialAttr.FAILURE_REASON, ""))
                       for t in by_state[TrialState.FAIL]],
            "points": study.user_attrs.get(StudyAttr.N_POINTS, len(latest)),
        })
    return rows
