"""One tuning study's objects: its plan, Optuna sampler, pruner and study, and MLflow parent run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from experiments.errors import ConfigError
from orchestrator import processes
from orchestrator.errors import UserError
from orchestrator.execute.plan import find_run
from orchestrator.grid.entry import Entry
from orchestrator.grid.load import SweepSpec
from orchestrator.grid.names import run_name
from orchestrator.store.schema import Artifact, Kind, Status, StudyAttr, Tag, TrialAttr, TrialState, tag_filter
from orchestrator.store.tracking import TrackingStore
from orchestrator.grid.space import TuneSpec


@dataclass(frozen=True)
class StudyPlan:
    """One study to run: a setting of the grid with its fixed config, and the entry that trains it."""

    name: str  # Optuna study name = MLflow parent run name
    setting: str  # the setting's point, e.g. "act=relu" ("" for a grid without axes)
    config: Any  # the setting's config (the entry's object) with the first tuning seed
    entry: Entry  # the grid's (SweepSpec.entry): builds, checks and trains every trial's config


def plan_studies(spec: SweepSpec, study_name: str | None = None, seed: int | None = None) -> list[StudyPlan]:
    """One study per setting of the grid, its config with ``seed`` (default: the grid's first), named
    ``<grid name or --study>-<setting run name>`` (without the suffix for a single setting)."""
    first_seed = spec.seeds[0]
    runs = [r for r in spec.runs if r.point.get("seed") == first_seed]
    plans: list[StudyPlan] = []
    used: set[str] = set()
    for r in runs:
        point = {k: v for k, v in r.point.items() if k != "seed"}
        label = run_name(point, spec.entry) if point else ""
        if study_name:
            name = f"{study_name}-{label}" if len(runs) > 1 else study_name
        else:
            name = f"{spec.name}-{label}" if label else spec.name
        if name in used:  # two settings whose names sanitise alike
            name = f"{name}-{r.index}"
        used.add(name)
        config = r.config if seed is None else spec.entry.seeded(r.config, seed)
        plans.append(StudyPlan(name=name, setting=r.setting, config=config, entry=spec.entry))
    return plans


def make_sampler(name: str, seed: int, n_trials: int):
    """TPE (random start-up: half the trials, 3 to 10, so short studies get model-based
    suggestions) or random, seeded with ``seed``."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, n_trials // 2)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"unknown sampler {name!r}; choose one of tpe, random")


def make_pruner(name: str, max_steps: int | None):
    """``max_steps``: a trial's last reported step; None lets Hyperband learn it."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_steps or "auto", reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner {name!r}; choose one of median, hyperband, none")


def open_study(storage: Any, plan: StudyPlan, tune: TuneSpec, fixed: Mapping[str, Any], sampler: Any, pruner: Any,
               grid_path: str):
    """Create the study, or load it; ConfigError when the stored one was not made by ``orch tune``
    or for another metric, direction, fixed config or seeds."""
    import optuna

    study = optuna.create_study(study_name=plan.name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=tune.direction, load_if_exists=True)
    attrs = study.user_attrs
    if attrs.get(StudyAttr.KIND) != Kind.TUNE:
        if study.get_trials(deepcopy=False):
            raise ConfigError(f"study {plan.name!r} already exists in the storage and was not made by orch tune; "
                              "choose another --study", key="--study", source=grid_path)
        for key, value in ((StudyAttr.KIND, Kind.TUNE), (StudyAttr.METRIC, tune.metric),
                           (StudyAttr.SETTING, plan.setting), (StudyAttr.FIXED_CONFIG, dict(fixed)),
                           (StudyAttr.SEEDS, list(tune.seeds))):
            study.set_user_attr(key, value)
        return study
    problems = _changes(study, tune, fixed)
    if problems:
        raise ConfigError(f"study {plan.name!r} was started with {'; '.join(problems)}; resuming would mix "
                          "them, so choose another --study (or restore the grid)", key="--study", source=grid_path)
    return study


def _changes(study: Any, tune: TuneSpec, fixed: Mapping[str, Any]) -> list[str]:
    """What differs between a stored study and the one asked for: "metric a, not b", ..."""
    attrs = study.user_attrs
    problems = []
    stored_direction = study.direction.name.lower()
    if stored_direction != tune.direction:
        problems.append(f"direction {stored_direction}, not {tune.direction}")
    if attrs.get(StudyAttr.METRIC) != tune.metric:
        problems.append(f"metric {attrs.get(StudyAttr.METRIC)}, not {tune.metric}")
    stored = attrs.get(StudyAttr.FIXED_CONFIG) or {}
    now = json.loads(json.dumps(dict(fixed)))  # tuples as lists, as stored
    changed = [f"{k}: {stored.get(k)!r} → {now.get(k)!r}" for k in sorted(set(stored) | set(now))
               if stored.get(k) != now.get(k)]
    if changed:
        problems.append("fixed config " + ", ".join(changed[:5]) + (" …" if len(changed) > 5 else ""))
    if list(tune.seeds) != attrs.get(StudyAttr.SEEDS):
        problems.append(f"tune.seeds {attrs.get(StudyAttr.SEEDS)}, not {list(tune.seeds)}")
    return problems


def fail_orphan_trials(store: TrackingStore, study: Any) -> list[int]:
    """Mark FAIL (runs FAILED) the RUNNING trials whose process on this host is gone; other hosts'
    trials are left to Optuna's heartbeat (PostgreSQL)."""
    from optuna.trial import TrialState as OptunaState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
        if not processes.is_orphan(t.user_attrs.get(TrialAttr.HOST, "?"), t.user_attrs.get(TrialAttr.PID)):
            continue
        study.tell(t.number, state=OptunaState.FAIL, skip_if_finished=True)
        run_id = t.user_attrs.get(TrialAttr.RUN_ID)
        if run_id and store.run_status(run_id) in Status.LIVE:
            # a trial over several seeds: its seed run in flight too
            seed_runs = store.search([store.get_run(run_id).info.experiment_id], tag_filter(Tag.PARENT_RUN_ID, run_id))
            for live in [r.info.run_id for r in seed_runs if r.info.status in Status.LIVE] + [run_id]:
                store.set_tags(live, {Tag.TRIAL_STATE: TrialState.FAIL})
                store.end_run(live, Status.FAILED, "left RUNNING by an orch tune process that died")
        failed.append(t.number)
    return failed


def requeue_stopped_trials(store: TrackingStore, study: Any, n_seeds: int) -> list[int]:
    """Queue again, same params, every one-seed FAIL trial stopped with a checkpoint, so that the
    next trial continues its run; returns their numbers. A continuation that failed before its
    own checkpoint hands on the one it continued, so a stopped trial is never lost; a trial that
    failed of itself (diverged) is not retried."""
    from optuna.trial import TrialState as OptunaState

    if n_seeds != 1:
        return []
    trials = study.get_trials(deepcopy=False)
    continued = {t.user_attrs.get(TrialAttr.RESUMES) for t in trials}  # each trial is continued once at most
    queued = []
    for t in trials:
        if t.state != OptunaState.FAIL or t.number in continued:
            continue
        source = _resume_source(store, t)
        if source is not None:
            run_id, reports = source
            study.enqueue_trial(t.params, user_attrs={
                TrialAttr.RESUMES: t.number, TrialAttr.RESUME_RUN: run_id,
                TrialAttr.RESUME_REPORTS: {str(step): value for step, value in reports.items()}})
            queued.append(t.number)
    return queued


def _resume_source(store: TrackingStore, trial: Any) -> tuple[str, dict[int, float]] | None:
    """(run to continue, the pruner reports up to its checkpoint) of a FAIL trial, or None."""
    own_id, attrs = trial.user_attrs.get(TrialAttr.RUN_ID), trial.user_attrs
    own = find_run(store, own_id) if own_id else None
    if own is not None and own.info.status == Status.FAILED and \
            not own.data.tags.get(Tag.FAILURE_REASON, "").startswith("left RUNNING"):
        return None  # failed of itself (its training diverged): not retried
    if own is not None and Tag.CHECKPOINT in own.data.tags:
        steps = int(own.data.tags.get(Tag.CHECKPOINT_STEP, 0))
        return own_id, {step: v for step, v in trial.intermediate_values.items() if step <= steps}
    earlier = attrs.get(TrialAttr.RESUME_RUN)  # a continuation stopped before its first checkpoint
    run = find_run(store, earlier) if earlier else None
    if run is None or Tag.CHECKPOINT not in run.data.tags:
        return None
    return earlier, {int(k): v for k, v in attrs.get(TrialAttr.RESUME_REPORTS, {}).items()}


def open_parent(store: TrackingStore, experiment_id: str, plan: StudyPlan, spec: SweepSpec, tune: TuneSpec,
                storage_label: str, tags: Mapping[str, str]) -> tuple[str, bool]:
    """The study's parent run, found by its tags and reopened, or created; (run id, resumed)."""
    for run in store.search([experiment_id], tag_filter(Tag.KIND, Kind.TUNE), order_by=["attributes.start_time DESC"]):
        if run.data.tags.get(Tag.STUDY) == plan.name and run.data.tags.get(Tag.STORAGE) == storage_label:
            store.reopen_run(run.info.run_id)
            store.set_tags(run.info.run_id, tags)
            return run.info.run_id, True
    parent = store.start_run(
        experiment_id, run_name=plan.name, params={},
        tags={Tag.KIND: Kind.TUNE, Tag.STUDY: plan.name, Tag.STORAGE: storage_label,
              Tag.SETTING: plan.setting, Tag.GRID_FILE: spec.path, Tag.METRIC: tune.metric,
              Tag.DIRECTION: tune.direction, **tags},
    )
    store.log_text(parent, spec.text, Artifact.GRID)
    space = [{k: v for k, v in vars(p).items() if v is not None} for p in tune.space]
    store.log_text(parent, json.dumps(space, indent=1, default=list), Artifact.SPACE)
    return parent, False
