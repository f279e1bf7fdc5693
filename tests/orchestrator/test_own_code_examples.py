"""The two examples of your own code (``examples/own_function``, ``examples/own_script``), each
copied to a folder outside the repository and swept with the real ``orch sweep``: their runs in
MLflow, their comparison, stops and failures of a function entry and of a command entry, and
``orch diff`` between two runs of the function example.

Real sweeps in real subprocesses on real SQLite stores; a store another process is writing is
watched read-only (sqlite3 ``mode=ro``). On the CPU the function example is deterministic, so
its resumed run must equal an uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, all_runs, invoke, orch, ro_rows
from orchestrator.store.schema import Kind, Status, Tag
from test_provenance import _git

EXAMPLES = REPO / "examples"
# `python` in a command entry is the interpreter running these tests, and the copied examples
# import this checkout's orchestrator
ENV = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
SETTINGS = 4  # each example's grid: 2 x 2 settings x 3 seeds, 15 epochs
SEEDS = 3
EPOCHS = 15


def copy_example(name: str, tmp: Path, **grid_changes) -> tuple[Path, str]:
    """(grid file, store URI) of a copy of ``examples/<name>`` in ``tmp``, its grid changed as given."""
    folder = tmp / name
    shutil.copytree(EXAMPLES / name, folder, ignore=shutil.ignore_patterns("__pycache__", "*.db", "mlruns"))
    grid_file = folder / "grid.yaml"
    if grid_changes:
        grid = yaml.safe_load(grid_file.read_text())
        grid.update(grid_changes)
        grid_file.write_text(yaml.safe_dump(grid, sort_keys=False))
    return grid_file, f"sqlite:///{tmp / 'mlflow.db'}"


def sweep(grid_file: Path, uri: str, *extra: str) -> subprocess.CompletedProcess:
    return orch("sweep", grid_file.name, "--tracking-uri", uri, *extra, cwd=grid_file.parent, env=ENV)


def start_sweep(grid_file: Path, uri: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", grid_file.name, "--tracking-uri", uri],
                            cwd=grid_file.parent, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def points(uri: str) -> list:
    return [r for r in all_runs(uri) if r.data.tags.get(Tag.KIND) == Kind.POINT]


def history(uri: str, run_id: str, metric: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, metric)}


def wait_for_checkpoint(uri: str, step: int, timeout: float = 300) -> str:
    """The id of the sweep's point once it is RUNNING with a checkpoint at ``step`` or later."""
    db = Path(uri[len("sqlite:///"):])
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = ro_rows(db, "SELECT r.run_uuid, r.status, (SELECT value FROM tags c WHERE c.run_uuid = r.run_uuid "
                           "AND c.key = ?) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ? "
                           "AND t.value = ?", (Tag.CHECKPOINT_STEP, Tag.KIND, Kind.POINT))
        for run_id, status, at in rows:
            if status == Status.RUNNING and int(at or 0) >= step:
                return run_id
        time.sleep(0.1)
    pytest.fail(f"no point had a checkpoint at step {step} within {timeout} s")


def stop_with_sigterm(grid_file: Path, uri: str, step: int = 2) -> str:
    """Start the sweep, SIGTERM it once its point has a checkpoint at ``step``; the stopped run's id."""
    proc = start_sweep(grid_file, uri)
    run_id = wait_for_checkpoint(uri, step)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)  # liveness only: the point stops at its next epoch's end
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    killed = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert killed.info.status == Status.KILLED
    assert killed.data.tags[Tag.FAILURE_REASON].startswith("preempted (SIGTERM) at step"), killed.data.tags
    assert Tag.CHECKPOINT in killed.data.tags
    return run_id


# --------------------------------------------------------------------------- the two example sweeps


def swept_example(name: str, folder: Path) -> tuple[Path, str]:
    """The example copied to ``folder`` and swept there with two workers: (grid file, tracking URI)."""
    grid_file, uri = copy_example(name, folder)
    started = time.perf_counter()
    proc = sweep(grid_file, uri, "--workers", "2")
    print(f"{name} sweep: {time.perf_counter() - started:.1f} s")  # the figure the README quotes (pytest -s)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return grid_file, uri


@pytest.fixture(scope="module")
def function_sweep(tmp_path_factory):
    return swept_example("own_function", tmp_path_factory.mktemp("function"))


@pytest.fixture(scope="module")
def script_sweep(tmp_path_factory):
    return swept_example("own_script", tmp_path_factory.mktemp("script"))


def assert_example_runs(uri: str, entry: str, axes: dict[str, list], artifact: str) -> None:
    """A parent and its SETTINGS x SEEDS points, FINISHED, with params, curves, summary metrics,
    artifacts and provenance."""
    client = MlflowClient(tracking_uri=uri)
    (parent,) = [r for r in all_runs(uri) if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    assert parent.info.status == Status.FINISHED
    runs = points(uri)
    assert len(runs) == SETTINGS * SEEDS and {r.info.status for r in runs} == {Status.FINISHED}
    assert {r.data.tags[Tag.PARENT_RUN_ID] for r in runs} == {parent.info.run_id}
    (first, values), (second, others) = axes.items()
    assert {(r.data.params[first], r.data.params[second]) for r in runs} == {(str(x), str(y)) for x in values
                                                                             for y in others}
    for run in runs:
        assert run.data.params["epochs"] == str(EPOCHS) and run.data.params["seed"] in {"0", "1", "2"}
        assert set(range(1, EPOCHS + 1)) <= set(history(uri, run.info.run_id, "val_acc"))
        assert sorted(history(uri, run.info.run_id, "train_loss")) == list(range(1, EPOCHS + 1))
        assert 0.8 < run.data.metrics["test_acc"] <= 1.0  # digits: any of these settings learns them
        tags = run.data.tags
        assert tags[Tag.ENTRY] == entry
        assert tags[Tag.GIT_COMMIT] == "no commit"  # the copy is outside any repository
        assert tags[Tag.PYTHON_VERSION] == ".".join(map(str, sys.version_info[:3]))
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "environment.txt" in files and artifact in files
        assert Tag.CHECKPOINT not in tags  # a finished run keeps its results, not its checkpoints


def assert_ranked_with_intervals(grid_file: Path, uri: str, axes: tuple[str, str]) -> None:
    proc = invoke("compare", "--tracking-uri", uri, "--metric", "test_acc", "--format", "json", cwd=grid_file.parent)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == SETTINGS
    for row in rows:
        assert row["n_finished"] == row["n_expected"] == SEEDS
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    means = [r["mean"] for r in rows]
    assert means == sorted(means, reverse=True)
    table = invoke("compare", "--tracking-uri", uri, "--metric", "test_acc", cwd=grid_file.parent)
    assert table.returncode == 0 and "95% CI" in table.stdout and all(a in table.stdout for a in axes)


def test_function_example_runs_as_parent_and_points_with_everything_recorded(function_sweep):
    _, uri = function_sweep
    assert_example_runs(uri, "train:main", {"width": [32, 64], "act": ["relu", "tanh"]}, "confusion_matrix.csv")
    run = points(uri)[0]
    assert set(history(uri, run.info.run_id, "test_acc")) == {0}  # returned once: a summary metric
    assert run.data.params["lr"] == "0.05"


def test_function_example_compares_with_intervals_and_a_rerun_trains_nothing(function_sweep):
    grid_file, uri = function_sweep
    assert_ranked_with_intervals(grid_file, uri, ("width", "act"))
    before = len(all_runs(uri))
    rerun = sweep(grid_file, uri, "--workers", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert "12 already finished, 0 to run" in rerun.stderr
    assert len(all_runs(uri)) == before


def test_script_example_runs_as_parent_and_points_with_everything_recorded(script_sweep):
    grid_file, uri = script_sweep
    entry = yaml.safe_load(grid_file.read_text())["entry"]["command"]
    assert_example_runs(uri, entry, {"lr": [0.05, 0.2], "width": [32, 64]}, "output")  # its stdout and stderr
    run = points(uri)[0]
    assert run.data.metrics["exit_status"] == 0 and run.data.metrics["wall_seconds"] > 0


def test_script_example_compares_with_intervals(script_sweep):
    grid_file, uri = script_sweep
    assert_ranked_with_intervals(grid_file, uri, ("lr", "width"))


def test_the_script_runs_by_hand_without_orch(tmp_path):
    folder = tmp_path / "by-hand"
    shutil.copytree(EXAMPLES / "own_script", folder)
    argv = [sys.executable, "train.py", "--lr", "0.1", "--width", "32", "--seed", "0", "--epochs", "3"]
    proc = subprocess.run(argv, cwd=folder, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 3:" in proc.stdout and "test_acc" in proc.stdout
    assert not list(folder.glob("*.db")) and not (folder / "mlruns").exists()  # it recorded nothing


# --------------------------------------------------------------------------- stops and failures


def test_function_example_stopped_by_sigterm_resumes_bit_for_bit(tmp_path):
    """One point, long enough to be stopped mid-run: uninterrupted in one store; in another,
    SIGTERM once it has a checkpoint, then the same command again."""
    one_point = {"base": {"epochs": 80, "lr": 0.05, "dropout": 0.1}, "grid": {"width": [32], "act": ["relu"]},
                 "seeds": [1]}
    reference_grid, reference_uri = copy_example("own_function", tmp_path / "reference", **one_point)
    assert sweep(reference_grid, reference_uri).returncode == 0
    (reference,) = points(reference_uri)

    grid_file, uri = copy_example("own_function", tmp_path / "stopped", **one_point)
    resumed = stopped_and_rerun(grid_file, uri)
    for metric in ("test_acc", "val_acc"):
        assert resumed.data.metrics[metric] == reference.data.metrics[metric], metric
    for metric in ("val_acc", "train_loss"):
        steps = history(uri, resumed.info.run_id, metric)
        assert steps == history(reference_uri, reference.info.run_id, metric), metric
    assert sorted(history(uri, resumed.info.run_id, "train_loss")) == list(range(1, 81))


def stopped_and_rerun(grid_file: Path, uri: str):
    """SIGTERM to the sweep once its point has a checkpoint, then the same command: the run that
    finished, which continued the stopped one's checkpoint."""
    killed_id = stop_with_sigterm(grid_file, uri)
    rerun = sweep(grid_file, uri)
    assert rerun.returncode == 0, rerun.stderr
    (resumed,) = [r for r in points(uri) if r.info.status == Status.FINISHED]
    assert resumed.data.tags[Tag.RESUMED_FROM] == killed_id
    assert int(resumed.data.tags[Tag.RESUMED_STEP]) >= 2
    return resumed


def test_failing_script_ends_failed_with_its_exit_status_and_stderr(tmp_path):
    grid_file, uri = copy_example("own_script", tmp_path, grid={"lr": [-1.0], "width": [32]}, seeds=[0])
    proc = sweep(grid_file, uri, "--max-retries", "0")
    assert proc.returncode == 1, proc.stderr
    (failed,) = points(uri)
    assert failed.info.status == Status.FAILED
    reason = failed.data.tags[Tag.FAILURE_REASON]
    assert reason.startswith("exit status 3: "), reason
    assert "--lr must be positive, got -1.0" in reason, reason


def test_script_stopped_by_sigterm_ends_killed_and_the_rerun_resumes_it_through_the_client(tmp_path):
    grid_file, uri = copy_example("own_script", tmp_path, base={"epochs": 150}, grid={"lr": [0.05], "width": [32]},
                                  seeds=[0], checkpoint_seconds=0)
    resumed = stopped_and_rerun(grid_file, uri)
    assert sorted(history(uri, resumed.info.run_id, "val_acc")) == list(range(1, 151))


# --------------------------------------------------------------------------- provenance

LOCAL_CHANGE = "LOCAL_CHANGE = 1  # an uncommitted line"


def test_orch_diff_of_two_runs_of_the_function_example_shows_the_one_parameter_and_the_one_line(tmp_path):
    """The example committed in a git repository (A), and a clone of it (B) with one uncommitted
    line in train.py, each swept into one store, B with another lr: ``orch diff`` shows exactly
    that parameter and that line."""
    one_point = {"base": {"epochs": 2, "lr": 0.05, "dropout": 0.1}, "grid": {"width": [32], "act": ["relu"]},
                 "seeds": [0]}
    grid_a, _ = copy_example("own_function", tmp_path / "a", **one_point)
    for args in (("init", "-q"), ("add", "."), ("commit", "-q", "-m", "the example")):
        _git(grid_a.parent, *args)
    b = tmp_path / "b"
    _git(tmp_path, "clone", "-q", str(grid_a.parent), str(b))
    with open(b / "train.py", "a") as train:
        train.write(f"{LOCAL_CHANGE}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for grid_file, extra in ((grid_a, ()), (b / "grid.yaml", ("--set", "lr=0.1"))):
        proc = sweep(grid_file, uri, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {r.data.params["lr"]: r for r in points(uri)}
    run_a, run_b = runs["0.05"], runs["0.1"]
    head = _git(b, "rev-parse", "HEAD").strip()
    assert run_a.data.tags[Tag.GIT_COMMIT] == run_b.data.tags[Tag.GIT_COMMIT] == head

    proc = invoke("diff", run_a.info.run_id, run_b.info.run_id, "--tracking-uri", uri)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2:5] == ["params:", "  lr: 0.05 → 0.1", "code:"]  # that one parameter, nothing else
    code = lines[5:lines.index(next(line for line in lines if line.startswith("packages")))]
    assert code[:3] == ["  diff.patch: A has none, B has one", "  --- A/code/diff.patch", "  +++ B/code/diff.patch"]
    patch = [line[3:] for line in code[3:] if line.startswith("  +")]  # B's patch, as the diff of the two adds it
    assert "+++ b/train.py" in patch
    changed = [line for line in patch if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == [f"+{LOCAL_CHANGE}"]  # the patch changes exactly that line; same commit: no commit line
    assert lines[-1].startswith("packages: identical (")
