"""The tracking store object: experiments open on MLflow's training view, one rule for a
finished result, orphans closed, no process-wide MLflow state set per call, and a run's
writes batched."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading

import pytest

from experiments.study_run import log_datasets
from orchestrator.store.schema import TRAINING_EXPERIMENT, Kind, Status, Tag, TrialState
from orchestrator.store.tracking import TrackingStore
from orchestrator.store.uri import sqlite_path


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


def test_a_reopened_or_finished_run_no_longer_carries_the_reason_it_failed_with(tracking):
    """A resumed sweep's parent, or a study's parent that an ``orch worker`` closes FINISHED,
    keeps no reason an earlier attempt ended with; dropping one that is not there (never
    set, or dropped a moment before by another process on the same run) is no error."""
    exp = tracking.ensure_experiment("reopened")
    run_id = _run(tracking, exp, "parent", Status.RUNNING)
    tracking.end_run(run_id, Status.FAILED, "disk full")
    assert tracking.failure_reason(run_id) == "disk full"
    tracking.reopen_run(run_id)
    assert tracking.run_status(run_id) == Status.RUNNING and tracking.failure_reason(run_id) is None
    tracking.end_run(run_id, Status.FINISHED)
    tracking.reopen_run(run_id)  # nothing to drop
    assert tracking.run_status(run_id) == Status.RUNNING
    tracking.end_run(run_id, Status.KILLED, "interrupted")
    other = TrackingStore(tracking.uri)  # a second process's view of the same store
    other.reopen_run(run_id)
    tracking.end_run(run_id, Status.FINISHED)  # closed without being reopened here
    assert tracking.run_status(run_id) == Status.FINISHED and tracking.failure_reason(run_id) is None
    tracking.end_run(run_id, Status.FAILED, "a point failed")
    tracking.end_run(run_id, Status.FINISHED)
    assert tracking.failure_reason(run_id) is None


def test_only_finished_keyed_unpruned_runs_are_results(tracking):
    exp = tracking.ensure_experiment("results")
    _run(tracking, exp, "done", Status.FINISHED)
    _run(tracking, exp, "failed", Status.FAILED)
    _run(tracking, exp, "running", Status.RUNNING)
    _run(tracking, exp, None, Status.FINISHED)
    _run(tracking, exp, "pruned", Status.FINISHED, **{Tag.TRIAL_STATE: TrialState.PRUNED})
    assert tracking.finished_run_keys(exp) == {"done"}


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


def test_runs_that_log_one_new_dataset_at_once_all_get_it(tracking):
    """The points of a sweep start together and log the same data: MLflow's look-up-then-insert
    of a new dataset loses that race to the table's unique key (about every second round of four
    runs here). Every run must still get its inputs, and the dataset exists once."""
    exp = tracking.ensure_experiment("datasets-at-once")
    for round_ in range(10):
        runs = [tracking.client.create_run(exp).info.run_id for _ in range(4)]
        data = {"name": f"data{round_}", "source": "memory", "classes": 10,
                "splits": {"train": (100, f"{round_:036x}"), "val": (20, f"{round_ + 4096:036x}")}}
        barrier = threading.Barrier(len(runs))
        errors: list[BaseException] = []

        def log(run_id: str) -> None:
            barrier.wait()
            try:
                log_datasets(tracking.uri, run_id, data)
            except BaseException as err:  # noqa: BLE001 - collected, then asserted on
                errors.append(err)

        threads = [threading.Thread(target=log, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        for run_id in runs:
            inputs = tracking.client.get_run(run_id).inputs.dataset_inputs
            assert sorted(i.dataset.name for i in inputs) == [f"data{round_}-train", f"data{round_}-val"]
        con = sqlite3.connect(f"file:{sqlite_path(tracking.uri)}?mode=ro", uri=True)
        try:
            (n,) = con.execute("SELECT count(*) FROM datasets WHERE experiment_id = ? AND name LIKE ?",
                               (int(exp), f"data{round_}-%")).fetchone()
        finally:
            con.close()
        assert n == 2  # each split's dataset once, shared by the four runs


@pytest.fixture(scope="module")
def tiny_result():
    """(config, result) of the tiny digits config, trained once, nothing logged."""
    from conftest import TINY_BASE
    from experiments.config import build
    from experiments.train import NullTracker, train

    cfg = build(TINY_BASE)
    return cfg, train(cfg, NullTracker(), device="cpu")


def _spied(tracking, monkeypatch) -> list[tuple[str, dict]]:
    """The write calls the store's MLflow client gets from now on: (method, keyword arguments)."""
    calls: list[tuple[str, dict]] = []
    for name in ("create_run", "log_batch", "log_metric", "log_param", "set_tag"):
        original = getattr(tracking.client, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(tracking.client, name, spy)
    return calls


def test_a_run_writes_its_params_tags_and_each_epoch_in_one_call(tracking, monkeypatch, tiny_result):
    """Tags go in with the run's creation, the params in one ``log_batch``, each epoch's
    curves in one ``log_batch`` at that epoch's step, the summary in one; nothing is written
    key by key."""
    from experiments.config import to_flat
    from orchestrator.execute.runner import run_tracked
    from orchestrator.grid.entry import resolve_entry

    monkeypatch.setenv("ORCH_SYSTEM_METRICS_SECONDS", "0")  # the monitor writes through a client of its own
    cfg, _ = tiny_result
    calls = _spied(tracking, monkeypatch)
    code, run_id, summary = run_tracked(resolve_entry(), cfg, store=tracking,
                                        experiment_id=tracking.ensure_experiment("batched"), quiet=True)
    assert code == 0
    names = [name for name, _ in calls]
    assert "log_metric" not in names and "log_param" not in names
    (create,) = [kwargs for name, kwargs in calls if name == "create_run"]
    assert create["tags"][Tag.RUN_KEY] and create["tags"][Tag.KIND] == Kind.RUN
    (params,) = [kwargs["params"] for name, kwargs in calls if name == "log_batch" and kwargs.get("params")]
    assert {p.key for p in params} == set(to_flat(cfg))
    metric_batches = [kwargs["metrics"] for name, kwargs in calls if name == "log_batch" and kwargs.get("metrics")]
    epochs = [batch for batch in metric_batches if batch[0].key.startswith("epoch/")]
    assert [{m.step for m in batch} for batch in epochs] == [{e + 1} for e in range(int(summary["epochs_run"]))]
    assert all(len({m.key for m in batch}) == len(batch) > 10 for batch in epochs)
    assert len(metric_batches) == len(epochs) + 1  # and the summary, in one call
    assert [kwargs for name, kwargs in calls if name == "set_tag"] == [{}]  # the description (set_note)


def test_a_checkpoint_writes_its_tags_in_one_call(tracking, monkeypatch):
    from orchestrator.store import checkpoints

    run_id = tracking.start_run(tracking.ensure_experiment("checkpoint-tags"), run_name="c", params={}, tags={})
    calls = _spied(tracking, monkeypatch)
    checkpoints.write(tracking, run_id, checkpoints.envelope({"epoch": 3}, "key", {}, 3), 0, 3)
    assert [(name, {t.key: t.value for t in kwargs["tags"]}) for name, kwargs in calls] == [
        ("log_batch", {Tag.CHECKPOINT: "checkpoint/ckpt-0.pkl", Tag.CHECKPOINT_STEP: "3"})]


def test_a_failing_model_save_still_logs_the_figures(tmp_path, monkeypatch, tiny_result):
    """The run fails (a full disk while saving its model); its curves are logged, and show why."""
    import experiments.study_run
    from orchestrator.execute.runner import run_tracked
    from orchestrator.grid.entry import resolve_entry

    cfg, _ = tiny_result
    store = TrackingStore(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(experiments.study_run, "save_model", full_disk)
    code, run_id, _ = run_tracked(resolve_entry(), cfg, store=store, experiment_id=store.ensure_experiment("figures"),
                                  quiet=True)
    assert code == 1 and "No space left" in store.failure_reason(run_id)
    logged = {a.path for a in store.client.list_artifacts(run_id, "plots")}
    assert logged == {"plots/curves.png", "plots/quantiles.png", "plots/confusion_test.png"}
    for path in logged:
        local = store.download_artifact(run_id, path, str(tmp_path))
        assert open(local, "rb").read(4) == b"\x89PNG"
