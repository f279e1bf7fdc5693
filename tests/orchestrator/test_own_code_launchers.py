"""The function example (``examples/own_function``) on the other launchers: a point preempted on
the PostgreSQL queue and finished by another worker with its own copy of the code, and a Slurm
task requeued after its time-limit warning. Each resumed run must end bit for bit as an
uninterrupted one (the example is deterministic on the CPU).

Real PostgreSQL, a real ``mlflow server``, real workers and a real one-node Slurm cluster
(conftest's fixtures, which skip with the reason when their binaries are missing). The
example is copied to folders outside the repository, as a user's own code would be.
"""

from __future__ import annotations


import pytest
from mlflow.tracking import MlflowClient

from conftest import invoke, new_database, orch
from orchestrator.grid.load import load_grid
from orchestrator.store.schema import Status, Tag
from test_own_code_examples import ENV, copy_example, history, points, sweep
from test_provenance import _git
from test_queue import FAST_HEARTBEAT, _point_runs, preempt_worker_after_checkpoint
from test_slurm import SHARED, parent_run, point_runs, scancel_at_epoch, task_logs, wait_restarting_requeued

EPOCHS = 80  # long enough to be stopped mid-run: each epoch hands over a checkpoint (checkpoint_seconds: 0)
ONE_POINT = {"base": {"epochs": EPOCHS, "lr": 0.05, "dropout": 0.1}, "grid": {"width": [32], "act": ["relu"]},
             "seeds": [1]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The point uninterrupted, by a local sweep: (store URI, its run)."""
    grid_file, uri = copy_example("own_function", tmp_path_factory.mktemp("reference"), **ONE_POINT)
    proc = sweep(grid_file, uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = points(uri)
    return uri, run


def assert_resumed_exactly(uri: str, resumed, reference) -> None:
    """``resumed`` (in ``uri``) has the reference run's summary metrics and curves, bit for bit."""
    ref_uri, ref = reference
    for metric in ("test_acc", "val_acc"):
        assert resumed.data.metrics[metric] == ref.data.metrics[metric], metric
    for metric in ("val_acc", "train_loss"):
        steps = history(uri, resumed.info.run_id, metric)
        assert set(range(1, EPOCHS + 1)) <= set(steps), metric  # val_acc's summary value is step 0
        assert steps == history(ref_uri, ref.info.run_id, metric), metric


def test_point_preempted_on_the_queue_is_finished_exactly_by_a_worker_with_its_own_copy(
        postgres_url, mlflow_server, reference, tmp_path):
    """Worker A (the folder the sweep was queued from) is SIGTERMed mid-point: the run ends KILLED
    with a checkpoint and the point goes back on the queue. Worker B runs on "another machine":
    A's folder is gone, and B has its own checkout of the example (a git clone) and runs there."""
    grid_file, _ = copy_example("own_function", tmp_path / "a", **ONE_POINT)
    a_dir = grid_file.parent
    storage = new_database(postgres_url)
    spec = load_grid(grid_file)
    queued = orch("sweep", grid_file.name, "--storage", storage, "--tracking-uri", mlflow_server, cwd=a_dir, env=ENV)
    assert queued.returncode == 0, queued.stderr[-3000:]
    assert "queued 1 point(s)" in queued.stderr

    killed_id = preempt_worker_after_checkpoint(storage, mlflow_server, spec.sweep_id, a_dir, ENV)
    client = MlflowClient(tracking_uri=mlflow_server)
    killed = client.get_run(killed_id)
    assert killed.info.status == Status.KILLED
    assert killed.data.tags[Tag.FAILURE_REASON].startswith("preempted (SIGTERM) at step"), killed.data.tags
    assert killed.data.tags[Tag.GIT_COMMIT] == "no commit"  # A's copy is outside any repository
    status = invoke("status", "--storage", storage)
    assert "pending 1  running 0  done 0  failed 0" in status.stdout, status.stdout

    # B's machine: no folder at A's path; the example's code from a clone of its own
    a_dir.rename(tmp_path / "a-elsewhere")
    origin = copy_example("own_function", tmp_path / "origin")[0].parent
    for args in (("init", "-q"), ("add", "."), ("commit", "-q", "-m", "the example")):
        _git(origin, *args)
    b_dir = tmp_path / "b"
    _git(tmp_path, "clone", "-q", str(origin), str(b_dir))
    rescuer = orch("worker", "--storage", storage, "--quiet", env={**ENV, **FAST_HEARTBEAT}, cwd=b_dir, timeout=600)
    assert rescuer.returncode == 0, rescuer.stderr[-3000:]

    (resumed,) = [r for r in _point_runs(mlflow_server, spec.sweep_id) if r.info.status == Status.FINISHED]
    assert resumed.data.tags[Tag.RESUMED_FROM] == killed_id
    assert int(resumed.data.tags[Tag.RESUMED_STEP]) >= 2
    assert resumed.data.tags[Tag.ENTRY] == "train:main"
    assert resumed.data.tags[Tag.GIT_COMMIT] == _git(b_dir, "rev-parse", "HEAD").strip()  # B's own copy ran it
    assert_resumed_exactly(mlflow_server, resumed, reference)


@pytest.mark.timeout(900)
def test_slurm_task_requeued_after_its_time_limit_warning_resumes_the_point_exactly(cluster, reference, tmp_path):
    """The warning (SIGUSR1 to the batch shell, as ``--signal=B:USR1@N`` makes Slurm send it; sent
    with ``scancel --signal=USR1 --batch`` once the point has a checkpoint, as test_slurm does)
    makes the point checkpoint and end KILLED and the task requeue itself; its next start resumes
    the point from that checkpoint."""
    grid_file, uri = copy_example("own_function", tmp_path, **ONE_POINT)
    folder = grid_file.parent
    spec = load_grid(grid_file)
    (point,) = spec.runs
    MlflowClient(tracking_uri=uri).search_experiments()  # an existing store, as in test_slurm
    sub = orch("sweep", grid_file.name, "--launcher", "slurm", SHARED, "--tracking-uri", uri, "--slurm", "time=30",
               cwd=folder, env=ENV)
    assert sub.returncode == 0, sub.stderr[-3000:]
    assert "submitted 1 point(s) as Slurm job" in sub.stderr

    warned = scancel_at_epoch(cluster, tmp_path / "mlflow.db", point.run_key, "--signal=USR1", "--batch")
    assert warned, f"the point never reached epoch 2: {task_logs(folder)[-3000:]}"
    wait_restarting_requeued(cluster, spec.sweep_id, folder)

    logs = task_logs(folder)
    assert "task requeued" in logs, logs[-3000:]
    assert parent_run(uri, spec.sweep_id).info.status == Status.FINISHED, logs[-3000:]
    stopped = MlflowClient(tracking_uri=uri).get_run(warned)
    assert stopped.info.status == Status.KILLED
    assert stopped.data.tags[Tag.FAILURE_REASON].startswith("preempted (SIGUSR1)")
    (done,) = [r for r in point_runs(uri, spec.sweep_id) if r.info.status == Status.FINISHED]
    assert int(done.data.tags[Tag.SLURM_RESTARTS]) >= 1  # a requeued start of the same task
    assert done.data.tags[Tag.RESUMED_FROM] == warned
    assert_resumed_exactly(uri, done, reference)
