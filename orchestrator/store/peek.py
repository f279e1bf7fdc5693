"""Which run keys are done, for ``orch sweep --dry-run``: mlflow is imported only where a
store exists to be read.

A grid whose SQLite store does not exist yet (or holds no tables) has nothing done, and
the dry run says so without importing mlflow (about 2 s here). Any other store is read
through :class:`~orchestrator.store.tracking.TrackingStore`, MLflow's public client, with
the rule every command uses (:func:`orchestrator.store.schema.is_finished_result`).
"""

from __future__ import annotations

from orchestrator.errors import StoreFailure
from orchestrator.store.uri import TrackingError, check_reachable, initialised, sqlite_path


def finished_keys(uri: str, experiment: str, kind: str | None = None, timeout: float = 2.0) -> set[str] | None:
    """Run keys with a finished result in ``experiment`` (of that ``Tag.KIND``); None when the
    store cannot be read (a server that does not answer within ``timeout`` seconds, a
    store that fails)."""
    db = sqlite_path(uri)
    if db is not None and not initialised(db):
        return set()
    try:
        check_reachable(uri, timeout)
        from orchestrator.store.tracking import TrackingStore

        store = TrackingStore(uri)
        experiment_id = store.experiment_id(experiment)
        return set() if experiment_id is None else store.finished_run_keys(experiment_id, kind)
    except (TrackingError, StoreFailure):
        return None
