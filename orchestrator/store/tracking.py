"""MLflow, and only here: the tracking store of one command (:class:`TrackingStore`), run lifecycle, lookups.

mlflow is imported inside the store, so ``orch --help`` and grid validation never pay for it
(about 2 s). Writes are batched: tags with a run's creation, params and each ``run.log()`` in one
``log_batch`` (at most 100 params a call), :meth:`TrackingStore.set_tags` in one call.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from orchestrator import processes
from orchestrator.store.failures import store_errors, store_failures_raised
from orchestrator.store.schema import (TRAINING_EXPERIMENT, Artifact, Kind, RunRecord, Status, Tag,
                                       is_finished_result, tag_filter)
from orchestrator.store.uri import artifact_root, init_lock_path, initialised, sqlite_path

PNG = {"pil_kwargs": {"compress_level": 1}}  # small figures: fast compression (drawing them costs enough)
PARAMS_PER_CALL = 100  # MLflow's limit on params in one log_batch
METRICS_PER_CALL = 1000  # ... and on metrics


def preload() -> None:
    """Import the parts of mlflow that a run uses (a point process does it before its job comes)."""
    import mlflow.entities  # noqa: F401
    import mlflow.pytorch  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401


@functools.cache
def _configure_mlflow() -> None:
    """Process-wide MLflow settings (read from the environment only), once: no progress bar in the
    middle of printed tables; the async buffer gathers a couple of seconds of epochs into one
    write and stops waiting at once when flushed (else every flush waits out a 1 s poll)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "2")
    # It also logs every failed SQL session with its traceback at ERROR; the failure
    # reaches orch as a StoreFailure, which says it in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def runtime_tags() -> dict[str, str]:
    """Host, process and torch of this process (the code's version: :mod:`orchestrator.store.provenance`)."""
    import torch

    return {
        Tag.HOST: socket.gethostname(),
        Tag.PID: str(os.getpid()),
        Tag.TORCH_VERSION: torch.__version__,
        Tag.CUDA_VERSION: torch.version.cuda or "none",
    }


class SystemMetrics:
    """MLflow's system metrics around a run's code: ``mlflow.system_metrics.SystemMetricsMonitor``."""

    def __init__(self, uri: str, run_id: str, interval: float):
        self.uri, self.run_id, self.interval, self.monitor = uri, run_id, interval, None

    def __enter__(self) -> SystemMetrics:
        if self.interval > 0:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)  # "Skip logging GPU metrics" etc.
            self.monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.interval, tracking_uri=self.uri)
            self.monitor.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.monitor is None:
            return
        self.monitor.finish()
        with store_errors(self.uri):  # the last sample is written here, through MLflow's own client
            self.monitor.collect_metrics()
            self.monitor.publish_metrics(self.monitor.aggregate_metrics())
            self.monitor.mlflow_logger.flush()


@store_failures_raised
class TrackingStore:
    """One MLflow tracking store (a SQLite file or a server), opened once per command. Its methods
    raise :class:`~orchestrator.errors.StoreFailure` when the store itself fails; MLflow's request
    errors (no such run, …) pass unchanged."""

    UNGUARDED = ("system_metrics",)  # it returns an object whose own calls are guarded

    def __init__(self, uri: str):
        _configure_mlflow()
        from filelock import FileLock
        from mlflow.tracking import MlflowClient

        self.uri = uri
        db = sqlite_path(uri)
        with store_errors(uri):
            # MLflow creates a new store's tables when a client first opens it; two processes
            # doing that at once race in the migration and one crashes. The first opens it
            # under this lock, the second waits and finds the tables made.
            fresh = db is not None and not initialised(db)
            with FileLock(init_lock_path(db)) if fresh else contextlib.nullcontext():
                self.client = MlflowClient(tracking_uri=uri)

    # -- experiments
    def ensure_experiment(self, name: str) -> str:
        """The id of experiment ``name``, created (artifacts beside a SQLite store) if missing; a
        deleted one of that name is restored rather than shadowed."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            if Tag.EXPERIMENT_KIND not in exp.tags:  # never overwrite a user's choice
                self.client.set_experiment_tag(exp.experiment_id, Tag.EXPERIMENT_KIND, TRAINING_EXPERIMENT)
            return exp.experiment_id
        root = artifact_root(self.uri)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        try:
            return self.client.create_experiment(name, artifact_location=root and f"{root}/{safe}",
                                                 tags={Tag.EXPERIMENT_KIND: TRAINING_EXPERIMENT})
        except MlflowException:  # created concurrently by another process
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def experiment_id(self, name: str) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        return exp.experiment_id if exp is not None and exp.lifecycle_stage == "active" else None

    def experiment_ids(self) -> list[str]:
        return [e.experiment_id for e in self.client.search_experiments()]

    def experiment_names(self) -> list[str]:
        return sorted(e.name for e in self.client.search_experiments())

    # -- run lifecycle
    def start_run(self, experiment_id: str, *, run_name: str | None, params: Mapping[str, Any],
                  tags: Mapping[str, str], parent_run_id: str | None = None) -> str:
        """Create a RUNNING run with its params and tags; returns its id."""
        from mlflow.entities import Param

        all_tags = dict(tags)
        if parent_run_id:
            all_tags[Tag.PARENT_RUN_ID] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        params_list = [Param(k, json.dumps(list(v)) if isinstance(v, (list, tuple)) else str(v))
                       for k, v in params.items()]
        for i in range(0, len(params_list), PARAMS_PER_CALL):
            self.client.log_batch(run.info.run_id, params=params_list[i:i + PARAMS_PER_CALL])
        return run.info.run_id

    def end_run(self, run_id: str, status: str, reason: str | None = None, details: str | None = None) -> None:
        """Set the final status; a reason becomes ``Tag.FAILURE_REASON``, details the traceback
        artifact. A run that ends FINISHED keeps no reason an earlier attempt ended with."""
        from mlflow.exceptions import MlflowException

        if reason:
            self.client.set_tag(run_id, Tag.FAILURE_REASON, reason[:4000])
        elif status == Status.FINISHED:
            self._drop_failure_reason(run_id)
        if details:
            with contextlib.suppress(MlflowException, OSError):  # the status matters more than the artifact
                self.client.log_text(run_id, details, Artifact.TRACEBACK)
        self.client.set_terminated(run_id, status=status)

    def reopen_run(self, run_id: str) -> None:
        """Mark an ended run RUNNING again (a resumed sweep's or study's parent); the reason it
        ended with no longer holds (its traceback artifact stays, as that attempt's record)."""
        self.client.update_run(run_id, status=Status.RUNNING)
        self._drop_failure_reason(run_id)

    def _drop_failure_reason(self, run_id: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_tag(run_id, Tag.FAILURE_REASON)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":  # no reason, or another process dropped it first
                raise

    def run_status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def failure_reason(self, run_id: str) -> str | None:
        return self.client.get_run(run_id).data.tags.get(Tag.FAILURE_REASON)

    # -- writing to a run
    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def log_figure(self, run_id: str, figure: Any, path: str) -> None:
        self.client.log_figure(run_id, figure, path, save_kwargs=PNG)

    def log_metrics(self, run_id: str, values: Mapping[str, float], step: int = 0, *,
                    synchronous: bool = True) -> Any:
        """Metrics on a run at one step, stamped now; asynchronous writes return a handle to ``wait()`` on."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        return self.client.log_batch(run_id, metrics=metrics, synchronous=synchronous)

    def log_artifacts(self, run_id: str, local_dir: str, path: str) -> None:
        self.client.log_artifacts(run_id, local_dir, path)

    def log_artifact(self, run_id: str, local_path: str, path: str) -> None:
        self.client.log_artifact(run_id, local_path, path)

    def download_artifact(self, run_id: str, path: str, dst: str) -> str:
        return self.client.download_artifacts(run_id, path, dst)

    def delete_artifacts(self, run_id: str, path: str) -> None:
        """Remove an artifact folder of a run (through its artifact repository: MlflowClient has no delete)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(self.get_run(run_id).info.artifact_uri, tracking_uri=self.uri)
        repo.delete_artifacts(path)

    def set_note(self, run_id: str, markdown: str) -> None:
        self.client.set_tag(run_id, Tag.NOTE, markdown)

    def system_metrics(self, run_id: str):
        """MLflow's system metrics on this run while the block runs, every ``ORCH_SYSTEM_METRICS_SECONDS``
        (default 10; 0: off), with one last sample at the end for a run shorter than that."""
        return SystemMetrics(self.uri, run_id, float(os.environ.get("ORCH_SYSTEM_METRICS_SECONDS", "10")))

    def delete_tag(self, run_id: str, key: str) -> None:
        self.client.delete_tag(run_id, key)

    def copy_history(self, source: str, run_id: str, up_to_step: int) -> None:
        """The metrics run ``source`` logged at steps up to ``up_to_step`` (a resumed run's carried
        steps), each at its own step and original timestamp; MLflow's system metrics stay behind."""
        metrics = [m for key in self.get_run(source).data.metrics if not key.startswith("system/")
                   for m in self.client.get_metric_history(source, key) if m.step <= up_to_step]
        for i in range(0, len(metrics), METRICS_PER_CALL):
            self.client.log_batch(run_id, metrics=metrics[i:i + METRICS_PER_CALL])

    # -- reading
    def metric_history(self, run_id: str, key: str) -> list[float]:
        hist = self.client.get_metric_history(run_id, key)
        return [m.value for m in sorted(hist, key=lambda m: m.step)]

    def download_text(self, run_id: str, path: str, *, missing_ok: bool = False) -> str | None:
        """An artifact's text; with ``missing_ok``, None when the run has no such artifact."""
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory(prefix="orch-artifact-") as tmp:
            try:
                return Path(self.client.download_artifacts(run_id, path, tmp)).read_text(errors="replace")
            except MlflowException as err:
                if not missing_ok or err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                return None

    def download_json(self, run_id: str, path: str) -> Any:
        return json.loads(self.download_text(run_id, path))

    def download_json_if_any(self, run_id: str, path: str) -> Any | None:
        """:meth:`download_json`, or None when the run has no such artifact."""
        text = self.download_text(run_id, path, missing_ok=True)
        return None if text is None else json.loads(text)

    def search(self, experiment_ids: Sequence[str], filter_string: str = "", order_by: Sequence[str] = ()):
        """All matching runs (every page)."""
        runs, token = [], None
        while True:
            page = self.client.search_runs(list(experiment_ids), filter_string=filter_string, max_results=1000,
                                           order_by=list(order_by) or None, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def finished_runs(self, experiment_id: str, run_key: str | None = None):
        """The experiment's finished results (:func:`schema.is_finished_result`), of one run key."""
        where = f"attributes.status = '{Status.FINISHED}'"
        where += f" and {tag_filter(Tag.RUN_KEY, run_key)}" if run_key else ""
        return [r for r in self.search([experiment_id], where) if is_finished_result(r.info.status, r.data.tags)]

    def finished_run_keys(self, experiment_id: str) -> set[str]:
        return {r.data.tags[Tag.RUN_KEY] for r in self.finished_runs(experiment_id)}

    def find_sweep_parent(self, experiment_id: str, sweep_id: str):
        runs = self.search([experiment_id], f"{tag_filter(Tag.SWEEP, sweep_id)} and {tag_filter(Tag.KIND, Kind.SWEEP)}",
                           order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def sweep_children(self, experiment_id: str, sweep_id: str):
        return self.search([experiment_id],
                           f"{tag_filter(Tag.SWEEP, sweep_id)} and {tag_filter(Tag.KIND, Kind.SWEEP, '!=')}")

    def fail_orphans(self, experiment_id: str, sweep_id: str, reason: str) -> list[str]:
        """Mark FAILED the live children of a sweep whose process is gone (see :mod:`processes`)."""
        failed = []
        for run in self.sweep_children(experiment_id, sweep_id):
            if run.info.status in Status.LIVE and processes.is_orphan(run.data.tags.get(Tag.HOST),
                                                                       run.data.tags.get(Tag.PID)):
                self.end_run(run.info.run_id, Status.FAILED, reason)
                failed.append(run.info.run_id)
        return failed

    def close_if_live(self, run_id: str, status: str, reason: str, details: str | None = None) -> bool:
        if self.run_status(run_id) in Status.LIVE:
            self.end_run(run_id, status, reason, details)
            return True
        return False


def to_record(run) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        status=run.info.status,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
        start_time=run.info.start_time or 0,
        steps={m.key: m.step for m in run.data.to_proto().metrics},
    )
