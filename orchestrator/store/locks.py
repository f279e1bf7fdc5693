"""One orchestrator per experiment of a store at a time, on this machine or a shared disk.

A sweep holds an exclusive file lock per experiment (beside a SQLite store, else in this machine's
cache folder), released by the kernel however its process dies. Through a tracking server it
also beats a heartbeat on its parent run (:class:`ParentHeartbeat`), which other machines respect
until it is :data:`STALE_SECONDS` old. Races left open (MLflow has no atomic claim): two sweeps
starting at the same moment, and a sweep frozen past the stale time; points are still fenced
(:mod:`orchestrator.store.claims`), and the PostgreSQL queue hands out every point exactly once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from orchestrator import processes
from orchestrator.errors import UserError
from orchestrator.store.schema import Kind, Status, Tag, tag_filter
from orchestrator.store.uri import sqlite_path

if TYPE_CHECKING:
    from orchestrator.store.tracking import TrackingStore

log = logging.getLogger(__name__)

# A sweep through a tracking server refreshes its parent's heartbeat this often (seconds) ...
HEARTBEAT_SECONDS = max(0.1, float(os.environ.get("ORCH_SWEEP_HEARTBEAT_SECONDS", "30")))
# ... and one not refreshed for this long is a dead sweep's (a few missed beats: a slow server is not a dead sweep)
STALE_SECONDS = float(os.environ.get("ORCH_SWEEP_STALE_SECONDS", "120"))


class SweepBusy(UserError):
    """Another orch process is running points of this experiment in this store."""


def lock_path(uri: str, experiment: str) -> Path:
    db = sqlite_path(uri)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in experiment)[:80]
    tag = f"{safe}-{hashlib.sha1(experiment.encode()).hexdigest()[:8]}"
    if db is not None:
        return db.parent / f".{db.name}.{tag}.sweep-lock"
    cache = Path(os.environ.get("ORCH_CACHE_DIR") or Path.home() / ".cache" / "orch").expanduser()
    return cache / "locks" / f"{hashlib.sha1(uri.encode()).hexdigest()[:12]}-{tag}.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.with_suffix(".holder").read_text())
    except (OSError, ValueError):
        return "another orch process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')} since {since} ({info.get('command', '?')})"


@contextlib.contextmanager
def hold(uri: str, experiment: str, *, wait: bool = False,
         refusal: Callable[[str], str] | None = None) -> Iterator[None]:
    """Hold the experiment's sweep lock of store ``uri`` for the block; with ``wait``, wait (maybe
    hours) for another holder, else raise :class:`SweepBusy` naming it (in ``refusal(holder)``'s words)."""
    from filelock import FileLock, Timeout

    path = lock_path(uri, experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = _holder(path)
        if not wait:
            raise SweepBusy(refusal(who) if refusal else (
                f"experiment {experiment!r} of {uri} is being swept by {who}; wait for it to end, "
                "or add --wait to start when it does")) from None
        log.info("waiting for %s to finish with experiment %r …", who, experiment)
        lock.acquire()
    holder = path.with_suffix(".holder")
    try:
        holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                                      "command": " ".join(["orch", *sys.argv[1:]])[:300]}))
        yield
    finally:
        with contextlib.suppress(OSError):
            holder.unlink()
        lock.release()


def heartbeat_holder(store: TrackingStore, experiment_id: str) -> str | None:
    """Which other process sweeps the experiment ("pid 7 on host gpu2 (heartbeat 12 s ago)"), by
    fresh heartbeats on its RUNNING sweep parents (not its own, nor a gone process's of this host)."""
    where = f"{tag_filter(Tag.KIND, Kind.SWEEP)} and attributes.status = '{Status.RUNNING}'"
    for run in store.search([experiment_id], where):
        try:
            beat = json.loads(run.data.tags[Tag.HEARTBEAT])
            host, pid, age = str(beat["host"]), int(beat["pid"]), time.time() - float(beat["time"])
        except (KeyError, TypeError, ValueError):
            continue  # no heartbeat: a parent left RUNNING by a SQLite-store, queued or older sweep
        if age > STALE_SECONDS or (host, pid) == (socket.gethostname(), os.getpid()) or processes.is_orphan(host, pid):
            continue
        return f"pid {pid} on host {host} (heartbeat {max(age, 0):.0f} s ago)"
    return None


class ParentHeartbeat:
    """A sweep's heartbeat on its parent run through a tracking server (nothing for SQLite):
    ``claim`` before touching runs, ``start`` with the parent, ``stop`` at the end. The last beat
    stays on a closed parent as a record of which process ran it."""

    def __init__(self, store: TrackingStore, experiment: str, *, wait: bool = False):
        self.store, self.experiment, self.wait = store, experiment, wait
        self.enabled = sqlite_path(store.uri) is None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self, experiment_id: str) -> None:
        """Return once no other process beats on a sweep of the experiment (with ``wait``, poll);
        else raise :class:`SweepBusy`."""
        waiting = False
        while self.enabled and (who := heartbeat_holder(self.store, experiment_id)) is not None:
            if not self.wait:
                raise SweepBusy(
                    f"experiment {self.experiment!r} of {self.store.uri} is being swept by {who}, through this "
                    "server from another machine or lock folder; wait for it to end, or add --wait to start when "
                    f"it does (a sweep that died is taken over once its heartbeat is {STALE_SECONDS:.0f} s old)")
            if not waiting:
                log.info("waiting for %s to finish with experiment %r …", who, self.experiment)
                waiting = True
            time.sleep(HEARTBEAT_SECONDS)

    def start(self, parent_run_id: str) -> None:
        """Beat on ``parent_run_id`` now and then every :data:`HEARTBEAT_SECONDS` from a thread."""
        if not self.enabled:
            return
        self._beat(parent_run_id)
        self._thread = threading.Thread(target=self._beat_until_stopped, args=(parent_run_id,),
                                        name="orch-sweep-heartbeat", daemon=True)
        self._thread.start()

    def _beat_until_stopped(self, parent_run_id: str) -> None:
        while not self._stopped.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # retried at the next beat; a failing store is the sweep's to report
                self._beat(parent_run_id)

    def _beat(self, parent_run_id: str) -> None:
        self.store.set_tags(parent_run_id, {Tag.HEARTBEAT: json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "time": round(time.time(), 1)})})

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:  # a beat stuck in a dead server's retries does not hold up the exit
            self._thread.join(timeout=5)

