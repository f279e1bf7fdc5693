"""Which sweep ``--sweep`` and "latest" name, in a real store: a prefix must name one sweep,
and a parent without ``points.json`` (stopped before it was uploaded) is "no points recorded"."""

from __future__ import annotations

import json

import pytest

from conftest import invoke
from orchestrator.store.schema import Artifact, Kind, Status, Tag


def _parent(client, exp_id: str, sweep_id: str, *, points: bool = False) -> str:
    """A sweep parent run as ``orch sweep`` tags it (ended KILLED), with or without points.json."""
    run = client.create_run(exp_id, run_name="study", tags={Tag.KIND: Kind.SWEEP, Tag.SWEEP: sweep_id,
                                                            Tag.N_POINTS: "0"})
    if points:
        client.log_text(run.info.run_id, "[]", Artifact.POINTS)
    client.set_terminated(run.info.run_id, Status.KILLED)
    return run.info.run_id


@pytest.fixture
def two_sweeps(store):
    """Two sweep parents whose ids share the prefix ``0a`` (the newer without points.json)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    exp_id = client.create_experiment("study")
    old = _parent(client, exp_id, "0a1111111111", points=True)
    new = _parent(client, exp_id, "0a2222222222")
    return client, old, new


@pytest.mark.parametrize("command", [["compare", "--metric", "test_acc"], ["report", "--no-figures"], ["report"],
                                     ["status"]])
def test_a_parent_without_points_json_is_no_points_recorded(two_sweeps, command):
    r = invoke(*command)  # latest: the newest parent, which has no points.json
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no points recorded" in r.stderr and "0a2222222222" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    client, _, new = two_sweeps
    assert not [f.path for f in client.list_artifacts(new)]  # report logged no figures on it


@pytest.mark.parametrize("prefix", ["0a", "0", ""])
@pytest.mark.parametrize("command", [["compare", "--metric", "test_acc"], ["report"], ["status"]])
def test_an_ambiguous_or_empty_sweep_prefix_is_refused_with_the_matches(two_sweeps, command, prefix):
    r = invoke(*command, "--sweep", prefix)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "0a1111111111" in r.stderr and "0a2222222222" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    client, old, new = two_sweeps
    assert not [f.path for f in client.list_artifacts(new)]
    assert [f.path for f in client.list_artifacts(old)] == [Artifact.POINTS]  # no report/ figures


def test_a_prefix_of_one_sweep_and_latest_still_pick_it(two_sweeps):
    r = invoke("report", "--no-figures", "--sweep", "0a1", "--format", "json")
    assert r.returncode == 0, r.stderr
    r = invoke("report", "--no-figures", "--sweep", "latest")
    assert r.returncode == 2 and "0a2222222222" in r.stderr  # the newest, without points.json


@pytest.fixture
def two_queued(tmp_path):
    """A SQLite queue holding two sweeps whose ids share the prefix ``0a``."""
    import optuna

    url = f"sqlite:///{tmp_path / 'queue.db'}"
    for sweep_id in ("0a1111111111", "0a2222222222"):
        optuna.create_study(storage=url, study_name=f"orch-sweep-{sweep_id}")
    return url


@pytest.mark.parametrize("prefix", ["0a", ""])
@pytest.mark.parametrize("command", [["worker"], ["status"]])
def test_queue_commands_refuse_an_ambiguous_or_empty_sweep_prefix(two_queued, command, prefix):
    r = invoke(*command, "--storage", two_queued, "--sweep", prefix)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "0a1111111111" in r.stderr and "0a2222222222" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_queue_status_of_one_sweep_by_prefix(two_queued):
    r = invoke("status", "--storage", two_queued, "--sweep", "0a2")
    assert r.returncode == 0, r.stderr
    assert "0a2222222222" in r.stdout and "0a1111111111" not in r.stdout


def test_rerunning_the_sweep_records_the_missing_points(store, tmp_path):
    """A parent left without points.json by a sweep stopped early gets them on the next run."""
    from mlflow.tracking import MlflowClient

    from conftest import TINY_BASE, orch, write_grid
    from orchestrator.grid.load import load_grid

    grid = write_grid(tmp_path / "grid.yaml", "stopped", {}, base={**TINY_BASE, "train": {"max_epochs": 1}})
    client = MlflowClient(tracking_uri=store)
    _parent(client, client.create_experiment("stopped"), load_grid(grid).sweep_id)
    assert invoke("compare", "--metric", "test_acc").returncode == 2
    r = orch("sweep", str(grid), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = invoke("compare", "--metric", "test_acc", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert [(row["n_finished"], row["n_expected"]) for row in json.loads(r.stdout)] == [(1, 1)]


def test_queue_status_of_an_unknown_sweep_lists_the_queued_ones(two_queued):
    r = invoke("status", "--storage", two_queued, "--sweep", "ff")
    assert r.returncode == 2
    assert "no queued sweep 'ff'" in r.stderr and "0a1111111111, 0a2222222222" in r.stderr
