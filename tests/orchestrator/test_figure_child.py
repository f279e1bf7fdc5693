"""Figures drawn by a forked child: the same PNG as in-process, and every failure of the
child ends with the parent drawing what it did not deliver."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import plots
from experiments.metric_names import QUANTILES, epoch_key
from orchestrator.store import figure_child
from orchestrator.store.figure_child import drawn_aside, save_png

pytestmark = pytest.mark.skipif(not figure_child.can_fork(), reason="figures are forked only on Linux with 2+ cores")


class PidFigure:
    """Writes the id of the process that saved it; ``in_child`` says what the child does instead."""

    def __init__(self, in_child=None):
        self.parent = os.getpid()
        self.in_child = in_child

    def savefig(self, file, **options):
        if os.getpid() != self.parent and self.in_child:
            self.in_child()
        with open(file, "w") as out:
            out.write(str(os.getpid()))


def _history(n: int = 12) -> dict:
    rng = np.random.default_rng(0)
    keys = [key for _, series in plots.CURVE_PANELS for _, key in series] + list(QUANTILES)
    return {epoch_key(k): list(rng.random(n)) for k in keys}


def test_the_child_draws_byte_for_byte_the_png_the_parent_would(tmp_path):
    history = _history()
    figures = {"plots/curves.png": plots.curves(history, best_epoch=4),
               "plots/quantiles.png": plots.quantiles(history, list(QUANTILES))}
    with drawn_aside(figures, tmp_path / "child") as child:
        files = child.files()
    assert child.outcome == "drawn by the child"
    for name, figure in figures.items():
        save_png(figure, tmp_path / "parent" / name)
        assert files[name] == tmp_path / "child" / name
        assert files[name].read_bytes() == (tmp_path / "parent" / name).read_bytes(), name
        assert files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _wait_for(path: Path, seconds: float = 20) -> bool:
    end = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < end:
        time.sleep(0.01)
    return path.exists()


def test_the_figures_are_drawn_in_another_process_while_the_body_runs(tmp_path):
    """The child draws while the body runs: it starts, then waits for the body's word."""
    started, go = tmp_path / "child-started", tmp_path / "go"

    def in_child():
        started.touch()
        _wait_for(go)

    with drawn_aside({"out/a.png": PidFigure(in_child=in_child)}, tmp_path) as child:
        assert _wait_for(started), "the child did not start drawing while the body ran"
        go.touch()
        files = child.files()
    assert child.outcome == "drawn by the child"
    assert int(files["out/a.png"].read_text()) != os.getpid()


@pytest.mark.parametrize("in_child, outcome", [
    (lambda: 1 / 0, "drawn in-process (child exited with code 1)"),
    (lambda: os.kill(os.getpid(), signal.SIGKILL), "drawn in-process (child killed by signal 9)"),
])
def test_a_child_that_fails_leaves_the_drawing_to_the_parent(tmp_path, in_child, outcome):
    figures = {"plots/a.png": PidFigure(), "plots/b.png": PidFigure(in_child=in_child)}
    with drawn_aside(figures, tmp_path) as child:
        files = child.files()
    assert child.outcome == outcome
    # the parent drew both: the one the child wrote before failing is redrawn too
    assert {name: int(f.read_text()) for name, f in files.items()} == {name: os.getpid() for name in figures}


def test_a_child_past_its_deadline_is_killed_and_the_process_stops_forking(tmp_path, monkeypatch):
    monkeypatch.setitem(figure_child._forking, "allowed", True)
    with drawn_aside({"a.png": PidFigure(in_child=lambda: time.sleep(60))}, tmp_path, deadline=0.5) as child:
        pid = child.pid
        started = time.perf_counter()
        files = child.files()
    assert time.perf_counter() - started < 5
    assert child.outcome == "drawn in-process (child missed its deadline and was killed)"
    assert int(files["a.png"].read_text()) == os.getpid()
    with pytest.raises(ChildProcessError):  # reaped, not a zombie
        os.waitpid(pid, os.WNOHANG)
    assert not figure_child.can_fork()
    with drawn_aside({"b.png": PidFigure()}, tmp_path) as child:
        assert child.pid is None
        assert int(child.files()["b.png"].read_text()) == os.getpid()
    assert child.outcome == "drawn in-process (no fork here)"


def test_leaving_the_block_early_kills_and_reaps_the_child(tmp_path):
    with pytest.raises(RuntimeError, match="model upload failed"):
        with drawn_aside({"a.png": PidFigure(in_child=lambda: time.sleep(60))}, tmp_path) as child:
            pid = child.pid
            raise RuntimeError("model upload failed")
    assert pid is not None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_the_deadline_counts_from_the_fork_not_from_the_wait(tmp_path, monkeypatch):
    monkeypatch.setitem(figure_child._forking, "allowed", True)
    with drawn_aside({"a.png": PidFigure(in_child=lambda: time.sleep(60))}, tmp_path, deadline=2) as child:
        time.sleep(2.3)  # the parent's own work outlasts the deadline
        started = time.perf_counter()
        child.files()
    assert time.perf_counter() - started < 1.5, "the wait gave the child a second deadline of 2 s"
    assert child.outcome == "drawn in-process (child missed its deadline and was killed)"


def test_a_child_that_ended_itself_at_its_alarm_also_stops_forking(tmp_path, monkeypatch):
    """The parent was busy past the child's own alarm: that is a missed deadline too."""
    monkeypatch.setitem(figure_child._forking, "allowed", True)
    monkeypatch.setattr(figure_child, "ALARM_MARGIN_SECONDS", 0)
    with drawn_aside({"a.png": PidFigure(in_child=lambda: time.sleep(60))}, tmp_path, deadline=1) as child:
        time.sleep(1.6)  # past the child's alarm (1 s after the fork, with no margin)
        child.deadline = 60  # so that the parent's own deadline has not passed: only the alarm ended it
        files = child.files()
    assert child.outcome == "drawn in-process (child missed its deadline and ended itself)"
    assert int(files["a.png"].read_text()) == os.getpid()
    assert not figure_child.can_fork()


def test_a_child_ends_itself_at_its_alarm_when_nobody_waits(tmp_path, monkeypatch):
    """The parent may be killed while its child draws: the child's alarm still ends it."""
    monkeypatch.setattr(figure_child, "ALARM_MARGIN_SECONDS", 0)
    with drawn_aside({"a.png": PidFigure(in_child=lambda: time.sleep(60))}, tmp_path, deadline=1) as child:
        pid = child.pid
        child._forget()  # this test reaps it, not the block
        end = time.monotonic() + 10
        while not (reaped := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < end:
            time.sleep(0.05)
    assert reaped[0] == pid, "the child outlived its alarm by 9 s"
    assert os.waitstatus_to_exitcode(reaped[1]) == -signal.SIGALRM


def test_a_stop_signal_ends_the_child_not_the_parents_handler(tmp_path):
    """A preemption's SIGTERM reaches the whole job; the child ends at once and the parent draws."""
    handled = []
    previous = signal.signal(signal.SIGTERM, lambda *_: handled.append(os.getpid()))
    try:
        with drawn_aside({"a.png": PidFigure(in_child=lambda: (os.kill(os.getpid(), signal.SIGTERM),
                                                               time.sleep(60)))}, tmp_path) as child:
            files = child.files()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert child.outcome == "drawn in-process (child killed by signal 15)"
    assert int(files["a.png"].read_text()) == os.getpid()
    assert handled == []


def test_a_signal_right_after_the_fork_never_runs_the_parents_handler_in_the_child(tmp_path, monkeypatch):
    """The parent's handlers raise into the parent's code (end the run, clean its folders):
    a signal that lands in the child before it has set its own must wait for them."""
    def handler(*_):
        (tmp_path / f"handled-in-{os.getpid()}").touch()

    real_fork = os.fork

    def fork_then_signal() -> int:
        pid = real_fork()
        if pid == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return pid

    previous = signal.signal(signal.SIGTERM, handler)
    monkeypatch.setattr(os, "fork", fork_then_signal)
    try:
        with drawn_aside({"plots/a.png": PidFigure()}, tmp_path / "out") as child:
            files = child.files()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sorted(p.name for p in tmp_path.glob("handled-in-*")) == []
    assert child.outcome == "drawn in-process (child killed by signal 15)"
    assert int(files["plots/a.png"].read_text()) == os.getpid()


def test_a_child_reaped_elsewhere_is_redrawn_not_an_error(tmp_path):
    """With SIGCHLD ignored (inherited from a launcher) the kernel reaps children itself."""
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with drawn_aside({"a.png": PidFigure(in_child=lambda: time.sleep(0.2))}, tmp_path) as child:
            files = child.files()
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert child.outcome.startswith("drawn in-process (child was reaped elsewhere")
    assert int(files["a.png"].read_text()) == os.getpid()


HANGING_PARENT = """
import os, sys, time
from pathlib import Path
from orchestrator.store.figure_child import drawn_aside

class Hangs:
    def __init__(self):
        self.parent = os.getpid()
    def savefig(self, file, **options):
        if os.getpid() != self.parent:
            time.sleep(60)

with drawn_aside({"a.png": Hangs()}, Path(sys.argv[1])) as child:
    print(child.pid, flush=True)
    time.sleep(60)
"""


def test_a_killed_parent_takes_its_child_along_and_its_pipes_close(tmp_path):
    """A point process's stdout is its scheduler's pipe: a child must not hold it open."""
    proc = subprocess.Popen([sys.executable, "-c", HANGING_PARENT, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    child_pid = int(proc.stdout.readline())
    time.sleep(0.3)  # the child is drawing (hanging) now
    proc.kill()
    proc.wait()
    started = time.monotonic()
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    assert ready and proc.stdout.read() == "", "the parent's stdout pipe is still open"
    assert time.monotonic() - started < 3, "the pipe closed only when the child's alarm ended it"
    deadline = time.monotonic() + 5
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid)


def _alive(pid: int) -> bool:
    """Running, not gone or a zombie (which a container's init may leave unreaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


IMPORTS_OF_A_SAVE = """
import sys
from pathlib import Path
import numpy as np
from experiments import plots
from experiments.metric_names import QUANTILES, epoch_key
from orchestrator.store.figure_child import _prepare_child_imports, save_png

history = {epoch_key(k): [0.1, 0.2, 0.3] for _, s in plots.CURVE_PANELS for _, k in s}
figure = plots.curves(history, 2)
_prepare_child_imports()
before = set(sys.modules)
save_png(figure, Path(sys.argv[1]) / "curves.png")
print(sorted(set(sys.modules) - before))
"""


def test_the_child_imports_nothing_while_it_draws(tmp_path):
    """A fresh process, as a point process's first run: drawing a PNG after the preparation
    imports no module (an import lock held by a parent thread at the fork would hang it)."""
    out = subprocess.run([sys.executable, "-c", IMPORTS_OF_A_SAVE, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failing_model_save_still_logs_the_childs_figures(tmp_path, monkeypatch):
    """The run fails (a full disk while saving its model); its curves are what shows why."""
    from conftest import TINY_BASE
    from experiments.config import build
    from experiments.train import NullTracker, train
    from mlflow.tracking import MlflowClient
    from orchestrator.store.artifacts import log_run_artifacts
    from orchestrator.store.tracking import TrackingStore

    cfg = build(TINY_BASE)
    result = train(cfg, NullTracker(), device="cpu")
    store = TrackingStore(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = store.start_run(store.ensure_experiment("figures"), run_name="full-disk", params={}, tags={})
    tracker = store.tracker(run_id)

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracker, "log_model", full_disk)
    with pytest.raises(OSError, match="No space left"):
        log_run_artifacts(tracker, cfg, result)
    logged = {a.path for a in MlflowClient(tracking_uri=store.uri).list_artifacts(run_id, "plots")}
    assert logged == {"plots/curves.png", "plots/quantiles.png", "plots/confusion_test.png"}
