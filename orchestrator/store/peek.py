"""What a store already holds of a grid's run keys, for ``orch sweep --dry-run``. A SQLite store
that does not exist (or holds no tables) has nothing done, said without importing mlflow (about
2 s); any other is read through :class:`~orchestrator.store.tracking.TrackingStore`.
"""

from __future__ import annotations

from orchestrator.errors import StoreFailure
from orchestrator.store.uri import TrackingError, check_reachable, initialised, sqlite_path

DONE, FAILED = "done", "failed"


def exists(uri: str) -> bool:
    """Whether there is a store to read: a server, or a SQLite file that holds MLflow's tables."""
    db = sqlite_path(uri)
    return db is None or initialised(db)


def run_key_states(uri: str, experiment: str, timeout: float = 2.0) -> dict[str, str] | None:
    """Run key → :data:`DONE` (a finished result) or :data:`FAILED` (none, and the latest run FAILED);
    other keys are pending. Empty without a store; None when it cannot be read within ``timeout``."""
    if not exists(uri):
        return {}
    try:
        check_reachable(uri, timeout)
        from orchestrator.store.schema import Status, Tag
        from orchestrator.store.tracking import TrackingStore

        store = TrackingStore(uri)
        experiment_id = store.experiment_id(experiment)
        if experiment_id is None:
            return {}
        states = dict.fromkeys(store.finished_run_keys(experiment_id), DONE)
        latest: dict[str, str] = {}  # run key → status of its latest unfinished run
        for run in store.search([experiment_id], f"attributes.status != '{Status.FINISHED}'",
                                order_by=["attributes.start_time ASC"]):
            key = run.data.tags.get(Tag.RUN_KEY)
            if key is not None:
                latest[key] = run.info.status
        states.update({key: FAILED for key, status in latest.items() if status == Status.FAILED and key not in states})
        return states
    except (TrackingError, StoreFailure):
        return None
