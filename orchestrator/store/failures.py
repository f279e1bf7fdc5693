"""When the store itself fails: MLflow's, SQLAlchemy's and the file system's errors become one
:class:`~orchestrator.errors.StoreFailure`, caught without knowing the backend. MLflow's request
errors (no such run, already exists, a bad value) pass unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

from orchestrator.errors import StoreFailure

# MLflow error codes that mean "this request was wrong", not "the store failed".
_REQUEST_ERRORS = ("RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_PARAMETER_VALUE", "INVALID_STATE")


def is_store_failure(err: BaseException) -> bool:
    """Whether an exception of a store call means the store itself failed (full disk, locked file,
    silent server): OSError, SQLite and SQLAlchemy errors, MlflowException but request errors."""
    if isinstance(err, (OSError, StoreFailure)):
        return True
    if type(err).__module__.split(".")[0] in ("sqlite3", "sqlalchemy"):
        return True
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and err.error_code not in _REQUEST_ERRORS


def _cause(err: BaseException) -> str:
    """One line saying what the store answered (SQLAlchemy appends the SQL and a link)."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}{f' ({err.filename})' if err.filename else ''}"
    text = str(getattr(err, "message", None) or err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    for prefix in ("(sqlite3.OperationalError) ", "(sqlite3.DatabaseError) "):
        line = line.replace(prefix, "")
    return line[:300]


@contextlib.contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """Turn a store failure raised in the block into :class:`StoreFailure` (other errors pass)."""
    try:
        yield
    except StoreFailure:
        raise
    except Exception as err:
        if not is_store_failure(err):
            raise
        raise StoreFailure(uri, _cause(err)) from err


def store_failures_raised(cls: type) -> type:
    """Class decorator: every public method of ``cls`` (but those named in ``cls.UNGUARDED``)
    runs inside :func:`store_errors` on ``self.uri``."""

    def guarded(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            with store_errors(self.uri):
                return method(self, *args, **kwargs)

        return call

    for name, attr in list(vars(cls).items()):
        if not name.startswith("_") and callable(attr) and name not in cls.UNGUARDED:
            setattr(cls, name, guarded(attr))
    return cls
