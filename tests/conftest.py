"""Shared fixtures: a real MLflow store (SQLite in a temp dir) and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


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


def all_runs(uri: str):
    """Every run in every experiment of the store (empty when the store does not exist)."""
    db = Path(uri[len("sqlite:///"):])
    if not db.exists():
        return []
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in c.search_experiments()]
    return list(c.search_runs(ids, max_results=5000)) if ids else []
