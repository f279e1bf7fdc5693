"""A slot's point process: ``python -m orchestrator.execute.point`` runs points one after another.

It reads jobs from stdin (one JSON line each, :mod:`orchestrator.execute.slots`), runs each with
:func:`orchestrator.execute.runner.run_tracked` and reports JSON events on the original stdout,
each with the job's id: ``warning``, ``started``, ``step``, and ``end`` (exit code, summary,
``retire``, ``store_failure``); everything else goes to stderr, the process's log. Runs are fenced
(:mod:`orchestrator.store.claims`). Results do not depend on earlier points: the state a run can
leave behind is reset before every job. It retires after ``ORCH_POINTS_PER_PROCESS`` points
(default 50) or past ``ORCH_PROCESS_MAX_RSS_MB`` (default 8192). A stop signal makes the running
point checkpoint and end KILLED, then the process exits; an empty line or end of stdin ends it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
from typing import Any, Callable

from orchestrator.errors import ExitCode, StoreFailure, UserError
from orchestrator.execute import stop
from orchestrator.execute.job import Job, decode

POINTS_PER_PROCESS = int(os.environ.get("ORCH_POINTS_PER_PROCESS", "50"))
MAX_RSS_MB = float(os.environ.get("ORCH_PROCESS_MAX_RSS_MB", "8192"))


def reset_process_state() -> None:
    """Undo what a previous point in this process may have changed."""
    import torch

    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = False
    if "matplotlib" in sys.modules:
        import matplotlib

        matplotlib.rcdefaults()
    if "mlflow" in sys.modules:
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_job(job: Job, attempt: dict, stop: Any, emit) -> tuple[int, str, dict]:
    """One point's tracked run, its events tagged with the attempt's id; (exit code, run id, summary)."""
    from orchestrator.execute.runner import run_tracked
    from orchestrator.grid.entry import resolve_entry
    from orchestrator.store.tracking import TrackingStore

    try:  # a worker whose folder or environment lacks the entry's code: the point fails, the process goes on
        entry = resolve_entry(**job.entry)
        cfg = entry.build(job.config)
    except UserError as err:
        logging.getLogger(__name__).error(f"error: {err}")
        return int(ExitCode.FAILED), "", {}
    tag = {"job": attempt["job"]}

    def on_log(step: int, values: dict) -> None:
        score = next(((k, values[k]) for k in entry.progress_keys if k in values), None)
        emit(event="step", step=step, score=score, **tag)

    code, run_id, summary = run_tracked(
        entry,
        cfg,
        store=TrackingStore(job.uri),
        experiment_id=job.experiment_id,
        run_name=job.name,
        tags=job.tags,
        parent_run_id=job.parent_run_id,
        on_start=lambda rid: emit(event="started", run_id=rid, pid=os.getpid(), **tag),
        on_log=on_log,
        stop=stop,
        resume=job.resume,
        claim=attempt.get("claim") or {},  # fenced: a point another process took over writes no final state
        on_warning=lambda text: emit(event="warning", text=text, **tag),
    )
    return int(code), run_id, summary


def main() -> int:
    events = os.fdopen(os.dup(1), "w", buffering=1)  # a private handle on stdout; fd 1 then points at stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # into the slot's log

    def emit(**event: Any) -> None:
        with contextlib.suppress(OSError):  # the scheduler is gone (broken pipe): its PR_SET_PDEATHSIG stops the run
            events.write(json.dumps(event) + "\n")
            events.flush()

    with stop.handling() as flag:  # idle, a signal ends the process; in a run, it stops the run (runner)
        try:
            return _serve(flag, emit)
        except stop.Stopped as err:
            return err.exit_code


def _serve(flag: Any, emit: Callable[..., None]) -> int:
    """Run the jobs of stdin until its end, a retirement or a stop."""
    import psutil
    import torch

    from orchestrator.store import tracking

    tracking.preload()  # with torch above: seconds of imports, once per process
    gc.freeze()  # see below
    threads = int(os.environ.get("ORCH_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    done, last_setting = 0, None
    for line in sys.stdin:  # an idle process waits here for its slot's next point
        if not line.strip():
            break
        job, attempt = decode(line)
        reset_process_state()
        if done == 1:
            # what the imports built lives as long as the process: frozen, the collection before each
            # point skips it (0.67 s a point before; benchmarks/scale.py); a cycle of point 1 leaks, once
            gc.freeze()
        setting = json.dumps([job.entry, {k: v for k, v in job.config.items() if k != "seed"}], sort_keys=True)
        if setting != last_setting and "torch._dynamo" in sys.modules:
            # drop torch.compile's graphs of another setting: no eager fallback at dynamo's small recompile limit
            torch._dynamo.reset()
        last_setting = setting
        try:
            code, run_id, summary = run_job(job, attempt, flag, emit)
        except stop.Stopped as err:  # a second signal, or one before training started: the run is KILLED
            emit(event="end", job=attempt["job"], code=err.exit_code, retire=True)
            return err.exit_code
        except StoreFailure as err:  # the store, not the point: the scheduler starts nothing more
            logging.getLogger(__name__).error(f"error: {err}")
            emit(event="end", job=attempt["job"], code=int(ExitCode.FAILED), store_failure=str(err), retire=True)
            return ExitCode.FAILED
        done += 1
        retire = flag.is_set() or done >= POINTS_PER_PROCESS or psutil.Process().memory_info().rss / 2**20 > MAX_RSS_MB
        emit(event="end", job=attempt["job"], code=code, run_id=run_id, summary=summary, retire=retire)
        if retire:
            return flag.exit_code if flag.is_set() else ExitCode.OK
    return ExitCode.OK


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # every run is closed and flushed: skipping the interpreter's teardown lets a preempted slot exit at once
    os._exit(int(code))
