"""Optuna storage URLs: every problem is found before work starts, named without the password."""

from __future__ import annotations

import pytest

from conftest import _free_port, new_database
from orchestrator.store import optuna_storage as storage
from orchestrator.store.optuna_storage import StorageError


def test_postgres_urls_get_psycopg_and_sqlite_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.normalize("postgres://u@h:5432/q") == "postgresql+psycopg://u@h:5432/q"
    assert storage.normalize("postgresql://u@h/q") == "postgresql+psycopg://u@h/q"
    assert storage.normalize("postgresql+psycopg2://u@h/q") == "postgresql+psycopg2://u@h/q"
    assert storage.normalize("sqlite:///q.db") == f"sqlite:///{tmp_path / 'q.db'}"
    assert storage.is_postgres("postgres://u@h/q") and not storage.is_postgres("sqlite:///q.db")


@pytest.mark.parametrize("url, needle", [
    ("q.db", "not a URL"),
    ("sqlite:///", "give the SQLite file a path"),
    ("mysql://u:secret@h/q", "unsupported scheme 'mysql'"),
    ("postgresql+nosuchdriver://u:secret@127.0.0.1:1/q", "driver 'nosuchdriver' is not installed"),
])
def test_bad_urls_are_refused_with_the_fix(url, needle):
    with pytest.raises(StorageError, match=needle) as err:
        storage.check(url)
    assert "secret" not in str(err.value)


def test_an_unreachable_database_is_refused_without_its_password():
    with pytest.raises(StorageError, match="is not reachable") as err:
        storage.check(f"postgresql://orch:secret@127.0.0.1:{_free_port()}/q")
    assert "secret" not in str(err.value) and ":***@" in str(err.value)


def test_the_default_storage_lies_beside_a_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.default_storage(f"sqlite:///{tmp_path}/a/mlflow.db") == f"sqlite:///{tmp_path}/a/optuna.db"
    assert storage.default_storage("http://127.0.0.1:5000") == f"sqlite:///{tmp_path}/optuna.db"


def test_a_real_postgres_is_checked_and_opened(postgres_url):
    url = storage.check(new_database(postgres_url))
    assert url.startswith("postgresql+psycopg://")
    study_storage = storage.open_storage(url)  # creates Optuna's tables in the fresh database
    assert study_storage.get_all_studies() == []
    study_storage.create_new_study([], "probe")
    assert [s.study_name for s in storage.open_storage(url).get_all_studies()] == ["probe"]
