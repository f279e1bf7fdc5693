"""One orchestrator per experiment of a store at a time, on this machine or a shared disk.

A sweep holds an exclusive file lock for its experiment while it runs points. Points are
keyed by run key within an experiment, so a grid and its extension (same name, shared
points) never run a shared point twice, while sweeps of other experiments go on beside
it. The kernel releases the lock when its process dies, however it dies. Beside a
SQLite store the lock lives next to the file (so it also works on a shared filesystem
with POSIX locks); for a tracking server it lives in this machine's cache folder, so two
machines sweeping one experiment through one server are not kept apart: use the
PostgreSQL queue (``--storage``) for that, which hands out every point exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from orchestrator.errors import UserError
from orchestrator.tracking import sqlite_path


class SweepBusy(UserError):
    """Another orch process is running points of this experiment in this store."""


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]


def lock_path(uri: str, experiment: str) -> Path:
    db = sqlite_path(uri)
    tag = f"{_safe(experiment)}-{hashlib.sha1(experiment.encode()).hexdigest()[:8]}"
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
def hold(uri: str, experiment: str, *, wait: bool = False, say: Callable[[str], None] = print,
         on_wait: Callable[[], None] = lambda: None,
         refusal: Callable[[str], str] | None = None) -> Iterator[None]:
    """Hold experiment ``experiment``'s sweep lock of store ``uri`` for the block; ``on_wait`` runs
    before waiting for another holder (which may take hours: let go of what is not needed meanwhile).

    Raises:
        SweepBusy: another process holds it and ``wait`` is false; names that process (in
            ``refusal(holder)``'s words, when given).
    """
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
        on_wait()
        say(f"waiting for {who} to finish with experiment {experiment!r} …")
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
