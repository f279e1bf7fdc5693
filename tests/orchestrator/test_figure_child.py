"""Figures drawn by a forked child: the same PNG as in-process, and every failure of the
child ends with the parent drawing what it did not deliver."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from experiments import plots
from experiments.metric_names import QUANTILES, epoch_key
from orchestrator import figure_child
from orchestrator.figure_child import drawn_aside, save_png

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


def test_the_figures_are_drawn_in_another_process_while_the_body_runs(tmp_path):
    with drawn_aside({"a.png": PidFigure(in_child=lambda: time.sleep(0.3))}, tmp_path) as child:
        started = time.perf_counter()
        time.sleep(0.3)  # the parent's own work, beside the child's
        files = child.files()
        both = time.perf_counter() - started
    assert int(files["a.png"].read_text()) != os.getpid()
    assert both < 0.55, f"child and parent took {both:.2f} s: not side by side"


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


def test_a_child_ends_itself_at_its_deadline_when_nobody_waits(tmp_path):
    """The parent may be killed while its child draws: the child's alarm still ends it."""
    with drawn_aside({"a.png": PidFigure(in_child=lambda: time.sleep(60))}, tmp_path, deadline=1) as child:
        pid, child.pid = child.pid, None  # this test reaps it, not the block
        end = time.monotonic() + 10
        while not (reaped := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < end:
            time.sleep(0.05)
    assert reaped[0] == pid, "the child outlived its deadline by 9 s"
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
