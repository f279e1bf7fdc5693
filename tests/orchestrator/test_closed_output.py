"""A reader that goes away (a pipe to ``head``, a closed terminal) never leaves a run RUNNING:
the sweep goes on with its output dropped, every point finishes and the parent is closed."""

from __future__ import annotations

import os
import pty
import shlex
import subprocess
import sys
import time

import pytest

from conftest import TINY_BASE, all_runs, write_grid
from orchestrator.grid.load import load_grid


def _sweep_grid(tmp_path):
    """One point of one epoch: output comes before it, while it runs and after it."""
    return write_grid(tmp_path / "grid.yaml", "closed-output", {}, base={**TINY_BASE, "train": {"max_epochs": 1}})


def _assert_all_recorded(tmp_path, grid) -> None:
    from orchestrator.store.schema import Kind, Tag

    runs = all_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert runs and all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    sweep_id = load_grid(grid).sweep_id
    points = [r for r in runs if r.data.tags.get(Tag.SWEEP) == sweep_id and r.data.tags.get(Tag.KIND) == Kind.POINT]
    assert len(points) == 1


@pytest.mark.timeout(1200)  # a real sweep, on a busy machine
@pytest.mark.parametrize("redirect", ["", "2>&1"], ids=["stdout", "stdout-and-stderr"])
def test_a_sweep_piped_to_head_finishes_and_records_every_run(tmp_path, redirect):
    grid = _sweep_grid(tmp_path)
    sweep = f"{shlex.quote(sys.executable)} -m orchestrator sweep grid.yaml --tracking-uri sqlite:///mlflow.db"
    shell = f"{sweep} {redirect} | head -1; exit ${{PIPESTATUS[0]}}"
    r = subprocess.run(["bash", "-c", shell], cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    _assert_all_recorded(tmp_path, grid)


@pytest.mark.timeout(1200)
def test_a_sweep_whose_terminal_closes_finishes_and_records_every_run(tmp_path):
    grid = _sweep_grid(tmp_path)
    argv = [sys.executable, "-m", "orchestrator", "sweep", "grid.yaml", "--tracking-uri", "sqlite:///mlflow.db"]
    pid, fd = pty.fork()  # the sweep's controlling terminal is this pty
    if pid == 0:  # the child
        try:
            os.chdir(tmp_path)
            os.execv(sys.executable, argv)
        finally:
            os._exit(127)
    seen = b""
    deadline = time.monotonic() + 1100
    try:
        while b"points" not in seen and time.monotonic() < deadline:  # "sweep …: 1 points, …": the sweep is open
            seen += os.read(fd, 4096)
    except OSError:  # EIO: the child ended and closed its side
        pass
    finally:
        os.close(fd)  # the terminal goes away: SIGHUP, and EIO on every later write
    assert b"points" in seen, seen
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.5)
    else:
        os.kill(pid, 9)
        pytest.fail("the sweep did not end")
    assert os.waitstatus_to_exitcode(status) == 0
    _assert_all_recorded(tmp_path, grid)
