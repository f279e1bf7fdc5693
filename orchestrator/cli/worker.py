"""``orch worker``: run the points (and tuning trials) queued in a PostgreSQL database."""

from __future__ import annotations

import sys
from typing import Callable

import click

from orchestrator.cli.group import (device_option, handle_errors, one_queued_sweep, open_store, quiet_option,
                                    slot_options, tracking_uri_option, use_device)


@click.command("worker")
@click.option("--storage", required=True, metavar="URL", help="The queue's database (postgresql://…).")
@click.option("--sweep", default=None, help="Serve only this sweep id (a prefix is enough); default: all.")
@slot_options
@click.option("--wait", is_flag=True, help="Keep waiting for new points instead of exiting when the queue is empty.")
@click.option("--poll", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds between looks at an empty queue (with --wait).")
@tracking_uri_option
@device_option
@quiet_option("No progress display.")
@handle_errors
def worker_cmd(storage: str, sweep: str | None, workers: int, gpus: list[str] | None, runs_per_gpu: int,
               max_retries: int, wait: bool, poll: float, tracking_uri: str | None, device: str, quiet: bool) -> None:
    """Claim queued points one at a time and run them; exit 0 when the queue is empty.

    Runs log to the MLflow store the sweep was queued with, or to --tracking-uri.
    A worker that dies is noticed by its missing heartbeat: its point is requeued and
    its MLflow run marked FAILED. Without --sweep it also joins the `orch tune` studies
    of the storage that still want trials.
    """
    from orchestrator.execute.stop import ignore_hangup
    from orchestrator.execute.slots import plan_slots
    from orchestrator.launch import queue
    from orchestrator.store import optuna_storage as storage_mod

    ignore_hangup()
    url = storage_mod.check(storage)
    if sweep is not None:
        one_queued_sweep(sweep, queue.queued_sweeps(url), may_come=wait)
    slots = plan_slots(workers, gpus, runs_per_gpu, device)
    uri = open_store(tracking_uri).uri if tracking_uri else None
    if url.startswith("sqlite:"):
        queue.register_worker(url, stale_after=max(60.0, 3 * poll))
    if sweep is None:
        use_device(device)  # tuning trials train in this process
    tuning = None if sweep is not None else _serve_tuning(url, uri)
    code = queue.run_worker(url, slots, sweep=sweep, tracking_uri=uri, max_retries=max_retries, wait=wait,
                            poll=poll, quiet=quiet, serve_others=tuning)
    sys.exit(code)


def _serve_tuning(url: str, tracking_uri: str | None) -> Callable[[], bool]:
    """Runs trials of the storage's ``orch tune`` studies that still want some; True when it ran one."""
    from orchestrator.store import optuna_storage as storage_mod
    from orchestrator.tune import tuning

    storage = storage_mod.open_storage(url, heartbeat=True)

    def serve() -> bool:
        with tuning.tuning_held(url, refuse=False) as held:  # SQLite: not beside an orch tune on it
            return held and tuning.serve_studies(storage, tracking_uri=tracking_uri) > 0

    return serve
