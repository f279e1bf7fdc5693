"""What one training run writes to MLflow while it trains: epochs, summary, data,
artifacts and the model (:class:`MlflowTracker`), and MLflow's system metrics around it."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from orchestrator.store.failures import store_errors
from orchestrator.store.schema import Artifact, Tag

DATASET_ATTEMPTS = 5


class SystemMetrics:
    """Context manager around ``mlflow.system_metrics.SystemMetricsMonitor``."""

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


class MlflowTracker:
    """The training loop's Tracker, writing into one MLflow run of ``store`` (a TrackingStore)."""

    wants_artifacts = True

    def __init__(self, store: Any, run_id: str):
        self.store = store
        self.run_id = run_id
        self._pending: list[Any] = []

    def log_data(self, data: dict[str, Any]) -> None:
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
        with store_errors(self.store.uri):
            for attempt in range(DATASET_ATTEMPTS):
                try:
                    self.store.client.log_inputs(self.run_id, datasets=inputs)
                    return
                except Exception as err:
                    if attempt == DATASET_ATTEMPTS - 1 or not _lost_dataset_race(err):
                        raise
                    time.sleep(0.1 * (attempt + 1))

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        """One ``log_batch`` per epoch, every curve at step ``epoch``. Asynchronous: MLflow's
        logging thread writes it while the next epoch trains (a synchronous write to a
        SQLite store takes about 30 ms here). :meth:`flush` waits for every pending write;
        the run is never ended before it."""
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
        with store_errors(self.store.uri):
            # MLflow has no public per-client flush (``mlflow.flush_async_logging()`` flushes the
            # store of the process-wide tracking URI, which orch never sets): this is the one place
            # that reaches into the client for it. Without it the writes still complete, after
            # the buffer time.
            store = getattr(getattr(self.store.client, "_tracking_client", None), "store", None)
            if hasattr(store, "flush_async_logging"):
                store.flush_async_logging()
            for op in pending:
                if op is not None:
                    op.wait()

    def log_figure(self, figure: Any, path: str) -> None:
        self.store.log_figure(self.run_id, figure, path)

    def log_text(self, text: str, path: str) -> None:
        self.store.log_text(self.run_id, text, path)

    def log_model(self, model: Any, example: Any) -> None:
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


def _lost_dataset_race(err: BaseException) -> bool:
    """Two runs logging the same new dataset at once (the points of a sweep start together,
    about every second round of four here): MLflow looks the dataset up, then inserts it,
    and the slower insert hits the table's unique key. The whole call was rolled back and
    the dataset is there now, so the call succeeds when made again."""
    text = str(getattr(err, "message", None) or err)
    return "datasets" in text and ("UNIQUE constraint failed" in text or "duplicate key" in text)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
