"""One trial of ``orch tune``: train the sampled config on every tuning seed, report to the pruner.

With one seed the trial's MLflow run is its training run; with several the trial gets its own run
(``Kind.TRIAL``) holding the mean of each summary metric, its seeds' runs (``Kind.TRIAL_SEED``)
its children, trained in turn. The trial's value is the study's metric (mean over seeds).
The pruner gets, at step ``offset_i + s`` of the ``i``-th seed, the mean over the seeds so far of
the entry's ``report_metric`` at ``s`` (a finished seed's last value up to ``s``); ``offset_i`` is
``i × max_steps`` when the entry knows it, else the largest step reported so far. So two trials at
one step have trained the same seeds for the same steps, which is what the pruner compares.
"""

from __future__ import annotations

import math
import os
import signal
import socket
from typing import Any, Callable, Mapping, Sequence

from orchestrator.store import checkpoints
from orchestrator.errors import ExitCode
from orchestrator.execute import stop
from orchestrator.execute.runner import run_tracked
from orchestrator.execute.stop import StopFlag
from orchestrator.store.schema import Kind, Status, Tag, TrialAttr, TrialState
from orchestrator.store.tracking import TrackingStore
from orchestrator.grid.space import TuneSpec
from orchestrator.tune.study import StudyPlan


class TrialFailed(RuntimeError):
    """A trial's training failed or gave no usable objective: the trial is FAIL, the study goes on."""


def step_label(step: int, max_steps: int | None, n_seeds: int) -> str:
    """``"step 4"``, or ``"seed 2 step 4"`` with several seeds whose ``max_steps`` is known."""
    if n_seeds == 1 or not max_steps:
        return f"step {step}"
    index, rest = divmod(step - 1, max_steps)
    return f"seed {index + 1} step {rest + 1}"


def make_objective(plan: StudyPlan, fixed: Mapping[str, Any], tune: TuneSpec, store: TrackingStore,
                   experiment_id: str, parent_id: str, seeds: Sequence[int],
                   stop: StopFlag | None = None) -> Callable[[Any], float]:
    """The Optuna objective of a study: a trial trains ``seeds`` in turn, pruned on the running mean.
    On ``stop`` the training checkpoints, ends KILLED and the trial raises Stopped."""
    trainer = _Trainer(plan, tune, store, experiment_id, seeds, stop)
    host, pid = socket.gethostname(), str(os.getpid())

    def objective(trial: Any) -> float:
        # The pid first: a trial is an orphan only once its host names this host (study.fail_orphan_trials),
        # so a process joining the study between the two writes never fails a live trial. One killed
        # between them leaves its trial to Optuna's heartbeat (PostgreSQL); on SQLite it stays RUNNING.
        trial.set_user_attr(TrialAttr.PID, pid)
        trial.set_user_attr(TrialAttr.HOST, host)
        cfg = plan.entry.build({**fixed, **{p.key: p.suggest(trial) for p in tune.space}})  # sampled keys on top
        plan.entry.check(cfg, True)
        if len(seeds) == 1:  # the trial's run is its training run
            return trainer.one_seed(trial, plan.entry.seeded(cfg, seeds[0]), parent_id)
        return trainer.several_seeds(trial, cfg, parent_id)

    return objective


class _Trainer:
    """One trial's training: its tracked runs and its reports to the pruner."""

    def __init__(self, plan: StudyPlan, tune: TuneSpec, store: TrackingStore, experiment_id: str,
                 seeds: Sequence[int], stop: StopFlag | None):
        self.plan, self.tune, self.store, self.experiment_id = plan, tune, store, experiment_id
        self.seeds, self.stop = tuple(seeds), stop
        self.report_key = plan.entry.report_metric(tune.metric, tune.direction)  # a key the code logs

    def tags(self, trial: Any, kind: str = Kind.TRIAL) -> dict[str, str]:
        return {Tag.KIND: kind, Tag.STUDY: self.plan.name, Tag.TRIAL: str(trial.number),
                Tag.SETTING: self.plan.setting}

    def report(self, trial: Any, value: float, step: int, where: str) -> None:
        import optuna

        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"at {where} ({self.report_key} {value:.4g})")

    def one_seed(self, trial: Any, cfg: Any, parent_id: str) -> float:
        """The trial as one training run, a child of the study's parent."""
        def on_value(step: int, value: float) -> None:
            self.report(trial, value, step, f"step {step}")

        for step, value in sorted((int(k), v) for k, v in trial.user_attrs.get(TrialAttr.RESUME_REPORTS, {}).items()):
            on_value(step, value)  # the stopped trial's steps, not trained again
        run_id, summary = self.train(trial, cfg, f"{self.plan.name}-t{trial.number}", self.tags(trial), parent_id,
                                     on_value, is_trial_run=True, resume=trial.user_attrs.get(TrialAttr.RESUME_RUN))
        self.store.set_tags(run_id, {Tag.TRIAL_STATE: TrialState.COMPLETE})
        return summary[self.tune.metric]

    def several_seeds(self, trial: Any, cfg: Any, parent_id: str) -> float:
        """The trial as its own run holding the mean metrics, with one child training run per seed."""
        entry, name = self.plan.entry, f"{self.plan.name}-t{trial.number}"
        trial_run = self.store.start_run(self.experiment_id, run_name=name, parent_run_id=parent_id,
                                         params={k: v for k, v in entry.params(cfg).items() if k != "seed"},
                                         tags={**self.tags(trial), Tag.SEEDS: ",".join(map(str, self.seeds))})
        trial.set_user_attr(TrialAttr.RUN_ID, trial_run)
        max_steps = entry.max_steps(cfg)
        curves: list[dict[int, float]] = []  # per finished seed: its reported values by step
        summaries, reached = [], 0  # the largest step reported so far
        try:
            for i, seed in enumerate(self.seeds):
                offset = i * max_steps if max_steps else reached
                current: dict[int, float] = {}

                def on_value(step: int, value: float, i: int = i, offset: int = offset,
                             current: dict[int, float] = current) -> None:
                    current[step] = value
                    seen = [_value_at(c, step) for c in curves if c] + [value]  # see the module docstring
                    self.report(trial, math.fsum(seen) / len(seen), offset + step, f"seed {i + 1} step {step}")

                _, summary = self.train(trial, entry.seeded(cfg, seed), f"{name}-s{seed}",
                                        self.tags(trial, Kind.TRIAL_SEED), trial_run, on_value, is_trial_run=False)
                summaries.append(summary)
                curves.append(current)
                reached = max([reached, *(offset + s for s in current)])
        except BaseException as err:
            _close_trial_run(self.store, trial_run, err)
            raise
        means = {k: math.fsum(s[k] for s in summaries) / len(summaries)
                 for k in summaries[0] if all(k in s for s in summaries)}
        self.store.log_metrics(trial_run, means)
        self.store.set_tags(trial_run, {Tag.TRIAL_STATE: TrialState.COMPLETE})
        self.store.end_run(trial_run, Status.FINISHED)
        return means[self.tune.metric]

    def train(self, trial: Any, cfg: Any, run_name: str, tags: Mapping[str, str], parent: str,
              on_value: Callable[[int, float], None], *, is_trial_run: bool,
              resume: str | None = None) -> tuple[str, dict]:
        """One tracked training run (``resume``: a stopped run to continue); returns (run id, summary
        metrics with the study's metric: returned, else last logged). ``on_value`` gets every
        logged value of the report key. Raises TrialFailed (no finite metric) or Stopped."""
        run_ids: list[str] = []
        last: dict[str, float] = {}  # the study's metric as last logged

        def on_start(run_id: str) -> None:
            run_ids.append(run_id)
            if is_trial_run:
                trial.set_user_attr(TrialAttr.RUN_ID, run_id)

        def on_log(step: int, values: Mapping[str, float]) -> None:
            if self.tune.metric in values:
                last[self.tune.metric] = float(values[self.tune.metric])
            if self.report_key in values:
                on_value(step, float(values[self.report_key]))

        try:
            code, run_id, summary = run_tracked(self.plan.entry, cfg, store=self.store,
                                                experiment_id=self.experiment_id, run_name=run_name, tags=tags,
                                                parent_run_id=parent, quiet=True, on_start=on_start, on_log=on_log,
                                                stop=self.stop, resume=resume or False)
        except KeyboardInterrupt:  # the run is KILLED; Optuna records the trial FAIL
            if run_ids:
                self.store.set_tags(run_ids[0], {Tag.TRIAL_STATE: TrialState.FAIL})
            raise
        summary = {**last, **summary}
        value = summary.get(self.tune.metric)
        if code in (ExitCode.INTERRUPTED, ExitCode.PREEMPTED):  # checkpointed: a rerun continues a one-seed trial
            self.store.set_tags(run_id, {Tag.TRIAL_STATE: TrialState.FAIL})
            if not is_trial_run:  # a seed of a trial over several seeds: never continued
                checkpoints.remove(self.store, run_id)
            trial.set_user_attr(TrialAttr.FAILURE_REASON, self.store.failure_reason(run_id) or "stopped")
            raise stop.Stopped(self.stop.signum or signal.SIGINT)
        if code != ExitCode.OK:
            reason = self.store.failure_reason(run_id) or "training failed"
        elif value is None or not math.isfinite(value):
            missing = "" if value is not None else ": the code neither returned nor logged it"
            reason = f"no finite {self.tune.metric} ({value}){missing}"
        else:
            return run_id, summary
        self.store.set_tags(run_id, {Tag.TRIAL_STATE: TrialState.FAIL})
        checkpoints.remove(self.store, run_id)  # a failed trial is not retried
        trial.set_user_attr(TrialAttr.FAILURE_REASON, reason)
        raise TrialFailed(f"run {run_id}: {reason}")


def _value_at(curve: Mapping[int, float], step: int) -> float:
    before = [s for s in curve if s <= step]
    return curve[max(before)] if before else curve[min(curve)]


def _close_trial_run(store: TrackingStore, run_id: str, err: BaseException) -> None:
    """End a trial's own run when one of its seeds stopped it: pruned, interrupted or failed."""
    pruned = type(err).__name__ == "TrialPruned"
    store.set_tags(run_id, {Tag.TRIAL_STATE: TrialState.PRUNED if pruned else TrialState.FAIL})
    if pruned:
        store.end_run(run_id, Status.KILLED, f"pruned by the tuner: {err}")
    elif isinstance(err, KeyboardInterrupt):
        store.end_run(run_id, Status.KILLED, stop.reason(stop.signal_of(err)))
    else:
        store.end_run(run_id, Status.FAILED, str(err) or type(err).__name__)
