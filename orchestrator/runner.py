"""Run one configuration as one tracked MLflow run, whatever started it.

``orch run`` calls :func:`run_tracked` in its own process; a sweep, a worker and the tuner
call it in a child process per point (``python -m orchestrator.point``). The run always
ends in a final state: FINISHED, FAILED (with the reason as a tag and the traceback as
an artifact) or KILLED (interrupted by Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from typing import Any, Callable, Mapping

from experiments import metric_names as names
from experiments.config import RunConfig, run_key, to_flat
from orchestrator import tracking
from orchestrator.errors import ExitCode
from orchestrator.schema import Kind, Status, Tag, TrialState


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that the run can be closed as KILLED."""


def raise_on_sigterm() -> None:
    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def device_label(device: str | None) -> tuple[str, str]:
    """(resolved device string, human-readable device name)."""
    import platform

    import torch

    from experiments.train import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return str(dev), torch.cuda.get_device_name(dev)
    return "cpu", f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class EpochPrinter:
    """Progress of one run on stderr: a bar when interactive, else one line per epoch."""

    def __init__(self, cfg: RunConfig, quiet: bool, name: str = ""):
        self.cfg, self.quiet, self.name = cfg, quiet, name
        self.t0 = time.perf_counter()
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.train.max_epochs, desc=name or "epochs", unit="epoch", file=sys.stderr)

    def __call__(self, epoch: int, values: Mapping[str, float]) -> None:
        if self.quiet:
            return
        seconds = time.perf_counter() - self.t0
        self.t0 = time.perf_counter()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{values[k]:.3f}" for k in (names.TRAIN_LOSS, names.VAL_LOSS,
                                                                   names.DEFAULT_OBJECTIVE)})
            return
        prefix = f"[{self.name}] " if self.name else ""
        scores = "  ".join(f"{k} {values[k]:.4f}" for k in names.EPOCH_SCORES if k in values)
        print(f"{prefix}epoch {epoch:>3}/{self.cfg.train.max_epochs}  {scores}  {seconds:.1f}s",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_tracked(
    cfg: RunConfig,
    *,
    store: tracking.TrackingStore,
    experiment_id: str,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    device: str | None = "auto",
    quiet: bool = False,
    on_start: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, Mapping[str, float]], None] | None = None,
) -> tuple[int, str, dict[str, float]]:
    """Train ``cfg`` inside a new MLflow run; returns (exit code, run id, summary metrics).

    Exceptions from training end the run FAILED and give exit code 1; an interrupt ends
    it KILLED and is re-raised. ``on_epoch`` may raise to stop the run (pruning): its
    exception propagates after the run is closed by the caller's handler of that type.
    """
    from experiments.train import train
    from orchestrator.run_artifacts import log_run_artifacts

    dev, dev_name = device_label(device)
    run_tags = {
        Tag.KIND: Kind.RUN,
        **(tags or {}),
        Tag.RUN_KEY: run_key(cfg),
        Tag.DEVICE: dev_name,
        **tracking.runtime_tags(),
    }
    run_id = store.start_run(experiment_id, run_name=run_name, params=to_flat(cfg), tags=run_tags,
                             parent_run_id=parent_run_id)
    if on_start:
        on_start(run_id)
    printer = EpochPrinter(cfg, quiet, run_name or "")

    def epoch_hook(epoch: int, values: Mapping[str, float]) -> None:
        printer(epoch, values)
        if on_epoch:
            on_epoch(epoch, values)

    tracker = store.tracker(run_id)
    try:
        try:
            result = train(cfg, tracker, device=dev, on_epoch=epoch_hook)
            log_run_artifacts(tracker, cfg, result)
        finally:
            _flush(tracker)  # the epochs logged so far reach the store before the run ends
    except KeyboardInterrupt as err:
        printer.close()
        store.end_run(run_id, Status.KILLED, f"interrupted ({err or 'Ctrl-C'})")
        raise
    except BaseException as err:  # noqa: BLE001 - every failure is recorded, then reported
        printer.close()
        if _is_pruned(err):  # stopped by the tuner's pruner: not a result, not a failure
            store.set_tags(run_id, {Tag.TRIAL_STATE: TrialState.PRUNED})
            store.end_run(run_id, Status.KILLED, f"pruned by the tuner: {err}")
            raise
        reason = _reason(err)
        store.end_run(run_id, Status.FAILED, reason, traceback.format_exc())
        if not quiet:
            print(f"run {run_id} FAILED: {reason}", file=sys.stderr)
        return ExitCode.FAILED, run_id, {}
    printer.close()
    store.end_run(run_id, Status.FINISHED)
    return ExitCode.OK, run_id, result.summary


def _flush(tracker: "tracking.MlflowTracker") -> None:
    try:
        tracker.flush()
    except Exception as err:  # noqa: BLE001 - a lost epoch record must not hide the run's own outcome
        print(f"warning: some per-epoch metrics could not be written: {err}", file=sys.stderr)


def _is_pruned(err: BaseException) -> bool:
    return type(err).__name__ == "TrialPruned"


def _reason(err: BaseException) -> str:
    name = type(err).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(err).lower():
        return f"out of memory: {err}"
    return f"{name}: {err}"


def summary_line(summary: Mapping[str, Any]) -> str:
    keys = (names.DEFAULT_OBJECTIVE, *(s for s in names.SPLIT_SCORES if s.startswith("test_")),
            names.BEST_EPOCH, names.EPOCHS_RUN, names.TRAIN_SECONDS)
    return "  ".join(f"{k} {summary[k]:.4g}" for k in keys if k in summary)
