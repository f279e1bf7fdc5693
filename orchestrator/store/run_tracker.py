"""What one training run writes to MLflow while it trains: epochs, summary, data,
artifacts and the model (:class:`MlflowTracker`), and MLflow's system metrics around it."""

from __future__ import annotations

import os
from typing import Any

from orchestrator.store.schema import Artifact


class SystemMetrics:
    """Context manager around ``mlflow.system_metrics.SystemMetricsMonitor``."""

    def __init__(self, uri: str, run_id: str, interval: float):
        self.uri, self.run_id, self.interval, self.monitor = uri, run_id, interval, None

    def __enter__(self) -> SystemMetrics:
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
        from orchestrator.store.tracking import store_errors

        self.monitor.finish()
        with store_errors(self.uri):  # the last sample is written here, through MLflow's own client
            self.monitor.collect_metrics()
            self.monitor.publish_metrics(self.monitor.aggregate_metrics())
            self.monitor.mlflow_logger.flush()


class MlflowTracker:
    """The training loop's Tracker, writing into one MLflow run."""

    wants_artifacts = True

    def __init__(self, store: Any, run_id: str):
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
        from orchestrator.store.tracking import store_errors

        pending, self._pending = self._pending, []
        if not pending:
            return
        self.store.flush_async()
        with store_errors(self.store.uri):
            for op in pending:
                if op is not None:
                    op.wait()

    def log_figure(self, figure: Any, path: str) -> None:
        self.store.log_figure(self.run_id, figure, path)

    def log_text(self, text: str, path: str) -> None:
        self.store.log_text(self.run_id, text, path)

    def log_file(self, local_path: str, artifact_dir: str) -> None:
        """A local file into the run's ``artifact_dir``, under its own name."""
        self.store.log_artifact(self.run_id, local_path, artifact_dir)

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
