"""Multi-machine queue: real PostgreSQL (throwaway cluster), real `mlflow server`, real workers."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import (REPO, RESUME_BASE, TINY_BASE, invoke, new_database, orch, point_processes_under, results,
                      write_grid)
from experiments.metric_names import epoch_key
from orchestrator.grid.load import load_grid
from orchestrator.store.schema import Kind, Status, Tag

FAST_HEARTBEAT = {"ORCH_HEARTBEAT_SECONDS": "1", "ORCH_GRACE_SECONDS": "4"}


def _wait_until_stale(storage: str, grace: float, timeout: float = 60) -> None:
    """Poll the queue's database until the newest trial heartbeat is older than ``grace``."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(storage.replace("postgresql://", "postgresql+psycopg://"))
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            with engine.connect() as con:
                age = con.execute(sqlalchemy.text(
                    "SELECT EXTRACT(EPOCH FROM (LOCALTIMESTAMP - MAX(heartbeat))) FROM trial_heartbeats")).scalar()
            if age is not None and float(age) > grace:
                return
            time.sleep(0.2)
    finally:
        engine.dispose()
    pytest.fail(f"no trial heartbeat went stale within {timeout:.0f} s")


def preempt_worker_after_checkpoint(storage: str, server: str, sweep_id: str, folder, env=None) -> str:
    """Start a worker in ``folder``, SIGTERM it once its point holds a checkpoint at step 2 or
    later, check that it exited 143 without a traceback; the id of the point's run."""
    worker = subprocess.Popen([sys.executable, "-m", "orchestrator", "worker", "--storage", storage, "--quiet"],
                              cwd=folder, env={**os.environ, **(env or {}), **FAST_HEARTBEAT},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed_id = _wait_for_point(server, sweep_id, worker, "worker A never checkpointed its point",
                                lambda run: int(run.data.tags.get(Tag.CHECKPOINT_STEP, 0)) >= 2)
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 143, stderr
    assert "Traceback" not in stderr
    return killed_id


def _wait_for_point(server: str, sweep_id: str, worker: subprocess.Popen, failure: str, ready) -> str:
    """The run id of the sweep's first point once it is RUNNING and ``ready(run)``; else kill the worker and fail."""
    deadline = time.time() + 180
    while time.time() < deadline:
        runs = _point_runs(server, sweep_id)
        if runs and runs[0].info.status == Status.RUNNING and ready(runs[0]):
            return runs[0].info.run_id
        time.sleep(0.2)
    worker.kill()
    pytest.fail(failure)


def _point_runs(server: str, sweep_id: str):
    c = MlflowClient(tracking_uri=server)
    ids = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(ids, filter_string=f"tags.`orch.sweep` = '{sweep_id}'", max_results=5000)
    return [r for r in runs if r.data.tags.get("orch.kind") == "point"]


# Workers started side by side on one machine share its cores, as a user would start them: one
# torch thread each. (Two threads each on two cores made every point's training several times
# slower: the three-worker test took 135 s instead of 57 s.)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}

def test_three_workers_run_twelve_points_exactly_once(postgres_url, mlflow_server, tmp_path):
    storage = new_database(postgres_url)
    grid = write_grid(tmp_path / "g.yaml", f"queue-{uuid.uuid4().hex[:6]}",
                      {"model.norm": ["bn", "gn"], "data.batch_size": [32, 64]}, seeds=(0, 1, 2))
    spec = load_grid(grid)
    assert len(spec.runs) == 12
    sub = orch("sweep", str(grid), "--storage", storage, "--tracking-uri", mlflow_server, cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    assert "queued 12 point(s)" in sub.stderr
    again = orch("sweep", str(grid), "--storage", storage, "--tracking-uri", mlflow_server, cwd=tmp_path)
    assert "queued 0 point(s)" in again.stderr and "12 already queued" in again.stderr  # idempotent

    workers = [subprocess.Popen([sys.executable, "-m", "orchestrator", "worker", "--storage", storage, "--quiet"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
               for _ in range(3)]
    outs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [o[1][-2000:] for o in outs]

    runs = _point_runs(mlflow_server, spec.sweep_id)
    per_key = collections.Counter(r.data.tags["orch.run_key"] for r in runs)
    assert sorted(per_key) == sorted(r.run_key for r in spec.runs)
    assert set(per_key.values()) == {1}, per_key  # no point ran twice
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["orch.host"] + r.data.tags["orch.pid"] for r in runs}) > 1  # work was shared

    status = invoke("status", "--storage", storage)
    assert status.returncode == 0, status.stderr
    assert "pending 0  running 0  done 12  failed 0" in status.stdout

    c = MlflowClient(tracking_uri=mlflow_server)
    parent = c.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"  # the worker that ran the last point closed the sweep
    assert "summary.csv" in {a.path for a in c.list_artifacts(parent.info.run_id)}
    note = parent.data.tags["mlflow.note.content"]  # the description, written with the summary
    assert "**12 done**, 0 failed" in note and "| val_f1_macro mean ± std" in note and "`summary.csv`" in note


def test_killed_worker_point_is_requeued_and_its_run_failed(postgres_url, mlflow_server, tmp_path):
    storage = new_database(postgres_url)
    base = {**TINY_BASE, "train": {"max_epochs": 30, "patience": 30}}  # still running when its worker is killed
    grid = write_grid(tmp_path / "g.yaml", f"kill-{uuid.uuid4().hex[:6]}", {"model.norm": ["bn"]}, base=base)
    spec = load_grid(grid)
    assert orch("sweep", str(grid), "--storage", storage, "--tracking-uri", mlflow_server,
                cwd=tmp_path).returncode == 0
    env = {**os.environ, **FAST_HEARTBEAT}
    victim = subprocess.Popen([sys.executable, "-m", "orchestrator", "worker", "--storage", storage, "--quiet"],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_run = _wait_for_point(mlflow_server, spec.sweep_id, victim, "the first worker never started its point",
                                 lambda run: True)
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    _wait_until_stale(storage, float(FAST_HEARTBEAT["ORCH_GRACE_SECONDS"]))
    rescuer = orch("worker", "--storage", storage, "--quiet", "--max-retries", "0",
                   env={**FAST_HEARTBEAT}, cwd=tmp_path, timeout=600)
    assert rescuer.returncode == 0, rescuer.stderr[-3000:]

    runs = _point_runs(mlflow_server, spec.sweep_id)
    by_id = {r.info.run_id: r for r in runs}
    killed = by_id[killed_run]
    # The worker's point process got SIGTERM from the kernel as the worker died: it checkpointed
    # and ended KILLED (preempted); the heartbeat's grace then requeued the point (and marks the
    # run FAILED if the point process had not closed it itself).
    reason = killed.data.tags[Tag.FAILURE_REASON]
    assert (killed.info.status, reason.split(" ")[0]) in {(Status.KILLED, "preempted"), (Status.FAILED, "worker")}
    finished = [r for r in runs if r.info.status == Status.FINISHED]
    assert len(finished) == 1 and finished[0].data.tags[Tag.RUN_KEY] == spec.runs[0].run_key
    assert finished[0].data.tags[Tag.RESUMED_FROM] == killed_run  # continued from the killed run's checkpoint


NO_DRIVER = "driver 'nosuchdriver' is not installed"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["worker", "--storage", "mysql://x@127.0.0.1/db"], "unsupported scheme"),
        (["worker", "--storage", "not a url"], "not a URL"),
        (["worker", "--storage", "postgresql://nobody@127.0.0.1:1/none"], "not reachable"),
        (["status", "--storage", "postgresql://nobody@127.0.0.1:1/none"], "not reachable"),
        (["worker", "--storage", "sqlite:///q.db", "--tracking-uri", "http://127.0.0.1:1"], "not reachable"),
        (["worker", "--storage", "postgresql+nosuchdriver://orch@127.0.0.1:1/q"], NO_DRIVER),
        (["sweep", str(REPO / "experiments/grids/demo.yaml"), "--storage",
          "postgresql+nosuchdriver://orch@127.0.0.1:1/q"], NO_DRIVER),
    ],
)
def test_bad_storage_or_server_exits_2_before_work(tmp_path, args, needle):
    proc = invoke(*args, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not point_processes_under()  # no point process outlives the refusal


def test_sweep_submit_to_unreachable_server_starts_nothing(postgres_url, tmp_path):
    storage = new_database(postgres_url)
    grid = write_grid(tmp_path / "g.yaml", "nowhere", {"model.norm": ["bn"]})
    proc = invoke("sweep", str(grid), "--storage", storage, "--tracking-uri", "http://127.0.0.1:1", cwd=tmp_path)
    assert proc.returncode == 2 and "not reachable" in proc.stderr
    status = invoke("status", "--storage", storage)
    assert "no queued sweeps" in status.stdout


def test_status_of_an_empty_storage_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    result = invoke("status", "--storage", url)
    assert result.returncode == 0, result.stderr
    assert f"no queued sweeps in {url}" in result.stdout


def test_second_sqlite_worker_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    other = subprocess.Popen([sys.executable, "-c",
                              "import sys, time; from orchestrator.launch import queue;"
                              "queue.register_worker(sys.argv[1], stale_after=60); time.sleep(30)", url])
    try:
        import optuna

        deadline = time.time() + 60
        while time.time() < deadline:  # until the other worker has registered
            try:
                if optuna.load_study(study_name="orch-workers", storage=url).user_attrs:
                    break
            except KeyError:  # no registry study yet
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the other worker never registered")
        proc = invoke("worker", "--storage", url, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "SQLite cannot hand out points exactly once" in proc.stderr
        assert not point_processes_under()  # none outlives the refusal
    finally:
        other.kill()


def test_worker_joins_a_tuning_study(postgres_url, mlflow_server, tmp_path):
    """`orch tune --storage postgresql://…` and an `orch worker` run the trials of one study
    together: each trial once, under the one parent run, and both processes take part."""
    import optuna
    from optuna.trial import TrialState

    storage = new_database(postgres_url)
    name = f"tq-{uuid.uuid4().hex[:6]}"
    grid = tmp_path / "tune.yaml"
    grid.write_text(yaml.safe_dump({
        "name": name,
        "base": {**TINY_BASE, "train": {"max_epochs": 3, "patience": 3}},
        "grid": {"model.norm": ["bn"]},
        "tune": {"metric": "val_f1_macro", "direction": "maximize", "n_trials": 6,
                 "space": {"schedule.step_size": {"type": "int", "low": 1, "high": 3},
                           "schedule.gamma": {"type": "float", "low": 0.1, "high": 0.9, "log": True}}},
    }, sort_keys=False))
    study_name = f"{name}-bn"
    tuner = subprocess.Popen([sys.executable, "-m", "orchestrator", "tune", str(grid), "--storage", storage,
                              "--tracking-uri", mlflow_server, "--pruner", "none", "--quiet"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    from orchestrator.store.optuna_storage import open_storage

    deadline = time.time() + 120
    while time.time() < deadline:  # the worker joins once the study says how
        summaries = optuna.get_all_study_summaries(open_storage(storage.replace("postgresql://",
                                                                                "postgresql+psycopg://")))
        if any(s.study_name == study_name and "orch.worker_job" in s.user_attrs for s in summaries):
            break
        assert tuner.poll() is None, tuner.communicate()
        time.sleep(0.5)
    worker = subprocess.Popen([sys.executable, "-m", "orchestrator", "worker", "--storage", storage],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    outs = [p.communicate(timeout=600) for p in (tuner, worker)]
    assert [tuner.returncode, worker.returncode] == [0, 0], "\n=====\n".join(o[1][-3000:] for o in outs)
    assert f"[{study_name}] joining the tuning study" in outs[1][1]

    study = optuna.load_study(study_name=study_name,
                              storage=storage.replace("postgresql://", "postgresql+psycopg://"))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 6 <= len(complete) <= 7, [t.state for t in trials]  # a trial in flight elsewhere may finish last
    assert {t.user_attrs["orch.pid"] for t in complete} == {str(tuner.pid), str(worker.pid)}

    c = MlflowClient(tracking_uri=mlflow_server)
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("orch.kind") == "tune"]
    kids = [r for r in runs if r.data.tags.get("orch.kind") == "trial"]
    assert all(k.data.tags["mlflow.parentRunId"] == parent.info.run_id for k in kids)
    assert sorted(int(k.data.tags["orch.trial"]) for k in kids) == sorted(t.number for t in trials)
    by_trial = {int(k.data.tags["orch.trial"]): k for k in kids}
    for t in complete:
        run = by_trial[t.number]
        assert run.info.status == "FINISHED"
        assert run.data.params["schedule.step_size"] == str(t.params["schedule.step_size"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["orch.n_complete"] == str(len(complete))


def test_processes_opening_a_fresh_storage_at_once_all_succeed(postgres_url):
    """Optuna creates its tables on first open; several orch processes racing to do it on a
    fresh database (workers and `orch tune` started together) must all get the storage."""
    url = new_database(postgres_url).replace("postgresql://", "postgresql+psycopg://")
    code = "import sys; from orchestrator.store.optuna_storage import open_storage; open_storage(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e[-500:] for e in errors]


def test_sigterm_worker_requeues_at_once_and_another_worker_resumes_its_checkpoint(postgres_url, mlflow_server,
                                                                                   tmp_path):
    """Worker A is preempted mid-point: the point checkpoints, its run ends KILLED and goes back
    on the queue at once; worker B, in another directory, continues it from A's checkpoint
    (through the tracking server only) to the same numbers as an uninterrupted run."""
    base = {**RESUME_BASE, "train": {**RESUME_BASE["train"], "max_epochs": 8, "patience": 8}}
    ref_dir, a_dir, b_dir = (tmp_path / d for d in ("reference", "a", "b"))
    for d in (ref_dir, a_dir, b_dir):
        d.mkdir()
    ref_grid = write_grid(ref_dir / "g.yaml", "reference", {"model.norm": ["bn"]}, base=base)
    ref_uri = f"sqlite:///{ref_dir / 'mlflow.db'}"
    assert orch("sweep", str(ref_grid), "--workers", "1", "--tracking-uri", ref_uri, cwd=ref_dir).returncode == 0
    (reference,) = [r for r in MlflowClient(tracking_uri=ref_uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=ref_uri).search_experiments()])
        if r.data.tags.get(Tag.KIND) == Kind.POINT]

    storage = new_database(postgres_url)
    grid = write_grid(a_dir / "g.yaml", f"preempt-{uuid.uuid4().hex[:6]}", {"model.norm": ["bn"]}, base=base)
    spec = load_grid(grid)
    assert orch("sweep", str(grid), "--storage", storage, "--tracking-uri", mlflow_server, cwd=a_dir).returncode == 0
    killed_id = preempt_worker_after_checkpoint(storage, mlflow_server, spec.sweep_id, a_dir)

    c = MlflowClient(tracking_uri=mlflow_server)
    killed = c.get_run(killed_id)
    assert killed.info.status == Status.KILLED
    assert killed.data.tags[Tag.FAILURE_REASON].startswith("preempted (SIGTERM)")
    status = invoke("status", "--storage", storage)
    assert "pending 1  running 0  done 0  failed 0" in status.stdout, status.stdout  # back at once, no grace wait

    rescuer = orch("worker", "--storage", storage, "--quiet", env={**FAST_HEARTBEAT}, cwd=b_dir, timeout=600)
    assert rescuer.returncode == 0, rescuer.stderr[-3000:]
    (resumed,) = [r for r in _point_runs(mlflow_server, spec.sweep_id) if r.info.status == Status.FINISHED]
    assert resumed.data.tags[Tag.RESUMED_FROM] == killed_id
    assert int(resumed.data.tags[Tag.RESUMED_STEP]) >= 2
    assert sorted(m.step for m in c.get_metric_history(resumed.info.run_id, epoch_key("val_loss"))) == list(range(1, 9))
    assert results(resumed) == results(reference)


def test_frozen_worker_that_lost_its_point_writes_no_final_state(postgres_url, mlflow_server, tmp_path):
    """Worker A and its point process are frozen (SIGSTOP: a paused VM, a closed laptop lid)
    past the grace period; worker B requeues the point and finishes it from A's checkpoint.
    Thawed (SIGCONT), A's point process finds at its next epoch that its claim is gone: it
    stops without writing a checkpoint or a final state, the run stays as the reaper marked
    it, and A exits 0 without telling Optuna anything about the trial it lost."""
    storage = new_database(postgres_url)
    base = {**RESUME_BASE, "train": {**RESUME_BASE["train"], "max_epochs": 8, "patience": 8}}
    grid = write_grid(tmp_path / "g.yaml", f"frozen-{uuid.uuid4().hex[:6]}", {"model.norm": ["bn"]}, base=base)
    spec = load_grid(grid)
    assert orch("sweep", str(grid), "--storage", storage, "--tracking-uri", mlflow_server,
                cwd=tmp_path).returncode == 0
    env = {**ONE_THREAD, **FAST_HEARTBEAT}
    frozen = subprocess.Popen([sys.executable, "-m", "orchestrator", "worker", "--storage", storage],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stale_id = _wait_for_point(mlflow_server, spec.sweep_id, frozen, "worker A never checkpointed its point",
                               lambda run: int(run.data.tags.get(Tag.CHECKPOINT_STEP, 0)) >= 1)
    (point_proc,) = point_processes_under(frozen.pid)
    point_proc.send_signal(signal.SIGSTOP)
    frozen.send_signal(signal.SIGSTOP)
    try:
        _wait_until_stale(storage, float(FAST_HEARTBEAT["ORCH_GRACE_SECONDS"]))
        rescuer = orch("worker", "--storage", storage, "--quiet", env={**FAST_HEARTBEAT, "OMP_NUM_THREADS": "1"},
                       cwd=tmp_path, timeout=600)
        assert rescuer.returncode == 0, rescuer.stderr[-3000:]
    finally:
        point_proc.send_signal(signal.SIGCONT)
        frozen.send_signal(signal.SIGCONT)
    _, stderr = frozen.communicate(timeout=300)
    assert frozen.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "lost its claim" in stderr, stderr[-3000:]

    runs = _point_runs(mlflow_server, spec.sweep_id)
    finished = [r for r in runs if r.info.status == Status.FINISHED]
    assert len(finished) == 1, [(r.info.run_id, r.info.status) for r in runs]  # the point ran once
    assert finished[0].data.tags[Tag.RESUMED_FROM] == stale_id
    stale = MlflowClient(tracking_uri=mlflow_server).get_run(stale_id)
    assert stale.info.status == Status.FAILED  # as the reaper marked it
    assert "stopped sending heartbeats" in stale.data.tags[Tag.FAILURE_REASON]
    status = invoke("status", "--storage", storage)
    assert "pending 0  running 0  done 1  failed 0" in status.stdout, status.stdout
