"""Hostile input is refused fast: huge grids, YAML alias bombs, huge files, deep nesting.

Timings are taken as the process's CPU time where the work runs in this process (the
test machine's two cores are shared), and as wall time for the real subprocesses.
"""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from experiments import yaml_source
from experiments.config import ConfigError, load
from orchestrator.grid.load import load_grid


def values(n: int, start: int = 1) -> str:
    return "[" + ", ".join(str(start + i) for i in range(n)) + "]"


def write_grid(tmp_path: Path, axes: dict[str, str], extra: str = "", name: str = "big.yaml") -> Path:
    path = tmp_path / name
    body = "".join(f"  {key}: {vals}\n" for key, vals in axes.items())
    path.write_text(f"name: big\nbase: {{data: {{name: digits}}}}\ngrid:\n{body}{extra}")
    return path


def alias_bomb(levels: int = 9, refs: int = 9) -> str:
    """The "billion laughs": each anchor is a list of ``refs`` aliases of the one before."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * refs) + "]")
    return "\n".join(lines) + "\n"


def refuse(fn, *args, **kwargs) -> tuple[ConfigError, float]:
    """Call ``fn``, expect a ConfigError; returns it and the CPU seconds taken."""
    t0 = time.process_time()
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return info.value, time.process_time() - t0


MILLION = {"data.batch_size": values(100), "train.max_epochs": values(100), "model.gn_groups": values(100)}


# ---------------------------------------------------------------- point counts


def test_a_million_point_grid_is_refused_at_once_with_the_count_and_the_fix(tmp_path):
    err, seconds = refuse(load_grid, write_grid(tmp_path, MILLION))
    assert seconds < 0.5, seconds  # a liveness bound: 0.008 s CPU measured (2026-12-06, a loaded 2-core VM), 60x
    assert err.problem.startswith("the grid expands to 100 data.batch_size × 100 train.max_epochs × "
                                  "100 model.gn_groups × 1 seed = 1,000,000 points, over the limit of 10,000 points")
    assert "--max-points 1000000" in err.problem and "fewer values or seeds" in err.problem


def test_twenty_thousand_points_are_refused_at_the_default_and_set_shrinks_the_count(tmp_path):
    path = write_grid(tmp_path, {"data.batch_size": values(200), "train.max_epochs": values(100)})
    err, _ = refuse(load_grid, path)
    assert "200 data.batch_size × 100 train.max_epochs × 1 seed = 20,000 points" in err.problem
    assert "--max-points 20000" in err.problem
    # --set pins an axis before counting: 100 points are within the default.
    assert len(load_grid(path, ["data.batch_size=8"]).runs) == 100


def test_the_limit_is_inclusive_and_counts_seeds_and_include_entries(tmp_path):
    path = write_grid(tmp_path, {"model.norm": "[bn, gn, ln]", "data.batch_size": "[8, 64]"},
                      "seeds: [0, 1]\ninclude: [{model.norm: in}]\n")
    assert len(load_grid(path, max_points=14).runs) == 14  # (3 × 2 + 1) × 2
    err, _ = refuse(load_grid, path, max_points=13)
    assert "(3 model.norm × 2 data.batch_size + 1 included) × 2 seeds = 14 points" in err.problem
    assert len(load_grid(path, max_points=None).runs) == 14


def test_the_message_says_the_count_is_taken_before_exclude(tmp_path):
    path = write_grid(tmp_path, {"model.norm": "[bn, gn, ln]", "data.batch_size": "[8, 64]"},
                      "exclude: [{model.norm: bn}, {data.batch_size: 8}]\n")
    assert len(load_grid(path).runs) == 2
    err, _ = refuse(load_grid, path, max_points=5)
    assert "3 model.norm × 2 data.batch_size × 1 seed = 6 points before exclude, over the limit of 5" in err.problem


def test_a_long_axis_of_seeds_is_read_in_linear_time(tmp_path):
    """Twice the seeds, about twice the time (a quadratic reader would take four times as
    long); the machine's speed, which varies 2.4× on the same VM, cancels out. The test
    process's heap is frozen out of the garbage collector meanwhile: late in the suite it holds
    millions of objects (torch, mlflow), and one full collection landing in one of the reads
    would take longer than the read itself. Best of two reads each."""
    seconds: dict[int, float] = {}
    gc.collect()
    gc.freeze()
    try:
        for _ in range(2):
            for n in (12_000, 24_000):
                path = tmp_path / f"seeds{n}.yaml"
                path.write_text(f"name: s\nseeds: {values(n, 0)}\n")
                err, took = refuse(load_grid, path)
                assert f"1 base setting × {n:,} seeds = {n:,} points" in err.problem
                seconds[n] = min(seconds.get(n, took), took)
    finally:
        gc.unfreeze()
    assert seconds[24_000] < 3 * seconds[12_000], seconds
    assert seconds[24_000] < 10, seconds  # a liveness bound: 0.6 s CPU measured (2026-12-06, a loaded VM), 17x


# ---------------------------------------------------------------- YAML size


@pytest.mark.parametrize("reader", [load_grid, load], ids=["load_grid", "config.load"])
def test_an_alias_bomb_is_refused_before_it_expands(tmp_path, reader):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb() + "name: b\ngrid:\n  model.norm: *a9\n")
    err, seconds = refuse(reader, path)
    assert seconds < 2, seconds  # a liveness bound: 0.09 s CPU measured (2026-12-06, a loaded VM), 20x; expanded: hours
    assert err.source == str(path)
    assert "aliases (*name) expand it to more than 100,000 values" in err.problem
    assert "write the values out instead of nesting aliases" in err.problem


def test_a_merge_key_bomb_is_refused(tmp_path):
    lines = ["m0: &m0 {k0: 1}"]
    for i in range(1, 10):
        lines.append(f"m{i}: &m{i}\n" + "\n".join(f"  k{i}_{j}: {{<<: *m{i - 1}}}" for j in range(9)))
    path = tmp_path / "merge.yaml"
    path.write_text("\n".join(lines) + "\nname: b\n")
    err, seconds = refuse(load_grid, path)
    assert "aliases (*name) expand it" in err.problem
    assert seconds < 2, seconds  # a liveness bound: 0.06 s CPU measured (2026-12-06, a loaded VM), 30x


@pytest.mark.parametrize("reader", [load_grid, load], ids=["load_grid", "config.load"])
def test_a_file_over_five_megabytes_is_refused_unread(tmp_path, reader):
    path = tmp_path / "huge.yaml"
    path.write_text("name: b\n# " + "x" * (6 * 2**20) + "\n")
    err, seconds = refuse(reader, path)
    assert err.problem == ("the file is 6.0 MB, over the 5 MB limit of a YAML input; a grid or run config is a few "
                           "kilobytes, so check that this is the right file")
    assert seconds < 0.5, seconds  # a liveness bound: unread, it takes microseconds; reading 6 MB of YAML, seconds


def test_too_many_values_stop_the_composer(tmp_path, monkeypatch):
    monkeypatch.setattr(yaml_source, "MAX_YAML_NODES", 50)
    path = tmp_path / "long.yaml"
    path.write_text(f"name: b\nseeds: {values(60, 0)}\n")
    err, _ = refuse(load_grid, path)
    assert err.problem.startswith("the YAML holds more than 50 values;")
    path.write_text(f"name: b\nseeds: {values(40, 0)}\n")
    assert len(load_grid(path).seeds) == 40


def test_deep_nesting_and_giant_integers_are_refused_in_one_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: b\nbase: " + "[" * 5000 + "]" * 5000 + "\n")
    err, _ = refuse(load_grid, path)
    assert "nests lists or mappings hundreds of levels deep" in err.problem
    path.write_text("name: b\nseeds: [" + "1" * 5000 + "]\n")
    err, _ = refuse(load, path)
    assert err.problem.startswith("a value cannot be read (Exceeds the limit (4300 digits)")


# ---------------------------------------------------------------- real processes


@pytest.mark.integration  # a real `orch` process
def test_orch_sweep_dry_run_on_a_bomb_exits_2_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb() + "name: b\ngrid:\n  model.norm: *a9\n")
    # liveness only: the 60-s timeout is over 20x the ~1-2 s the command takes on a loaded VM; expanded, hours
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(path), "--dry-run"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "expand it to more than 100,000 values" in proc.stderr


@pytest.mark.integration  # a real process, signalled
def test_ctrl_c_interrupts_validation_at_once(tmp_path):
    """SIGINT during load_grid of a grid just under the limit raises KeyboardInterrupt: one that
    load_grid swallowed would leave the loop running past the wait's timeout."""
    path = write_grid(tmp_path, {"data.batch_size": values(100), "train.max_epochs": values(99)})
    code = ("import sys\nfrom orchestrator.grid.load import load_grid\nprint('ready', flush=True)\n"
            f"while True:\n    load_grid({str(path)!r})\n")
    # Python turns SIGINT into KeyboardInterrupt only when it starts with SIGINT's default action;
    # a test run started in the background (`cmd &`) hands its children SIGINT ignored.
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.5)  # inside load_grid: one takes over 1 s here
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)  # liveness: 0.07-0.14 s measured on a loaded 2-core VM (2026-12-06), over 70x
    finally:
        proc.kill()
    stderr = proc.stderr.read()
    assert proc.returncode != 0 and stderr.rstrip().endswith("KeyboardInterrupt"), stderr[-2000:]
