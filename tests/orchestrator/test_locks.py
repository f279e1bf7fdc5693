"""Sweeps of one experiment through one `mlflow server` from two machines: the heartbeat on
the parent run keeps them apart where the file lock of each machine cannot.

"Another machine" is a sweep with its own lock folder (``ORCH_CACHE_DIR``), and, where
the test may create a UTS namespace (root), a sweep under another host name. The file
lock itself (one machine, one store): ``tests/orchestrator/test_faults.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import psutil
import pytest

from conftest import RESUME_BASE, point_processes_under, write_grid
from orchestrator.store import locks
from orchestrator.grid.load import load_grid
from orchestrator.store.schema import Kind, Status, Tag
from orchestrator.store.tracking import TrackingStore

# beat every second, so that a sweep waiting on another one polls every second
FAST_BEAT = {"ORCH_SWEEP_HEARTBEAT_SECONDS": "1", "OMP_NUM_THREADS": "1"}


def sweep(grid, server: str, lock_dir, *args: str, env: dict | None = None,
          prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """``orch sweep`` in a subprocess with its own lock folder, as on another machine."""
    return subprocess.Popen([*prefix, sys.executable, "-m", "orchestrator", "sweep", str(grid),
                             "--tracking-uri", server, *args], cwd=lock_dir.parent, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **FAST_BEAT, "ORCH_CACHE_DIR": str(lock_dir), **(env or {})})


def experiment_runs(server: str, name: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name(name)
    return list(client.search_runs([exp.experiment_id], max_results=1000)) if exp else []


def points(server: str, name: str) -> list:
    return [r for r in experiment_runs(server, name) if r.data.tags.get(Tag.KIND) == Kind.POINT]


def wait_for_running_point(server: str, name: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not any(r.info.status == Status.RUNNING for r in points(server, name)):
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before a point ran ({proc.returncode}): {proc.communicate()}")
        if time.time() > deadline:
            pytest.fail("no point started")
        time.sleep(0.2)


def finish(proc: subprocess.Popen, timeout: float = 300, before: str = "") -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, before + err)


def read_until(proc: subprocess.Popen, text: str) -> str:
    """The process's stderr up to the first line that holds ``text``."""
    seen = ""
    for line in proc.stderr:
        seen += line
        if text in line:
            return seen
    pytest.fail(f"no line with {text!r} before the process ended ({proc.wait()}):\n{seen}")


@contextlib.contextmanager
def frozen_points(sweep_proc: subprocess.Popen):
    """The sweep's point processes stopped (SIGSTOP) for the block, so that its points stay
    running as long as the test needs; the sweep itself goes on beating."""
    procs = point_processes_under(sweep_proc.pid)
    assert procs, "the sweep has no point process"
    for proc in procs:
        proc.suspend()
    try:
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.resume()


def stop(*procs: subprocess.Popen | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()


def assert_each_point_finished_once(server: str, name: str, grid) -> None:
    runs = experiment_runs(server, name)
    assert not [r.info.run_name for r in runs if r.info.status in Status.LIVE]
    finished = Counter(r.data.tags[Tag.RUN_KEY] for r in runs
                       if r.data.tags.get(Tag.KIND) == Kind.POINT and r.info.status == Status.FINISHED)
    assert sorted(finished) == sorted(r.run_key for r in load_grid(grid).runs), finished
    assert set(finished.values()) == {1}, finished


def two_point_grid(tmp_path, name: str):
    """Two points of a few seconds each, so that a running one is caught and frozen in time."""
    return write_grid(tmp_path / f"{name}.yaml", name, {"model.norm": ["bn", "gn"]}, base=RESUME_BASE)


def test_a_second_sweep_through_one_server_with_its_own_lock_folder_refuses_or_waits(mlflow_server, tmp_path):
    """While one sweep runs, another with a separate lock folder exits 2 naming the holder's
    host, pid and heartbeat age; one with --wait waits, then finds every point done. Each
    point runs once."""
    name = f"heartbeat-{os.getpid()}-{time.time_ns() % 10**6}"
    grid = two_point_grid(tmp_path, name)
    first = sweep(grid, mlflow_server, tmp_path / "machine-a")
    second = waiting = None
    try:
        wait_for_running_point(mlflow_server, name, first)
        with frozen_points(first):
            second = sweep(grid, mlflow_server, tmp_path / "machine-b")
            refused = finish(second)
            waiting = sweep(grid, mlflow_server, tmp_path / "machine-c", "--wait")
            waited_for = read_until(waiting, "waiting for")
        done = finish(first)
        waited = finish(waiting, before=waited_for)
    finally:
        stop(second, first, waiting)
    assert refused.returncode == 2, refused.stderr
    message = refused.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert f"is being swept by pid {first.pid} on host {socket.gethostname()} (heartbeat " in message, message
    assert "s ago)" in message and "--wait" in message, message
    assert done.returncode == 0, done.stderr
    assert waited.returncode == 0, waited.stderr
    assert f"waiting for pid {first.pid} on host {socket.gethostname()}" in waited.stderr, waited.stderr
    assert "2 already finished, 0 to run" in waited.stderr, waited.stderr
    assert_each_point_finished_once(mlflow_server, name, grid)
    assert len(points(mlflow_server, name)) == 2  # not even a failed attempt ran twice


def _can_rename_host() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--uts", "hostname", "machine-a"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_rename_host(), reason="needs a UTS namespace (unshare --uts, as root)")
def test_a_sweep_killed_on_another_host_is_taken_over_once_its_heartbeat_is_stale(mlflow_server, tmp_path):
    """A sweep here waits for a sweep on host machine-a, which is then SIGKILLed mid-point:
    its parent stays RUNNING with its last heartbeat, and the waiting sweep, which cannot
    see whether a process of another host lives, takes over once that heartbeat is older
    than ORCH_SWEEP_STALE_SECONDS, and runs exactly what did not finish."""
    name = f"stale-{os.getpid()}-{time.time_ns() % 10**6}"
    grid = two_point_grid(tmp_path, name)
    other_host = ("unshare", "--uts", "sh", "-c", 'hostname machine-a && exec "$@"', "sh")
    holder = sweep(grid, mlflow_server, tmp_path / "machine-a", prefix=other_host)
    taker = None
    try:
        wait_for_running_point(mlflow_server, name, holder)
        with frozen_points(holder) as point_procs:
            taker = sweep(grid, mlflow_server, tmp_path / "here", "--wait", env={"ORCH_SWEEP_STALE_SECONDS": "8"})
            waited_for = read_until(taker, f"waiting for pid {holder.pid} on host machine-a")
            holder.send_signal(signal.SIGKILL)
            holder.communicate()
        psutil.wait_procs(point_procs, timeout=60)  # thawed, they checkpoint and end their runs KILLED
        took_over = finish(taker, before=waited_for)
    finally:
        stop(holder, taker)
    assert took_over.returncode == 0, took_over.stderr
    assert "Traceback" not in took_over.stderr, took_over.stderr
    assert_each_point_finished_once(mlflow_server, name, grid)
    (parent,) = [r for r in experiment_runs(mlflow_server, name) if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    assert parent.info.status == Status.FINISHED
    assert json.loads(parent.data.tags[Tag.HEARTBEAT])["host"] == socket.gethostname()


def test_which_heartbeats_hold_an_experiment(store):
    """The rule on one real store: a RUNNING sweep parent holds its experiment while its
    heartbeat is fresh and its process may be alive; stale, dead here, own, closed or
    unreadable heartbeats hold nothing."""
    tracking = TrackingStore(store)
    exp = tracking.ensure_experiment("rule")
    parent = tracking.start_run(exp, run_name="p", params={}, tags={Tag.KIND: Kind.SWEEP, Tag.SWEEP: "s"})
    alive = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    here = socket.gethostname()

    def holder(host, pid, age: float = 0.0, status: str = Status.RUNNING, value: str | None = None):
        tracking.set_tags(parent, {Tag.HEARTBEAT: value or json.dumps(
            {"host": host, "pid": pid, "time": time.time() - age})})
        tracking.client.update_run(parent, status=status)
        return locks.heartbeat_holder(tracking, exp)

    try:
        assert holder("elsewhere", 4242, age=3) == "pid 4242 on host elsewhere (heartbeat 3 s ago)"
        assert holder(here, alive.pid) == f"pid {alive.pid} on host {here} (heartbeat 0 s ago)"
        assert holder("elsewhere", 4242, age=locks.STALE_SECONDS + 1) is None
        assert holder(here, dead.pid) is None
        assert holder(here, os.getpid()) is None
        assert holder("elsewhere", 4242, status=Status.FINISHED) is None
        assert holder("", 0, value="not json") is None
    finally:
        alive.kill()
        alive.wait()
