"""Nothing lost, nothing twice: broken stores, a full disk and concurrent sweeps, for real.

Every test runs the real ``orch`` in subprocesses on real SQLite stores and checks the
result through MLflow's own client: no traceback on stderr, the documented exit code
(:class:`orchestrator.errors.ExitCode`), no run left RUNNING, no run key with two
FINISHED runs. A store that another process may be creating is read through sqlite3
``mode=ro`` or only after that process ended.

Rows of the fault table tested elsewhere (not repeated here):

- a 10^6-point grid, an alias bomb, a 6 MB file, Ctrl-C during validation:
  ``tests/test_bounded_input.py`` (``test_a_million_point_grid_is_refused_at_once_…``,
  ``test_an_alias_bomb_is_refused_before_it_expands``, ``test_orch_sweep_dry_run_on_a_bomb_exits_2_at_once``,
  ``test_ctrl_c_interrupts_validation_at_once``);
- SIGTERM to a sweep mid-point (runs KILLED ``preempted (SIGTERM)…`` with a checkpoint,
  parent KILLED, exit 143) and SIGKILL of a sweep or a point process:
  ``tests/test_resume_sweep.py``; a SIGKILLed sweep resumed: ``tests/test_sweep.py``
  ``test_sigkill_mid_sweep_then_resume_completes_exactly_the_missing``;
- SIGTERM to ``orch worker`` (its point goes back on the queue at once) and a dead
  worker: ``tests/test_queue.py`` ``test_sigterm_worker_requeues_at_once_…``,
  ``test_killed_worker_point_is_requeued_and_its_run_failed``;
- ``orch compare`` / ``orch report`` on a missing store: ``tests/test_report.py``
  ``test_a_missing_sqlite_store_is_refused_and_not_created``; an unreachable queue
  storage or server: ``tests/test_queue.py`` ``test_bad_storage_or_server_exits_2_before_work``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import TINY_BASE, all_runs, invoke, orch, point_processes_under, write_grid
from orchestrator.grid.load import load_grid
from orchestrator.store.schema import Kind, Status, Tag

BAD_STORE_SECONDS = 10


# --------------------------------------------------------------------------- helpers


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "sweep", *args]


def point_runs(uri: str) -> list:
    return [r for r in all_runs(uri) if r.data.tags.get(Tag.KIND) == Kind.POINT]


def assert_no_traceback(*procs) -> None:
    for proc in procs:
        assert "Traceback" not in proc.stderr, proc.stderr


def assert_consistent(uri: str, expected_keys: list[str]) -> list:
    """No RUNNING run at all; exactly one FINISHED point run per expected run key."""
    runs = all_runs(uri)
    assert not [r.info.run_name for r in runs if r.info.status in Status.LIVE]
    finished = Counter(r.data.tags[Tag.RUN_KEY] for r in runs
                       if r.data.tags.get(Tag.KIND) == Kind.POINT and r.info.status == Status.FINISHED)
    assert sorted(finished) == sorted(expected_keys), finished
    assert set(finished.values()) == {1}, finished
    return runs


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process ended first ({proc.returncode}): {proc.communicate()}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def popen(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str):
    """A tmpfs of ``size`` mounted on ``path`` for the block (root only); skips when not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join((f"size={size}", *options))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True,
                             text=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({'not root' if mounted is None else mounted.stderr.strip()})")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def tiny_grid(tmp_path: Path, name: str, norms=("bn", "gn"), seeds=(0,), file: str | None = None) -> Path:
    return write_grid(tmp_path / (file or f"{name}.yaml"), name, {"model.norm": list(norms)}, seeds=seeds,
                      base=TINY_BASE)


# --------------------------------------------------------------------------- broken stores


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can write in: a read-only tmpfs as root (root ignores permissions), else mode 555."""
    path = tmp_path / "ro"
    if os.geteuid() == 0:
        with tmpfs(path, "1m", "ro"):
            yield path
    else:
        path.mkdir()
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


@pytest.fixture
def read_only_store(tmp_path):
    """An MLflow store in a folder that has become read-only (remounted read-only as root, else mode 555)."""
    path = tmp_path / "ro-store"
    # Made by another process, which closes the file: a mount with an open file cannot turn read-only.
    make = [sys.executable, "-c", "import sys; from orchestrator.store import tracking\n"
            "tracking.TrackingStore(sys.argv[1]).ensure_experiment('broken')", f"sqlite:///{path / 'mlflow.db'}"]
    if os.geteuid() == 0:
        with tmpfs(path, "8m"):
            subprocess.run(make, check=True, capture_output=True)
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
            yield path
    else:
        path.mkdir()
        subprocess.run(make, check=True, capture_output=True)
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


def _bad_store(kind: str, tmp_path: Path, read_only: Path | None) -> tuple[str, str, object]:
    """(tracking URI, what the message names, a snapshot function of what must not change)."""
    if kind == "read-only folder":
        db = read_only / "mlflow.db"
        return f"sqlite:///{db}", str(read_only), lambda: sorted(os.listdir(read_only))
    if kind == "read-only store":
        db = read_only / "mlflow.db"
        return f"sqlite:///{db}", str(read_only), lambda: (db.read_bytes(), sorted(os.listdir(read_only)))
    if kind == "garbage file":
        db = tmp_path / "mlflow.db"
        db.write_bytes(os.urandom(64 * 1024))
        return f"sqlite:///{db}", str(db), lambda: (db.read_bytes(), sorted(os.listdir(tmp_path)))
    if kind == "folder in place of the file":
        db = tmp_path / "mlflow.db"
        db.mkdir()
        return f"sqlite:///{db}", str(db), lambda: (sorted(os.listdir(db)), sorted(os.listdir(tmp_path)))
    if kind == "unreachable server":
        port = free_port()  # nobody listens on it
        return f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", lambda: sorted(os.listdir(tmp_path))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["read-only folder", "read-only store", "garbage file",
                                  "folder in place of the file", "unreachable server"])
def test_a_broken_store_is_refused_at_once_with_one_message(kind, tmp_path, request):
    fixture = {"read-only folder": "read_only_dir", "read-only store": "read_only_store"}.get(kind)
    read_only = request.getfixturevalue(fixture) if fixture else None
    grid = tiny_grid(tmp_path, "broken", norms=("bn",))
    uri, named, snapshot = _bad_store(kind, tmp_path, read_only)
    before = snapshot()
    t0 = time.monotonic()
    proc = invoke("sweep", str(grid), "--tracking-uri", uri, cwd=tmp_path)
    seconds = time.monotonic() - t0
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert seconds < BAD_STORE_SECONDS, seconds
    assert_no_traceback(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], proc.stderr
    assert snapshot() == before  # nothing recorded, nothing created
    # the point process started ahead (while the store was opened) went with the refused command
    points = point_processes_under()
    assert not points, points


@pytest.mark.parametrize("command", ["ui", "status"])
def test_ui_and_status_never_create_a_store(command, tmp_path):
    db = tmp_path / "missing.db"
    if command == "ui":  # `mlflow ui` itself would create the file (and serve until stopped)
        ui = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--port", str(free_port()),
                               "--tracking-uri", f"sqlite:///{db}"], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            proc = finish(ui, timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, 9)  # the server and its workers
            ui.wait()
            pytest.fail("orch ui started a server on a missing store")
        assert proc.returncode == 2 and "no MLflow store" in proc.stderr, proc.stderr
    else:  # the queue's storage: nothing queued, and no file made to say so
        proc = invoke("status", "--storage", f"sqlite:///{db}", cwd=tmp_path)
        assert proc.returncode == 0 and "no queued sweeps" in proc.stdout, proc.stdout + proc.stderr
    assert_no_traceback(proc)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- a store that fails mid-sweep


def test_a_full_disk_ends_the_sweep_with_one_message_and_the_rerun_finishes_exactly_the_rest(tmp_path):
    """Store and artifacts on a 2 MB tmpfs: a fresh store takes about 1 MB and a point about
    0.5 MB, so four points fill it after one or two. The sweep stops starting points, exits
    1 with one message and no traceback; with space freed, the rerun closes what was left
    RUNNING and runs only the points that had not finished."""
    grid = tiny_grid(tmp_path, "full", norms=("bn", "gn", "ln", "nn"))
    spec = load_grid(grid)
    keys = [r.run_key for r in spec.runs]
    with tmpfs(tmp_path / "disk", "2m") as disk:
        uri = f"sqlite:///{disk / 'mlflow.db'}"
        full = orch("sweep", str(grid), "--workers", "2", "--tracking-uri", uri, cwd=tmp_path, timeout=300)
        assert full.returncode == 1, full.stderr
        assert_no_traceback(full)
        errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, full.stderr
        assert "full" in errors[0] or "No space left" in errors[0], errors
        assert "rerun the same command" in full.stderr
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        before = {r.info.run_id: r for r in point_runs(uri)}
        done_before = {r.data.tags[Tag.RUN_KEY] for r in before.values() if r.info.status == Status.FINISHED}
        assert len(done_before) < len(keys)  # the disk filled before the sweep could finish

        rerun = orch("sweep", str(grid), "--workers", "2", "--tracking-uri", uri, cwd=tmp_path, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert_no_traceback(rerun)
        assert f"{len(done_before)} already finished, {len(keys) - len(done_before)} to run" in rerun.stderr
        runs = assert_consistent(uri, keys)
        new = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.POINT and r.info.run_id not in before]
        assert {r.data.tags[Tag.RUN_KEY] for r in new}.isdisjoint(done_before)  # exactly the missing ran
        (parent,) = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
        assert parent.info.status == Status.FINISHED


# --------------------------------------------------------------------------- two sweeps at once


def test_sweeps_of_one_grid_at_once_on_a_fresh_store_run_each_point_once(tmp_path):
    """Two sweeps started together create the store at once (its init lock); one runs the
    points, the other waits (--wait, the sweep lock) and then finds them done. A third
    without --wait, started while the first runs, exits 2 naming the process and host
    that hold the sweep."""
    import socket

    from orchestrator.store import locks

    grid = tiny_grid(tmp_path, "twice")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [popen(sweep_cmd(str(grid), "--wait", "--tracking-uri", uri), tmp_path) for _ in range(2)]
    holder = locks.lock_path(uri, "twice").with_suffix(".holder")
    wait_for(holder.exists, 120, "a sweep to hold the lock", procs[0])
    refused = invoke("sweep", str(grid), "--tracking-uri", uri, cwd=tmp_path)
    results = [finish(p) for p in procs]
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert refused.returncode == 2, refused.stderr
    assert "is being swept by pid" in refused.stderr and f"on host {socket.gethostname()}" in refused.stderr
    assert "--wait" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert_no_traceback(refused, *results)
    assert sum("2 already finished, 0 to run" in r.stderr for r in results) == 1
    assert_consistent(uri, [r.run_key for r in load_grid(grid).runs])
    assert len(point_runs(uri)) == 2  # no point ran twice, not even as a failed attempt


def test_a_sweep_waiting_for_the_lock_keeps_no_process_idle(tmp_path):
    """A sweep started with --wait while another holds its experiment may wait for hours: the
    point processes it started ahead are gone while it waits (its scheduler starts its own)."""
    from orchestrator.store import locks

    grid = tiny_grid(tmp_path, "queued")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    holder = popen([sys.executable, "-c", "import sys, time; from orchestrator.store import locks\n"
                    "with locks.hold(sys.argv[1], 'queued'):\n    print('held', flush=True); time.sleep(3600)", uri],
                   tmp_path)
    waiting = None
    try:
        assert holder.stdout.readline().strip() == "held"
        waiting = popen(sweep_cmd(str(grid), "--wait", "--tracking-uri", uri), tmp_path)
        assert "waiting for" in waiting.stderr.readline()  # its first line
        assert not point_processes_under(waiting.pid)
        assert locks.lock_path(uri, "queued").exists()
    finally:
        for proc in (p for p in (waiting, holder) if p is not None):
            proc.kill()
            proc.communicate()


def test_a_grid_twice_and_its_extension_at_once_on_an_existing_store(tmp_path):
    """Three sweeps of one experiment with shared points (the same grid twice and the grid
    with a seed added) started together: one lock per experiment keeps them apart, so
    each point runs once, whichever sweep gets there first."""
    from orchestrator.store import tracking

    grid = tiny_grid(tmp_path, "grow", norms=("bn",), seeds=(0,), file="a.yaml")
    grown = tiny_grid(tmp_path, "grow", norms=("bn",), seeds=(0, 1), file="b.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.TrackingStore(uri).ensure_experiment("grow")  # the store exists before the sweeps
    procs = [popen(sweep_cmd(str(g), "--wait", "--tracking-uri", uri), tmp_path) for g in (grid, grid, grown)]
    results = [finish(p) for p in procs]
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert_no_traceback(*results)
    assert_consistent(uri, [r.run_key for r in load_grid(grown).runs])
    assert len(point_runs(uri)) == 2


def test_the_sweep_lock_of_a_tracking_server_is_held_per_machine(tmp_path, monkeypatch):
    """Through an http:// store the lock is a file in this machine's cache folder, keyed by
    the server URL and the experiment: two sweeps of it on one machine exclude each other,
    other experiments do not (across machines, the PostgreSQL queue hands out points)."""
    from orchestrator.store import locks

    uri = "http://127.0.0.1:5000"
    monkeypatch.setenv("ORCH_CACHE_DIR", str(tmp_path / "cache"))
    holder = popen([sys.executable, "-c", "import sys, time; from orchestrator.store import locks\n"
                    "with locks.hold(sys.argv[1], 'exp'):\n    print('held', flush=True); time.sleep(60)", uri],
                   tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert locks.lock_path(uri, "exp").parent == tmp_path / "cache" / "locks"
        with pytest.raises(locks.SweepBusy, match=f"being swept by pid {holder.pid} on host"):
            with locks.hold(uri, "exp"):
                pass
        with locks.hold(uri, "other"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with locks.hold(uri, "exp"):  # the kernel released the dead holder's lock
        pass
