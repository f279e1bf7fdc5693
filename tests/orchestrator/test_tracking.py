"""The tracking store object: experiments open on MLflow's training view, one rule for a
finished result, orphans closed, and no process-wide MLflow state set per call."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from orchestrator.schema import TRAINING_EXPERIMENT, Kind, Status, Tag, TrialState
from orchestrator.tracking import TrackingStore


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One store for the module (a new SQLite store costs seconds of migrations); each test
    uses experiments of its own."""
    return TrackingStore(f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}")


def test_experiments_open_on_the_training_view_and_a_users_choice_stays(tracking):
    exp = tracking.ensure_experiment("ours")
    assert tracking.client.get_experiment(exp).tags[Tag.EXPERIMENT_KIND] == TRAINING_EXPERIMENT
    theirs = tracking.client.create_experiment("theirs", tags={Tag.EXPERIMENT_KIND: "genai_development"})
    bare = tracking.client.create_experiment("bare")
    assert tracking.ensure_experiment("theirs") == theirs and tracking.ensure_experiment("bare") == bare
    assert tracking.client.get_experiment(theirs).tags[Tag.EXPERIMENT_KIND] == "genai_development"
    assert tracking.client.get_experiment(bare).tags[Tag.EXPERIMENT_KIND] == TRAINING_EXPERIMENT


def test_a_deleted_experiment_is_restored_not_shadowed(tracking):
    exp = tracking.ensure_experiment("gone")
    tracking.client.delete_experiment(exp)
    assert tracking.experiment_id("gone") is None
    assert tracking.ensure_experiment("gone") == exp and tracking.experiment_id("gone") == exp


def _run(tracking, exp, key: str | None, status: str, **tags) -> str:
    all_tags = {Tag.KIND: Kind.POINT, **({Tag.RUN_KEY: key} if key else {}), **tags}
    run_id = tracking.start_run(exp, run_name=key or "keyless", params={}, tags=all_tags)
    if status != Status.RUNNING:
        tracking.end_run(run_id, status)
    return run_id


def test_only_finished_keyed_unpruned_runs_are_results(tracking):
    exp = tracking.ensure_experiment("results")
    _run(tracking, exp, "done", Status.FINISHED)
    _run(tracking, exp, "failed", Status.FAILED)
    _run(tracking, exp, "running", Status.RUNNING)
    _run(tracking, exp, None, Status.FINISHED)
    _run(tracking, exp, "pruned", Status.FINISHED, **{Tag.TRIAL_STATE: TrialState.PRUNED})
    assert tracking.finished_run_keys(exp) == {"done"}
    assert tracking.finished_run_keys(exp, Kind.SWEEP) == set()


def test_orphans_of_a_sweep_are_failed_and_live_runs_left_alone(tracking):
    exp = tracking.ensure_experiment("orphans")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    common = {Tag.SWEEP: "s1", Tag.HOST: here}
    orphan = _run(tracking, exp, "a", Status.RUNNING, **common, **{Tag.PID: str(dead.pid)})
    alive = _run(tracking, exp, "b", Status.RUNNING, **common, **{Tag.PID: str(os.getpid())})
    elsewhere = _run(tracking, exp, "c", Status.RUNNING, **{Tag.SWEEP: "s1", Tag.HOST: "other-host",
                                                           Tag.PID: str(dead.pid)})
    assert tracking.fail_orphans(exp, "s1", "its process is gone") == [orphan]
    assert tracking.run_status(orphan) == Status.FAILED
    assert tracking.failure_reason(orphan) == "its process is gone"
    assert tracking.run_status(alive) == tracking.run_status(elsewhere) == Status.RUNNING


def test_opening_stores_sets_no_process_wide_tracking_uri(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    first = TrackingStore(f"sqlite:///{tmp_path / 'a.db'}")
    first.ensure_experiment("a")
    assert "MLFLOW_TRACKING_URI" not in os.environ and mlflow.get_tracking_uri() == before
    assert first.experiment_names() == ["Default", "a"]
