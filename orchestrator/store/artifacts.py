"""The artifacts of a finished run, drawn from its :class:`experiments.train.RunResult`:
the config, the three figures, the quantile table, the test report and the best model."""

from __future__ import annotations

import contextlib
import json
import posixpath
import tempfile
from pathlib import Path
from typing import Any

from experiments import metrics as M
from experiments import plots
from experiments.config import RunConfig, to_yaml
from experiments.metric_names import QUANTILES, TRAIN_LOSS, epoch_key
from orchestrator.store.figure_child import drawn_aside
from orchestrator.store.schema import Artifact


def log_run_artifacts(tracker: Any, cfg: RunConfig, result: Any) -> None:
    """Write every artifact of one run through ``tracker`` (an :class:`~orchestrator.store.run_tracker.MlflowTracker`).

    The curves and quantile figures are drawn by a forked child (:mod:`orchestrator.store.figure_child`)
    while this process draws the confusion matrix and saves the model; the two halves take
    about as long.
    """
    history = result.history
    truth, pred = result.predictions["test"]
    n_classes = len(result.class_names)
    confusion = M.confusion(truth, pred, n_classes)
    aside = {Artifact.CURVES: plots.curves(history, result.best_epoch),
             Artifact.QUANTILES_PLOT: plots.quantiles(history, list(QUANTILES))}
    with tempfile.TemporaryDirectory(prefix="orch-figures-") as tmp, drawn_aside(aside, Path(tmp)) as child:
        try:
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
        except Exception:
            with contextlib.suppress(Exception):  # the run fails; its curves are what shows why
                _log_files(tracker, child.files())
            raise
        _log_files(tracker, child.files())


def _quantile_table(history: dict) -> str:
    rows = ["epoch," + ",".join(QUANTILES)]
    for i in range(len(history[epoch_key(TRAIN_LOSS)])):
        rows.append(f"{i + 1}," + ",".join(f"{history[epoch_key(q)][i]:.6g}" for q in QUANTILES))
    return "\n".join(rows) + "\n"


def _log_files(tracker: Any, files: dict[str, Path]) -> None:
    for path, file in files.items():
        tracker.log_file(str(file), posixpath.dirname(path))
