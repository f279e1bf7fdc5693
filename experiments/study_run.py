"""The built-in study's ``train(config, run)``: :func:`experiments.train.train` on the run object
the orchestrator hands every entry (``orchestrator.client.Run``), nothing more.

Per-epoch values go through ``run.log`` (``epoch/<name>`` at step = epoch), a checkpoint through
``run.save_checkpoint`` at every epoch end and when a stop is requested (the run decides when to
write it), ``run.load_checkpoint`` gives the state to continue from, and ``run.should_stop`` is
polled after every batch. The finished run's artifacts (config, three figures, quantile table,
test report, the best model as an MLflow model) are files in ``run.artifact_dir``; its data
are MLflow dataset inputs of the run. This module knows the run object only by its methods.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from experiments import metrics as M
from experiments import plots
from experiments.config import RunConfig, to_yaml
from experiments.metric_names import QUANTILES, TRAIN_LOSS, epoch_key

# Artifact paths inside a run (the orchestrator's docs and the UI show them by these names).
CONFIG, CURVES, QUANTILES_PLOT = "config.yaml", "plots/curves.png", "plots/quantiles.png"
QUANTILES_CSV, CONFUSION, TEST_REPORT, MODEL = "quantiles.csv", "plots/confusion_test.png", "test_report.json", "model"
DATA_CONTEXT = "mlflow.data.context"  # the split a dataset input is (MLflow's own input tag)
DATASET_ATTEMPTS = 5


class _RunTracker:
    """:class:`experiments.train.Tracker` over the run object."""

    def __init__(self, run: Any):
        self.run = run

    def log_data(self, data: dict[str, Any]) -> None:
        if run_id := getattr(self.run, "id", None):
            log_datasets(self.run.tracking_uri, run_id, data)

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        self.run.log({epoch_key(k): v for k, v in values.items()}, step=epoch)

    def log_summary(self, values: dict[str, float]) -> None:
        pass  # the summary is train_run's return value: the orchestrator logs it


class _RunCheckpoints:
    """:class:`experiments.train.Checkpoints` over the run object: every epoch end is offered."""

    def __init__(self, run: Any):
        self.run = run

    def due(self) -> bool:
        return True

    def save(self, state: dict[str, Any]) -> None:
        self.run.save_checkpoint(state)


def train_run(cfg: RunConfig, run: Any) -> dict[str, float] | None:
    """Train ``cfg`` reporting to ``run``; its summary metrics, or None when it was asked to stop."""
    from experiments.train import train

    result = train(cfg, _RunTracker(run), device="auto", checkpoints=_RunCheckpoints(run),
                   resume=run.load_checkpoint(), should_stop=run.should_stop)
    if result is None:
        return None
    write_artifacts(Path(run.artifact_dir), cfg, result)
    return result.summary


def write_artifacts(folder: Path, cfg: RunConfig, result: Any) -> None:
    """The run's artifacts as files in ``folder``. The figures come first: when a later write
    fails (a full disk while the model is saved), the curves are there to show why."""
    history = result.history
    truth, pred = result.predictions["test"]
    confusion = M.confusion(truth, pred, len(result.class_names))
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    for figure, path in ((plots.curves(history, result.best_epoch), CURVES),
                         (plots.quantiles(history, list(QUANTILES)), QUANTILES_PLOT),
                         (plots.confusion_matrix(confusion, result.class_names), CONFUSION)):
        figure.savefig(folder / path, pil_kwargs={"compress_level": 1})  # small figures: fast compression
    (folder / CONFIG).write_text(to_yaml(cfg))
    (folder / QUANTILES_CSV).write_text(_quantile_table(history))
    report = {"confusion_matrix": confusion.tolist(), "class_names": list(result.class_names),
              "report": M.per_class_report(truth, pred, result.class_names)}
    (folder / TEST_REPORT).write_text(json.dumps(report, indent=2))
    save_model(result.model, folder / MODEL)


def save_model(model: Any, path: Path) -> None:
    """The best model as an MLflow model directory: ``mlflow.pytorch.load_model("runs:/<run id>/model")``
    loads it. Pickle format (the pt2 default needs torch.export of the whole model); explicit
    requirements skip MLflow's slow inference of them. Loading needs this package importable."""
    import logging
    from importlib.metadata import version

    import mlflow.pytorch

    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    mlflow.pytorch.save_model(model.cpu(), str(path), serialization_format="pickle",
                              pip_requirements=[f"torch=={version('torch')}", f"mlflow=={version('mlflow')}"])


def log_datasets(uri: str, run_id: str, data: dict[str, Any]) -> None:
    """The run's data as MLflow dataset inputs, one per split (the UI's Dataset column).

    ``data``: ``name``, ``source`` (a path or a loader), ``splits``: split -> (examples, content
    digest), as :func:`experiments.train.describe_data` gives it.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for split, (size, digest) in data["splits"].items():
        dataset = Dataset(name=f"{data['name']}-{split}", digest=digest[:36], source_type="local",
                          source=json.dumps({"uri": data["source"]}),
                          profile=json.dumps({"num_rows": size, "split": split, "classes": data["classes"]}))
        inputs.append(DatasetInput(dataset, tags=[InputTag(DATA_CONTEXT, split)]))
    client = MlflowClient(uri)
    for attempt in range(DATASET_ATTEMPTS):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except Exception as err:
            if attempt == DATASET_ATTEMPTS - 1 or not _lost_dataset_race(err):
                raise
            time.sleep(0.1 * (attempt + 1))


def _lost_dataset_race(err: BaseException) -> bool:
    """Two runs logging the same new dataset at once (the points of a sweep start together):
    MLflow looks the dataset up, then inserts it, and the slower insert hits the table's unique
    key. The whole call was rolled back and the dataset is there now, so it succeeds when made again."""
    text = str(getattr(err, "message", None) or err)
    return "datasets" in text and ("UNIQUE constraint failed" in text or "duplicate key" in text)


def _quantile_table(history: dict) -> str:
    rows = ["epoch," + ",".join(QUANTILES)]
    for i in range(len(history[epoch_key(TRAIN_LOSS)])):
        rows.append(f"{i + 1}," + ",".join(f"{history[epoch_key(q)][i]:.6g}" for q in QUANTILES))
    return "\n".join(rows) + "\n"

