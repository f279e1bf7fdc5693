"""A slot's point process: ``python -m orchestrator.execute.point`` runs points one after another.

It imports torch, mlflow and the training code once, then reads jobs from stdin, one
JSON object per line (written by :mod:`orchestrator.execute.slots`), and runs each
through :func:`orchestrator.execute.runner.run_tracked`. It reports to the scheduler as JSON
lines on the original stdout, every event carrying the job's id: ``warning`` (a line for
the sweep's own output: a skipped checkpoint), ``started`` (the run id), ``epoch``, and
``end`` (the run's exit code and summary, and whether this process retires after it;
``store_failure`` when the tracking store failed, which ends the process). Every run is
fenced (:mod:`orchestrator.store.claims`): code :attr:`~orchestrator.errors.ExitCode.LOST_CLAIM`
says another process took the point over (the job's ``claim``, if any, is the queue trial
it was claimed with). Everything else that would go to stdout (library chatter) goes to
stderr, which the scheduler keeps as the process's log.

Imports, the CUDA context and cuDNN's autotuning are thus paid once per slot, and the
compiled graphs once per setting (the seeds of a setting reuse them). A point's results
do not depend on what ran before it in the process: the state a
run could leave behind (default dtype, cuDNN and determinism flags, TF32, matplotlib's
settings, MLflow's active run) is reset before every job, and training seeds every
generator itself. The process retires (exits after its ``end`` event) after
``ORCH_POINTS_PER_PROCESS`` points (default 50; 1 gives one process per point) or when
its resident memory passes ``ORCH_PROCESS_MAX_RSS_MB`` (default 8192).

SIGTERM, SIGINT and SIGUSR1 make the running point checkpoint and end KILLED
(preempted); the process then exits instead of taking another job. An empty line or the
end of stdin ends an idle process with exit code 0.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from typing import Any, Callable, TextIO

from orchestrator.execute.job import Job, decode

POINTS_PER_PROCESS = int(os.environ.get("ORCH_POINTS_PER_PROCESS", "50"))
MAX_RSS_MB = float(os.environ.get("ORCH_PROCESS_MAX_RSS_MB", "8192"))


def _event_stream() -> TextIO:
    """Keep a private handle on stdout for events; point fd 1 at stderr for everything else."""
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return events


def _preload() -> None:
    """Import what every run needs (seconds of start-up), once per process: torch and mlflow."""
    import torch  # noqa: F401

    from orchestrator.store import tracking

    tracking.preload()


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


def _reset_compiled() -> None:
    """Drop torch.compile's graphs and guards: the seeds of one setting reuse them, another
    setting starts clean (so no point falls back to eager after dynamo's recompile limit)."""
    if "torch._dynamo" in sys.modules:
        import torch._dynamo

        torch._dynamo.reset()


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_job(job: Job, attempt: dict, stop: Any, emit) -> tuple[int, str, dict]:
    """One point: its tracked run, with events tagged by the attempt's id; (exit code, run id, summary)."""
    from orchestrator.execute.runner import run_tracked
    from orchestrator.grid.entry import resolve_entry
    from orchestrator.store.tracking import TrackingStore

    from orchestrator.errors import ExitCode, UserError

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
        quiet=False,
        on_start=lambda rid: emit(event="started", run_id=rid, pid=os.getpid(), **tag),
        on_log=on_log,
        stop=stop,
        resume=job.resume,
        claim=attempt.get("claim") or {},  # fenced: a point another process took over writes no final state
        on_warning=lambda text: emit(event="warning", text=text, **tag),
    )
    return int(code), run_id, summary


def main() -> int:
    events = _event_stream()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # into the slot's log

    def emit(**event: Any) -> None:
        try:
            events.write(json.dumps(event) + "\n")
            events.flush()
        except OSError:  # the scheduler is gone (broken pipe): its PR_SET_PDEATHSIG stops the run, not this
            pass

    from orchestrator.execute import stop

    with stop.handling() as flag:  # idle, a signal ends the process; in a run, it stops the run (runner)
        try:
            return _serve(flag, emit)
        except stop.Stopped as err:
            return err.exit_code


def _serve(flag: Any, emit: Callable[..., None]) -> int:
    """Run the jobs of stdin until its end, a retirement or a stop."""
    from orchestrator.errors import ExitCode, StoreFailure
    from orchestrator.execute.stop import Stopped

    _preload()
    gc.freeze()  # see below
    threads = int(os.environ.get("ORCH_THREADS", "0"))
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    done, last_setting = 0, None
    for line in sys.stdin:  # an idle process waits here for its slot's next point
        if not line.strip():
            break
        job, attempt = decode(line)
        reset_process_state()
        if done == 1:
            # What the imports (the preload's, and those a first run makes lazily) built lives as long
            # as the process: kept out of later collections, the full collection before each point
            # scans only what the points left (with 430,000 objects it took 0.67 s a point on two
            # shared cores, half a trivial point's slot time; benchmarks/scale.py). A first point's
            # object that outlives it, in a reference cycle, is never collected: one point's at most.
            gc.freeze()
        setting = json.dumps([job.entry, {k: v for k, v in job.config.items() if k != "seed"}], sort_keys=True)
        if setting != last_setting:  # graphs compiled for another setting: dynamo's recompile limit is small
            _reset_compiled()
            last_setting = setting
        try:
            code, run_id, summary = run_job(job, attempt, flag, emit)
        except Stopped as err:  # a second signal, or one before training started: the run is KILLED
            emit(event="end", job=attempt["job"], code=err.exit_code, retire=True)
            return err.exit_code
        except StoreFailure as err:  # the store, not the point: the scheduler starts nothing more
            logging.getLogger(__name__).error(f"error: {err}")
            emit(event="end", job=attempt["job"], code=int(ExitCode.FAILED), store_failure=str(err), retire=True)
            return ExitCode.FAILED
        done += 1
        retire = flag.is_set() or done >= POINTS_PER_PROCESS or _rss_mb() > MAX_RSS_MB
        emit(event="end", job=attempt["job"], code=code, run_id=run_id, summary=summary, retire=retire)
        if retire:
            return flag.exit_code if flag.is_set() else ExitCode.OK
    return ExitCode.OK


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Every run of this process is closed and its writes flushed by now; skipping the
    # interpreter's teardown (seconds of library atexit work) lets a preempted slot exit at once.
    os._exit(int(code))
