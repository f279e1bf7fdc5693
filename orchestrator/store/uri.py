"""Tracking URIs (:func:`resolve_tracking_uri`) and the checks a store passes before any work
(:func:`check_store`, within a second): no mlflow import here.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from orchestrator.errors import UserError


class TrackingError(UserError):
    """The tracking store cannot be used as given: names the URI and the fix."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``; SQLite
    paths made absolute (child processes agree); a bare path or ``file:`` URI is SQLite if it ends
    in ``.db``, else refused (MLflow 3.13+ refuses its file store)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:":
            return f"sqlite:///{Path(path).expanduser().resolve()}"
        raise TrackingError(f"{uri}: give the SQLite file a path, e.g. sqlite:///{Path.cwd() / 'mlflow.db'}")
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in ("http", "https", "databricks") or scheme.startswith(("postgresql", "mysql", "mssql")):
        return uri
    if not scheme or scheme == "file":
        path = uri[len("file://"):] if scheme == "file" else uri
        if path.endswith(".db"):
            return f"sqlite:///{Path(path).expanduser().resolve()}"
        raise TrackingError(
            f"{uri}: a folder selects MLflow's file store, which MLflow refuses; "
            f"use a SQLite file such as sqlite:///{Path(path).expanduser().resolve() / 'mlflow.db'} "
            "or an http:// tracking server"
        )
    raise TrackingError(f"{uri}: unsupported tracking URI scheme {scheme!r}; use sqlite:///PATH.db, "
                        "postgresql://USER@HOST/DB or http://HOST:PORT")


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite file, else the server's choice."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").as_uri() if db else None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any work starts, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"tracking server {uri} is not reachable ({reason}); start it (mlflow server …) or fix --tracking-uri"
        ) from None


def check_store(uri: str, *, write: bool) -> None:
    """Refuse (:class:`TrackingError`, naming the path and the fix) a store that cannot be used as
    asked, where MLflow would retry for about 100 s: a server must answer; a SQLite file must be
    readable with MLflow's tables (or none yet); with ``write`` its folder must take files and it
    must be writable (missing: MLflow creates it); without, a missing file is an error."""
    db = sqlite_path(uri)
    if db is None:
        check_reachable(uri)
        return
    if db.is_dir():
        raise TrackingError(f"{db} is a folder, not a SQLite file; use e.g. --tracking-uri sqlite:///{db / 'mlflow.db'}")
    if not db.exists():
        if not write:
            raise TrackingError(f"no MLflow store at {db}; run `orch sweep` or `orch run` first, or point "
                                "--tracking-uri (or MLFLOW_TRACKING_URI) at an existing store")
        _check_writable_folder(db.parent, db)
        return
    # A store whose tables another orch process is creating right now passes: its file holds
    # no tables yet or already MLflow's (the first migration step creates them all), and
    # opening it waits for the creator's lock (TrackingStore).
    try:
        tables = _tables(db)
    except sqlite3.Error as err:
        raise TrackingError(f"{db} is not a usable SQLite database ({err}); move it away, or point "
                            "--tracking-uri at another file") from None
    if tables and "experiments" not in tables:
        raise TrackingError(f"{db} is a SQLite database but not an MLflow store (no experiments table); "
                            "point --tracking-uri at another file")
    if write:
        _check_writable_folder(db.parent, db)
        if not os.access(db, os.W_OK):
            raise TrackingError(f"{db} is read-only; make it writable, or copy it somewhere writable and point "
                                "--tracking-uri at the copy")
        artifacts = db.parent / "mlartifacts"
        if artifacts.exists() and not os.access(artifacts, os.W_OK | os.X_OK):
            raise TrackingError(f"the artifact folder {artifacts} is not writable; fix its permissions")


def init_lock_path(db: Path) -> Path:
    """The lock under which an orch process creates a new SQLite store's tables."""
    return db.parent / f".{db.name}.init-lock"


def _tables(db: Path) -> set[str]:
    """The tables of SQLite file ``db``, read-only (``mode=ro`` never creates or changes a file);
    sqlite3.Error when it is no SQLite database or cannot be read."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
        return {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def initialised(db: Path) -> bool:
    """Whether a SQLite store file exists and holds MLflow's migration table."""
    try:
        return db.exists() and "alembic_version" in _tables(db)
    except sqlite3.Error:
        return False


def unwritable(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (``"missing"``, or the OS's words), else None.
    Creating and removing a file is the only test that also catches read-only mounts."""
    if not folder.is_dir():
        return "missing"
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".orch-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return err.strerror or str(err)
    return None


def _check_writable_folder(folder: Path, db: Path) -> None:
    why = unwritable(folder)
    if why == "missing":
        raise TrackingError(f"cannot create the store {db}: the folder {folder} does not exist; create it "
                            "or choose another --tracking-uri")
    if why:
        raise TrackingError(f"cannot write in {folder} ({why}), where the store {db.name} and its "
                            "artifacts live; choose a writable --tracking-uri")
