"""Shared fixtures and helpers: a real MLflow store (SQLite in a temp dir), the CLI, tiny
grids and the runs they leave, a throwaway PostgreSQL, a real ``mlflow server`` and a one-node
Slurm cluster.

Test modules import the helpers with ``from conftest import ...`` (pytest puts this
directory on ``sys.path``; ``pythonpath = .`` in setup.cfg keeps the packages first).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

# One torch thread per process: the tests' models are tiny, and on a 2-core host two threads
# per process spin against each other and against the test's other processes (a small run
# takes about twice as long). Tests of the thread rule set or clear OMP_NUM_THREADS themselves.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
SHARED = REPO.parent / "shared"

# ``make test`` runs on two pytest-xdist workers (``-n 2 --dist loadscope
# --no-loadscope-reorder``): each module runs on one worker, so its module- and
# session-scoped fixtures (a finished sweep, a server) are built once; a session fixture used
# by modules on both workers (the PostgreSQL or Slurm cluster) is built once per worker, on its
# own ports and folder. These modules take longest (real sweeps, workers, a cluster): they
# start first, so that the short modules fill the gaps at the end instead of one long module
# running alone.
LONGEST_FIRST = ("test_slurm", "test_queue", "test_faults", "test_resume_sweep", "test_postgres_store", "test_tune",
                 "test_ui",
                 "test_sweep", "test_report", "test_run", "test_separation")

TINY_BASE = {  # a point in about a second: digits, the smallest ResNet, two epochs
    "data": {"name": "digits", "batch_size": 64},
    "model": {"depth_n": 1},
    "train": {"max_epochs": 2, "patience": 2},
}
RESUME_BASE = {  # long enough to be stopped mid-run: five epochs of small batches, a checkpoint every epoch
    "data": {"name": "digits", "batch_size": 16},
    "model": {"depth_n": 1},
    "train": {"max_epochs": 5, "patience": 5, "checkpoint_seconds": 0},
}


@pytest.fixture
def frozen_heap():
    """For tests that call statsmodels' Holm correction many times: it runs ``gc.collect()`` on
    every call, which in this long-lived process walks everything earlier tests left behind
    (0.2–1 s a call). Frozen, those objects are skipped; the test's own are still collected."""
    import gc

    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store; MLFLOW_TRACKING_URI points at it for the test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def orch(*args: str, env: dict | None = None, timeout: float = 600, cwd=None) -> subprocess.CompletedProcess:
    """Run the real ``orch`` command in a subprocess (as a user would)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd,
    )


def invoke(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run ``orch ARGS`` in this process through click's ``CliRunner``.

    The same code path as the command (``handle_errors`` maps errors to exit codes) without
    a new interpreter's ~5 s of imports: for error paths and quick commands. An exception
    that escapes the command is raised here (the real command would print a traceback).
    Returns what :func:`orch` returns: ``returncode``, ``stdout``, ``stderr``.
    """
    from click.testing import CliRunner

    from orchestrator.cli.main import cli

    here = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["orch", *args], result.exit_code, result.stdout, result.stderr)


def ro_rows(db: Path, sql: str, args=()) -> list:
    """Rows of a SQLite store another process is writing, read-only (``mode=ro``: never creates
    or migrates it); none while it does not exist yet or is locked."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def point_processes_under(pid: int | None = None) -> list:
    """The live ``python -m orchestrator.execute.point`` processes among the descendants of ``pid``
    (default: this test process), as psutil processes."""
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "orchestrator.execute.point" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:  # ended since it was listed (a zombie too)
            pass
    return found


def all_runs(uri: str):
    """Every run in every experiment of the store (empty when the store does not exist)."""
    db = Path(uri[len("sqlite:///"):])
    if not db.exists():
        return []
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in c.search_experiments()]
    return list(c.search_runs(ids, max_results=5000)) if ids else []


def write_grid(path: Path, name: str, grid: dict, seeds=(0,), base: dict | None = None) -> Path:
    """A grid file: ``grid`` axes over ``base`` (default :data:`TINY_BASE`) and ``seeds``."""
    path.write_text(yaml.safe_dump({"name": name, "base": base or TINY_BASE, "grid": grid, "seeds": list(seeds)},
                                   sort_keys=False))
    return path


def _sweep_runs(uri: str, sweep_id: str, kind: str):
    from orchestrator.store.schema import Tag

    return [r for r in all_runs(uri) if r.data.tags.get(Tag.SWEEP) == sweep_id and r.data.tags.get(Tag.KIND) == kind]


def children(uri: str, sweep_id: str):
    """The point runs of one sweep."""
    from orchestrator.store.schema import Kind

    return _sweep_runs(uri, sweep_id, Kind.POINT)


def parents(uri: str, sweep_id: str):
    """The parent run(s) of one sweep (one, unless something is wrong)."""
    from orchestrator.store.schema import Kind

    return _sweep_runs(uri, sweep_id, Kind.SWEEP)


def finished_keys(runs) -> list[str]:
    """The sorted run keys of the FINISHED runs among ``runs``."""
    from orchestrator.store.schema import Status, Tag

    return sorted(r.data.tags[Tag.RUN_KEY] for r in runs if r.info.status == Status.FINISHED)


def results(run) -> dict:
    """A run's summary metrics but the timings: bitwise equal between runs of one point on the CPU."""
    from experiments.metric_names import IMAGES_PER_SECOND, SUMMARY_METRICS, TRAIN_SECONDS

    return {m: run.data.metrics[m] for m in SUMMARY_METRICS if m not in (TRAIN_SECONDS, IMAGES_PER_SECOND)}


def run_record(ep, metrics: dict, *, status="FINISHED", start=0, run_id=None, tags=None):
    """A :class:`~orchestrator.analyze.records.RunRecord` of one expected point, as a store would give it."""
    from orchestrator.analyze.records import RunRecord
    from orchestrator.store.schema import Kind, Tag

    p = ep.point
    all_tags = {
        Tag.SWEEP: "sweep-1",
        Tag.RUN_KEY: ep.run_key,
        Tag.POINT: f"{ep.setting},seed={p['seed']}",
        Tag.SETTING: ep.setting,
        Tag.KIND: Kind.POINT,
    }
    all_tags.update(tags or {})
    return RunRecord(
        run_id=run_id or f"run-{ep.name}-{start}",
        name=ep.name,
        status=status,
        params={"model.norm": p["model.norm"], "data.batch_size": str(p["data.batch_size"]),
                "seed": str(p["seed"]), "data.name": "cifar10", "optim.lr": "0.1"},
        metrics=metrics,
        tags=all_tags,
        start_time=start,
    )


def pytest_collection_modifyitems(config, items):
    """The longest modules first (see :data:`LONGEST_FIRST`)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))  # stable: file order otherwise


# --------------------------------------------------------------------------- test tiers

# Every test is in one tier (the markers are described in setup.cfg): ``unit`` (in this process
# only: no subprocess, no tracking store), ``integration`` (a real SQLite store or real
# subprocesses) or ``system`` (PostgreSQL, Slurm, Chromium, docker, sweeps killed and resumed).
# A test that marks itself keeps its mark; one that uses a fixture of SYSTEM_FIXTURES is
# ``system``, one that uses :func:`store` ``integration``; any other gets its module's tier from
# MODULE_TIERS. The tests of the modules in SLOW_MODULES, and those that use :func:`store` (a
# fresh MLflow store: its migrations take seconds), are also ``slow``: ``make test-fast``
# ("(unit or integration) and not slow") leaves them, and every test marked slow, to ``make test``.
# A module missing from the table counts as slow integration.
TIERS = ("unit", "integration", "system")
SYSTEM_FIXTURES = {"postgres_url", "mlflow_server", "cluster", "browser"}
MODULE_TIERS = {
    # unit: what functions and commands' argument checks do, in this process
    "test_bounded_input": "unit", "test_cli": "unit", "test_compare": "unit", "test_config": "unit",
    "test_data": "unit", "test_dry_run": "unit", "test_grid": "unit", "test_house": "unit", "test_names": "unit",
    "test_norms": "unit", "test_own_entry": "unit", "test_plots": "unit",
    "test_report": "unit", "test_resnet": "unit", "test_resume": "unit", "test_separation": "unit",
    "test_study_choices": "unit", "test_train": "unit", "test_yaml_source": "unit",
    # integration: commands on a real SQLite store, real point processes
    "test_checkpoints": "integration", "test_closed_output": "integration", "test_docs": "integration",
    "test_faults": "integration", "test_provenance": "integration", "test_run": "integration",
    "test_scheduler": "integration", "test_storage": "integration", "test_sweep": "integration",
    "test_sweep_lookup": "integration", "test_tracking": "integration", "test_tune": "integration",
    "test_ui": "integration", "test_own_sweep": "integration", "test_own_code_examples": "integration",
    "test_own_entry_results": "integration", "test_tune_entry": "integration",
    # system: PostgreSQL, Slurm, docker, killed and resumed sweeps
    "test_docker": "system", "test_locks": "system", "test_postgres_store": "system", "test_queue": "system",
    "test_resume_sweep": "system", "test_slurm": "system", "test_own_code_launchers": "system",
}
# each of these takes minutes: training in this process (test_resume, test_train), real sweeps and
# runs, fresh SQLite stores, the docs site's build
SLOW_MODULES = {"test_checkpoints", "test_closed_output", "test_docs", "test_faults", "test_provenance",
                "test_resume", "test_run", "test_sweep", "test_sweep_lookup", "test_tracking", "test_train",
                "test_tune", "test_tune_entry", "test_ui", "test_own_code_examples", "test_own_entry_results",
                "test_own_code_launchers"}


def pytest_itemcollected(item):
    """Give the test its tier (see above), and ``slow`` when its module is in SLOW_MODULES."""
    module = item.module.__name__ if item.module is not None else ""
    named = [mark.name for mark in item.iter_markers() if mark.name in TIERS]
    if named:
        tier = named[0]
    elif SYSTEM_FIXTURES & set(item.fixturenames):
        tier = "system"
    elif "store" in item.fixturenames:
        tier = "integration"
    else:
        tier = MODULE_TIERS.get(module, "integration")
    if not named:
        item.add_marker(tier)
    if module in SLOW_MODULES or module not in MODULE_TIERS or "store" in item.fixturenames:
        item.add_marker("slow")


# --------------------------------------------------------------------------- PostgreSQL


def new_database(postgres_url: str) -> str:
    """A fresh database per test, so studies never leak between tests."""
    import sqlalchemy

    name = "q" + uuid.uuid4().hex[:10]
    engine = sqlalchemy.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://") + "/queue",
                                      isolation_level="AUTOCOMMIT")
    with engine.connect() as con:
        con.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{postgres_url}/{name}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _initdb() -> Path | None:
    import glob
    import shutil

    found = shutil.which("initdb")
    if found:
        return Path(found).resolve()
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]) if candidates else None


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: drop to the `postgres` account then."""
    if os.geteuid() != 0:
        return cmd
    import shlex

    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A throwaway PostgreSQL cluster (initdb in a temp dir, a loopback port) for the session.

    Yields a SQLAlchemy URL of a database in it. Skips, saying why, when PostgreSQL's
    server binaries are not installed (`apt-get install postgresql`; .ci/run does it).
    """
    initdb = _initdb()
    if initdb is None:
        pytest.skip("PostgreSQL server binaries (initdb) not found: apt-get install postgresql")
    import shutil
    import tempfile

    bindir = initdb.parent
    # Not under pytest's tmp dir: that is private to the test user, and as root the server
    # runs as `postgres`, which must own its data directory.
    root = Path(tempfile.mkdtemp(prefix="orch-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    subprocess.run(_as_postgres_user([str(bindir / "initdb"), "-D", str(data), "-U", "orch", "--auth=trust",
                                      "-E", "UTF8"]), check=True, capture_output=True)
    log = root / "pg.log"
    subprocess.run(_as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                                      "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root} "
                                            "-c max_connections=200 -c fsync=off",
                                      "start"]), check=True, capture_output=True)
    try:
        for db in ("queue", "mlflow"):
            subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "orch", db],
                           check=True, capture_output=True)
        yield f"postgresql://orch@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(postgres_url, tmp_path_factory):
    """A real `mlflow server` on loopback with the PostgreSQL backend and served artifacts."""
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    backend = postgres_url.replace("postgresql://", "postgresql+psycopg://") + "/mlflow"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # No background job runner (GenAI jobs, unused here): it would add several processes.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((root / "server.log").read_text()[-3000:])
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not start:\n" + (root / "server.log").read_text()[-3000:])
    try:
        yield url
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


# --------------------------------------------------------------------------- Slurm


@pytest.fixture(scope="session")
def cluster():
    """A one-node Slurm cluster (tests/slurm_cluster.py) that orch subprocesses reach through SLURM_CONF."""
    import slurm_cluster
    why = slurm_cluster.missing()
    if why:
        pytest.skip(why)
    c = slurm_cluster.start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(c.conf)
    try:
        yield c
    finally:
        try:
            for job in c.squeue():
                c.run("scancel", job.split()[0], check=False)
        finally:
            c.stop()
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old
