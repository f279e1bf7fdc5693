"""The MLflow run schema of orch, in one place: tag keys, run kinds, artifact paths,
the Optuna attributes of queued points and tuning studies, and the rule that says
whether a run is a finished result.

Every other module imports these names; none spells an ``orch.*`` key itself. What a
run carries (docs/reference/mlflow.md lists it for users):

* sweep parent: ``Tag.KIND=sweep``, ``Tag.SWEEP``; artifacts ``grid.yaml``,
  ``points.json``, later ``summary.csv`` and ``plots/``. While a sweep through a tracking
  server runs it, ``Tag.HEARTBEAT`` (:mod:`orchestrator.store.locks`).
* tune parent (one per Optuna study): ``Tag.KIND=tune``, ``Tag.STUDY``, ``Tag.STORAGE``
  (redacted), ``best.<key>`` tags; artifacts ``grid.yaml``, ``space.json``,
  ``trials.csv``, ``plots/``. Its children are trials (``Tag.KIND=trial``, ``Tag.TRIAL``,
  ``Tag.TRIAL_STATE``). A trial over several seeds (``tune.seeds``, ``Tag.SEEDS``) holds
  the mean summary metrics, and its children are its training runs, one per seed
  (``Tag.KIND=trial_seed``); with one seed the trial's run is its training run.
* point (child of a sweep) or standalone run: ``Tag.KIND``, ``Tag.RUN_KEY``, ``Tag.POINT``,
  ``Tag.SETTING``, ``Tag.ATTEMPT``, ``Tag.HOST``/``Tag.PID``; params are the resolved
  config as dotted keys; metrics ``epoch/*`` and the summary metrics.
* a point run under Slurm also carries ``Tag.SLURM_JOB`` (``12_3``) and the job/array ids;
  its sweep parent ``Tag.SLURM_JOBS``, ``Tag.SUMMARIZED_BY`` and ``slurm/<job id>.{sh,json}``.
* a failed or killed run: ``Tag.FAILURE_REASON`` and the artifact ``error/traceback.txt``.
* every training run, when it starts (:mod:`orchestrator.store.provenance`): ``Tag.ENTRY``,
  ``Tag.GIT_COMMIT``, ``Tag.PYTHON_VERSION``; artifacts ``environment.txt`` and, when the entry's
  repository has uncommitted changes, ``code/diff.patch``.
* a run that started afresh because the checkpoint it was to continue was unusable:
  ``Tag.CHECKPOINT_SKIPPED`` (that checkpoint, and why).

This module imports nothing heavy: the dry run reads stores through it without mlflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence


class Tag:
    """MLflow run tag keys."""

    KIND = "orch.kind"  # one of Kind
    RUN_KEY = "orch.run_key"  # hash of the resolved config: what "done" is keyed on
    SWEEP = "orch.sweep"  # the sweep id
    POINT = "orch.point"  # "lr=0.1,width=64,seed=0": the axes and the seed
    SETTING = "orch.setting"  # the point without its seed
    ATTEMPT = "orch.attempt"
    SLOT = "orch.slot"
    HOST = "orch.host"
    PID = "orch.pid"
    DEVICE = "orch.device"
    TORCH_VERSION = "orch.torch_version"
    CUDA_VERSION = "orch.cuda_version"
    GIT_COMMIT = "orch.git_commit"  # the commit of the entry's repository, or `no commit` outside one
    ENTRY = "orch.entry"  # the code the run calls, `module:name` (the built-in study: `experiments.study:STUDY`)
    PYTHON_VERSION = "orch.python_version"  # the Python that ran it, e.g. `3.11.7`
    FAILURE_REASON = "orch.failure_reason"
    GRID_FILE = "orch.grid_file"
    N_POINTS = "orch.n_points"
    # checkpoints and resume
    CHECKPOINT = "orch.checkpoint"  # artifact path of the run's newest complete checkpoint
    CHECKPOINT_STEP = "orch.checkpoint_step"  # the last step the run had logged when it was taken
    RESUMED_FROM = "orch.resumed_from"  # the run whose checkpoint this run continued
    RESUMED_STEP = "orch.resumed_step"  # the last step the continued checkpoint had logged
    CHECKPOINT_SKIPPED = "orch.checkpoint_skipped"  # "<run id>/<path>: <reason>": a checkpoint this run could not use
    # Slurm (orch sweep --launcher slurm): the job a point ran in, and who closed the sweep
    SLURM_JOB = "orch.slurm_job"  # as squeue shows it: "12_3" for array task 3 of job 12
    SLURM_JOB_ID = "orch.slurm_job_id"  # SLURM_JOB_ID: the task's own job id
    SLURM_ARRAY_JOB_ID = "orch.slurm_array_job_id"
    SLURM_ARRAY_TASK_ID = "orch.slurm_array_task_id"
    SLURM_RESTARTS = "orch.slurm_restarts"  # SLURM_RESTART_COUNT: times the task was requeued
    SLURM_JOBS = "orch.slurm_jobs"  # a sweep parent's submitted job ids, "12,15"
    SLURM_ENDED = "orch.slurm_ended"  # a sweep parent: its array tasks that ended and may still show RUNNING
    LAUNCHER = "orch.launcher"  # a sweep parent submitted to Slurm: "slurm" (array) or "slurm-queue"
    SUMMARIZED_BY = "orch.summarized_by"  # a sweep parent: which process wrote its summary and closed it
    HEARTBEAT = "orch.heartbeat"  # a sweep parent on a server: '{"host", "pid", "time"}' of the sweep running it
    # tuning
    STUDY = "orch.study"
    STORAGE = "orch.storage"
    TRIAL = "orch.trial"
    TRIAL_STATE = "orch.trial_state"  # COMPLETE | PRUNED | FAIL
    METRIC = "orch.metric"
    DIRECTION = "orch.direction"
    SAMPLER = "orch.sampler"
    PRUNER = "orch.pruner"
    N_TRIALS = "orch.n_trials"
    SEED = "orch.seed"
    SEEDS = "orch.seeds"  # a tuning study's or trial's seeds, "0,1,2": each trial trains every one
    BEST_RUN_ID = "orch.best_run_id"
    BEST_PREFIX = "best."  # best.<dotted key>: the best trial's value of a searched key
    # MLflow's own tags that orch sets
    PARENT_RUN_ID = "mlflow.parentRunId"
    GIT_SOURCE = "mlflow.source.git.commit"
    NOTE = "mlflow.note.content"  # a run's description (markdown), shown on its overview page
    EXPERIMENT_KIND = "mlflow.experimentKind"  # experiment tag: which view the MLflow UI opens
    DATA_CONTEXT = "mlflow.data.context"  # dataset input tag: train / val / test

    @staticmethod
    def trial_count(state: str) -> str:
        """``"COMPLETE"`` → ``"orch.n_complete"``: a tune parent's count of trials in that state."""
        return f"orch.n_{state.lower()}"


class Kind:
    """Values of ``Tag.KIND``."""

    RUN = "run"  # orch run
    POINT = "point"  # a sweep's point
    TRIAL = "trial"  # an orch tune trial
    TRIAL_SEED = "trial_seed"  # one seed's training run of a trial over several seeds (child of the trial)
    SWEEP = "sweep"  # a sweep's parent
    TUNE = "tune"  # a tuning study's parent


TRAINING_EXPERIMENT = "custom_model_development"  # Tag.EXPERIMENT_KIND: the UI's training-runs view


class Status:
    """MLflow run statuses."""

    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    LIVE = (RUNNING, SCHEDULED)


class TrialState:
    """Values of ``Tag.TRIAL_STATE`` (Optuna's trial states, by name)."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"


class Artifact:
    """Artifact paths inside a run."""

    GRID = "grid.yaml"
    POINTS = "points.json"
    SEPARATION = "separation.json"  # a --until-separated sweep's verdict (read by --confirm)
    SUMMARY = "summary.csv"
    VAL_CURVES = "plots/val_curves.png"
    CONFIG = "config.yaml"
    CHECKPOINT_DIR = "checkpoint"  # checkpoint/ckpt-0.pkl and ckpt-1.pkl, written in turn
    TRACEBACK = "error/traceback.txt"
    ENVIRONMENT = "environment.txt"  # the installed packages, one `name==version` a line, sorted
    CODE_DIFF = "code/diff.patch"  # the entry's repository's uncommitted changes (tracked files, vs its commit)
    SLURM_DIR = "slurm"  # a sweep parent's slurm/<job id>.sh (the job script) and slurm/<job id>.json
    MODEL = "model"
    CURVES = "plots/curves.png"
    QUANTILES_PLOT = "plots/quantiles.png"
    QUANTILES_CSV = "quantiles.csv"
    CONFUSION = "plots/confusion_test.png"
    TEST_REPORT = "test_report.json"
    TRIALS = "trials.csv"
    SPACE = "space.json"
    OPTIMIZATION_HISTORY = "plots/optimization_history.png"
    PARAM_IMPORTANCES = "plots/param_importances.png"
    # `orch report`'s figures, on a sweep's parent (file names also used by `--out DIR`)
    REPORT_CURVES = "report/training_curves.png"
    REPORT_QUANTILES = "report/quantiles.png"
    REPORT_TEST_ACC = "report/test_acc.png"

    @staticmethod
    def metric_by_axis(metric: str, axis: str) -> str:
        return f"plots/{metric}_by_{axis}.png"

    @staticmethod
    def report_by_setting(metric: str) -> str:
        """`orch report`'s bars of a held-out score by setting: ``report/test_acc.png`` (REPORT_TEST_ACC)."""
        return f"report/{metric}.png"


class TrialAttr:
    """Optuna user attributes of a queued point's trial (and of a tuning trial)."""

    RUN_KEY = Tag.RUN_KEY
    NAME = "orch.name"
    JOB = "orch.job"  # the point's job (orchestrator.execute.job.Job.to_dict)
    ATTEMPT = Tag.ATTEMPT
    WORKER = "orch.worker"
    RUN_ID = "orch.run_id"
    FAILURE_REASON = Tag.FAILURE_REASON
    DISCARDED = "orch.discarded"  # a fresh trial that a worker got instead of a point
    HOST = Tag.HOST
    PID = Tag.PID
    RESUMES = "orch.resumes_trial"  # a tuning trial queued again: the number of the stopped trial it continues
    RESUME_RUN = "orch.resume_run"  # ... that trial's run, continued from its checkpoint
    RESUME_REPORTS = "orch.resume_reports"  # ... and what it had reported to the pruner, by step


class StudyAttr:
    """Optuna user attributes of a queued sweep's study and of a tuning study."""

    KIND = Tag.KIND  # Kind.SWEEP or Kind.TUNE
    NAME = TrialAttr.NAME
    SWEEP = Tag.SWEEP
    TRACKING_URI = "orch.tracking_uri"
    EXPERIMENT_ID = "orch.experiment_id"
    PARENT_RUN_ID = "orch.parent_run_id"
    N_POINTS = Tag.N_POINTS
    METRIC = Tag.METRIC
    SETTING = Tag.SETTING
    FIXED_CONFIG = "orch.fixed_config"
    WORKER_JOB = "orch.worker_job"
    SEEDS = Tag.SEEDS  # [0, 1, 2]: the seeds every trial trains (absent: the fixed config's seed)


def tag_filter(key: str, value: str, op: str = "=") -> str:
    """An MLflow search clause on a tag: ``tags.`orch.kind` = 'sweep'``."""
    return f"tags.`{key}` {op} '{value}'"


def is_finished_result(status: str, tags: Mapping[str, str]) -> bool:
    """The one rule for "this run counts as a result": FINISHED, keyed by a run key, and
    not a trial that the tuner pruned (a pruned trial is stopped early, not finished)."""
    return status == Status.FINISHED and Tag.RUN_KEY in tags and tags.get(Tag.TRIAL_STATE) != TrialState.PRUNED


# ------------------------------------------------------------------- plain data


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as plain data (:func:`orchestrator.store.tracking.to_record`), what the
    analysis reads."""

    run_id: str
    name: str  # e.g. "gn-bs8-s0"
    status: str  # MLflow status: FINISHED | FAILED | KILLED | RUNNING | SCHEDULED
    params: Mapping[str, str]  # dotted config keys -> string values
    metrics: Mapping[str, float]  # latest values: summary ("val_f1_macro") and "epoch/..." ones
    tags: Mapping[str, str]  # Tag keys: run key, point, setting, kind, ...
    start_time: int  # ms since epoch
    # the step of each latest value: 0 for a summary metric (logged once, at the end), the last
    # step for one logged per step; empty when unknown (then every metric counts as a summary)
    steps: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ExpectedPoint:
    """One point of a sweep's grid, as listed in the parent's ``points.json``."""

    name: str  # the child run's name, e.g. "gn-bs8-s0"
    run_key: str
    point: Mapping[str, Any]  # axis -> value, including "seed"
    setting: str  # the point without its seed: "lr=0.1,width=64"
    index: int = 0  # position in the sweep's (seed-major) order
    added: bool = False  # a seed --until-separated added beyond the grid's own

    def to_json(self) -> dict[str, Any]:
        out = {"index": self.index, "name": self.name, "run_key": self.run_key, "point": dict(self.point),
               "setting": self.setting}
        return {**out, "added": True} if self.added else out


def points_json(points: Iterable[ExpectedPoint]) -> str:
    return json.dumps([p.to_json() for p in points], indent=1)


def read_points(data: Sequence[Mapping[str, Any]]) -> list[ExpectedPoint]:
    """``points.json`` (parsed) → ExpectedPoints: the one place that reads that file's layout."""
    return [ExpectedPoint(name=p["name"], run_key=p["run_key"], point=p["point"], setting=p["setting"],
                          index=int(p.get("index", i)), added=bool(p.get("added", False)))
            for i, p in enumerate(data)]
