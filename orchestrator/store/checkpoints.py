"""Checkpoints of a run in its MLflow artifact store: write, find, load, remove.

A checkpoint (:func:`experiments.train.capture`) is written to a local temporary file,
then uploaded as ``checkpoint/ckpt-<k>.pt`` of the run, alternating two names; only
after the upload does the run's ``Tag.CHECKPOINT`` point at it. A kill during an upload
therefore leaves the previous checkpoint named by the tag and intact. Through an ``mlflow
server`` the artifacts are served, so a worker on another machine resumes from the same
file. A run that finishes drops its checkpoints and those of the runs it continued.

Resume rule: a point (a run key) continues from the newest run of that run key that did
not finish and holds a checkpoint; its successor is a new run that carries the earlier
epochs over (with their original timestamps) and is tagged with where it resumed.
A checkpoint is checked as a whole before it is used (:func:`load`); one that is missing,
unreadable, not a checkpoint or of another config is :class:`UnusableCheckpoint`: the
successor then starts from epoch 0, carries ``Tag.CHECKPOINT_SKIPPED``, and drops the
skipped checkpoint when it finishes, as it drops those it continued.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import StoreFailure
from orchestrator.store.schema import Artifact, Status, Tag, tag_filter
from orchestrator.store.tracking import TrackingStore


class RunCheckpoints:
    """The training loop's :class:`experiments.train.Checkpoints` for one MLflow run."""

    def __init__(self, store: TrackingStore, run_id: str, interval_seconds: float):
        self.store, self.run_id, self.interval = store, run_id, interval_seconds
        self.last = time.monotonic()
        self.count = 0

    def due(self) -> bool:
        return self.interval == 0 or time.monotonic() - self.last >= self.interval

    def save(self, state: dict[str, Any]) -> None:
        import torch

        name = f"ckpt-{self.count % 2}.pt"
        with tempfile.TemporaryDirectory(prefix="orch-ckpt-") as tmp:
            local = Path(tmp) / name
            torch.save(state, local)
            self.store.log_artifact(self.run_id, str(local), Artifact.CHECKPOINT_DIR)
        progress = state["progress"]
        self.store.set_tags(self.run_id, {Tag.CHECKPOINT: f"{Artifact.CHECKPOINT_DIR}/{name}",
                                          Tag.CHECKPOINT_EPOCH: str(progress["epoch"]),
                                          Tag.CHECKPOINT_BATCH: str(progress["batch"])})
        self.count += 1
        self.last = time.monotonic()


class UnusableCheckpoint(Exception):
    """A run's checkpoint that no run can continue from; ``str()`` is ``<run id>/<path>: <reason>``
    (the value of ``Tag.CHECKPOINT_SKIPPED``), the reason completing "the checkpoint …"."""

    def __init__(self, run_id: str, path: str, reason: str):
        self.run_id, self.path, self.reason = run_id, path, reason[:300]  # a tag value: short, whatever the file holds
        self.where = f"{run_id}/{path}" if path else run_id
        super().__init__(f"{self.where}: {self.reason}")

    @staticmethod
    def run_of(skipped: str | None) -> str | None:
        """The run id in a ``Tag.CHECKPOINT_SKIPPED`` value (run ids hold neither ``/`` nor ``:``)."""
        return skipped.split("/", 1)[0].split(":", 1)[0] if skipped else None


def load(store: TrackingStore, run_id: str, cfg: Any = None) -> dict[str, Any]:
    """The checkpoint a run's ``Tag.CHECKPOINT`` names (torch tensors on the CPU), checked as a
    whole (:func:`experiments.train.checkpoint_problem`) against ``cfg``, a RunConfig, or
    without one against the run key of the run that holds it.

    Raises:
        UnusableCheckpoint: the checkpoint is missing, cannot be read, is not a checkpoint,
            or holds another config: whatever it is, no run can continue from it.
        StoreFailure: the store itself failed; the checkpoint may be fine.
    """
    import torch

    from experiments.config import build, run_key
    from experiments.train import checkpoint_problem

    tags = store.get_run(run_id).data.tags
    path = tags.get(Tag.CHECKPOINT, "")
    if not path:
        raise UnusableCheckpoint(run_id, path, "does not exist (the run holds none)")
    try:
        with tempfile.TemporaryDirectory(prefix="orch-ckpt-") as tmp:
            local = store.download_artifact(run_id, path, tmp)
            state = torch.load(local, weights_only=True, map_location="cpu")
        problem = checkpoint_problem(state, cfg)
        if problem is None and cfg is None and run_key(build(state["config"])) != tags.get(Tag.RUN_KEY):
            problem = "holds another config than its run's"
    except StoreFailure:
        raise
    except Exception as err:  # noqa: BLE001 - missing, truncated, not a torch file: all unusable alike
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0]  # torch's go on for lines
        problem = f"cannot be read ({type(err).__name__}: {first[:200]})"
    if problem is not None:
        raise UnusableCheckpoint(run_id, path, problem)
    return state


def resumable(store: TrackingStore, experiment_id: str, run_key: str):
    """The newest run of ``run_key`` that did not finish and holds a checkpoint, or None."""
    runs = store.search([experiment_id], tag_filter(Tag.RUN_KEY, run_key), order_by=["attributes.start_time DESC"])
    for run in runs:
        if run.info.status == Status.FINISHED:
            return None  # done: nothing to resume (the caller would not run it)
        if run.info.status not in Status.LIVE and Tag.CHECKPOINT in run.data.tags:
            return run
    return None


def remove(store: TrackingStore, run_id: str) -> None:
    """Drop the checkpoints of a finished run and of every run it superseded: the runs it
    continued (``Tag.RESUMED_FROM``) and the one whose checkpoint it skipped as unusable
    (``Tag.CHECKPOINT_SKIPPED``), and theirs in turn. Other runs are left alone."""
    todo, seen = [run_id], set()
    while todo:
        run_id = todo.pop()
        if not run_id or run_id in seen:
            continue
        seen.add(run_id)
        tags = store.get_run(run_id).data.tags
        if Tag.CHECKPOINT in tags:
            store.delete_artifacts(run_id, Artifact.CHECKPOINT_DIR)
            store.delete_tag(run_id, Tag.CHECKPOINT)
        todo += [tags.get(Tag.RESUMED_FROM), UnusableCheckpoint.run_of(tags.get(Tag.CHECKPOINT_SKIPPED))]
