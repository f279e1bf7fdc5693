"""``orch tune``: Optuna studies over a grid's ``tune.space``, every trial a nested MLflow run.

One study per setting of the grid: the axes that are not searched (after ``--set``) are
held fixed, and every trial of every study trains with the same seeds, so that trials
differ only by the searched values: ``tune.seeds`` (each trial trains every one and its
value is their mean, :mod:`orchestrator.tune.trial`), by default the grid's first seed
alone (a tuned optimum is then worth checking over seeds with ``orch sweep``). The grid's
entry (``SweepSpec.entry``) builds, checks and trains every trial's config; without a
``tune`` section its default space, less the keys that are grid axes, is searched for its
default metric, maximised; :mod:`orchestrator.grid.space` reads and checks every space, and
:mod:`orchestrator.tune.study` plans and opens the studies.

Each study has one MLflow parent run (kind ``tune``) in the grid's experiment; each trial
runs in this process through :func:`orchestrator.execute.runner.run_tracked` as a child run named
``<study>-t<number>`` whose params are the resolved config, so the searched keys carry the
trial's values (with several seeds that run holds the means, and each seed trains in a
child run ``<study>-t<number>-s<seed>``). The trial reports the value its code logs for
the entry's ``report_metric`` at every step, and the pruner may stop it: the code's
``run.should_stop()`` turns true, and once it returns its run ends KILLED, tagged PRUNED,
and counts as no result for ``orch sweep``/``orch compare``.

Resuming: the study lives in an Optuna storage (default: ``optuna.db`` beside a SQLite
MLflow store) and is loaded by name, so the same command again runs only the trials
still missing, ``n_trials`` minus the COMPLETE and PRUNED trials already in the study
(FAILED trials are retried), under the same parent run. A study that was started with
another metric, direction, fixed config or seeds is refused (exit 2): pick another ``--study``.

Exit codes: 0 done (some trials may have failed: they are part of a search), 1 no trial
of the study completed, 2 bad input (nothing started), 130 Ctrl-C, 143 SIGTERM or SIGUSR1
(:mod:`orchestrator.execute.stop`; the trial that ran is continued by the next ``orch tune``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from orchestrator.errors import ExitCode
from orchestrator.execute import stop
from orchestrator.grid.entry import resolve_entry
from orchestrator.grid.load import SweepSpec, tune_spec
from orchestrator.grid.space import ParamSpace, TuneSpec
from orchestrator.store import optuna_storage as storage_mod
from orchestrator.store.schema import Kind, Status, StudyAttr, Tag, TrialAttr, TrialState
from orchestrator.store.tracking import TrackingStore
from orchestrator.tune.study import (
    StudyPlan,
    fail_orphan_trials,
    fixed_config,
    make_pruner,
    make_sampler,
    open_parent,
    open_study,
    plan_studies,
    requeue_stopped_trials,
)
from orchestrator.tune.summary import summarize_study
from orchestrator.tune.trial import make_objective, step_label

__all__ = ["DEFAULT_N_TRIALS", "WorkerJob", "run_tune", "serve_studies"]

log = logging.getLogger(__name__)

DEFAULT_N_TRIALS = 20
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)  # trials that count towards n_trials


@dataclass(frozen=True)
class WorkerJob:
    """What an ``orch worker`` needs to join a tuning study, stored with the study.

    Written by ``orch tune`` as one user attribute of the study (:meth:`to_attr`) and
    read back by :func:`serve_studies` (:meth:`from_attr`): the one serialisation.
    """

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    metric: str
    space: tuple[ParamSpace, ...]
    n_trials: int
    study: str
    setting: str
    sampler: str
    pruner: str
    seed: int  # the sampler's
    seeds: tuple[int, ...] = ()  # every trial trains each; () in jobs stored before tune.seeds: the fixed seed
    entry: dict = dataclasses.field(default_factory=dict)  # resolve_entry(**entry): {} is the built-in study

    def to_attr(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))

    @classmethod
    def from_attr(cls, attr: Mapping[str, Any]) -> WorkerJob:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in attr.items() if k in fields}
        values["space"] = tuple(ParamSpace(**{**p, "choices": tuple(p["choices"]) if p.get("choices") else None})
                                for p in attr["space"])
        values["seeds"] = tuple(attr.get("seeds") or ())
        return cls(**values)


# ---------------------------------------------------------------- running


def run_tune(
    spec: SweepSpec,
    store: TrackingStore,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    device: str = "auto",
    quiet: bool = False,  # noqa: ARG001 - progress goes to this module's logger, whose level --quiet sets
) -> int:
    """Tune ``spec``'s search space, one study per setting; returns the exit code.

    Args:
        spec: a loaded grid (``--set`` already applied); every trial trains its ``tune.seeds``
            (default: its first seed).
        store: the MLflow tracking store (reachable).
        n_trials: trials per study, counting COMPLETE and PRUNED trials already in a resumed
            study (default: the grid's ``tune.n_trials``, else 20).
        timeout: stop starting trials after this many seconds, over all studies together.
        storage: Optuna storage URL, checked (:func:`orchestrator.store.optuna_storage.check`);
            default: ``optuna.db`` beside a SQLite MLflow store, checked here.
        study_name: ``--study``; with several settings each study gets ``-<setting>`` appended.
        sampler: ``tpe`` or ``random``, seeded with the grid's first seed (plus the number of
            trials already in a resumed study, so that it draws new points).
        pruner: ``median``, ``hyperband`` or ``none``.

    Raises:
        UserError: an unusable storage URL, an unknown metric, sampler or pruner, or a
            stored study that optimises something else (all found before anything starts).
    """
    tune = tune_spec(spec)
    n_trials = n_trials or tune.n_trials or DEFAULT_N_TRIALS
    make_sampler(sampler, spec.seeds[0], n_trials)  # refuses an unknown name before anything starts
    url = storage or storage_mod.check(storage_mod.default_storage(store.uri))
    # what every study's job shares; its study, parent and experiment are filled in as they open
    template = WorkerJob(tracking_uri=store.uri, experiment_id="", parent_run_id="", metric=tune.metric,
                         space=tune.space, n_trials=n_trials, study="", setting="", sampler=sampler, pruner=pruner,
                         seed=spec.seeds[0], seeds=tuple(tune.seeds or spec.seeds[:1]), entry=dict(spec.entry.spec))
    # SQLite serves one process: a second orch tune would overshoot n_trials
    with tuning_held(url, refuse=True), stop.handling():
        return _run_studies(spec, store, tune, template, url, study_name, timeout=timeout, device=device)


@contextlib.contextmanager
def tuning_held(url: str, *, refuse: bool) -> Iterator[bool]:
    """Hold a SQLite storage's tuning for the block; True when held (always with PostgreSQL).
    SQLite serves one process: two would each start trials up to ``n_trials`` and finish more
    than were asked; several processes tune one study through PostgreSQL.
    Another process holding it: :class:`orchestrator.store.locks.SweepBusy` with ``refuse``, else False
    (an ``orch worker`` then leaves the study to that process)."""
    if not url.startswith("sqlite:"):
        yield True
        return
    from orchestrator.store import locks

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locks.hold(url, "orch tune", refusal=lambda who: (
                f"the Optuna storage {url} is in use by {who}; SQLite serves one process: wait for it to end, "
                "or tune with several processes through --storage postgresql://…")))
        except locks.SweepBusy:
            if refuse:
                raise
            held = False
        else:
            held = True
        yield held


def _run_studies(spec: SweepSpec, store: TrackingStore, tune: TuneSpec, template: WorkerJob, url: str,
                 study_name: str | None, *, timeout: float | None, device: str) -> int:
    """Open every study, then run each in turn under its parent run. A stop, wherever it lands
    (in a trial, between trials, while a summary is written), ends the open parent KILLED
    here and nowhere else."""
    deadline = time.monotonic() + timeout if timeout else None
    settings = {Tag.SAMPLER: template.sampler, Tag.PRUNER: template.pruner, Tag.N_TRIALS: str(template.n_trials),
                Tag.SEED: str(template.seed), Tag.SEEDS: ",".join(map(str, template.seeds))}
    code, parent_id = ExitCode.OK, None
    try:
        studies = _open_studies(url, spec, tune, study_name, template)  # checked before any MLflow run exists
        template = dataclasses.replace(template, experiment_id=store.ensure_experiment(spec.name))
        for plan, fixed, study in studies:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                log.info(f"[{plan.name}] not started: --timeout reached; rerun to continue")
                continue
            parent_id = None
            parent_id, resumed = open_parent(store, template.experiment_id, plan, spec, tune,
                                             storage_mod.redact(url), settings)
            job = dataclasses.replace(template, parent_run_id=parent_id, study=plan.name, setting=plan.setting)
            code = max(code, _run_study(study, plan, fixed, tune, store, job, resumed=resumed, timeout=left,
                                        device=device))
    except stop.Stopped as err:  # no summary: a second signal would cut it short; the next run writes it
        if parent_id is not None and store.run_status(parent_id) in Status.LIVE:
            store.end_run(parent_id, Status.KILLED, err.reason)
        log.info(f"{err.reason}; rerun the same command to resume (a trial it stopped continues from its "
                 "checkpoint)")
        return err.exit_code
    return code


def _open_studies(url: str, spec: SweepSpec, tune: TuneSpec, study_name: str | None,
                  job: WorkerJob) -> list[tuple[StudyPlan, dict[str, Any], Any]]:
    """Every study of the grid, created or loaded and checked."""
    optuna_storage = storage_mod.open_storage(url, heartbeat=True)
    studies = []
    for plan in plan_studies(spec, study_name, seed=job.seeds[0]):
        fixed = fixed_config(plan, tune.space)
        study = open_study(optuna_storage, plan, tune, fixed, make_sampler(job.sampler, job.seed, job.n_trials),
                           make_pruner(job.pruner, _max_steps(plan, len(job.seeds))), spec.path)
        # A resumed study must not replay the first session's random draws: offset the seed
        # by the trials it already has (0 for a new study, so a new study's draws are the seed's).
        n_before = len(study.get_trials(deepcopy=False))
        if n_before:
            study.sampler = make_sampler(job.sampler, job.seed + n_before, job.n_trials)
        studies.append((plan, fixed, study))
    return studies


def _optimize(study: Any, plan: StudyPlan, fixed: Mapping[str, Any], tune: TuneSpec, store: TrackingStore,
              job: WorkerJob, *, remaining: int, timeout: float | None, device: str) -> None:
    """Run trials of ``study`` in this process until it has ``job.n_trials`` finished ones
    (counted over every process on the study).

    Raises:
        Stopped: a signal stopped them; one whose exception Python dropped (in a finalizer)
            still stops them after the current trial.
    """
    import optuna

    with stop.handling() as flag:  # this process's flag: the caller's, or the worker's scheduler's
        if remaining and not flag.is_set():
            objective = make_objective(plan, fixed, tune, store, job.experiment_id, job.parent_run_id, job.seeds,
                                       device, stop=flag)
            with warnings.catch_warnings(), _quiet_expected_failures():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(
                    objective, n_trials=remaining, timeout=timeout, catch=(Exception,),
                    # Several processes on one PostgreSQL study stop at n_trials together.
                    callbacks=[optuna.study.MaxTrialsCallback(job.n_trials, states=_finished()),
                               _progress(plan, tune, len(job.seeds)),
                               lambda study, t: study.stop() if flag.is_set() else None],
                    gc_after_trial=False,
                )
        if flag.is_set():
            raise stop.Stopped(flag.signum)


def _progress(plan: StudyPlan, tune: TuneSpec, n_seeds: int) -> Callable[[Any, Any], None]:
    """The study callback that logs one line per trial."""
    from optuna.trial import TrialState as OptunaState

    def progress(study: Any, t: Any) -> None:
        params = "  ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else 0.0
        if t.state == OptunaState.COMPLETE:
            what = f"COMPLETE {tune.metric} {t.value:.4f}"
        elif t.state == OptunaState.PRUNED:
            step = max(t.intermediate_values) if t.intermediate_values else None
            where = step_label(step, plan.entry.max_steps(plan.config), n_seeds) if step is not None else "?"
            what = f"PRUNED at {where}"
        else:
            what = t.state.name
        log.info(f"[{plan.name}] trial {t.number:>3} {what:<32} {params}  {secs:.1f}s")
        if t.state == OptunaState.FAIL and TrialAttr.FAILURE_REASON in t.user_attrs:
            log.info(f"[{plan.name}]   {t.user_attrs[TrialAttr.FAILURE_REASON]}")

    return progress


def _max_steps(plan: StudyPlan, n_seeds: int) -> int | None:
    """The last step a trial reports (the pruner's max resource), None when the entry cannot say."""
    steps = plan.entry.max_steps(plan.config)
    return steps * n_seeds if steps else None


def _finished() -> tuple:
    from optuna.trial import TrialState as OptunaState

    return tuple(getattr(OptunaState, s) for s in FINISHED_STATES)


def _n_finished(study: Any) -> int:
    return len(study.get_trials(deepcopy=False, states=_finished()))


def _run_study(study: Any, plan: StudyPlan, fixed: Mapping[str, Any], tune: TuneSpec, store: TrackingStore,
               job: WorkerJob, *, resumed: bool, timeout: float | None, device: str) -> int:
    """The study's missing trials, then its summary on the parent, which ends FINISHED (or FAILED
    when no trial completed)."""
    orphans = fail_orphan_trials(store, study)
    if orphans:
        log.info(f"[{plan.name}] trial(s) {', '.join(map(str, orphans))} were left RUNNING by a dead process: now FAIL")
    requeued = requeue_stopped_trials(store, study, len(job.seeds))
    if requeued:
        log.info(f"[{plan.name}] trial(s) {', '.join(map(str, requeued))} stopped with a checkpoint: each continues "
                 "as the next trial, with its params")
    already = _n_finished(study)
    remaining = max(0, job.n_trials - already)
    log.info(f"[{plan.name}] {job.n_trials} trials of {tune.direction} {tune.metric}: {already} already finished, "
             f"{remaining} to run{' (resumed)' if resumed else ''}")
    study.set_user_attr(StudyAttr.WORKER_JOB, job.to_attr())  # what an `orch worker` needs to join it
    _optimize(study, plan, fixed, tune, store, job, remaining=remaining, timeout=timeout, device=device)
    counts = summarize_study(store, job.parent_run_id, study, tune.metric)
    line = (f"study {plan.name}: {sum(counts.values())} trials ({counts[TrialState.COMPLETE]} complete, "
            f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed)")
    if counts[TrialState.COMPLETE]:
        best = study.best_trial
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
        print(f"{line}; best {tune.metric} {best.value:.4f} (trial {best.number}): {params}", flush=True)
        store.end_run(job.parent_run_id, Status.FINISHED)
        return ExitCode.OK
    print(f"{line}; no trial completed", flush=True)
    store.end_run(job.parent_run_id, Status.FAILED, "no trial completed")
    return ExitCode.FAILED


def serve_studies(storage: Any, *, tracking_uri: str | None = None, device: str = "auto",
                  quiet: bool = False) -> int:  # noqa: ARG001 - --quiet sets this module's logger's level
    """``orch worker``'s share of tuning: join every ``orch tune`` study of the storage that
    still wants trials and run trials of it here until it has its ``n_trials``.

    The study, its MLflow parent and what a trial needs (:class:`WorkerJob`, the fixed
    config) were stored by ``orch tune``; Optuna's heartbeat on the storage fails the
    trials of a worker that dies. ``storage``: an open Optuna storage
    (:func:`orchestrator.store.optuna_storage.open_storage` with ``heartbeat=True``). Returns how many
    studies this call joined. A signal checkpoints the running trial's training, as in
    ``orch tune``, and raises :class:`~orchestrator.execute.stop.Stopped` to the caller.
    """
    import optuna

    joined = 0
    stores: dict[str, TrackingStore] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attr = summary.user_attrs.get(StudyAttr.WORKER_JOB)
        if summary.user_attrs.get(StudyAttr.KIND) != Kind.TUNE or not attr:
            continue
        job = WorkerJob.from_attr(attr)
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        finished = _n_finished(study)
        if finished >= job.n_trials:
            continue
        fixed = study.user_attrs[StudyAttr.FIXED_CONFIG]
        entry = resolve_entry(**job.entry)
        job = dataclasses.replace(job, seeds=job.seeds or (int(fixed.get("seed", 0)),))
        tune = TuneSpec(metric=job.metric, direction=study.direction.name.lower(), n_trials=job.n_trials,
                        space=job.space, seeds=job.seeds)
        plan = StudyPlan(name=summary.study_name, setting=job.setting, config=entry.build(fixed), entry=entry)
        # Seeded apart from every other process on the study: it has drawn this many trials.
        study.sampler = make_sampler(job.sampler, job.seed + len(study.get_trials(deepcopy=False)), job.n_trials)
        study.pruner = make_pruner(job.pruner, _max_steps(plan, len(job.seeds)))
        uri = tracking_uri or job.tracking_uri
        store = stores.setdefault(uri, TrackingStore(uri))
        log.info(f"[{plan.name}] joining the tuning study: {finished}/{job.n_trials} trials finished")
        joined += 1
        _optimize(study, plan, fixed, tune, store, job, remaining=job.n_trials - finished, timeout=None,
                  device=device)
        # This worker may have run the study's last trial: bring the parent's summary up to date.
        counts = summarize_study(store, job.parent_run_id, study, tune.metric)
        if counts[TrialState.COMPLETE]:
            store.end_run(job.parent_run_id, Status.FINISHED)
    return joined


@contextlib.contextmanager
def _quiet_expected_failures():
    """Drop Optuna's report of a TrialFailed (the progress line gives its reason) or of an
    interrupt, and its redundant "failed with value None"; any other exception in a trial
    is unexpected and keeps Optuna's report with the traceback."""
    logger = logging.getLogger("optuna.study._optimize")

    def keep(record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(s in msg for s in ("TrialFailed(", "KeyboardInterrupt(", "Stopped(",
                                          "failed with value None"))

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
