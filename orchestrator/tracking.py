"""MLflow, and only here: the tracking store of one command, run lifecycle, lookups.

A command resolves its tracking URI, opens one :class:`TrackingStore` and passes it
down; every other module goes through it. mlflow itself is imported inside the store,
so ``orch --help`` and grid validation never pay for it (about 2 s here). The names of
tags, kinds and artifacts are those of :mod:`orchestrator.schema`.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from orchestrator import processes
from orchestrator.errors import UserError
from orchestrator.schema import TRAINING_EXPERIMENT, Artifact, Kind, Status, Tag, is_finished_result, tag_filter


class TrackingError(UserError):
    """The tracking store cannot be used as given: names the URI and the fix."""


# --------------------------------------------------------------------------- URIs


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    SQLite paths are made absolute so that child processes started elsewhere agree. A
    bare path or ``file:`` URI would select MLflow's file store, which MLflow 3.13+
    refuses; a path ending in ``.db`` is taken as SQLite, anything else is an error.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:":
            return f"sqlite:///{Path(path).expanduser().resolve()}"
        raise TrackingError(f"{uri}: give the SQLite file a path, e.g. sqlite:///{Path.cwd() / 'mlflow.db'}")
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in ("http", "https", "databricks") or scheme.startswith(("postgresql", "mysql", "mssql")):
        return uri
    if not scheme or scheme == "file":
        path = uri[len("file://"):] if scheme == "file" else uri
        if path.endswith(".db"):
            return f"sqlite:///{Path(path).expanduser().resolve()}"
        raise TrackingError(
            f"{uri}: a folder selects MLflow's file store, which MLflow refuses; "
            f"use a SQLite file such as sqlite:///{Path(path).expanduser().resolve() / 'mlflow.db'} "
            "or an http:// tracking server"
        )
    raise TrackingError(f"{uri}: unsupported tracking URI scheme {scheme!r}; use sqlite:///PATH.db or http://HOST:PORT")


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite file, else the server's choice."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").as_uri() if db else None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any work starts, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"tracking server {uri} is not reachable ({reason}); start it (mlflow server …) or fix --tracking-uri"
        ) from None


def check_store(uri: str, *, write: bool) -> None:
    """Refuse, within a second and before any work, a store that cannot be used as asked.

    A server must answer its health check. A SQLite store must be a file (not a folder)
    that SQLite can read and that holds MLflow's tables; with ``write`` (every command that
    records runs) its folder must take new files (SQLite writes a journal beside it, MLflow
    the artifacts folder) and the file must be writable; a missing file is created later
    by MLflow. Without ``write`` (compare, report, status, ui) a missing file is an error:
    reading never creates a store. MLflow itself would retry a locked or read-only SQLite
    file with back-off for about 100 s and then print a long traceback.

    Raises:
        TrackingError: naming the path and the fix.
    """
    db = sqlite_path(uri)
    if db is None:
        check_reachable(uri)
        return
    if db.is_dir():
        raise TrackingError(f"{db} is a folder, not a SQLite file; use e.g. --tracking-uri sqlite:///{db / 'mlflow.db'}")
    if not db.exists():
        if not write:
            raise TrackingError(f"no MLflow store at {db}; run `orch sweep` or `orch run` first, or point "
                                "--tracking-uri (or MLFLOW_TRACKING_URI) at an existing store")
        _check_writable_folder(db.parent, db)
        return
    _check_sqlite_file(db)
    if write:
        _check_writable_folder(db.parent, db)
        if not os.access(db, os.W_OK):
            raise TrackingError(f"{db} is read-only; make it writable, or copy it somewhere writable and point "
                                "--tracking-uri at the copy")
        artifacts = db.parent / "mlartifacts"
        if artifacts.exists() and not os.access(artifacts, os.W_OK | os.X_OK):
            raise TrackingError(f"the artifact folder {artifacts} is not writable; fix its permissions")


def _initialised(db: Path) -> bool:
    """Whether a SQLite store file exists and holds MLflow's migration table."""
    if not db.exists():
        return False
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone() is not None
        finally:
            con.close()
    except sqlite3.Error:
        return False


def _check_writable_folder(folder: Path, db: Path) -> None:
    """Create and remove a file in ``folder``: the only test that also catches read-only mounts."""
    if not folder.is_dir():
        raise TrackingError(f"cannot create the store {db}: the folder {folder} does not exist; create it "
                            "or choose another --tracking-uri")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".orch-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise TrackingError(f"cannot write in {folder} ({err.strerror}), where the store {db.name} and its "
                            "artifacts live; choose a writable --tracking-uri") from None


def _check_sqlite_file(db: Path) -> None:
    """The file is a SQLite database with MLflow's tables (or empty: MLflow creates them)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error as err:
        raise TrackingError(f"{db} is not a usable SQLite database ({err}); move it away, or point "
                            "--tracking-uri at another file") from None
    if tables and "experiments" not in tables:
        raise TrackingError(f"{db} is a SQLite database but not an MLflow store (no experiments table); "
                            "point --tracking-uri at another file")


def preload() -> None:
    """Import the parts of mlflow that a run uses (a point process does it before its job comes)."""
    import mlflow.entities  # noqa: F401
    import mlflow.pytorch  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401


_CONFIGURED = False


def _configure_mlflow() -> None:
    """Process-wide MLflow settings, applied once, when the first store is opened.

    MLflow reads these from the environment only. orch downloads only small JSON
    artifacts, and MLflow's progress bar for them would land in the middle of printed
    tables; creating a new store's tables is not news either. The async buffer makes
    MLflow's logging thread gather a couple of seconds of epochs into one write and stop
    waiting at once when flushed (without it, it polls with a one-second timeout that
    every flush waits out).
    """
    global _CONFIGURED
    if _CONFIGURED:
        return
    import logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "2")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    _CONFIGURED = True


def runtime_tags() -> dict[str, str]:
    """Software, hardware and source version of this process, for reproducibility."""
    import torch

    tags = {
        Tag.HOST: socket.gethostname(),
        Tag.PID: str(os.getpid()),
        Tag.TORCH_VERSION: torch.__version__,
        Tag.CUDA_VERSION: torch.version.cuda or "none",
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        if commit.returncode == 0:
            tags[Tag.GIT_SOURCE] = commit.stdout.strip()
            tags[Tag.GIT_COMMIT] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def _metrics(values: Mapping[str, float], step: int) -> list:
    """MLflow Metric entities for one step, stamped now."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]


def _param_str(value: Any) -> str:
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else str(value)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _flush_async(client: Any) -> None:
    """Write what MLflow's async logging thread holds for ``client``'s store now.

    MLflow has no public per-client flush: ``mlflow.flush_async_logging()`` flushes the
    store of the process-wide tracking URI, which orch never sets. Without this the
    pending writes still complete, after the buffer time (``RunOperations.wait``).
    """
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if hasattr(store, "flush_async_logging"):
        store.flush_async_logging()


# --------------------------------------------------------------------------- the store


class TrackingStore:
    """One MLflow tracking store (a SQLite file or a server), opened once per command."""

    def __init__(self, uri: str):
        _configure_mlflow()
        from mlflow.tracking import MlflowClient

        self.uri = uri
        db = sqlite_path(uri)
        if db is not None and not _initialised(db):
            # MLflow creates a new store's tables when a client first opens it; two processes
            # doing that at once race in the migration and one crashes. The first opens it
            # under this lock, the second waits and finds the tables made.
            from filelock import FileLock

            with FileLock(db.parent / f".{db.name}.init-lock"):
                self.client = MlflowClient(tracking_uri=uri)
        else:
            self.client = MlflowClient(tracking_uri=uri)

    # -- experiments
    def ensure_experiment(self, name: str) -> str:
        """The id of experiment ``name``, created (artifacts beside a SQLite store) if missing.

        A deleted experiment of that name is restored rather than shadowed.
        """
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            if Tag.EXPERIMENT_KIND not in exp.tags:  # never overwrite a user's choice
                self.client.set_experiment_tag(exp.experiment_id, Tag.EXPERIMENT_KIND, TRAINING_EXPERIMENT)
            return exp.experiment_id
        root = artifact_root(self.uri)
        try:
            return self.client.create_experiment(name, artifact_location=root and f"{root}/{_safe(name)}",
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
        params_list = [Param(k, _param_str(v)) for k, v in params.items()]
        for i in range(0, len(params_list), 100):
            self.client.log_batch(run.info.run_id, params=params_list[i:i + 100])
        return run.info.run_id

    def end_run(self, run_id: str, status: str, reason: str | None = None, details: str | None = None) -> None:
        """Set the final status; a reason becomes ``Tag.FAILURE_REASON``, details the traceback artifact."""
        from mlflow.exceptions import MlflowException

        if reason:
            self.client.set_tag(run_id, Tag.FAILURE_REASON, reason[:4000])
        if details:
            try:
                self.client.log_text(run_id, details, Artifact.TRACEBACK)
            except (MlflowException, OSError):  # the status matters more than the artifact
                pass
        self.client.set_terminated(run_id, status=status)

    def reopen_run(self, run_id: str) -> None:
        """Mark an ended run RUNNING again (a resumed sweep's parent)."""
        self.client.update_run(run_id, status=Status.RUNNING)

    def run_status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def failure_reason(self, run_id: str) -> str | None:
        return self.client.get_run(run_id).data.tags.get(Tag.FAILURE_REASON)

    # -- writing to a run
    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def log_figure(self, run_id: str, figure: Any, path: str) -> None:
        # Fast PNG compression: the figures are small and drawing them already costs enough.
        self.client.log_figure(run_id, figure, path, save_kwargs={"pil_kwargs": {"compress_level": 1}})

    def log_metrics(self, run_id: str, values: Mapping[str, float], step: int = 0, *,
                    synchronous: bool = True) -> Any:
        """Metrics on a run at one step; asynchronous writes return a handle to ``wait()`` on."""
        return self.client.log_batch(run_id, metrics=_metrics(values, step), synchronous=synchronous)

    def log_artifacts(self, run_id: str, local_dir: str, path: str) -> None:
        self.client.log_artifacts(run_id, local_dir, path)

    def log_artifact(self, run_id: str, local_path: str, path: str) -> None:
        self.client.log_artifact(run_id, local_path, path)

    def download_artifact(self, run_id: str, path: str, dst: str) -> str:
        return self.client.download_artifacts(run_id, path, dst)

    def delete_artifacts(self, run_id: str, path: str) -> None:
        """Remove an artifact folder of a run.

        MlflowClient has no delete; the run's artifact repository does (local folders and
        an ``mlflow server``'s proxied artifacts both implement it).
        """
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(self.get_run(run_id).info.artifact_uri, tracking_uri=self.uri)
        repo.delete_artifacts(path)

    def set_note(self, run_id: str, markdown: str) -> None:
        """The run's description on its MLflow overview page."""
        self.client.set_tag(run_id, Tag.NOTE, markdown)

    def log_datasets(self, run_id: str, data: Mapping[str, Any]) -> None:
        """The run's data as MLflow dataset inputs, one per split (the UI's Dataset column).

        ``data``: ``name``, ``source`` (a path or a loader), ``splits``: split -> (examples,
        content digest), as :func:`experiments.train.describe_data` gives it.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for split, (size, digest) in data["splits"].items():
            dataset = Dataset(name=f"{data['name']}-{split}", digest=digest[:36], source_type="local",
                              source=json.dumps({"uri": data["source"]}),
                              profile=json.dumps({"num_rows": size, "split": split, "classes": data["classes"]}))
            inputs.append(DatasetInput(dataset, tags=[InputTag(Tag.DATA_CONTEXT, split)]))
        self.client.log_inputs(run_id, datasets=inputs)

    def system_metrics(self, run_id: str):
        """MLflow's system-metrics monitor (CPU, memory, disk, network; GPU with nvidia-ml-py)
        on this run while the block runs, sampling every ``ORCH_SYSTEM_METRICS_SECONDS``
        (default 10; 0 turns it off), with one last sample at the end so that a run shorter
        than the interval still has one."""
        return _SystemMetrics(self.uri, run_id, float(os.environ.get("ORCH_SYSTEM_METRICS_SECONDS", "10")))

    def delete_tag(self, run_id: str, key: str) -> None:
        self.client.delete_tag(run_id, key)

    def log_history(self, run_id: str, history: Mapping[str, Sequence[float]], times: Sequence[int]) -> None:
        """Per-epoch metrics of earlier epochs (a resumed run's carried epochs), each at its own
        step and original timestamp."""
        from mlflow.entities import Metric

        metrics = [Metric(key, float(v), times[i], i + 1) for key, values in history.items()
                   for i, v in enumerate(values[: len(times)])]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def flush_async(self) -> None:
        _flush_async(self.client)

    # -- reading
    def metric_history(self, run_id: str, key: str) -> list[float]:
        hist = self.client.get_metric_history(run_id, key)
        return [m.value for m in sorted(hist, key=lambda m: m.step)]

    def download_json(self, run_id: str, path: str) -> Any:
        import mlflow.artifacts

        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=self.uri)
        return json.loads(Path(local).read_text())

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

    def finished_runs(self, experiment_id: str, kind: str | None = None):
        """The experiment's finished results (:func:`schema.is_finished_result`), of one ``Tag.KIND``."""
        where = f"attributes.status = '{Status.FINISHED}'"
        if kind:
            where += " and " + tag_filter(Tag.KIND, kind)
        return [r for r in self.search([experiment_id], where) if is_finished_result(r.info.status, r.data.tags)]

    def finished_run_keys(self, experiment_id: str, kind: str | None = None) -> set[str]:
        return {r.data.tags[Tag.RUN_KEY] for r in self.finished_runs(experiment_id, kind)}

    def find_sweep_parent(self, experiment_id: str, sweep_id: str):
        runs = self.search([experiment_id], f"{tag_filter(Tag.SWEEP, sweep_id)} and {tag_filter(Tag.KIND, Kind.SWEEP)}",
                           order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def sweep_parents(self, experiment_ids: Iterable[str]):
        """Sweep parent runs, newest first."""
        ids = list(experiment_ids)
        if not ids:
            return []
        return self.search(ids, tag_filter(Tag.KIND, Kind.SWEEP), order_by=["attributes.start_time DESC"])

    def sweep_children(self, experiment_id: str, sweep_id: str):
        return self.search([experiment_id],
                           f"{tag_filter(Tag.SWEEP, sweep_id)} and {tag_filter(Tag.KIND, Kind.SWEEP, '!=')}")

    def tune_parents(self, experiment_id: str):
        return self.search([experiment_id], tag_filter(Tag.KIND, Kind.TUNE), order_by=["attributes.start_time DESC"])

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
        """End a run that is still RUNNING; True when it was."""
        if self.run_status(run_id) in Status.LIVE:
            self.end_run(run_id, status, reason, details)
            return True
        return False

    def tracker(self, run_id: str) -> MlflowTracker:
        return MlflowTracker(self, run_id)


class _SystemMetrics:
    """Context manager around ``mlflow.system_metrics.SystemMetricsMonitor``."""

    def __init__(self, uri: str, run_id: str, interval: float):
        self.uri, self.run_id, self.interval, self.monitor = uri, run_id, interval, None

    def __enter__(self) -> _SystemMetrics:
        if self.interval > 0:
            import logging

            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)  # "Skip logging GPU metrics" etc.
            self.monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.interval, tracking_uri=self.uri)
            self.monitor.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.monitor is None:
            return
        self.monitor.finish()
        self.monitor.collect_metrics()
        self.monitor.publish_metrics(self.monitor.aggregate_metrics())
        self.monitor.mlflow_logger.flush()


def to_record(run):
    """An MLflow Run → :class:`orchestrator.compare.RunRecord`."""
    from orchestrator.compare import RunRecord

    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        status=run.info.status,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
        start_time=run.info.start_time or 0,
    )


# --------------------------------------------------------------------------- one tracked run


class MlflowTracker:
    """The training loop's Tracker, writing into one MLflow run."""

    wants_artifacts = True

    def __init__(self, store: TrackingStore, run_id: str):
        self.store = store
        self.run_id = run_id
        self._pending: list[Any] = []

    def log_data(self, data: dict[str, Any]) -> None:
        self.store.log_datasets(self.run_id, data)

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        # Asynchronous: the write happens on MLflow's logging thread while the next epoch
        # trains. flush() waits for every pending write; the run is never ended before it.
        from experiments.metric_names import epoch_key

        self._pending.append(self.store.log_metrics(self.run_id, {epoch_key(k): v for k, v in values.items()},
                                                    step=epoch, synchronous=False))

    def log_summary(self, values: dict[str, float]) -> None:
        self.flush()
        self.store.log_metrics(self.run_id, values, step=0)

    def flush(self) -> None:
        """Wait until every asynchronous write has reached the store; raise the first error."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        self.store.flush_async()
        for op in pending:
            if op is not None:
                op.wait()

    def log_figure(self, figure: Any, path: str) -> None:
        self.store.log_figure(self.run_id, figure, path)

    def log_text(self, text: str, path: str) -> None:
        self.store.log_text(self.run_id, text, path)

    def log_model(self, model: Any, example: Any) -> None:
        import logging
        import tempfile

        import mlflow.pytorch

        # Saved as an MLflow model directory and uploaded as the run's ``model`` artifact:
        # ``mlflow.pytorch.load_model("runs:/<run id>/model")`` loads it. (log_model would
        # also register a LoggedModel entity, several times slower for no use here.)
        # Pickle format: the pt2 default needs torch.export of the whole model, and the
        # explicit requirements skip MLflow's slow requirement inference. Loading needs
        # this package importable, as any pickled module does.
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
        with tempfile.TemporaryDirectory(prefix="orch-model-") as tmp:
            path = os.path.join(tmp, "model")
            mlflow.pytorch.save_model(
                model.cpu(),
                path,
                serialization_format="pickle",
                pip_requirements=[f"torch=={_version('torch')}", f"mlflow=={_version('mlflow')}"],
            )
            self.store.log_artifacts(self.run_id, path, Artifact.MODEL)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
