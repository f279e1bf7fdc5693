"""`orch sweep`, `compare`, `report` end to end: real subprocesses, a real SQLite MLflow store."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from conftest import (REPO, TESTS, TINY_BASE, all_runs, children, finished_keys, invoke, orch, parents,
                      write_grid)
from orchestrator.cli.main import cli
from orchestrator.grid.load import load_grid

BAD_GRIDS = sorted((TESTS / "grids" / "bad").glob("*.yaml"))
@pytest.fixture(scope="module")
def seeded_sweep(tmp_path_factory):
    """Two norms × three seeds, finished once, shared by the compare/report/resume tests."""
    tmp = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    grid = write_grid(tmp / "grid.yaml", "tiny", {"model.norm": ["bn", "gn"]}, seeds=(0, 1, 2))
    env = {"MLFLOW_TRACKING_URI": uri}
    proc = orch("sweep", str(grid), "--workers", "2", env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return uri, grid, env, tmp, proc


def test_sweep_one_finished_child_per_point_under_one_parent(seeded_sweep):
    uri, grid, _, _, proc = seeded_sweep
    spec = load_grid(grid)
    (parent,) = parents(uri, spec.sweep_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tiny"
    kids = children(uri, spec.sweep_id)
    assert len(kids) == 6
    assert all(k.info.status == "FINISHED" for k in kids)
    assert all(k.data.tags["mlflow.parentRunId"] == parent.info.run_id for k in kids)
    assert finished_keys(kids) == sorted(r.run_key for r in spec.runs)
    assert sorted(k.info.run_name for k in kids) == sorted(r.name for r in spec.runs)
    by_name = {k.info.run_name: k for k in kids}
    assert by_name["gn-s1"].data.tags["orch.point"] == "model.norm=gn,seed=1"
    assert by_name["gn-s1"].data.params["model.norm"] == "gn"
    client = MlflowClient(tracking_uri=uri)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    arts |= {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    for a in ("grid.yaml", "points.json", "summary.csv", "plots/val_f1_macro_by_model.norm.png",
              "plots/val_curves.png"):
        assert a in arts, arts
    assert "val_f1_macro" in proc.stdout and "3/3" in proc.stdout  # the closing table


def test_rerun_starts_nothing(seeded_sweep):
    uri, grid, env, tmp, _ = seeded_sweep
    before = len(all_runs(uri))
    proc = orch("sweep", str(grid), env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert "6 already finished, 0 to run" in proc.stderr
    assert len(all_runs(uri)) == before


def test_dry_run_reports_done_without_torch(seeded_sweep):
    uri, grid, env, tmp, _ = seeded_sweep
    code = (
        "import sys; from click.testing import CliRunner; from orchestrator.cli.main import cli;"
        f"r = CliRunner().invoke(cli, ['sweep', {str(grid)!r}, '--dry-run', '--tracking-uri', {uri!r}]);"
        "print(r.output); assert r.exit_code == 0, r.output;"
        # reading an existing store goes through MLflow's client; torch is still not needed
        "assert 'torch' not in sys.modules, 'heavy import'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "6 done, 0 pending" in out.stdout
    assert "gn-s2" in out.stdout


def test_compare_matches_mlflow(seeded_sweep):
    uri, grid, env, tmp, _ = seeded_sweep
    spec = load_grid(grid)
    kids = children(uri, spec.sweep_id)
    expected = {}
    for norm in ("bn", "gn"):
        vals = [k.data.metrics["test_acc"] for k in kids if k.data.params["model.norm"] == norm]
        expected[norm] = (statistics.mean(vals), statistics.stdev(vals), len(vals))
    proc = invoke("compare", "--metric", "test_acc", "--format", "json", env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 2
    for row in rows:
        norm = row["model.norm"] if "model.norm" in row else row["group"]["model.norm"]
        mean, std, n = expected[norm]
        assert row["mean"] == pytest.approx(mean, abs=1e-12)
        assert row["std"] == pytest.approx(std, abs=1e-12)
        assert row["n_finished"] == n and row["n_expected"] == 3
    means = [r["mean"] for r in rows]
    assert means == sorted(means, reverse=True)

    md = invoke("compare", "--metric", "val_f1_macro", "--format", "markdown", "--baseline", "model.norm=bn",
              env=env, cwd=tmp)
    assert md.returncode == 0, md.stderr
    lines = md.stdout.strip().splitlines()
    assert lines[0].startswith("|") and set(lines[1].replace("|", "").strip()) <= set("-: ")
    assert len(lines) == 4

    table = invoke("compare", "--metric", "val_f1_macro", env=env, cwd=tmp)
    assert table.returncode == 0 and "val_f1_macro" in table.stdout

    csv_out = invoke("compare", "--metric", "val_f1_macro", "--format", "csv", "--top", "1", env=env, cwd=tmp)
    assert csv_out.returncode == 0 and len(csv_out.stdout.strip().splitlines()) == 2


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--metric", "nope"], "val_f1_macro"),  # lists the metrics that exist
        (["--metric", "val_acc", "--experiment", "nope"], "tiny"),  # lists the experiments
        (["--metric", "val_acc", "--sweep", "ffffff"], "tiny"),  # lists the sweeps
        (["--metric", "val_acc", "--baseline", "model.norm=xx"], "bn"),
    ],
)
def test_compare_bad_input_lists_what_exists(seeded_sweep, args, needle):
    uri, grid, env, tmp, _ = seeded_sweep
    proc = invoke("compare", *args, env=env, cwd=tmp)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_report_has_the_study_layout(seeded_sweep):
    uri, grid, env, tmp, _ = seeded_sweep
    proc = invoke("report", env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("|")]
    assert "Accuracy" in lines[0] and "F1 micro" in lines[0] and "F1 macro" in lines[0]
    body = lines[2:]
    assert len(body) == 6  # two settings × train/val/test
    assert [l.split("|")[2].strip() for l in body] == ["train", "val", "test"] * 2
    csv_proc = invoke("report", "--format", "csv", env=env, cwd=tmp)
    assert csv_proc.returncode == 0 and len(csv_proc.stdout.strip().splitlines()) == 7


def test_failing_point_is_retried_then_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = write_grid(tmp_path / "g.yaml", "faulty", {"optim.lr": [0.05, 1.0e6]})
    scratch = tmp_path / "scratch"  # the sweep's temporary folders, point logs among them
    scratch.mkdir()
    proc = orch("sweep", str(grid), "--max-retries", "2", "--workers", "2",
                env={"MLFLOW_TRACKING_URI": uri, "TMPDIR": str(scratch)}, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    spec = load_grid(grid)
    kids = children(uri, spec.sweep_id)
    good = [k for k in kids if k.data.params["optim.lr"] == "0.05"]
    bad = [k for k in kids if k.data.params["optim.lr"] != "0.05"]
    assert [k.info.status for k in good] == ["FINISHED"]
    assert sorted(k.data.tags["orch.attempt"] for k in bad) == ["1", "2", "3"]
    assert all(k.info.status == "FAILED" for k in bad)
    assert all("non-finite" in k.data.tags["orch.failure_reason"] for k in bad)
    assert "FAILED" in proc.stderr and "lr1000000" in proc.stderr.replace(".0", "")
    (parent,) = parents(uri, spec.sweep_id)
    assert parent.info.status == "FAILED"
    # The logs of the failed attempts are kept; the finished point's log is not.
    logs = sorted(p.name for p in scratch.glob("orch-logs-*/*.log"))
    assert logs == [f"{k.info.run_name}-attempt{a}.log" for k in bad[:1] for a in (1, 2, 3)], logs


def test_extended_grid_reuses_finished_points_and_reports_them(tmp_path):
    """Adding a seed makes a new sweep: it runs only the new point, and its summary counts all."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    first = write_grid(tmp_path / "a.yaml", "grow", {"model.norm": ["bn"]}, seeds=(0,))
    assert orch("sweep", str(first), env=env, cwd=tmp_path).returncode == 0
    grown = write_grid(tmp_path / "b.yaml", "grow", {"model.norm": ["bn"]}, seeds=(0, 1))
    dry = invoke("sweep", str(grown), "--dry-run", env=env, cwd=tmp_path)
    assert dry.returncode == 0 and "2 points: 1 done, 1 pending" in dry.stdout, dry.stdout + dry.stderr
    proc = orch("sweep", str(grown), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 already finished, 1 to run" in proc.stderr
    spec = load_grid(grown)
    assert [k.info.run_name for k in children(uri, spec.sweep_id)] == ["bn-s1"]
    (parent,) = parents(uri, spec.sweep_id)
    assert parent.info.status == "FINISHED"
    out = invoke("compare", "--sweep", spec.sweep_id, "--metric", "val_f1_macro", "--format", "json",
               env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["n_finished"], r["n_expected"]) for r in rows] == [(2, 2)], rows


def _raw_statuses(db: Path) -> list[str]:
    """Point statuses read straight from SQLite: polling through MLflow while the sweep
    creates the store would race it on the schema migration."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return [r[0] for r in con.execute(
                "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE t.key = 'orch.kind' AND t.value = 'point'")]
        finally:
            con.close()
    except sqlite3.Error:
        return []


def test_sigkill_mid_sweep_then_resume_completes_exactly_the_missing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    grid = write_grid(tmp_path / "g.yaml", "killed", {"model.norm": ["bn", "gn", "nn"]}, seeds=(0, 1),
                      base={**TINY_BASE, "train": {"max_epochs": 4, "patience": 4}})
    spec = load_grid(grid)
    sweep = subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(grid), "--workers", "2"],
                             env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until some points finished and others are running
        statuses = _raw_statuses(tmp_path / "mlflow.db")
        if "FINISHED" in statuses and "RUNNING" in statuses:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the sweep never had finished and running points at once")
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    done_before = finished_keys(children(uri, spec.sweep_id))
    assert 0 < len(done_before) < len(spec.runs)

    proc = orch("sweep", str(grid), "--workers", "2", env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    kids = children(uri, spec.sweep_id)
    assert finished_keys(kids) == sorted(r.run_key for r in spec.runs)  # exactly one FINISHED per point
    assert not [k for k in kids if k.info.status == "RUNNING"]
    # The rerun started only the points that had not finished.
    rerun = [k for k in kids if k.info.start_time > max(
        k2.info.start_time for k2 in kids if k2.info.status == "FINISHED"
        and k2.data.tags["orch.run_key"] in done_before)]
    assert {k.data.tags["orch.run_key"] for k in rerun}.isdisjoint(done_before)
    (parent,) = parents(uri, spec.sweep_id)
    assert parent.info.status == "FINISHED"


def test_run_left_running_by_a_dead_sweep_is_marked_failed(tmp_path):
    """The state a SIGKILLed sweep leaves behind (a RUNNING child whose process is gone) is
    closed as FAILED when the sweep resumes, and the point runs again."""
    from orchestrator.execute.plan import plan_sweep
    from orchestrator.store import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = write_grid(tmp_path / "g.yaml", "orphan", {"model.norm": ["bn"]})
    spec = load_grid(grid)
    store = tracking.TrackingStore(uri)
    state = plan_sweep(store, spec)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = store.start_run(state.experiment_id, run_name=spec.runs[0].name, params={},
                             tags={"orch.kind": "point", "orch.sweep": spec.sweep_id,
                                   "orch.run_key": spec.runs[0].run_key, "orch.host": socket.gethostname(),
                                   "orch.pid": str(dead.pid)},
                             parent_run_id=state.parent_run_id)
    proc = orch("sweep", str(grid), env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    c = MlflowClient(tracking_uri=uri)
    run = c.get_run(orphan)
    assert run.info.status == "FAILED"
    assert "died" in run.data.tags["orch.failure_reason"]
    assert finished_keys(children(uri, spec.sweep_id)) == [spec.runs[0].run_key]


def test_every_malformed_grid_exits_2_and_creates_no_run(tmp_path):
    assert len(BAD_GRIDS) >= 15
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runner = CliRunner()
    for path in BAD_GRIDS:
        result = runner.invoke(cli, ["sweep", str(path), "--tracking-uri", uri])
        assert result.exit_code == 2, (path.name, result.output)
        message = [l for l in result.output.splitlines() if l.strip()]
        assert len(message) == 1 and message[0].startswith("Error: "), (path.name, result.output)
        assert path.name in message[0] or str(path) in message[0], (path.name, message)
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started, not even a store


def test_dry_run_of_the_study_grids_lists_their_points():
    for grid in ("seed_norms.yaml", "seed_batch.yaml"):
        # liveness only: the 60-s timeout is over 60x the ~0.25-1 s this takes (its speed: benchmarks')
        proc = orch("sweep", str(REPO / "experiments" / "grids" / grid), "--dry-run",
                    "--tracking-uri", "sqlite:////nonexistent/mlflow.db", timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "points" in proc.stdout


def test_gpus_with_device_cpu_is_refused_before_anything_starts(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = write_grid(tmp_path / "g.yaml", "gpus", {"model.norm": ["bn"]})
    result = CliRunner().invoke(cli, ["sweep", str(grid), "--gpus", "0,1", "--device", "cpu", "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    assert "--gpus and --device cpu contradict each other" in result.output
    assert not (tmp_path / "mlflow.db").exists()
