"""``orch ui``: MLflow's UI on a SQLite store, sized for one person's browser tab.

One uvicorn worker (``mlflow ui`` starts four, about 3 GB; ``benchmarks/ui_footprint.py``), job
execution off, quiet logs; a child in its own process group, stopped with it. It never creates
a store: a server that opened a missing or empty file would migrate it, racing a sweep.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from orchestrator.errors import ExitCode, StoreFailure, UserError
from orchestrator.execute import stop
from orchestrator.analyze.notes import TRAINING_VIEW, run_link
from orchestrator.store.schema import Kind, Tag, tag_filter
from orchestrator.store.uri import artifact_root, initialised, sqlite_path

log = logging.getLogger(__name__)

READY_SECONDS = 180  # start-up limit; on these 2-core machines it takes 5-15 s
SERVER_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no huey consumers: orch queues no GenAI jobs
    "PYTHONWARNINGS": "ignore:starlette.middleware.wsgi is deprecated",  # MLflow's import, not ours to fix
}
UVICORN_OPTS = "--log-level warning --no-access-log"
# Lines of the server's stderr that say nothing to act on (it binds to loopback by default).
NOISE = ("[MLflow] Security middleware enabled with default settings",)


class UiError(UserError):
    """A store or port that ``orch ui`` cannot serve (exit 2)."""


def newest_parent(uri: str) -> tuple[str, str, str] | None:
    """(experiment id, run id, run name) of the newest sweep or tuning parent run of the
    store's active experiments; None when there is none (or the store fails)."""
    from orchestrator.store.tracking import TrackingStore

    try:
        store = TrackingStore(uri)
        ids = store.experiment_ids()
        newest = [runs[0] for kind in (Kind.SWEEP, Kind.TUNE) if ids and (runs := store.search(
            ids, tag_filter(Tag.KIND, kind), order_by=["attributes.start_time DESC"]))]
    except StoreFailure:
        return None
    if not newest:
        return None
    run = max(newest, key=lambda r: r.info.start_time or 0)
    return run.info.experiment_id, run.info.run_id, run.info.run_name


def server_command(uri: str, host: str, port: int) -> list[str]:
    """The ``mlflow ui`` command line: one worker, quiet uvicorn, artifacts beside the store."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--registry-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1", "--uvicorn-opts", UVICORN_OPTS]
    root = artifact_root(uri)
    if root:
        cmd += ["--artifacts-destination", root]
    return cmd


def _relay(stream, out) -> None:
    """Copy the server's stderr to ours, less :data:`NOISE` (a daemon thread, until it closes)."""
    for line in stream:
        if not line.startswith(NOISE):
            out.write(line)
            out.flush()


def _wait_ready(proc: subprocess.Popen, url: str, seconds: float) -> str | None:
    """None once the server answers; else what went wrong."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return f"did not answer in {seconds} s"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def open_browser(url: str) -> bool:
    """Open ``url`` in this machine's browser; False where there is none (a headless server)."""
    import webbrowser

    try:
        return webbrowser.get().open(url)
    except webbrowser.Error:
        return False


def serve(uri: str, host: str, port: int, *, open_it: bool = False) -> int:
    """Run MLflow's UI on the SQLite store ``uri`` until Ctrl-C (130) or SIGTERM (143), or 1 when
    the server stops by itself; prints the newest parent run's URL once it answers. UiError: no
    store at ``uri`` (or without MLflow's tables), or the port is taken."""
    # Ctrl-C and SIGTERM stop the server (also in a shell's background job, which starts with SIGINT ignored)
    with stop.handling() as flag:
        db = sqlite_path(uri)
        if db is None or not initialised(db):
            raise UiError(f"no MLflow store at {db or uri}; run `orch sweep` or `orch run` first, or point "
                          "--tracking-uri (or MLFLOW_TRACKING_URI) at an existing store")
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:  # a port in use: refused
            try:
                s.bind((host, port))
            except OSError as err:
                raise UiError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port") from None
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        base = f"http://{shown}:{port}"
        proc = None
        try:
            proc = subprocess.Popen(server_command(uri, host, port), env={**os.environ, **SERVER_ENV},
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            threading.Thread(target=_relay, args=(proc.stderr, sys.stderr), daemon=True).start()
            parent = newest_parent(uri)  # while the server starts
            problem = _wait_ready(proc, base, READY_SECONDS)
            if problem:
                log.warning("the MLflow UI %s; its messages are above", problem)
                return ExitCode.FAILED
            log.info("MLflow UI on %s  (store %s); Ctrl-C to stop", base, uri)
            url = f"{base}/{run_link(parent[0], parent[1])}" if parent else f"{base}/#/?{TRAINING_VIEW}"
            if parent:
                log.info("newest sweep: %s", parent[2])
            print(url, flush=True)
            if open_it and not open_browser(url):
                log.warning("no browser found on this machine; open the URL above in yours")
            code = proc.wait()
            log.warning("the MLflow UI stopped by itself (exit %s)", code)
            return ExitCode.FAILED
        except stop.Stopped as err:
            return err.exit_code
        finally:
            if proc is not None:
                with flag.deferred(on_second=lambda: None):  # a second Ctrl-C does not cut the server's stop short
                    _stop(proc)
