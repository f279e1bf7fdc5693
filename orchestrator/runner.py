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

from experiments.config import RunConfig, run_key, to_flat
from orchestrator import tracking

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


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
            self.bar.set_postfix(train_loss=f"{values['train_loss']:.3f}", val_loss=f"{values['val_loss']:.3f}",
                                 val_f1=f"{values['val_f1_macro']:.3f}")
            return
        prefix = f"[{self.name}] " if self.name else ""
        print(
            f"{prefix}epoch {epoch:>3}/{self.cfg.train.max_epochs}  train_loss {values['train_loss']:.4f}  "
            f"val_loss {values['val_loss']:.4f}  val_acc {values['val_acc']:.4f}  "
            f"val_f1_macro {values['val_f1_macro']:.4f}  {seconds:.1f}s",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_tracked(
    cfg: RunConfig,
    *,
    uri: str,
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

    dev, dev_name = device_label(device)
    run_tags = {
        "orch.kind": "run",
        **(tags or {}),
        "orch.run_key": run_key(cfg),
        "orch.device": dev_name,
        **tracking.runtime_tags(),
    }
    run_id = tracking.start_run(uri, experiment_id, run_name=run_name, params=to_flat(cfg), tags=run_tags,
                                parent_run_id=parent_run_id)
    if on_start:
        on_start(run_id)
    printer = EpochPrinter(cfg, quiet, run_name or "")

    def epoch_hook(epoch: int, values: Mapping[str, float]) -> None:
        printer(epoch, values)
        if on_epoch:
            on_epoch(epoch, values)

    tracker = tracking.MlflowTracker(uri, run_id)
    try:
        try:
            result = train(cfg, tracker, device=dev, on_epoch=epoch_hook)
        finally:
            _flush(tracker)  # the epochs logged so far reach the store before the run ends
    except KeyboardInterrupt as err:
        printer.close()
        tracking.end_run(uri, run_id, tracking.KILLED, f"interrupted ({err or 'Ctrl-C'})")
        raise
    except BaseException as err:  # noqa: BLE001 - every failure is recorded, then reported
        printer.close()
        if _is_pruned(err):  # stopped by the tuner's pruner: not a result, not a failure
            tracking.set_tags(uri, run_id, {"orch.trial_state": "PRUNED"})
            tracking.end_run(uri, run_id, tracking.KILLED, f"pruned by the tuner: {err}")
            raise
        reason = _reason(err)
        tracking.end_run(uri, run_id, tracking.FAILED, reason, traceback.format_exc())
        if not quiet:
            print(f"run {run_id} FAILED: {reason}", file=sys.stderr)
        return EXIT_FAILED, run_id, {}
    printer.close()
    tracking.end_run(uri, run_id, tracking.FINISHED)
    return EXIT_OK, run_id, result.summary


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
    keys = ("val_f1_macro", "test_acc", "test_f1_macro", "best_epoch", "epochs_run", "train_seconds")
    return "  ".join(f"{k} {summary[k]:.4g}" for k in keys if k in summary)
