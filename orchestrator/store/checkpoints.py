"""Checkpoints of a run in its MLflow artifact store: write, find, load, remove.

A checkpoint (an :func:`envelope`) is uploaded as ``checkpoint/ckpt-<k>.pkl``, alternating two
names, and only then named by ``Tag.CHECKPOINT``: a kill mid-upload leaves the previous one
intact. A point resumes from the newest unfinished run of its run key that holds one; an unusable
checkpoint (:class:`UnusableCheckpoint`) makes the successor start afresh with
``Tag.CHECKPOINT_SKIPPED``. A finished run drops the checkpoints of the runs it superseded.
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path
from typing import Any, Mapping

from orchestrator.errors import StoreFailure
from orchestrator.store.schema import Artifact, Status, Tag, tag_filter
from orchestrator.store.tracking import TrackingStore

FORMAT = 2


def envelope(state: Any, run_key: str, params: Mapping[str, Any], step: int) -> bytes:
    """The state as it is now, pickled with what identifies it: later changes to ``state``'s
    tensors or lists cannot leak into a checkpoint taken before them."""
    return pickle.dumps({"format": FORMAT, "run_key": run_key, "params": dict(params), "step": step,
                         "state": state}, protocol=pickle.HIGHEST_PROTOCOL)


def write(store: TrackingStore, run_id: str, blob: bytes, count: int, step: int) -> None:
    """Upload checkpoint number ``count`` of a run (ckpt-0/ckpt-1 in turn), then point the tag at it."""
    name = f"ckpt-{count % 2}.pkl"
    with tempfile.TemporaryDirectory(prefix="orch-ckpt-") as tmp:
        local = Path(tmp) / name
        local.write_bytes(blob)
        store.log_artifact(run_id, str(local), Artifact.CHECKPOINT_DIR)
    store.set_tags(run_id, {Tag.CHECKPOINT: f"{Artifact.CHECKPOINT_DIR}/{name}", Tag.CHECKPOINT_STEP: str(step)})


class UnusableCheckpoint(Exception):
    """A run's checkpoint that no run can continue from; ``str()`` is ``<run id>/<path>: <reason>``
    (the value of ``Tag.CHECKPOINT_SKIPPED``), the reason completing "the checkpoint …"."""

    def __init__(self, run_id: str, path: str, reason: str):
        self.run_id, self.path, self.reason = run_id, path, reason[:300]  # a tag value: short, whatever the file holds
        self.where = f"{run_id}/{path}" if path else run_id
        super().__init__(f"{self.where}: {self.reason}")


def load(store: TrackingStore, run_id: str, run_key: str | None = None) -> dict[str, Any]:
    """The envelope of the checkpoint the run's ``Tag.CHECKPOINT`` names, checked against ``run_key``
    (default: the run's own). UnusableCheckpoint: missing, unreadable, not one, or of another run
    key; StoreFailure: the store failed (the checkpoint may be fine)."""
    tags = store.get_run(run_id).data.tags
    path = tags.get(Tag.CHECKPOINT, "")
    if not path:
        raise UnusableCheckpoint(run_id, path, "does not exist (the run holds none)")
    try:
        with tempfile.TemporaryDirectory(prefix="orch-ckpt-") as tmp:
            local = store.download_artifact(run_id, path, tmp)
            data = pickle.loads(Path(local).read_bytes())  # noqa: S301 - the run's own checkpoint, in its own store
        if not isinstance(data, dict) or data.get("format") != FORMAT or "state" not in data:
            problem = "is not a checkpoint of this version of orch"
        elif data.get("run_key") != (run_key or tags.get(Tag.RUN_KEY)):
            problem = "holds another config than its run's"
        else:
            return data
    except StoreFailure:
        raise
    except Exception as err:  # noqa: BLE001 - missing, truncated, not a pickle: all unusable alike
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0]
        problem = f"cannot be read ({type(err).__name__}: {first[:200]})"
    raise UnusableCheckpoint(run_id, path, problem)


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
        skipped = tags.get(Tag.CHECKPOINT_SKIPPED, "")  # "<run id>/<path>: <reason>"; run ids hold neither / nor :
        todo += [tags.get(Tag.RESUMED_FROM), skipped.split("/", 1)[0].split(":", 1)[0]]
