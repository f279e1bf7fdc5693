"""Optuna storages: where tuning studies and the multi-machine work queue live, checked before any work.

SQLite (the default, beside the MLflow store) serves one process; PostgreSQL claims a waiting trial
exactly once, where SQLite measurably handed the same trial to two workers (7 in 60 claims).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.errors import UserError
from orchestrator.store.uri import sqlite_path, unwritable

log = logging.getLogger(__name__)

# A running trial's worker writes a heartbeat this often, and is declared dead after the
# grace period without one. The environment may shorten both (tests do).
HEARTBEAT_SECONDS = int(os.environ.get("ORCH_HEARTBEAT_SECONDS", "10"))
GRACE_SECONDS = int(os.environ.get("ORCH_GRACE_SECONDS", "30"))
MAX_RETRIES = 2  # a point whose worker died is requeued at most this many times


class StorageError(UserError):
    """The storage URL cannot be used: names it (without password) and the fix."""


def default_storage(tracking_uri: str) -> str:
    """``optuna.db`` beside the MLflow SQLite store, else in the current folder."""
    db = sqlite_path(tracking_uri)
    return f"sqlite:///{(db.parent if db else Path.cwd()) / 'optuna.db'}"


def redact(url: str) -> str:
    password = urlsplit(url).password
    return url.replace(f":{password}@", ":***@") if password else url


def is_postgres(url: str) -> bool:
    return url.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def normalize(url: str) -> str:
    """``postgres://`` → ``postgresql+psycopg://`` (psycopg 3, what SQLAlchemy 2.1 expects);
    relative SQLite paths → absolute."""
    scheme, _, rest = url.partition("://")
    if not rest:
        raise StorageError(f"storage {url!r} is not a URL; use postgresql://USER@HOST:PORT/DB or sqlite:///PATH.db")
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise StorageError(f"storage {url!r}: give the SQLite file a path, e.g. sqlite:///optuna.db")
        return f"sqlite:///{Path(path).expanduser().resolve()}"
    if scheme.startswith("postgresql+"):
        return url
    raise StorageError(
        f"storage {redact(url)!r}: unsupported scheme {scheme!r}; use postgresql://USER@HOST:PORT/DB "
        "(several workers) or sqlite:///PATH.db (one process)"
    )


def check(url: str) -> str:
    """Validate and connect once; the normalized URL, else StorageError (unknown scheme, missing
    driver, unreachable or refusing database)."""
    url = normalize(url)
    if url.startswith("sqlite:"):
        _check_sqlite_file(Path(url[len("sqlite:///"):]), url)
        return url
    module = url.split("://", 1)[0].partition("+")[2]  # the driver's module name (normalize names one)
    if importlib.util.find_spec(module) is None:
        raise StorageError(
            f"storage {redact(url)}: the PostgreSQL driver {module!r} is not installed; "
            "pip install 'psycopg[binary]'"
        )
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as con:
            con.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as err:  # noqa: BLE001 - any connection failure is the user's to fix
        first = str(getattr(err, "orig", err)).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StorageError(
            f"storage {redact(url)} is not reachable ({first}); start the database or fix --storage"
        ) from None
    return url


SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite_file(path: Path, url: str) -> None:
    """A SQLite storage's file is a SQLite database, or can be created: its folder exists and
    takes files. Reading the header never creates or changes the file."""
    if path.is_dir():
        raise StorageError(f"storage {url}: {path} is a folder; give a file, e.g. sqlite:///{path / 'optuna.db'}")
    if path.exists():
        try:
            with open(path, "rb") as fh:
                head = fh.read(len(SQLITE_HEADER))
        except OSError as err:
            raise StorageError(f"storage {url}: cannot read {path} ({err.strerror}); fix its permissions") from None
        if head and head != SQLITE_HEADER:
            raise StorageError(f"storage {url}: {path} is not a SQLite database; give another file")
        if not os.access(path, os.W_OK):
            raise StorageError(f"storage {url}: {path} is read-only; fix its permissions or give another file")
        return
    why = unwritable(path.parent)
    if why == "missing":
        raise StorageError(f"storage {url}: folder {path.parent} does not exist; create it or give another path")
    if why:
        raise StorageError(f"storage {url}: cannot create {path.name} in {path.parent} ({why}); "
                           "give a writable path")


def open_storage(url: str, *, heartbeat: bool = False, on_stale=None):
    """An Optuna RDBStorage. With ``heartbeat`` (PostgreSQL), a trial whose worker stops
    beating for GRACE_SECONDS is failed, ``on_stale(study, trial)`` is called, and the
    trial is requeued up to MAX_RETRIES times."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs = {}
    if heartbeat and not url.startswith("sqlite:"):
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)

        def stale(study, trial):
            if on_stale is not None:
                on_stale(study, trial)
            retry(study, trial)

        kwargs = {"heartbeat_interval": HEARTBEAT_SECONDS, "grace_period": GRACE_SECONDS,
                  "heartbeat_stale_trial_callback": stale}
    engine_kwargs = {"pool_pre_ping": True}
    if not url.startswith("sqlite:"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    import sqlalchemy.exc

    for pause in (0.5, 1.5):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.IntegrityError):
            # Two processes creating Optuna's tables in a fresh database at once (a worker
            # and `orch tune` started together): the loser's CREATE fails; the tables exist now.
            time.sleep(pause)
    return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)


def trial_id(trial) -> int:
    """The storage id of a trial from ``study.ask()``, which the storage's per-trial calls take:
    Optuna exposes it only as the private ``Trial._trial_id``, read here alone."""
    return trial._trial_id


def start_heartbeat(storage, trial) -> threading.Event:
    """Beat ``trial``'s heartbeat every HEARTBEAT_SECONDS on a daemon thread until the returned
    event is set (Optuna beats only for trials that ``study.optimize`` runs itself)."""
    tid = trial_id(trial)
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(tid)
            except Exception as err:  # noqa: BLE001 - a missed beat is retried on the next tick
                log.warning("heartbeat of trial %s failed (%s); retrying", trial.number, err)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    threading.Thread(target=beat, daemon=True, name=f"heartbeat-{tid}").start()
    return stop
