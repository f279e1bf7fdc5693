"""One trial of ``orch tune``: train the sampled config on every tuning seed, report to the pruner.

With one seed (the default: the grid's first seed) the trial's MLflow run is its training
run, as it always was. With several (``tune.seeds: [0, 1, 2]``) the trial gets its own run
(``Kind.TRIAL``, child of the study's parent) holding the trial's params, ``Tag.SEEDS`` and
the mean over the seeds of every summary metric; the seeds' training runs
(``Kind.TRIAL_SEED``) are its children, trained one after the other. The trial's value is
the mean over the seeds of the study's summary metric.

What the pruner sees. After every epoch ``e`` of the ``i``-th seed the trial reports, at
step ``i × max_epochs + e`` (so steps rise across seeds), the mean over the seeds seen so
far of the per-epoch value: the finished seeds' values at epoch ``e`` (their last epoch's
value if early stopping ended them sooner) and the current seed's. Two trials at the same
step have then trained the same seeds for the same epochs, which is what the pruner
compares. With one seed this is the per-epoch value at step ``e``, as before.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
from typing import Any, Callable, Mapping, Sequence

from experiments import metric_names as names
from experiments.config import RunConfig, build, check, to_flat
from orchestrator.store import checkpoints
from orchestrator.errors import ExitCode
from orchestrator.execute import stop
from orchestrator.execute.stop import StopFlag
from orchestrator.store.schema import Kind, Status, Tag, TrialAttr, TrialState
from orchestrator.store.tracking import TrackingStore
from orchestrator.grid.space import TuneSpec
from orchestrator.tune.study import StudyPlan

__all__ = ["TrialFailed", "epoch_metric", "make_objective", "step_label", "trial_config"]


class TrialFailed(RuntimeError):
    """A trial's training failed or gave no usable objective: the trial is FAIL, the study goes on."""


def epoch_metric(metric: str, direction: str) -> str:
    """The per-epoch value a trial reports for pruning when it optimises summary ``metric``.

    The metric itself when training reports it every epoch (``val_f1_macro``, ``val_acc``…);
    else its validation counterpart (``test_acc`` → ``val_acc``); else, for a metric with
    none (``train_seconds``), ``val_f1_macro`` when maximising and ``val_loss`` when
    minimising, so that the reported value moves in the study's direction.
    """
    if metric in names.EPOCH_SCORES:
        return metric
    split, _, rest = metric.partition("_")
    if split in ("train", "test") and f"val_{rest}" in names.EPOCH_SCORES:
        return f"val_{rest}"
    return names.DEFAULT_OBJECTIVE if direction == "maximize" else names.VAL_LOSS


def trial_config(fixed: Mapping[str, Any], params: Mapping[str, Any]) -> RunConfig:
    """The fixed config with a trial's sampled values (dotted keys) on top, checked."""
    cfg = build({**fixed, **params})
    check(cfg)
    return cfg


def step_label(step: int, max_epochs: int, n_seeds: int) -> str:
    """A reported step in words: ``"epoch 4"``, or ``"seed 2 epoch 4"`` (1-based) with several seeds."""
    if n_seeds == 1:
        return f"epoch {step}"
    index, epoch = divmod(step - 1, max_epochs)
    return f"seed {index + 1} epoch {epoch + 1}"


def make_objective(plan: StudyPlan, fixed: Mapping[str, Any], tune: TuneSpec, store: TrackingStore,
                   experiment_id: str, parent_id: str, seeds: Sequence[int], device: str,
                   stop: StopFlag | None = None) -> Callable[[Any], float]:
    """The Optuna objective of a study: a trial trains ``seeds`` in turn, pruned on the running mean.

    ``stop`` (set by a signal): the running training checkpoints and ends KILLED, and the
    trial raises :class:`orchestrator.execute.stop.Stopped` (FAIL in Optuna, the study stops).
    A trial queued again for a stopped one (:func:`orchestrator.tune.study.requeue_stopped_trials`)
    continues that trial's run from its checkpoint."""
    trainer = _Trainer(plan, tune, store, experiment_id, seeds, device, build(fixed).train.max_epochs, stop)
    host, pid = socket.gethostname(), str(os.getpid())

    def objective(trial: Any) -> float:
        trial.set_user_attr(TrialAttr.HOST, host)  # first: a trial left RUNNING by this process is then found
        trial.set_user_attr(TrialAttr.PID, pid)  # an orphan once it is gone
        params = {p.key: p.suggest(trial) for p in tune.space}
        cfg = trial_config(fixed, params)
        if len(seeds) == 1:  # the trial's run is its training run, as before tune.seeds
            return trainer.one_seed(trial, dataclasses.replace(cfg, seed=seeds[0]), parent_id)
        return trainer.several_seeds(trial, cfg, parent_id)

    return objective


class _Trainer:
    """Runs the training of one trial of a study: its tracked runs and its reports to the pruner."""

    def __init__(self, plan: StudyPlan, tune: TuneSpec, store: TrackingStore, experiment_id: str,
                 seeds: Sequence[int], device: str, max_epochs: int, stop: StopFlag | None):
        self.plan, self.tune, self.store, self.experiment_id = plan, tune, store, experiment_id
        self.seeds, self.device, self.max_epochs, self.stop = tuple(seeds), device, max_epochs, stop
        self.report_key = names.epoch_key(epoch_metric(tune.metric, tune.direction))  # as the study logs it

    def tags(self, trial: Any, kind: str = Kind.TRIAL) -> dict[str, str]:
        return {Tag.KIND: kind, Tag.STUDY: self.plan.name, Tag.TRIAL: str(trial.number),
                Tag.SETTING: self.plan.setting}

    def report(self, trial: Any, value: float, step: int) -> None:
        import optuna

        trial.report(value, step)
        if trial.should_prune():
            where = step_label(step, self.max_epochs, len(self.seeds))
            raise optuna.TrialPruned(f"at {where} ({self.report_key} {value:.4g})")

    def one_seed(self, trial: Any, cfg: RunConfig, parent_id: str) -> float:
        """The trial as one training run, a child of the study's parent."""
        def on_epoch(epoch: int, values: Mapping[str, float]) -> None:
            self.report(trial, float(values[self.report_key]), epoch)

        resume = trial.user_attrs.get(TrialAttr.RESUME_RUN) or False
        for step, value in sorted((int(k), v) for k, v in trial.user_attrs.get(TrialAttr.RESUME_REPORTS, {}).items()):
            self.report(trial, value, step)  # the stopped trial's epochs, which its continued run does not train again
        run_id, summary = self.train(trial, cfg, f"{self.plan.name}-t{trial.number}", self.tags(trial), parent_id,
                                     on_epoch, is_trial_run=True, resume=resume)
        self.store.set_tags(run_id, {Tag.TRIAL_STATE: TrialState.COMPLETE})
        return float(summary[self.tune.metric])

    def several_seeds(self, trial: Any, cfg: RunConfig, parent_id: str) -> float:
        """The trial as its own run holding the mean metrics, with one child training run per seed."""
        name = f"{self.plan.name}-t{trial.number}"
        trial_run = self.store.start_run(self.experiment_id, run_name=name, parent_run_id=parent_id,
                                         params={k: v for k, v in to_flat(cfg).items() if k != "seed"},
                                         tags={**self.tags(trial), Tag.SEEDS: ",".join(map(str, self.seeds))})
        trial.set_user_attr(TrialAttr.RUN_ID, trial_run)
        curves: list[list[float]] = []  # per finished seed: its per-epoch values, epoch 1 first
        summaries = []
        try:
            for i, seed in enumerate(self.seeds):
                current: list[float] = []

                def on_epoch(epoch: int, values: Mapping[str, float]) -> None:
                    current.append(float(values[self.report_key]))
                    seen = [c[min(epoch, len(c)) - 1] for c in curves] + [current[-1]]  # see the module docstring
                    self.report(trial, math.fsum(seen) / len(seen), i * self.max_epochs + epoch)

                _, summary = self.train(trial, dataclasses.replace(cfg, seed=seed), f"{name}-s{seed}",
                                        self.tags(trial, Kind.TRIAL_SEED), trial_run, on_epoch, is_trial_run=False)
                summaries.append(summary)
                curves.append(current)
        except BaseException as err:
            _close_trial_run(self.store, trial_run, err)
            raise
        means = {k: math.fsum(s[k] for s in summaries) / len(summaries)
                 for k in names.SUMMARY_METRICS if all(k in s for s in summaries)}
        self.store.log_metrics(trial_run, means)
        self.store.set_tags(trial_run, {Tag.TRIAL_STATE: TrialState.COMPLETE})
        self.store.end_run(trial_run, Status.FINISHED)
        return means[self.tune.metric]

    def train(self, trial: Any, cfg: RunConfig, run_name: str, tags: Mapping[str, str], parent: str,
              on_epoch: Callable[[int, Mapping[str, float]], None], *, is_trial_run: bool,
              resume: str | bool = False) -> tuple[str, dict]:
        """One tracked training run (``resume``: a stopped run to continue); returns (run id,
        summary metrics).

        Raises:
            TrialFailed: training failed or gave no finite value of the study's metric.
            Stopped: a signal stopped the training (its run KILLED, with a checkpoint).
        """
        from orchestrator.execute.runner import run_tracked
        from orchestrator.grid.entry import resolve_entry

        run_ids: list[str] = []

        def on_start(run_id: str) -> None:
            run_ids.append(run_id)
            if is_trial_run:
                trial.set_user_attr(TrialAttr.RUN_ID, run_id)

        try:
            code, run_id, summary = run_tracked(resolve_entry(), cfg, store=self.store,
                                                experiment_id=self.experiment_id, run_name=run_name, tags=tags,
                                                parent_run_id=parent, quiet=True, on_start=on_start, on_log=on_epoch,
                                                stop=self.stop, resume=resume)
        except KeyboardInterrupt:  # the run is KILLED; Optuna records the trial FAIL
            if run_ids:
                self.store.set_tags(run_ids[0], {Tag.TRIAL_STATE: TrialState.FAIL})
            raise
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
            reason = f"no finite {self.tune.metric} ({value})"
        else:
            return run_id, summary
        self.store.set_tags(run_id, {Tag.TRIAL_STATE: TrialState.FAIL})
        checkpoints.remove(self.store, run_id)  # a failed trial is not retried
        trial.set_user_attr(TrialAttr.FAILURE_REASON, reason)
        raise TrialFailed(f"run {run_id}: {reason}")


def _close_trial_run(store: TrackingStore, run_id: str, err: BaseException) -> None:
    """End a trial's own run when one of its seeds stopped it: pruned, interrupted or failed."""
    if type(err).__name__ == "TrialPruned":
        store.set_tags(run_id, {Tag.TRIAL_STATE: TrialState.PRUNED})
        store.end_run(run_id, Status.KILLED, f"pruned by the tuner: {err}")
    elif isinstance(err, KeyboardInterrupt):
        store.set_tags(run_id, {Tag.TRIAL_STATE: TrialState.FAIL})
        store.end_run(run_id, Status.KILLED, stop.reason(stop.signal_of(err)))
    else:
        store.set_tags(run_id, {Tag.TRIAL_STATE: TrialState.FAIL})
        store.end_run(run_id, Status.FAILED, str(err) or type(err).__name__)
