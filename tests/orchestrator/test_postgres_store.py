"""A PostgreSQL-backed MLflow tracking store (``--tracking-uri postgresql://…``, no server):
a sweep finishes every point, a sweep stopped by SIGTERM resumes its point from the
checkpoint, and ``orch compare`` / ``status`` / the dry run read it.

The store at scale: SQLite serves one machine and, at 10,000 runs, reads take tens of
seconds (benchmarks/results/scale_cpu.md); a PostgreSQL database is the documented path.
Each test gets a new database of the session's throwaway PostgreSQL cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import RESUME_BASE, invoke, new_database, orch, write_grid
from mlflow.tracking import MlflowClient

from experiments.metric_names import epoch_key
from orchestrator.store.schema import Kind, Status, Tag, tag_filter

VAL_LOSS = epoch_key("val_loss")


def runs_of(uri: str, kind: str) -> list:
    """Every run of ``kind`` (``Tag.KIND``) in every experiment of the store."""
    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(ids, tag_filter(Tag.KIND, kind), max_results=1000)) if ids else []


def finished_points(uri: str) -> dict:
    return {r.data.tags[Tag.RUN_KEY]: r for r in runs_of(uri, Kind.POINT) if r.info.status == Status.FINISHED}


def test_a_sweep_on_postgresql_finishes_every_point_and_compare_status_and_the_dry_run_read_it(postgres_url,
                                                                                             tmp_path):
    uri = new_database(postgres_url)
    grid = write_grid(tmp_path / "pg.yaml", "pg-sweep", {"model.norm": ["bn", "gn"]}, seeds=(0, 1))
    proc = orch("sweep", str(grid), "--workers", "2", "--tracking-uri", uri, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(finished_points(uri)) == 4
    (parent,) = runs_of(uri, Kind.SWEEP)
    assert parent.info.status == Status.FINISHED

    compare = invoke("compare", "--metric", "val_f1_macro", "--format", "csv", "--tracking-uri", uri, cwd=tmp_path)
    assert compare.returncode == 0, compare.stderr
    rows = compare.stdout.strip().splitlines()
    assert len(rows) == 3 and {"bn", "gn"} <= {cell for row in rows[1:] for cell in row.split(",")}, compare.stdout
    # a Slurm client that does not answer on this machine is no concern of a local sweep's status
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "squeue").write_text("#!/bin/sh\necho 'squeue: fatal: no configuration' >&2\nexit 1\n")
    (tmp_path / "bin" / "squeue").chmod(0o755)
    status = invoke("status", "--tracking-uri", uri, cwd=tmp_path,
                    env={"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"})
    assert status.returncode == 0, status.stderr
    assert "points 4: FINISHED 4" in status.stdout, status.stdout
    dry = invoke("sweep", str(grid), "--dry-run", "--tracking-uri", uri, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "4 points: 4 done, 0 pending" in dry.stdout, dry.stdout
    rerun = orch("sweep", str(grid), "--workers", "2", "--tracking-uri", uri, cwd=tmp_path)
    assert rerun.returncode == 0 and "nothing to do" in rerun.stderr, rerun.stderr
    assert len(runs_of(uri, Kind.POINT)) == 4  # nothing ran again
    (after,) = runs_of(uri, Kind.SWEEP)
    assert (after.info.status, after.data.tags) == (parent.info.status, parent.data.tags)  # not even a heartbeat


def wait_for_checkpoint(uri: str, step: int, timeout: float = 300) -> str:
    """The id of the first point run once it is RUNNING with a checkpoint at ``step`` or later."""
    client = MlflowClient(tracking_uri=uri)
    deadline = time.time() + timeout
    while time.time() < deadline:
        ids = [e.experiment_id for e in client.search_experiments()]
        where = f"{tag_filter(Tag.KIND, Kind.POINT)} and attributes.status = '{Status.RUNNING}'"
        for run in client.search_runs(ids, where) if ids else []:
            if int(run.data.tags.get(Tag.CHECKPOINT_STEP) or 0) >= step:
                return run.info.run_id
        time.sleep(0.2)
    pytest.fail(f"no point reached a checkpoint at step {step} within {timeout} s")


def test_sigterm_mid_point_then_the_rerun_resumes_it_on_postgresql(postgres_url, tmp_path):
    uri = new_database(postgres_url)
    grid = write_grid(tmp_path / "resume.yaml", "pg-resume", {"model.norm": ["bn"]}, base=RESUME_BASE)
    sweep = subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(grid), "--workers", "1",
                              "--tracking-uri", uri, "--quiet"], cwd=tmp_path, env=dict(os.environ),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stopped = wait_for_checkpoint(uri, 2)
    sweep.send_signal(signal.SIGTERM)
    _, stderr = sweep.communicate(timeout=120)  # liveness only: the point checkpoints and ends within seconds
    assert sweep.returncode == 143, stderr
    client = MlflowClient(tracking_uri=uri)
    killed = client.get_run(stopped)
    assert killed.info.status == Status.KILLED
    assert Tag.CHECKPOINT in killed.data.tags
    assert not [r for r in runs_of(uri, Kind.POINT) + runs_of(uri, Kind.SWEEP) if r.info.status in Status.LIVE]

    rerun = orch("sweep", str(grid), "--workers", "1", "--tracking-uri", uri, "--quiet", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    (resumed,) = finished_points(uri).values()
    assert resumed.data.tags[Tag.RESUMED_FROM] == stopped
    assert int(resumed.data.tags[Tag.RESUMED_STEP]) >= 2
    assert sorted(m.step for m in client.get_metric_history(resumed.info.run_id, VAL_LOSS)) == [1, 2, 3, 4, 5]
    compare = invoke("compare", "--metric", "val_f1_macro", "--format", "csv", "--tracking-uri", uri, cwd=tmp_path)
    assert compare.returncode == 0, compare.stderr
    assert len(compare.stdout.strip().splitlines()) == 2, compare.stdout  # the resumed point is the setting's result
