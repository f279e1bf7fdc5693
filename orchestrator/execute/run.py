"""The run object that a point's code talks to; public as :mod:`orchestrator.client`.

A function entry gets it as ``train(config, run)``'s second argument; any code in the process,
and a command entry's own process (from the ``ORCH_RUN`` variable, :meth:`Run.child_env`),
gets it from :func:`current`, which gives a stand-in that records nothing where no orch run is
active. Nothing here imports mlflow or torch until a run writes.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

__all__ = ["ENV", "Run", "current"]

ENV = "ORCH_RUN"  # a command entry's process finds its run here (JSON, see Run.child_env)
FENCE_SECONDS = 5.0  # log() checks a fenced run's claim at most this often (a store read); a checkpoint always
_ACTIVE: list[Run] = []  # the run of this process's running point, if any


class Run:
    """One tracked run, as the code it runs sees it.

    ``config`` is the run's config (a dict of the grid's keys as given, or the entry's
    dataclass), ``seed`` its seed, ``artifact_dir`` a folder whose files are logged with the
    run when it ends; ``id`` and ``tracking_uri`` name the MLflow run (None in the stand-in).
    """

    def __init__(self, config: Any, seed: int, artifact_dir: str | Path, *, store: Any = None, run_id: str | None = None,
                 run_key: str = "", params: Mapping[str, Any] | None = None, checkpoint_seconds: float = 60.0,
                 state: Any = None, stop: Callable[[], bool] = lambda: False,
                 on_log: Callable[[int, Mapping[str, float]], None] | None = None, fence: Any = None,
                 resume_from: str | None = None):
        self.config, self.seed, self.artifact_dir = config, seed, Path(artifact_dir)
        self.id = run_id
        self.tracking_uri = store.uri if store is not None else None
        self._store, self._run_key, self._params = store, run_key, dict(params or {})
        self._interval, self._state, self._stop, self._on_log, self._fence = checkpoint_seconds, state, stop, on_log, fence
        self._resume_from = resume_from  # the run whose checkpoint a command entry's process loads
        self._pending: list[Any] = []  # asynchronous metric writes not yet confirmed
        self._blob: bytes | None = None  # the last state given, pickled, and not yet written
        self._blob_step = 0
        self._writes, self._last_write = 0, time.monotonic()
        self.last_step = 0  # the highest step logged so far
        self._fenced = time.monotonic()
        self.pruned: BaseException | None = None  # the tuner's verdict: the run is to stop, and is not a result

    # -- the public API (orchestrator.client)
    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record ``metrics`` at ``step`` (default: the last step logged), in one batched write."""
        step = self.last_step if step is None else int(step)
        values = {str(k): float(v) for k, v in metrics.items()}
        self.last_step = max(self.last_step, step)
        if self._store is None:
            return
        if self._fence is not None and time.monotonic() - self._fenced >= FENCE_SECONDS:
            self._fence.check()
            self._fenced = time.monotonic()
        self._pending.append(self._store.log_metrics(self.id, values, step=step, synchronous=False))
        if self._on_log is not None:
            try:
                self._on_log(step, values)
            except Exception as err:  # noqa: BLE001 - only the tuner's verdict is taken; anything else propagates
                if type(err).__name__ != "TrialPruned":
                    raise
                self.pruned = err

    def should_stop(self) -> bool:
        """True once a stop was requested (SIGTERM, SIGUSR1, Ctrl-C) or the tuner pruned the run:
        save a checkpoint and return."""
        return self.pruned is not None or self._stop()

    def save_checkpoint(self, state: Any) -> None:
        """Take ``state`` as it is now; write it to the run's store when due (every
        ``checkpoint_seconds``; 0: every call) and, in any case, when the run stops."""
        if self._store is None:
            return
        from orchestrator.store import checkpoints

        self._blob, self._blob_step = checkpoints.envelope(state, self._run_key, self._params, self.last_step), self.last_step
        if self._interval == 0 or time.monotonic() - self._last_write >= self._interval or self.should_stop():
            self._write()

    def load_checkpoint(self) -> Any:
        """The state saved last by the run this one continues; None on a fresh start."""
        return self._state

    # -- the orchestrator's side
    def _write(self) -> None:
        from orchestrator.store import checkpoints

        if self._blob is None:
            return
        if self._fence is not None:
            self._fence.check()
        self.flush()  # the steps a checkpoint holds are in the store before it is: a successor copies them
        checkpoints.write(self._store, self.id, self._blob, self._writes, self._blob_step)
        self._blob, self._writes, self._last_write = None, self._writes + 1, time.monotonic()

    def flush(self) -> None:
        """Wait until every metric written so far is in the store; raise the first error."""
        from orchestrator.store.failures import store_errors

        pending, self._pending = self._pending, []
        if not pending or self._store is None:
            return
        with store_errors(self._store.uri):
            # no public per-client flush (mlflow.flush_async_logging() flushes the process-wide URI's)
            store = getattr(getattr(self._store.client, "_tracking_client", None), "store", None)
            if hasattr(store, "flush_async_logging"):
                store.flush_async_logging()
            for op in pending:
                if op is not None:
                    op.wait()

    def finish(self) -> None:
        """After the code returned or raised: its metrics written, and the last state it gave
        written when a stop was requested (a pruned run is never continued: not written)."""
        self.flush()
        if self._stop() and self.pruned is None:
            self._write()

    def child_env(self) -> dict[str, str]:
        """The environment that makes :func:`current` in a child process return this run."""
        info = {"uri": self.tracking_uri, "run_id": self.id, "config": self.config, "seed": self.seed,
                "artifact_dir": str(self.artifact_dir), "run_key": self._run_key, "params": self._params,
                "checkpoint_seconds": self._interval, "state": self._resume_from}
        return {ENV: json.dumps(info, default=str)}


@contextlib.contextmanager
def active(run: Run) -> Iterator[Run]:
    """Make ``run`` what :func:`current` returns in this process while the block runs."""
    _ACTIVE.append(run)
    try:
        yield run
    finally:
        _ACTIVE.remove(run)


def current() -> Run:
    """The run of the point this process runs: the one a function entry was given, the one a
    command entry's process was started for, or a stand-in that records nothing."""
    if _ACTIVE:
        return _ACTIVE[-1]
    text = os.environ.get(ENV)
    run = _from_env(json.loads(text)) if text else Run({}, 0, tempfile.mkdtemp(prefix="orch-artifacts-"))
    _ACTIVE.append(run)
    return run


def _from_env(info: Mapping[str, Any]) -> Run:
    """A command entry's run, in its own process: its stop requests come from its own signals."""
    from orchestrator.execute import stop
    from orchestrator.store import checkpoints
    from orchestrator.store.tracking import TrackingStore

    store = TrackingStore(info["uri"])
    state = checkpoints.load(store, info["state"], info["run_key"])["state"] if info.get("state") else None
    handling = contextlib.ExitStack()
    flag = handling.enter_context(stop.handling())  # held for the life of the process
    handling.enter_context(flag.deferred())  # a signal asks the script to stop; it does not raise
    run = Run(info["config"], int(info["seed"]), info["artifact_dir"], store=store, run_id=info["run_id"],
              run_key=info["run_key"], params=info["params"], checkpoint_seconds=float(info["checkpoint_seconds"]),
              state=state, stop=flag.is_set)
    run._stop_handling = handling  # held by the run: a collected ExitStack would restore the default handlers
    # before thread pools close at shutdown (atexit runs after), so MLflow's async writes still go
    # through; threading._register_atexit is private, atexit the fallback
    getattr(threading, "_register_atexit", atexit.register)(run.finish)
    return run
