"""Long runs: a sweep killed, preempted or losing a point process continues exactly where
it stopped, and a slot's long-lived process gives the same numbers as a fresh one.

Real sweeps in real subprocesses on real SQLite stores; a store another process is
writing is watched read-only (sqlite3 ``mode=ro``). The reference is the same grid run
uninterrupted with ``ORCH_POINTS_PER_PROCESS=1`` (every point alone in a fresh process);
on the CPU training is deterministic, so every summary metric but the timings must be
bitwise equal to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import RESUME_BASE, all_runs, invoke, orch, results, ro_rows, write_grid
from experiments.metric_names import epoch_key
from orchestrator.store.schema import Kind, Status, Tag

VAL_LOSS = epoch_key("val_loss")


def grid(tmp_path: Path, name: str, norms=("bn", "gn", "ln")) -> Path:
    return write_grid(tmp_path / f"{name}.yaml", name, {"model.norm": list(norms)}, base=RESUME_BASE)


def points(uri: str) -> list:
    return [r for r in all_runs(uri) if r.data.tags.get(Tag.KIND) == Kind.POINT]


def finished_by_key(uri: str) -> dict:
    return {r.data.tags[Tag.RUN_KEY]: r for r in points(uri) if r.info.status == Status.FINISHED}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The grid run uninterrupted, every point alone in a fresh process: run key -> run."""
    tmp = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    proc = orch("sweep", str(grid(tmp, "resume")), "--workers", "1", cwd=tmp,
                env={"MLFLOW_TRACKING_URI": uri, "ORCH_POINTS_PER_PROCESS": "1"})
    assert proc.returncode == 0, proc.stderr
    runs = finished_by_key(uri)
    assert len(runs) == 3 and len({r.data.tags[Tag.PID] for r in runs.values()}) == 3
    return runs


def start_sweep(tmp_path: Path, uri: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(grid(tmp_path, "resume")),
                             "--workers", "1", *extra], cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_epoch(db: Path, epoch: int, *, nth_point: int = 1, timeout: float = 300) -> tuple[str, str]:
    """(run id, pid) of the ``nth_point``-th point once it is RUNNING with a checkpoint at ``epoch``.

    The checkpoint tag is written synchronously after the epoch (the epoch metrics are
    logged asynchronously and can show up a second late).
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = ro_rows(db, "SELECT r.run_uuid, r.status, (SELECT value FROM tags c WHERE c.run_uuid = r.run_uuid "
                           "AND c.key = ?), (SELECT value FROM tags p WHERE p.run_uuid = r.run_uuid AND p.key = ?) "
                           "FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ? AND t.value = ? "
                           "ORDER BY r.start_time", (Tag.CHECKPOINT_STEP, Tag.PID, Tag.KIND, Kind.POINT))
        if len(rows) >= nth_point:
            run_id, status, step, pid = rows[nth_point - 1]
            if status == Status.RUNNING and int(step or 0) >= epoch:
                return run_id, pid
        time.sleep(0.1)
    pytest.fail(f"no point reached epoch {epoch} within {timeout} s")


def assert_resumed_exactly(uri: str, killed_run: str, reference: dict) -> None:
    """Every point FINISHED once, equal to the reference; the stopped one continued from its checkpoint."""
    client = MlflowClient(tracking_uri=uri)
    done = finished_by_key(uri)
    assert sorted(done) == sorted(reference)
    assert len([r for r in points(uri) if r.info.status == Status.FINISHED]) == 3  # one FINISHED per run key
    assert not [r for r in points(uri) if r.info.status == Status.RUNNING]
    (resumed,) = [r for r in done.values() if r.data.tags.get(Tag.RESUMED_FROM) == killed_run]
    assert int(resumed.data.tags[Tag.RESUMED_STEP]) >= 2
    steps = sorted(m.step for m in client.get_metric_history(resumed.info.run_id, VAL_LOSS))
    assert steps == [1, 2, 3, 4, 5]
    for key, run in done.items():
        assert results(run) == results(reference[key]), run.info.run_name
    assert Tag.CHECKPOINT not in client.get_run(resumed.info.run_id).data.tags
    assert Tag.CHECKPOINT not in client.get_run(killed_run).data.tags  # dropped once its successor finished


def test_three_points_in_one_long_lived_process_equal_each_point_alone(tmp_path, reference):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = orch("sweep", str(grid(tmp_path, "resume")), "--workers", "1", cwd=tmp_path,
                env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr
    runs = finished_by_key(uri)
    assert len({r.data.tags[Tag.PID] for r in runs.values()}) == 1  # one process ran all three
    for key, run in runs.items():
        assert results(run) == results(reference[key]), run.info.run_name
        assert len(MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, VAL_LOSS)) == 5


def test_sigkill_of_the_sweep_mid_point_then_rerun_resumes_it_exactly(tmp_path, reference):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = start_sweep(tmp_path, uri)
    run_id, _ = wait_for_epoch(tmp_path / "mlflow.db", 2)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    rerun = orch("sweep", str(grid(tmp_path, "resume")), "--workers", "1", cwd=tmp_path,
                 env={"MLFLOW_TRACKING_URI": uri})
    assert rerun.returncode == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr
    assert_resumed_exactly(uri, run_id, reference)


def test_sigterm_mid_epoch_checkpoints_within_seconds_and_the_rerun_resumes_exactly(tmp_path, reference):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = start_sweep(tmp_path, uri)
    run_id, _ = wait_for_epoch(tmp_path / "mlflow.db", 2)
    sweep.send_signal(signal.SIGTERM)
    # liveness only: the 60-s timeout is over 10x the few seconds the point takes to checkpoint and end
    _, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 143, stderr
    assert "Traceback" not in stderr
    killed = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert killed.info.status == Status.KILLED
    assert killed.data.tags[Tag.FAILURE_REASON].startswith("preempted (SIGTERM)")
    assert Tag.CHECKPOINT in killed.data.tags
    (parent,) = [r for r in all_runs(uri) if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    assert parent.info.status == Status.KILLED  # nothing is left RUNNING
    assert not [r for r in points(uri) if r.info.status in Status.LIVE]
    rerun = orch("sweep", str(grid(tmp_path, "resume")), "--workers", "1", cwd=tmp_path,
                 env={"MLFLOW_TRACKING_URI": uri})
    assert rerun.returncode == 0, rerun.stderr
    assert_resumed_exactly(uri, run_id, reference)


def test_a_killed_point_process_fails_only_its_point_which_resumes_on_retry(tmp_path, reference):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = start_sweep(tmp_path, uri, "--max-retries", "1")
    run_id, pid = wait_for_epoch(tmp_path / "mlflow.db", 2, nth_point=2)
    os.kill(int(pid), signal.SIGKILL)
    _, stderr = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, stderr
    killed = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert killed.info.status == Status.FAILED
    assert killed.data.tags[Tag.FAILURE_REASON].startswith("process died (SIGKILL)")
    assert_resumed_exactly(uri, run_id, reference)
    first, third = sorted((r for r in points(uri) if r.info.status == Status.FINISHED
                           and Tag.RESUMED_FROM not in r.data.tags), key=lambda r: r.info.start_time)
    assert first.data.tags[Tag.PID] == pid != third.data.tags[Tag.PID]  # a fresh process after the kill


def test_orch_run_resume_of_a_sweep_point_is_that_point_and_the_sweep_trains_nothing_again(tmp_path):
    """A point stopped with a checkpoint, continued by `orch run --resume`: the continuation
    is the point's run (its kind, sweep tags and parent); the dry run and the rerun sweep
    both count it done, and nothing is trained again."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = {**RESUME_BASE, "data": {"name": "digits", "batch_size": 64}, "train": {**RESUME_BASE["train"],
                                                                                   "max_epochs": 3, "patience": 3}}
    path = write_grid(tmp_path / "one.yaml", "resume-one", {"model.norm": ["bn"]}, base=base)
    env = {"MLFLOW_TRACKING_URI": uri}
    sweep = subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(path), "--workers", "1"],
                             cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    stopped_id, _ = wait_for_epoch(tmp_path / "mlflow.db", 1)
    sweep.send_signal(signal.SIGTERM)
    _, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 143, stderr

    resumed = orch("run", "--resume", stopped_id, "--quiet", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    (parent,) = [r for r in all_runs(uri) if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    (continued,) = [r for r in all_runs(uri) if r.info.status == Status.FINISHED]
    stopped = MlflowClient(tracking_uri=uri).get_run(stopped_id)
    assert continued.data.tags[Tag.RESUMED_FROM] == stopped_id
    for key in (Tag.KIND, Tag.SWEEP, Tag.POINT, Tag.SETTING, Tag.RUN_KEY):
        assert continued.data.tags[key] == stopped.data.tags[key], key
    assert continued.data.tags[Tag.PARENT_RUN_ID] == parent.info.run_id

    dry = invoke("sweep", str(path), "--dry-run", cwd=tmp_path, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "1 points: 1 done, 0 pending" in dry.stdout, dry.stdout
    rerun = orch("sweep", str(path), "--workers", "1", cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 already finished, 0 to run" in rerun.stderr, rerun.stderr
    assert [r.info.run_id for r in all_runs(uri) if r.info.status == Status.FINISHED
            and r.data.tags.get(Tag.KIND) != Kind.SWEEP] == [continued.info.run_id]  # trained once
    assert MlflowClient(tracking_uri=uri).get_run(parent.info.run_id).info.status == Status.FINISHED
