"""Experiment names are checked with the grid: a name that cannot be a folder or an MLflow
run name is refused (exit 2, one message) before any store, run or folder exists."""

from __future__ import annotations

import pytest

from conftest import TINY_BASE, invoke, orch, write_grid
from orchestrator.grid.names import MAX_EXPERIMENT_BYTES, MAX_EXPERIMENT_CHARS, experiment_name_problem

BAD_NAMES = {
    "300 characters": "x" * 300,
    "dot-dot": "..",
    "dot": ".",
    "a slash": "a/../../b",
    "a backslash": "a\\b",
    "multi-byte over 255 bytes": "é" * 128,
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_a_name_that_is_not_one_folder_or_too_long_is_refused(name):
    assert experiment_name_problem(name)


@pytest.mark.parametrize("name", ["norm-study", "x" * MAX_EXPERIMENT_CHARS, "...", "a..b", "é" * 127, "study 2 (bn)"])
def test_names_within_the_limits_pass(name):
    assert len(name.encode()) <= MAX_EXPERIMENT_BYTES
    assert experiment_name_problem(name) is None


@pytest.mark.integration  # real `orch` processes
@pytest.mark.parametrize("name", ["x" * 300, ".."], ids=["300 characters", "dot-dot"])
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "sweep"])
def test_the_sweep_and_its_dry_run_refuse_the_name_and_create_nothing(tmp_path, name, dry_run):
    work = tmp_path / "work"
    work.mkdir()
    grid = write_grid(work / "grid.yaml", name, {"model.norm": ["bn"]})
    uri = f"sqlite:///{work / 'mlflow.db'}"
    r = orch("sweep", str(grid), *(["--dry-run"] if dry_run else []), "--tracking-uri", uri, cwd=work)
    assert r.returncode == 2, r.stderr
    assert "experiment name" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["grid.yaml", "work"]  # no store, lock or folder


def test_tune_and_run_refuse_the_name_before_opening_the_store(tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", "..", {"model.norm": ["bn"]})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = invoke("tune", str(grid), "--tracking-uri", uri)
    assert r.returncode == 2 and "experiment name '..'" in r.stderr
    r = invoke("run", "--experiment", "x" * 300, "--tracking-uri", uri, "--set", "train.max_epochs=1")
    assert r.returncode == 2 and "--experiment" in r.stderr and "too long" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]


@pytest.mark.integration  # a real sweep
@pytest.mark.slow
def test_the_longest_name_allowed_runs_a_sweep(tmp_path):
    name = "n" * MAX_EXPERIMENT_CHARS
    grid = write_grid(tmp_path / "grid.yaml", name, {}, base={**TINY_BASE, "train": {"max_epochs": 1, "patience": 1}})
    r = orch("sweep", str(grid), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "mlartifacts" / name).is_dir()
