"""Child process of a sweep: ``python -m orchestrator.point`` runs one point.

Imports torch, mlflow and the training code first, then reads a JSON job from stdin
(written by :func:`orchestrator.point_processes.job_payload`): a spare process started
ahead of time waits there, and an empty stdin ends it quietly.
The job runs through :func:`orchestrator.runner.run_tracked`, which reports to the parent
as JSON lines on the original stdout (``started``, ``epoch``, ``end``). Everything else
that would go to stdout (library chatter) is sent to stderr, which the parent keeps as
the point's log. The exit code is the run's: 0 FINISHED, 1 FAILED, 130 KILLED.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO


def _event_stream() -> TextIO:
    """Keep a private handle on stdout for events; point fd 1 at stderr for everything else."""
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return events


def _preload() -> None:
    """Import what every run needs (seconds of start-up) before the job is known."""
    import experiments.data  # noqa: F401
    import experiments.plots  # noqa: F401
    import experiments.train  # noqa: F401
    from orchestrator import tracking

    tracking.preload()


def main() -> int:
    events = _event_stream()

    def emit(**event: Any) -> None:
        events.write(json.dumps(event) + "\n")
        events.flush()

    from orchestrator.errors import ExitCode
    from orchestrator.runner import raise_on_sigterm

    raise_on_sigterm()
    _preload()
    threads = int(os.environ.get("ORCH_THREADS", "0"))
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    text = sys.stdin.read()  # a spare process waits here until its slot needs it
    if not text.strip():
        return ExitCode.OK  # a spare that was not needed
    job = json.loads(text)

    from experiments.config import build
    from experiments.metric_names import DEFAULT_OBJECTIVE, VAL_LOSS
    from orchestrator.runner import run_tracked
    from orchestrator.tracking import TrackingStore

    cfg = build(job["config"])
    max_epochs = cfg.train.max_epochs
    try:
        code, run_id, summary = run_tracked(
            cfg,
            store=TrackingStore(job["uri"]),
            experiment_id=job["experiment_id"],
            run_name=job.get("run_name"),
            tags=job.get("tags"),
            parent_run_id=job.get("parent_run_id"),
            device=job.get("device", "auto"),
            quiet=False,
            on_start=lambda rid: emit(event="started", run_id=rid, pid=os.getpid()),
            on_epoch=lambda ep, v: emit(event="epoch", epoch=ep, max_epochs=max_epochs,
                                        **{k: v.get(k) for k in (DEFAULT_OBJECTIVE, VAL_LOSS)}),
        )
    except KeyboardInterrupt:
        emit(event="end", code=int(ExitCode.INTERRUPTED))
        return ExitCode.INTERRUPTED
    emit(event="end", code=int(code), run_id=run_id, summary=summary)
    return code


if __name__ == "__main__":
    sys.exit(main())
