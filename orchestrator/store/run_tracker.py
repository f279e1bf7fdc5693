"""MLflow's system metrics around a run's code (:class:`SystemMetrics`)."""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.store.failures import store_errors


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
