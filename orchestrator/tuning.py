"""``orch tune``: Optuna studies over a grid's ``tune.space``, every trial a nested MLflow run.

One study per setting of the grid: the axes that are not searched (after ``--set``) are
held fixed, and every trial of every study trains with the grid's FIRST seed, so that
trials differ only by the searched values (a tuned optimum is then worth checking over
seeds with ``orch sweep``). Without a ``tune`` section the default space
(:data:`orchestrator.grid.DEFAULT_SPACE`: StepLR ``schedule.step_size`` and
``schedule.gamma``) is searched for ``val_f1_macro``, maximised.

Each study has one MLflow parent run (tags ``orch.kind=tune``, ``orch.study``,
``orch.storage``) in the grid's experiment; each trial runs in this process through
:func:`orchestrator.runner.run_tracked` as a child run named ``<study>-t<number>`` whose
params are the resolved config, so the searched keys carry the trial's values. The
trial reports its per-epoch objective after every epoch, and the pruner may stop it: its
run then ends KILLED, tagged ``orch.trial_state=PRUNED``, and counts as no result for
``orch sweep``/``orch compare``.

Resuming: the study lives in an Optuna storage (default: ``optuna.db`` beside a SQLite
MLflow store) and is loaded by name, so the same command again runs only the trials
still missing, ``n_trials`` minus the COMPLETE and PRUNED trials already in the study
(FAILED trials are retried), under the same parent run. A study that was started with
another metric, direction or fixed config is refused (exit 2): pick another ``--study``.

Exit codes: 0 done (some trials may have failed: they are part of a search), 1 no trial
of the study completed, 2 bad input (nothing started), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import socket
import sys
import time
import warnings
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from experiments.config import ConfigError, RunConfig, build, check, to_flat
from orchestrator import storage as storage_mod
from orchestrator import tracking
from orchestrator.grid import DEFAULT_METRIC, DEFAULT_SPACE, ParamSpace, SweepSpec, TuneSpec, run_name

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
DEFAULT_N_TRIALS = 20
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")

# What experiments.train reports: per epoch (values given to on_epoch, besides feat_*)
# and at the end for the restored best checkpoint (the summary a trial returns). Kept
# here, not imported, because experiments.train imports torch.
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1_micro", "val_f1_macro")
SUMMARY_METRICS = tuple(
    f"{split}_{m}" for split in ("train", "val", "test") for m in ("acc", "f1_micro", "f1_macro")
) + ("best_epoch", "epochs_run", "train_seconds", "images_per_second")

STUDY_KIND = "tune"  # study user attr orch.kind: marks studies that orch tune made


class TrialFailed(RuntimeError):
    """A trial's training failed or gave no usable objective: the trial is FAIL, the study goes on."""


@dataclass(frozen=True)
class StudyPlan:
    """One study to run: a setting of the grid with its fixed config."""

    name: str  # Optuna study name = MLflow parent run name
    setting: str  # "model.norm=bn" ("" for a grid without axes): tag orch.setting
    config: RunConfig  # the setting's config with the grid's first seed


# ---------------------------------------------------------------- what to tune


def tune_spec(spec: SweepSpec) -> TuneSpec:
    """The grid's ``tune`` section, else the default space for ``val_f1_macro`` (maximize).

    Keys of the default space that are grid axes are swept, not tuned, so they are left out.
    """
    if spec.tune is not None:
        return spec.tune
    space = tuple(
        ParamSpace(key=k, type=v["type"], low=v["low"], high=v["high"], log=v.get("log", False), step=v.get("step"))
        for k, v in DEFAULT_SPACE.items()
        if k not in spec.axes
    )
    if not space:
        raise ConfigError(
            f"every key of the default search space ({', '.join(DEFAULT_SPACE)}) is a grid axis; "
            "add a tune.space section naming the keys to search",
            key="tune", source=spec.path,
        )
    return TuneSpec(metric=DEFAULT_METRIC, direction="maximize", n_trials=None, space=space)


def epoch_metric(metric: str, direction: str) -> str:
    """The per-epoch value a trial reports for pruning when it optimises summary ``metric``.

    The metric itself when training reports it every epoch (``val_f1_macro``, ``val_acc``…);
    else its validation counterpart (``test_acc`` → ``val_acc``); else, for a metric with
    none (``train_seconds``), ``val_f1_macro`` when maximising and ``val_loss`` when
    minimising, so that the reported value moves in the study's direction.
    """
    if metric in EPOCH_METRICS:
        return metric
    split, _, rest = metric.partition("_")
    if split in ("train", "test") and f"val_{rest}" in EPOCH_METRICS:
        return f"val_{rest}"
    return "val_f1_macro" if direction == "maximize" else "val_loss"


def plan_studies(spec: SweepSpec, study_name: str | None = None) -> list[StudyPlan]:
    """One study per distinct setting of the grid, each with the grid's first seed.

    Names: ``<grid name>-<setting run name>`` (``tune-demo-bn``; the grid name alone when the
    grid has no axes), or ``--study`` (suffixed ``-<setting run name>`` with several settings).
    """
    first_seed = spec.seeds[0]
    runs = [r for r in spec.runs if r.point.get("seed") == first_seed]
    plans: list[StudyPlan] = []
    used: set[str] = set()
    for r in runs:
        point = {k: v for k, v in r.point.items() if k != "seed"}
        label = run_name(point) if point else ""
        if study_name:
            name = f"{study_name}-{label}" if len(runs) > 1 else study_name
        else:
            name = f"{spec.name}-{label}" if label else spec.name
        if name in used:  # two settings whose names sanitise alike
            name = f"{name}-{r.index}"
        used.add(name)
        plans.append(StudyPlan(name=name, setting=r.setting, config=r.config))
    return plans


def fixed_config(cfg: RunConfig, space: Sequence[ParamSpace]) -> dict[str, Any]:
    """The setting's flat config without the searched keys: what every trial shares."""
    searched = {p.key for p in space}
    return {k: v for k, v in to_flat(cfg).items() if k not in searched}


def trial_config(fixed: Mapping[str, Any], params: Mapping[str, Any]) -> RunConfig:
    """The fixed config with a trial's sampled values (dotted keys) on top, checked."""
    cfg = build({**fixed, **params})
    check(cfg)
    return cfg


# ---------------------------------------------------------------- Optuna objects


def make_sampler(name: str, seed: int, n_trials: int):
    """TPE (its random start-up shortened to half the trials, 3 to 10, so that short
    studies still get model-based suggestions) or random, both seeded with ``seed``."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, n_trials // 2)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, max_epochs: int):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def open_study(storage: Any, plan: StudyPlan, tune: TuneSpec, fixed: Mapping[str, Any], sampler: Any, pruner: Any,
               grid_path: str):
    """Create the study, or load it and check that it optimises the same thing.

    Raises:
        ConfigError: the stored study was made for another metric, direction or fixed
            config, or not by ``orch tune``.
    """
    import optuna

    study = optuna.create_study(study_name=plan.name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=tune.direction, load_if_exists=True)
    attrs = study.user_attrs
    if attrs.get("orch.kind") != STUDY_KIND:
        if study.get_trials(deepcopy=False):
            raise ConfigError(f"study {plan.name!r} already exists in the storage and was not made by orch tune; "
                              "choose another --study", key="--study", source=grid_path)
        for key, value in (("orch.kind", STUDY_KIND), ("orch.metric", tune.metric),
                           ("orch.setting", plan.setting), ("orch.fixed_config", dict(fixed))):
            study.set_user_attr(key, value)
        return study
    problems = []
    stored_direction = study.direction.name.lower()
    if stored_direction != tune.direction:
        problems.append(f"direction {stored_direction}, not {tune.direction}")
    if attrs.get("orch.metric") != tune.metric:
        problems.append(f"metric {attrs.get('orch.metric')}, not {tune.metric}")
    stored = attrs.get("orch.fixed_config") or {}
    now = json.loads(json.dumps(dict(fixed)))  # tuples as lists, as stored
    changed = [f"{k}: {stored.get(k)!r} → {now.get(k)!r}" for k in sorted(set(stored) | set(now))
               if stored.get(k) != now.get(k)]
    if changed:
        problems.append("fixed config " + ", ".join(changed[:5]) + (" …" if len(changed) > 5 else ""))
    if problems:
        raise ConfigError(f"study {plan.name!r} was started with {'; '.join(problems)}; resuming would mix "
                          "them, so choose another --study (or restore the grid)", key="--study", source=grid_path)
    return study


def fail_orphan_trials(uri: str, study: Any) -> list[int]:
    """Mark FAIL the RUNNING trials of this host whose process is gone (a killed ``orch tune``),
    and their MLflow runs FAILED; trials of live processes or other hosts are left alone
    (with PostgreSQL, Optuna's heartbeat fails those)."""
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("orch.host") != host or tracking._pid_alive(str(t.user_attrs.get("orch.pid", ""))):
            continue
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        run_id = t.user_attrs.get("orch.run_id")
        if run_id and tracking.run_status(uri, run_id) == tracking.RUNNING:
            tracking.set_tags(uri, run_id, {"orch.trial_state": "FAIL"})
            tracking.end_run(uri, run_id, tracking.FAILED, "left RUNNING by an orch tune process that died")
        failed.append(t.number)
    return failed


# ---------------------------------------------------------------- MLflow parent


def open_parent(uri: str, experiment_id: str, plan: StudyPlan, spec: SweepSpec, tune: TuneSpec,
                storage_label: str, tags: Mapping[str, str]) -> tuple[str, bool]:
    """The study's parent run, found by its tags and reopened, or created; (run id, resumed)."""
    for run in tracking.search(uri, [experiment_id], f"tags.`orch.kind` = '{STUDY_KIND}'",
                               order_by=["attributes.start_time DESC"]):
        if run.data.tags.get("orch.study") == plan.name and run.data.tags.get("orch.storage") == storage_label:
            tracking.reopen_run(uri, run.info.run_id)
            tracking.set_tags(uri, run.info.run_id, tags)
            return run.info.run_id, True
    parent = tracking.start_run(
        uri, experiment_id, run_name=plan.name, params={},
        tags={"orch.kind": STUDY_KIND, "orch.study": plan.name, "orch.storage": storage_label,
              "orch.setting": plan.setting, "orch.grid_file": spec.path, "orch.metric": tune.metric,
              "orch.direction": tune.direction, **tags},
    )
    tracking.log_artifact_text(uri, parent, spec.text, "grid.yaml")
    space = [{k: v for k, v in vars(p).items() if v is not None} for p in tune.space]
    tracking.log_artifact_text(uri, parent, json.dumps(space, indent=1, default=list), "space.json")
    return parent, False


def summarize_study(uri: str, parent_id: str, study: Any, metric: str, say) -> dict[str, int]:
    """Best params/value, plots and trials.csv on the parent; returns the counts by state."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == getattr(TrialState, s) for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    n_done = counts["COMPLETE"] + counts["PRUNED"]
    tracking.set_tags(uri, parent_id, {f"orch.n_{k.lower()}": str(v) for k, v in counts.items()})
    if counts["COMPLETE"]:
        best = study.best_trial
        tags = {f"best.{k}": str(v) for k, v in best.params.items()}
        tags["orch.best_run_id"] = str(best.user_attrs.get("orch.run_id", ""))
        tracking.set_tags(uri, parent_id, tags)
        tracking.log_metrics(uri, parent_id, {"best_value": best.value, "best_trial": best.number}, step=n_done)
    if trials:
        tracking.log_artifact_text(uri, parent_id, trials_csv(trials, metric), "trials.csv")
    _log_plots(uri, parent_id, study, counts["COMPLETE"], say)
    return counts


def trials_csv(trials: Sequence[Any], metric: str) -> str:
    """One row per trial: number, state, value, epochs reported, seconds, params, run id."""
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["number", "state", metric, "last_epoch", "seconds", *keys, "run_id"])
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else ""
        last_epoch = max(t.intermediate_values) if t.intermediate_values else ""
        writer.writerow([t.number, t.state.name, "" if t.value is None else repr(t.value), last_epoch,
                         seconds and f"{seconds:.1f}", *(repr(t.params[k]) if k in t.params else "" for k in keys),
                         t.user_attrs.get("orch.run_id", "")])
    return buf.getvalue()


def _log_plots(uri: str, parent_id: str, study: Any, n_complete: int, say) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as ovm

    plots = [("plots/optimization_history.png", ovm.plot_optimization_history, 1),
             ("plots/param_importances.png", ovm.plot_param_importances, 2)]
    for path, plot, needed in plots:
        if n_complete < needed:
            say(f"note: {path} skipped: it needs {needed} complete trial(s), the study has {n_complete}")
            continue
        try:
            with warnings.catch_warnings():
                # ExperimentalWarning, and PED-ANOVA's "importances will be equal" on few trials
                warnings.simplefilter("ignore", ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                ax = plot(study)
            fig = ax.figure
        except Exception as err:  # noqa: BLE001 - e.g. importances of params that never varied
            say(f"note: {path} skipped: {type(err).__name__}: {err}")
            continue
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        tracking.log_figure(uri, parent_id, fig, path)
        plt.close(fig)


# ---------------------------------------------------------------- running


def run_tune(
    spec: SweepSpec,
    uri: str,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    device: str = "auto",
    quiet: bool = False,
) -> int:
    """Tune ``spec``'s search space, one study per setting; returns the exit code.

    Args:
        spec: a loaded grid (``--set`` already applied); its first seed is used for every trial.
        uri: the MLflow tracking URI (resolved, reachable).
        n_trials: trials per study, counting COMPLETE and PRUNED trials already in a resumed
            study (default: the grid's ``tune.n_trials``, else 20).
        timeout: stop starting trials after this many seconds, over all studies together.
        storage: Optuna storage URL (default: ``optuna.db`` beside a SQLite MLflow store).
        study_name: ``--study``; with several settings each study gets ``-<setting>`` appended.
        sampler: ``tpe`` or ``random``, seeded with the grid's first seed (plus the number of
            trials already in a resumed study, so that it draws new points).
        pruner: ``median``, ``hyperband`` or ``none``.

    Raises:
        StorageError: the storage URL is unusable (checked before anything starts).
        ConfigError: an unknown metric, or a stored study that optimises something else.
    """
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    tune = tune_spec(spec)
    if tune.metric not in SUMMARY_METRICS:
        raise ConfigError(f"{tune.metric!r} is not a summary metric of a run; choose one of "
                          f"{', '.join(SUMMARY_METRICS)}", key="tune.metric", source=spec.path)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ValueError(f"unknown pruner {pruner!r}; choose one of {', '.join(PRUNERS)}")
    n_trials = n_trials or tune.n_trials or DEFAULT_N_TRIALS
    seed = spec.seeds[0]

    # Everything that can be wrong with the input is found before any MLflow run exists.
    url = storage_mod.check(storage or storage_mod.default_storage(uri))
    storage_label = storage_mod.redact(url)
    optuna_storage = storage_mod.open_storage(url, heartbeat=True)
    plans = plan_studies(spec, study_name)
    studies = []
    for plan in plans:
        fixed = fixed_config(plan.config, tune.space)
        study = open_study(optuna_storage, plan, tune, fixed, make_sampler(sampler, seed, n_trials),
                           make_pruner(pruner, plan.config.train.max_epochs), spec.path)
        # A resumed study must not replay the first session's random draws: offset the seed
        # by the trials it already has (0 for a new study, so a new study's draws are the seed's).
        n_before = len(study.get_trials(deepcopy=False))
        if n_before:
            study.sampler = make_sampler(sampler, seed + n_before, n_trials)
        studies.append((plan, fixed, study))

    from orchestrator.runner import raise_on_sigterm

    try:
        raise_on_sigterm()
    except ValueError:  # not the main thread: leave SIGTERM alone
        pass
    experiment_id = tracking.ensure_experiment(uri, spec.name)
    deadline = time.monotonic() + timeout if timeout else None
    run_settings = {"orch.sampler": sampler, "orch.pruner": pruner, "orch.n_trials": str(n_trials),
                    "orch.seed": str(seed)}
    code = EXIT_OK
    try:
        for plan, fixed, study in studies:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                say(f"[{plan.name}] not started: --timeout reached; rerun to continue")
                continue
            code = max(code, _run_study(study, plan, fixed, tune, spec, uri, experiment_id, n_trials=n_trials,
                                        timeout=left, storage_label=storage_label, run_settings=run_settings,
                                        device=device, say=say))
            if code == EXIT_INTERRUPTED:
                break
    except KeyboardInterrupt:  # between trials (a trial's own interrupt is handled in _run_study)
        say("interrupted; rerun the same command to resume")
        return EXIT_INTERRUPTED
    return code


def _optimize(study: Any, plan: StudyPlan, fixed: Mapping[str, Any], tune: TuneSpec, uri: str, experiment_id: str,
              parent_id: str, *, n_trials: int, remaining: int, timeout: float | None, device: str, say) -> bool:
    """Run trials of ``study`` in this process until it has ``n_trials`` finished ones
    (counted over every process on the study); True when interrupted."""
    import optuna
    from optuna.trial import TrialState

    from orchestrator.runner import run_tracked

    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    report_key = epoch_metric(tune.metric, tune.direction)
    host, pid = socket.gethostname(), str(os.getpid())

    def objective(trial: Any) -> float:
        params = {p.key: p.suggest(trial) for p in tune.space}
        trial.set_user_attr("orch.host", host)
        trial.set_user_attr("orch.pid", pid)
        cfg = trial_config(fixed, params)
        run_ids: list[str] = []

        def on_start(run_id: str) -> None:
            run_ids.append(run_id)
            trial.set_user_attr("orch.run_id", run_id)

        def on_epoch(epoch: int, values: Mapping[str, float]) -> None:
            value = float(values[report_key])
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"at epoch {epoch} ({report_key} {value:.4g})")

        tags = {"orch.kind": "trial", "orch.study": plan.name, "orch.trial": str(trial.number),
                "orch.setting": plan.setting}
        try:
            code, run_id, summary = run_tracked(cfg, uri=uri, experiment_id=experiment_id,
                                                run_name=f"{plan.name}-t{trial.number}", tags=tags,
                                                parent_run_id=parent_id, device=device, quiet=True,
                                                on_start=on_start, on_epoch=on_epoch)
        except KeyboardInterrupt:  # the run is KILLED; Optuna records the trial FAIL
            if run_ids:
                tracking.set_tags(uri, run_ids[0], {"orch.trial_state": "FAIL"})
            raise
        if code != 0:
            tracking.set_tags(uri, run_id, {"orch.trial_state": "FAIL"})
            found = tracking.search(uri, [experiment_id], f"attributes.run_id = '{run_id}'")
            reason = found[0].data.tags.get("orch.failure_reason", "") if found else ""
            trial.set_user_attr("orch.fail_reason", reason or "training failed")
            raise TrialFailed(f"training failed in run {run_id}: {reason}")
        value = summary.get(tune.metric)
        if value is None or not math.isfinite(value):
            tracking.set_tags(uri, run_id, {"orch.trial_state": "FAIL"})
            trial.set_user_attr("orch.fail_reason", f"no finite {tune.metric} ({value})")
            raise TrialFailed(f"the run {run_id} gave no finite {tune.metric} ({value})")
        tracking.set_tags(uri, run_id, {"orch.trial_state": "COMPLETE"})
        return float(value)

    def progress(study: Any, t: Any) -> None:
        params = "  ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else 0.0
        if t.state == TrialState.COMPLETE:
            what = f"COMPLETE {tune.metric} {t.value:.4f}"
        elif t.state == TrialState.PRUNED:
            what = f"PRUNED at epoch {max(t.intermediate_values) if t.intermediate_values else '?'}"
        else:
            what = t.state.name
        say(f"[{plan.name}] trial {t.number:>3} {what:<32} {params}  {secs:.1f}s")
        if t.state == TrialState.FAIL and "orch.fail_reason" in t.user_attrs:
            say(f"[{plan.name}]   {t.user_attrs['orch.fail_reason']}")

    interrupted = False
    if remaining:
        try:
            with warnings.catch_warnings(), _quiet_expected_failures():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(
                    objective, n_trials=remaining, timeout=timeout, catch=(Exception,),
                    # Several processes on one PostgreSQL study stop at n_trials together.
                    callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=finished_states), progress],
                    gc_after_trial=False,
                )
        except KeyboardInterrupt:
            interrupted = True

    return interrupted


def _run_study(study: Any, plan: StudyPlan, fixed: Mapping[str, Any], tune: TuneSpec, spec: SweepSpec, uri: str,
               experiment_id: str, *, n_trials: int, timeout: float | None, storage_label: str,
               run_settings: Mapping[str, str], device: str, say) -> int:
    from optuna.trial import TrialState

    parent_id, resumed = open_parent(uri, experiment_id, plan, spec, tune, storage_label, run_settings)
    orphans = fail_orphan_trials(uri, study)
    if orphans:
        say(f"[{plan.name}] trial(s) {', '.join(map(str, orphans))} were left RUNNING by a dead process: now FAIL")
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    already = len(study.get_trials(deepcopy=False, states=finished_states))
    remaining = max(0, n_trials - already)
    say(f"[{plan.name}] {n_trials} trials of {tune.direction} {tune.metric}: {already} already finished, "
        f"{remaining} to run{' (resumed)' if resumed else ''}")
    study.set_user_attr("orch.worker_job", {
        "tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent_id,
        "metric": tune.metric, "space": [dataclasses.asdict(p) for p in tune.space], "n_trials": n_trials,
        "plan": {"name": plan.name, "setting": plan.setting}, "sampler": run_settings["orch.sampler"],
        "pruner": run_settings["orch.pruner"], "seed": int(run_settings["orch.seed"]),
    })  # what an `orch worker` needs to join this study (serve_studies)
    interrupted = _optimize(study, plan, fixed, tune, uri, experiment_id, parent_id, n_trials=n_trials,
                            remaining=remaining, timeout=timeout, device=device, say=say)

    if interrupted:  # no summary: a second Ctrl-C would cut it short; the next run writes it
        tracking.end_run(uri, parent_id, tracking.KILLED, "interrupted")
        say(f"[{plan.name}] interrupted: the running trial is recorded KILLED (FAIL in Optuna); "
            "rerun the same command to resume")
        return EXIT_INTERRUPTED
    counts = summarize_study(uri, parent_id, study, tune.metric, say)
    total = sum(counts.values())
    line = (f"study {plan.name}: {total} trials ({counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
            f"{counts['FAIL']} failed)")
    if counts["COMPLETE"]:
        best = study.best_trial
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
        print(f"{line}; best {tune.metric} {best.value:.4f} (trial {best.number}): {params}", flush=True)
        tracking.end_run(uri, parent_id, tracking.FINISHED)
        return EXIT_OK
    print(f"{line}; no trial completed", flush=True)
    tracking.end_run(uri, parent_id, tracking.FAILED, "no trial completed")
    return EXIT_FAILED


def serve_studies(storage: Any, *, tracking_uri: str | None = None, device: str = "auto", quiet: bool = False) -> int:
    """``orch worker``'s share of tuning: join every ``orch tune`` study of the storage that
    still wants trials and run trials of it here until it has its ``n_trials``.

    The study, its MLflow parent and what a trial needs (metric, space, fixed config,
    sampler, pruner) were stored by ``orch tune``; Optuna's heartbeat on the storage fails
    the trials of a worker that dies. ``storage``: an open Optuna storage
    (:func:`orchestrator.storage.open_storage` with ``heartbeat=True``). Returns how many
    studies this call joined.
    """
    import optuna
    from optuna.trial import TrialState

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    joined = 0
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        job = summary.user_attrs.get("orch.worker_job")
        if summary.user_attrs.get("orch.kind") != STUDY_KIND or not job:
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        n_trials = int(job["n_trials"])
        finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        if finished >= n_trials:
            continue
        fixed = study.user_attrs["orch.fixed_config"]
        config = build(fixed)
        space = tuple(ParamSpace(**{**p, "choices": tuple(p["choices"]) if p.get("choices") else None})
                      for p in job["space"])
        tune = TuneSpec(metric=job["metric"], direction=study.direction.name.lower(), n_trials=n_trials, space=space)
        plan = StudyPlan(name=summary.study_name, setting=job["plan"]["setting"], config=config)
        # Seeded apart from every other process on the study: it has drawn this many trials.
        study.sampler = make_sampler(job["sampler"], int(job["seed"]) + len(study.get_trials(deepcopy=False)),
                                     n_trials)
        study.pruner = make_pruner(job["pruner"], config.train.max_epochs)
        uri = tracking_uri or job["tracking_uri"]
        say(f"[{plan.name}] joining the tuning study: {finished}/{n_trials} trials finished")
        joined += 1
        if _optimize(study, plan, fixed, tune, uri, job["experiment_id"], job["parent_run_id"], n_trials=n_trials,
                     remaining=n_trials - finished, timeout=None, device=device, say=say):
            raise KeyboardInterrupt
        # This worker may have run the study's last trial: bring the parent's summary up to date.
        counts = summarize_study(uri, job["parent_run_id"], study, tune.metric, say)
        if counts["COMPLETE"]:
            tracking.end_run(uri, job["parent_run_id"], tracking.FINISHED)
    return joined


@contextlib.contextmanager
def _quiet_expected_failures():
    """Drop Optuna's report of a TrialFailed (the progress line gives its reason) or of an
    interrupt, and its redundant "failed with value None"; any other exception in a trial
    is unexpected and keeps Optuna's report with the traceback."""
    logger = logging.getLogger("optuna.study._optimize")

    def keep(record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(s in msg for s in ("TrialFailed(", "KeyboardInterrupt(", "Interrupted(",
                                          "failed with value None"))

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
