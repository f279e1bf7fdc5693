"""``orch tune``: one Optuna study per setting of the grid over its ``tune.space``, every trial a
nested MLflow run. Trials of a study differ only by the searched values: each trains the same
``tune.seeds`` (default: the grid's first seed; :mod:`orchestrator.tune.trial`). Rerunning the same
command resumes: the study is loaded by name and only the missing trials run (``n_trials`` minus
COMPLETE and PRUNED); a study started with another metric, direction, fixed config or seeds is
refused (exit 2). Exit codes: 0 done, 1 no trial completed, 2 bad input, 130/143 stopped by a signal.
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
from orchestrator.execute.scheduler import Stores
from orchestrator.grid.entry import resolve_entry
from orchestrator.grid.load import SweepSpec, tune_spec
from orchestrator.grid.space import ParamSpace, TuneSpec
from orchestrator.store import locks
from orchestrator.store import optuna_storage as storage_mod
from orchestrator.store.schema import Kind, Status, StudyAttr, Tag, TrialAttr, TrialState
from orchestrator.store.tracking import TrackingStore
from orchestrator.tune.study import (
    StudyPlan,
    fail_orphan_trials,
    make_pruner,
    make_sampler,
    open_parent,
    open_study,
    plan_studies,
    requeue_stopped_trials,
)
from orchestrator.tune.summary import summarize_study
from orchestrator.tune.trial import make_objective, step_label

log = logging.getLogger(__name__)

DEFAULT_N_TRIALS = 20


@dataclass(frozen=True)
class WorkerJob:
    """What an ``orch worker`` needs to join a tuning study: a user attribute of the study."""

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
    seeds: tuple[int, ...]  # every trial trains each
    entry: dict = dataclasses.field(default_factory=dict)  # resolve_entry(**entry): {} is the built-in study

    def to_attr(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))

    @classmethod
    def from_attr(cls, attr: Mapping[str, Any]) -> WorkerJob:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in attr.items() if k in fields}
        values["space"] = tuple(ParamSpace(**{**p, "choices": tuple(p["choices"]) if p.get("choices") else None})
                                for p in attr["space"])
        values["seeds"] = tuple(attr["seeds"])
        return cls(**values)


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
) -> int:
    """Tune ``spec``'s search space, one study per setting; returns the exit code.

    ``n_trials`` counts the COMPLETE and PRUNED trials of a resumed study; ``timeout`` is over all
    studies together; ``storage`` defaults to ``optuna.db`` beside a SQLite MLflow store.
    Raises UserError (before anything starts) on a bad storage, metric, sampler or pruner, or a
    stored study that optimises something else.
    """
    tune = tune_spec(spec)
    n_trials = n_trials or tune.n_trials or DEFAULT_N_TRIALS
    make_sampler(sampler, spec.seeds[0], n_trials)  # refuses an unknown name before anything starts
    url = storage or storage_mod.check(storage_mod.default_storage(store.uri))
    template = WorkerJob(tracking_uri=store.uri, experiment_id="", parent_run_id="", metric=tune.metric,
                         space=tune.space, n_trials=n_trials, study="", setting="", sampler=sampler, pruner=pruner,
                         seed=spec.seeds[0], seeds=tuple(tune.seeds or spec.seeds[:1]), entry=dict(spec.entry.spec))
    with tuning_held(url, refuse=True), stop.handling():
        return _run_studies(spec, store, tune, template, url, study_name, timeout=timeout)


@contextlib.contextmanager
def tuning_held(url: str, *, refuse: bool) -> Iterator[bool]:
    """Hold a SQLite storage's tuning for the block (two processes would overshoot ``n_trials``);
    True when held, always with PostgreSQL. Held elsewhere: SweepBusy with ``refuse``, else False."""
    if not url.startswith("sqlite:"):
        yield True
        return
    with contextlib.ExitStack() as stack:
        held = True
        try:
            stack.enter_context(locks.hold(url, "orch tune", refusal=lambda who: (
                f"the Optuna storage {url} is in use by {who}; SQLite serves one process: wait for it to end, "
                "or tune with several processes through --storage postgresql://…")))
        except locks.SweepBusy:
            if refuse:
                raise
            held = False
        yield held


def _run_studies(spec: SweepSpec, store: TrackingStore, tune: TuneSpec, template: WorkerJob, url: str,
                 study_name: str | None, *, timeout: float | None) -> int:
    """Open every study, then run each under its parent run. A stop, wherever it lands, ends the
    open parent KILLED here and nowhere else."""
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
            code = max(code, _run_study(study, plan, fixed, tune, store, job, resumed=resumed, timeout=left))
    except stop.Stopped as err:  # no summary: a second signal would cut it short; the next run writes it
        if parent_id is not None and store.run_status(parent_id) in Status.LIVE:
            store.end_run(parent_id, Status.KILLED, err.reason)
        log.info(f"{err.reason}; rerun the same command to resume (a trial it stopped continues from its "
                 "checkpoint)")
        return err.exit_code
    return code


def _open_studies(url: str, spec: SweepSpec, tune: TuneSpec, study_name: str | None,
                  job: WorkerJob) -> list[tuple[StudyPlan, dict[str, Any], Any]]:
    optuna_storage = storage_mod.open_storage(url, heartbeat=True)
    studies, searched = [], {p.key for p in tune.space}
    for plan in plan_studies(spec, study_name, seed=job.seeds[0]):
        # the setting's params but the searched ones: what every trial shares
        fixed = {k: v for k, v in plan.entry.params(plan.config).items() if k not in searched}
        study = open_study(optuna_storage, plan, tune, fixed, make_sampler(job.sampler, job.seed, job.n_trials),
                           make_pruner(job.pruner, _max_steps(plan, len(job.seeds))), spec.path)
        # A resumed study must not replay its first session's draws: offset the seed by its trials.
        study.sampler = make_sampler(job.sampler, job.seed + len(study.get_trials(deepcopy=False)), job.n_trials)
        studies.append((plan, fixed, study))
    return studies


def _optimize(study: Any, plan: StudyPlan, fixed: Mapping[str, Any], tune: TuneSpec, store: TrackingStore,
              job: WorkerJob, *, remaining: int, timeout: float | None) -> None:
    """Run trials here until the study has ``job.n_trials`` finished ones (over every process).
    Raises Stopped on a signal, even one whose exception Python dropped (in a finalizer)."""
    import optuna

    with stop.handling() as flag:  # this process's flag: the caller's, or the worker's scheduler's
        if remaining and not flag.is_set():
            objective = make_objective(plan, fixed, tune, store, job.experiment_id, job.parent_run_id, job.seeds,
                                       stop=flag)
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
    steps = plan.entry.max_steps(plan.config)
    return steps * n_seeds if steps else None


def _finished() -> tuple:
    from optuna.trial import TrialState as OptunaState

    return OptunaState.COMPLETE, OptunaState.PRUNED  # the trials that count towards n_trials


def _n_finished(study: Any) -> int:
    return len(study.get_trials(deepcopy=False, states=_finished()))


def _run_study(study: Any, plan: StudyPlan, fixed: Mapping[str, Any], tune: TuneSpec, store: TrackingStore,
               job: WorkerJob, *, resumed: bool, timeout: float | None) -> int:
    """The study's missing trials, then its summary; the parent ends FINISHED, or FAILED without a
    completed trial."""
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
    _optimize(study, plan, fixed, tune, store, job, remaining=remaining, timeout=timeout)
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


def serve_studies(storage: Any, *, tracking_uri: str | None = None) -> int:
    """``orch worker``'s share of tuning: join every ``orch tune`` study of ``storage`` (opened with
    ``heartbeat=True``, which fails a dead worker's trials) that still wants trials and run them
    here; returns how many studies it joined. A signal raises Stopped, as in ``orch tune``."""
    import optuna

    joined, stores = 0, Stores()
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
        tune = TuneSpec(metric=job.metric, direction=study.direction.name.lower(), n_trials=job.n_trials,
                        space=job.space, seeds=job.seeds)
        plan = StudyPlan(name=summary.study_name, setting=job.setting, config=entry.build(fixed), entry=entry)
        # Seeded apart from every other process on the study: it has drawn this many trials.
        study.sampler = make_sampler(job.sampler, job.seed + len(study.get_trials(deepcopy=False)), job.n_trials)
        study.pruner = make_pruner(job.pruner, _max_steps(plan, len(job.seeds)))
        store = stores[tracking_uri or job.tracking_uri]
        log.info(f"[{plan.name}] joining the tuning study: {finished}/{job.n_trials} trials finished")
        joined += 1
        _optimize(study, plan, fixed, tune, store, job, remaining=job.n_trials - finished, timeout=None)
        # This worker may have run the study's last trial: bring the parent's summary up to date.
        counts = summarize_study(store, job.parent_run_id, study, tune.metric)
        if counts[TrialState.COMPLETE]:
            store.end_run(job.parent_run_id, Status.FINISHED)
    return joined


@contextlib.contextmanager
def _quiet_expected_failures():
    """Drop Optuna's report of a TrialFailed or an interrupt (the progress line says why) and its
    "failed with value None"; any other exception keeps Optuna's traceback."""
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
