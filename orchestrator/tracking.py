"""MLflow, and only here: stores, experiments, run lifecycle, lookups by run key.

Every other module goes through these functions; mlflow itself is imported inside them
so that ``orch --help`` and grid validation never pay for it (about 2 s here).

Schema (what the other commands and the UI rely on):

* sweep parent run: name = grid name; tags ``orch.kind=sweep``, ``orch.sweep=<id>``;
  artifacts ``grid.yaml``, ``points.json``, later ``summary.csv`` and ``plots/``.
* tune parent run (one per Optuna study): name = study name; tags ``orch.kind=tune``,
  ``orch.study``, ``orch.storage`` (redacted), ``best.<key>`` (the best trial's params);
  metrics ``best_value``, ``best_trial``; artifacts ``grid.yaml``, ``trials.csv``, ``plots/``.
  Its children are ``orch.kind=trial`` runs tagged ``orch.study``, ``orch.trial`` (the
  trial number) and ``orch.trial_state`` (COMPLETE | PRUNED | FAIL).
* point run (child of the parent, or standalone for ``orch run``): tags ``orch.kind``
  (``point`` | ``run`` | ``trial``), ``orch.run_key``, ``orch.sweep``, ``orch.point``,
  ``orch.setting``, ``orch.attempt``, ``orch.host``, ``orch.pid``; params = the resolved
  config as dotted keys; metrics ``epoch/*`` (step = epoch) and the summary metrics.
* a failed run carries ``orch.failure_reason`` and the artifact ``error/traceback.txt``.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

DEFAULT_EXPERIMENT = "orch"
FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"


class TrackingError(ValueError):
    """The tracking store cannot be used as given: names the URI and the fix."""


# --------------------------------------------------------------------------- store


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


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite file, else the server's choice."""
    db = _sqlite_path(uri)
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


def preload() -> None:
    """Import the parts of mlflow that a run uses (a point process does it before its job comes)."""
    import mlflow.entities  # noqa: F401
    import mlflow.pytorch  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401


def client(uri: str):
    import logging

    # orch downloads only small JSON artifacts; MLflow's progress bar for them would land in
    # the middle of printed tables. Creating a new store's tables is not news either.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a SQLite store) if missing.

    A deleted experiment of that name is restored rather than shadowed.
    """
    from mlflow.exceptions import MlflowException

    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_root(uri) and f"{artifact_root(uri)}/{_safe(name)}")
    except MlflowException:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def runtime_tags() -> dict[str, str]:
    """Software, hardware and source version of this process, for reproducibility."""
    import torch

    tags = {
        "orch.host": socket.gethostname(),
        "orch.pid": str(os.getpid()),
        "orch.torch_version": torch.__version__,
        "orch.cuda_version": torch.version.cuda or "none",
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
            tags["orch.git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


# --------------------------------------------------------------------------- one tracked run


class MlflowTracker:
    """The training loop's Tracker, writing into one MLflow run."""

    wants_artifacts = True

    def __init__(self, uri: str, run_id: str):
        # MLflow's logging thread then gathers the epochs of a couple of seconds into one
        # write and, when asked to flush, stops waiting at once; without the buffer it
        # polls its queue with a one-second timeout that every flush and run end waits out.
        os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "2")
        self.client = client(uri)
        self.run_id = run_id
        self._pending: list[Any] = []

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        # Asynchronous: the write happens on MLflow's logging thread while the next epoch
        # trains. flush() waits for every pending write; the run is never ended before it.
        self._pending.append(self._log_metrics({f"epoch/{k}": v for k, v in values.items()}, step=epoch,
                                               synchronous=False))

    def log_summary(self, values: dict[str, float]) -> None:
        self.flush()
        self._log_metrics(values, step=0)

    def flush(self) -> None:
        """Wait until every asynchronous write has reached the store; raise the first error."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        if hasattr(store, "flush_async_logging"):
            store.flush_async_logging()  # writes what is queued now instead of after the buffer time
        for op in pending:
            if op is not None:
                op.wait()

    def _log_metrics(self, values: Mapping[str, float], step: int, synchronous: bool = True) -> Any:
        return self.client.log_batch(self.run_id, metrics=_metrics(values, step), synchronous=synchronous)

    def log_figure(self, figure: Any, path: str) -> None:
        # Fast PNG compression: the figures are small and drawing them already costs enough.
        self.client.log_figure(self.run_id, figure, path, save_kwargs={"pil_kwargs": {"compress_level": 1}})

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, text, path)

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
            self.client.log_artifacts(self.run_id, path, "model")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def start_run(
    uri: str,
    experiment_id: str,
    *,
    run_name: str | None,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
) -> str:
    """Create a RUNNING run with its params and tags; returns its id."""
    from mlflow.entities import Param

    c = client(uri)
    all_tags = dict(tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id, run_name=run_name, tags=all_tags)
    params_list = [Param(k, _param_str(v)) for k, v in params.items()]
    for i in range(0, len(params_list), 100):
        c.log_batch(run.info.run_id, params=params_list[i:i + 100])
    return run.info.run_id


def _param_str(value: Any) -> str:
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else str(value)


def end_run(uri: str, run_id: str, status: str, reason: str | None = None, details: str | None = None) -> None:
    """Set the final status; a reason becomes the tag ``orch.failure_reason``, details an artifact."""
    c = client(uri)
    if reason:
        c.set_tag(run_id, "orch.failure_reason", reason[:4000])
    if details:
        try:
            c.log_text(run_id, details, "error/traceback.txt")
        except Exception:  # noqa: BLE001 - the status matters more than the artifact
            pass
    c.set_terminated(run_id, status=status)


def run_status(uri: str, run_id: str) -> str:
    return client(uri).get_run(run_id).info.status


# --------------------------------------------------------------------------- lookups


def search(uri: str, experiment_ids: Sequence[str], filter_string: str = "", order_by: Sequence[str] = ()):
    """All matching runs (every page)."""
    c = client(uri)
    runs, token = [], None
    while True:
        page = c.search_runs(list(experiment_ids), filter_string=filter_string, max_results=1000,
                             order_by=list(order_by) or None, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def experiment_id(uri: str, name: str) -> str | None:
    exp = client(uri).get_experiment_by_name(name)
    return exp.experiment_id if exp is not None and exp.lifecycle_stage == "active" else None


def experiment_names(uri: str) -> list[str]:
    return sorted(e.name for e in client(uri).search_experiments())


def finished_runs(uri: str, experiment_id: str, kind: str | None = None):
    """FINISHED, non-pruned runs of the experiment that carry a run key (of that ``orch.kind``)."""
    where = "attributes.status = 'FINISHED'"
    if kind:
        where += f" and tags.`orch.kind` = '{kind}'"
    return [r for r in search(uri, [experiment_id], where)
            if "orch.run_key" in r.data.tags and r.data.tags.get("orch.trial_state") != "PRUNED"]


def finished_run_keys(uri: str, experiment_id: str, kind: str | None = None) -> set[str]:
    """Run keys that already have a FINISHED, non-pruned run in the experiment (of that ``orch.kind``)."""
    return {r.data.tags["orch.run_key"] for r in finished_runs(uri, experiment_id, kind)}


def find_sweep_parent(uri: str, experiment_id: str, sweep_id: str):
    runs = search(uri, [experiment_id], f"tags.`orch.sweep` = '{sweep_id}' and tags.`orch.kind` = 'sweep'",
                  order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def sweep_parents(uri: str, experiment_ids: Iterable[str]):
    """Sweep parent runs, newest first."""
    ids = list(experiment_ids)
    if not ids:
        return []
    return search(uri, ids, "tags.`orch.kind` = 'sweep'", order_by=["attributes.start_time DESC"])


def sweep_children(uri: str, experiment_id: str, sweep_id: str):
    return search(uri, [experiment_id], f"tags.`orch.sweep` = '{sweep_id}' and tags.`orch.kind` != 'sweep'")


def fail_orphans(uri: str, experiment_id: str, sweep_id: str, reason: str) -> list[str]:
    """Mark RUNNING children of a sweep FAILED when the process that ran them is gone.

    A child's process is known by the tags ``orch.host`` and ``orch.pid``; a child on
    another host is left alone (a worker there may still be running it).
    """
    host = socket.gethostname()
    failed = []
    for run in sweep_children(uri, experiment_id, sweep_id):
        if run.info.status not in (RUNNING, "SCHEDULED"):
            continue
        tags = run.data.tags
        if tags.get("orch.host", host) != host or _pid_alive(tags.get("orch.pid")):
            continue
        end_run(uri, run.info.run_id, FAILED, reason)
        failed.append(run.info.run_id)
    return failed


def _pid_alive(pid: str | None) -> bool:
    if not pid or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not running anything.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def download_json(uri: str, run_id: str, path: str) -> Any:
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=uri)
    return json.loads(Path(local).read_text())


def log_artifact_text(uri: str, run_id: str, text: str, path: str) -> None:
    client(uri).log_text(run_id, text, path)


def log_figure(uri: str, run_id: str, figure: Any, path: str) -> None:
    client(uri).log_figure(run_id, figure, path)


def log_metrics(uri: str, run_id: str, values: Mapping[str, float], step: int = 0) -> None:
    """Log metrics on an existing run (e.g. a tuning study's best value on its parent)."""
    client(uri).log_batch(run_id, metrics=_metrics(values, step))


def _metrics(values: Mapping[str, float], step: int) -> list:
    """MLflow Metric entities for one step, stamped now."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]


def set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, v)


def reopen_run(uri: str, run_id: str) -> None:
    """Mark an ended run RUNNING again (a resumed sweep's parent)."""
    client(uri).update_run(run_id, status=RUNNING)


def metric_history(uri: str, run_id: str, key: str) -> list[float]:
    hist = client(uri).get_metric_history(run_id, key)
    return [m.value for m in sorted(hist, key=lambda m: m.step)]


def to_record(run):
    """An MLflow Run → compare.RunRecord."""
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


# --------------------------------------------------------------------------- fast, mlflow-free peek


def peek_finished_keys(uri: str, experiment: str, kind: str | None = None,
                       timeout: float = 2.0) -> set[str] | None:
    """Run keys with a FINISHED run in ``experiment``, read without importing mlflow.

    Used by ``orch sweep --dry-run``, which must answer in about a second. Reads a SQLite
    store's tables directly (read-only) or asks a tracking server's REST API; returns
    None when the store cannot be read this way or is unreachable.
    """
    db = _sqlite_path(uri)
    if db is not None:
        if not db.exists():
            return set()
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=timeout)
            try:
                rows = con.execute(
                    "SELECT t.value FROM runs r "
                    "JOIN experiments e ON e.experiment_id = r.experiment_id "
                    "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'orch.run_key' "
                    "WHERE e.name = ? AND e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active' "
                    "AND r.status = 'FINISHED' AND NOT EXISTS (SELECT 1 FROM tags p WHERE p.run_uuid = r.run_uuid "
                    "AND p.key = 'orch.trial_state' AND p.value = 'PRUNED') "
                    "AND (? IS NULL OR EXISTS (SELECT 1 FROM tags k WHERE k.run_uuid = r.run_uuid "
                    "AND k.key = 'orch.kind' AND k.value = ?))",
                    (experiment, kind, kind),
                ).fetchall()
            finally:
                con.close()
        except sqlite3.Error:
            return None
        return {r[0] for r in rows}
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/") + "/api/2.0/mlflow"
        try:
            exp = _rest(f"{base}/experiments/get-by-name?experiment_name={urllib.request.quote(experiment)}",
                        None, timeout)
        except urllib.error.HTTPError as err:
            return set() if err.code == 404 else None
        except (urllib.error.URLError, OSError, ValueError):
            return None
        keys: set[str] = set()
        where = "attributes.status = 'FINISHED'" + (f" and tags.`orch.kind` = '{kind}'" if kind else "")
        body = {"experiment_ids": [exp["experiment"]["experiment_id"]], "filter": where, "max_results": 1000}
        try:
            while True:
                page = _rest(f"{base}/runs/search", body, timeout)
                for run in page.get("runs", []):
                    tags = {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}
                    if "orch.run_key" in tags and tags.get("orch.trial_state") != "PRUNED":
                        keys.add(tags["orch.run_key"])
                if not page.get("next_page_token"):
                    return keys
                body["page_token"] = page["next_page_token"]
        except (urllib.error.URLError, OSError, ValueError):
            return None
    return None


def _rest(url: str, body: dict | None, timeout: float) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")
