"""Multi-machine work queue: a sweep's points as WAITING trials of the Optuna study ``orch-sweep-<id>``.

``orch worker``s claim trials with ``Study.ask()`` (on PostgreSQL a row-locked state change: each
point is claimed exactly once) and keep a heartbeat on each; the next worker to look fails a
dead worker's stale trial, marks its run FAILED and requeues the point. ``ask()`` on an empty
queue makes a fresh trial: a worker that raced to the last point discards it. A claimed point
finished meanwhile is completed with that result, not trained again. The worker that ends a
sweep's last point closes it. Fencing (:mod:`orchestrator.store.claims`): a worker frozen past
the grace period has lost its trial; its point stops without a final state, and the worker
checks the trial before every ``tell``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from orchestrator.errors import ExitCode
from orchestrator.execute import stop
from orchestrator.execute.display import make_display
from orchestrator.execute.job import Job
from orchestrator.execute.plan import Plan, finished_results
from orchestrator.execute.scheduler import PointSource, Scheduler, Stores
from orchestrator.execute.slots import Slot, Task
from orchestrator.store import optuna_storage as storage_mod
from orchestrator.store.schema import Kind, Status, StudyAttr, TrialAttr

if TYPE_CHECKING:
    from orchestrator.grid.load import SweepSpec

log = logging.getLogger(__name__)
STUDY_PREFIX = "orch-sweep-"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _serves(name: str, sweep: str | None) -> bool:
    """Whether the study ``name`` is a queued sweep, and the one asked for (a sweep id prefix)."""
    return name.startswith(STUDY_PREFIX) and (not sweep or name[len(STUDY_PREFIX):].startswith(sweep))


def queued_sweeps(url: str) -> list[str]:
    import optuna

    names = optuna.get_all_study_names(storage_mod.open_storage(url))
    return [n[len(STUDY_PREFIX):] for n in names if n.startswith(STUDY_PREFIX)]


@dataclasses.dataclass
class Submitted:
    study: str
    enqueued: int
    done: int
    queued_before: int


def submit(plan: Plan, jobs: Sequence[Job], url: str, metric: str | None = None) -> Submitted:
    """Queue ``jobs`` but those already there; ``metric``: the closing summary's (None: the runs' first)."""
    import optuna
    from optuna.trial import TrialState

    spec = plan.spec
    study = optuna.create_study(storage=storage_mod.open_storage(url), study_name=STUDY_PREFIX + spec.sweep_id,
                                load_if_exists=True)
    for key, value in {StudyAttr.KIND: Kind.SWEEP, StudyAttr.NAME: spec.name, StudyAttr.SWEEP: spec.sweep_id,
                       StudyAttr.TRACKING_URI: plan.uri, StudyAttr.EXPERIMENT_ID: plan.experiment_id,
                       StudyAttr.PARENT_RUN_ID: plan.parent_run_id, StudyAttr.N_POINTS: len(spec.runs),
                       **({StudyAttr.METRIC: metric} if metric else {})}.items():
        study.set_user_attr(key, value)
    live = {t.user_attrs.get(TrialAttr.RUN_KEY)
            for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))}
    todo = [job for job in jobs if job.run_key not in live]
    for job in todo:
        study.enqueue_trial({}, user_attrs={TrialAttr.RUN_KEY: job.run_key, TrialAttr.NAME: job.name,
                                            TrialAttr.JOB: job.to_dict(), TrialAttr.ATTEMPT: 1})
    return Submitted(study.study_name, len(todo), len(plan.done), len(live - {None}))


class QueueLauncher:
    """The PostgreSQL queue: returns once the points are queued (a point already there stays once)."""

    runs_here = False

    def __init__(self, url: str, metric: str | None = None):
        self.url, self.metric = url, metric

    def setup(self, spec: SweepSpec, uri: str) -> None:
        from orchestrator.analyze.sweep_summary import entry_metric

        self.metric = self.metric or entry_metric(spec.entry)
        if uri.startswith("sqlite:") and storage_mod.is_postgres(self.url):
            log.warning(f"note: workers on other machines cannot reach the SQLite store {uri}; "
                        "use --tracking-uri http://HOST:5000 (an mlflow server) to share runs")

    def launch(self, plan: Plan, jobs: Sequence[Job]) -> int:
        sub = submit(plan, jobs, self.url, self.metric)
        log.info(f"sweep {plan.spec.name} [{plan.spec.sweep_id}]: queued {sub.enqueued} point(s) in study {sub.study} "
                 f"({sub.done} already finished, {sub.queued_before} already queued) at "
                 f"{storage_mod.redact(self.url)}\nstart workers with: orch worker --storage URL")
        return ExitCode.OK

    def close(self) -> None:
        pass


class QueueSource(PointSource):
    """Claims points from a storage's sweep studies; a task's ticket is its ``(study, trial)``, kept
    alive by a heartbeat thread until its outcome ends the trial (``tell``)."""

    def __init__(self, url: str, *, sweep: str | None = None, tracking_uri: str | None = None,
                 max_retries: int = 1):
        self.url, self.sweep, self.tracking_uri = url, sweep, tracking_uri
        self.max_retries = max_retries
        self.storage = storage_mod.open_storage(url, heartbeat=True, on_stale=self._on_stale)
        self.total = None  # a queue does not know how many points will come
        self.beats: dict[int, threading.Event] = {}  # id(trial) -> stops its heartbeat
        self.stores = Stores()

    def studies(self) -> list[Any]:
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
            if TrialAttr.JOB not in attrs:  # raced to an empty queue: a fresh trial, not a point
                trial.set_user_attr(TrialAttr.DISCARDED, True)
                study.tell(trial, state=TrialState.FAIL)
                continue
            trial.set_user_attr(TrialAttr.WORKER, worker_id())
            # from here a worker that dies leaves a trial the reaper requeues
            self.beats[id(trial)] = storage_mod.start_heartbeat(self.storage, trial)
            job = Job.from_dict(attrs[TrialAttr.JOB])
            if self.tracking_uri:
                job = dataclasses.replace(job, uri=self.tracking_uri)
            done = finished_results(self.stores[job.uri], job.experiment_id, [job.run_key]).get(job.run_key)
            if done is not None:  # finished meanwhile, by whoever: its result, never a second run
                self._stop_heartbeat(trial)
                trial.set_user_attr(TrialAttr.RUN_ID, done.info.run_id)
                study.tell(trial, _value(study, done.data.metrics))
                self._maybe_close(study)
                continue
            return Task(job, attempt=int(attrs.get(TrialAttr.ATTEMPT, 1)), ticket=(study, trial),
                        claim={"storage": self.url, "study": study.study_name, "trial_id": storage_mod.trial_id(trial),
                               "run_key": job.run_key})
        return None

    def _let_go(self, task: Task) -> bool:
        """Stop the heartbeat; True when this worker still holds the trial (the reaper may have failed
        it while the worker was frozen). A reaper acting between this check and ``tell`` makes it raise."""
        from optuna.trial import TrialState

        _, trial = task.ticket
        self._stop_heartbeat(trial)
        if self.storage.get_trial(storage_mod.trial_id(trial)).state == TrialState.RUNNING:
            return True
        log.warning(f"{task.name}: this worker lost its claim on the point (its trial was failed as stale and the "
                    "point requeued); the trial is left to the worker that took it over")
        return False

    def unstarted(self) -> list[str]:
        return []  # a claimed point is started at once; the rest stays on the queue for others

    def started(self, task: Task) -> None:
        _, trial = task.ticket
        trial.set_user_attr(TrialAttr.RUN_ID, task.run_id)

    def finished(self, task: Task) -> None:
        study, trial = task.ticket
        if self._let_go(task):
            study.tell(trial, _value(study, task.summary))
            self._maybe_close(study)

    def failed(self, task: Task, reason: str) -> bool:
        from optuna.trial import TrialState

        study, trial = task.ticket
        if not self._let_go(task):
            return False
        trial.set_user_attr(TrialAttr.FAILURE_REASON, reason[:1000])
        study.tell(trial, state=TrialState.FAIL)
        if task.attempt <= self.max_retries:
            _requeue(study, trial, attempt=task.attempt + 1)
            return True
        self._maybe_close(study)
        return False

    def abandon(self, task: Task) -> None:
        from optuna.trial import TrialState

        study, trial = task.ticket
        if self._let_go(task):
            study.tell(trial, state=TrialState.FAIL)
            _requeue(study, trial, attempt=task.attempt)

    def lost(self, task: Task, reason: str) -> None:
        self._stop_heartbeat(task.ticket[1])

    def _stop_heartbeat(self, trial: Any) -> None:
        beat = self.beats.pop(id(trial), None)
        if beat is not None:
            beat.set()

    def _on_stale(self, study, trial) -> None:
        """A worker stopped beating: its run is FAILED (Optuna requeues the point)."""
        run_id = trial.user_attrs.get(TrialAttr.RUN_ID)
        if not run_id:
            return
        uri = self.tracking_uri or study.user_attrs.get(StudyAttr.TRACKING_URI)
        who = trial.user_attrs.get(TrialAttr.WORKER, "a worker")
        try:
            self.stores[uri].end_run(run_id, Status.FAILED,
                                    f"worker {who} stopped sending heartbeats; the point was requeued")
        except Exception as err:  # noqa: BLE001 - the requeue matters more than the record
            log.warning(f"could not mark run {run_id} FAILED ({type(err).__name__}: {err}); the point is requeued")

    def _maybe_close(self, study) -> None:
        """The worker that finishes a sweep's last point writes its summary and closes its parent."""
        from optuna.trial import TrialState

        from orchestrator.launch.sweep import close_sweep

        if study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
            return
        attrs = study.user_attrs
        try:  # this worker's own view of the tracking server (--tracking-uri), else the URI queued with
            close_sweep(self.stores[self.tracking_uri or attrs[StudyAttr.TRACKING_URI]], attrs[StudyAttr.PARENT_RUN_ID],
                        metric=attrs.get(StudyAttr.METRIC))
        except Exception as err:  # noqa: BLE001 - the work is done; the summary can be redone
            log.warning(f"could not write the summary of sweep {study.study_name} ({type(err).__name__}: {err})")


def _value(study: Any, metrics: Mapping[str, float]) -> float:
    """A finished point's trial value: its sweep's metric, else 0."""
    metric = study.user_attrs.get(StudyAttr.METRIC)
    return float(metrics.get(metric, 0.0)) if metric else 0.0


def _requeue(study: Any, trial: Any, *, attempt: int) -> None:
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in (TrialAttr.RUN_ID, TrialAttr.WORKER)}
    attrs[TrialAttr.ATTEMPT] = attempt
    study.enqueue_trial({}, user_attrs=attrs)


def run_worker(url: str, slots: Sequence[Slot], *, sweep: str | None = None, tracking_uri: str | None = None,
               max_retries: int = 1, wait: bool = False, poll: float = 5.0, quiet: bool = False,
               serve_others: Callable[[], bool] | None = None) -> int:
    """Claim and run points on ``slots`` until the queue is empty (forever with ``wait``); the exit code.

    ``serve_others()`` (the tuning studies that want trials) runs before the points, after them and
    while idle; True when it did some."""
    serve = serve_others or (lambda: False)
    source = QueueSource(url, sweep=sweep, tracking_uri=tracking_uri, max_retries=max_retries)
    scheduler = Scheduler(slots=list(slots), display=make_display(quiet), idle_poll=poll if wait else None,
                          on_idle=serve if wait else None)
    with stop.handling():
        try:
            serve()
            outcome = scheduler.run(source)
            if not outcome.interrupted and not wait:
                serve()  # work queued while the points ran
        except stop.Stopped as err:  # e.g. while it ran a tuning trial: 143 for SIGTERM, 130 for Ctrl-C
            return err.exit_code
    if outcome.store_failure:  # its running points went back on the queue
        log.error(f"error: {outcome.store_failure}; the worker started no further point and gave its points back "
                  "to the queue; fix the store and start the worker again")
        return ExitCode.FAILED
    if outcome.interrupted:  # its points checkpointed and went back on the queue at once
        return stop.exit_code(outcome.signal or signal.SIGINT)
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
        latest = {t.user_attrs[TrialAttr.RUN_KEY]: t for t in sorted(trials, key=lambda t: t.number)
                  if t.user_attrs.get(TrialAttr.RUN_KEY)}  # the latest attempt of each point decides its state
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
