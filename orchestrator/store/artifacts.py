"""The artifacts of a finished run, drawn from its :class:`experiments.train.RunResult`:
the config, the three figures, the quantile table, the test report and the best model."""

from __future__ import annotations

import json
from typing import Any

from experiments import metrics as M
from experiments import plots
from experiments.config import RunConfig, to_yaml
from experiments.metric_names import QUANTILES, TRAIN_LOSS, epoch_key
from orchestrator.store.schema import Artifact


def log_run_artifacts(tracker: Any, cfg: RunConfig, result: Any) -> None:
    """Write every artifact of one run through ``tracker`` (an :class:`~orchestrator.store.run_tracker.MlflowTracker`).

    The figures come first: when a later write fails (a full disk while the model is
    saved), the run fails with its curves logged, and they are what shows why. Drawing
    the three PNGs here costs about 0.3 s a run (benchmarks/tracking_overhead.py).
    """
    history = result.history
    truth, pred = result.predictions["test"]
    confusion = M.confusion(truth, pred, len(result.class_names))
    tracker.log_figure(plots.curves(history, result.best_epoch), Artifact.CURVES)
    tracker.log_figure(plots.quantiles(history, list(QUANTILES)), Artifact.QUANTILES_PLOT)
    tracker.log_figure(plots.confusion_matrix(confusion, result.class_names), Artifact.CONFUSION)
    tracker.log_text(to_yaml(cfg), Artifact.CONFIG)
    tracker.log_text(_quantile_table(history), Artifact.QUANTILES_CSV)
    report = {
        "confusion_matrix": confusion.tolist(),
        "class_names": list(result.class_names),
        "report": M.per_class_report(truth, pred, result.class_names),
    }
    tracker.log_text(json.dumps(report, indent=2), Artifact.TEST_REPORT)
    tracker.log_model(result.model, result.example)


def _quantile_table(history: dict) -> str:
    rows = ["epoch," + ",".join(QUANTILES)]
    for i in range(len(history[epoch_key(TRAIN_LOSS)])):
        rows.append(f"{i + 1}," + ",".join(f"{history[epoch_key(q)][i]:.6g}" for q in QUANTILES))
    return "\n".join(rows) + "\n"
