"""Run one configuration as one tracked MLflow run, whatever started it.

``orch run`` calls :func:`run_tracked` in its own process; a sweep, a worker and the tuner
call it in a child process per point (``python -m orchestrator.execute.point``). The run always
ends in a final state: FINISHED, FAILED (with the reason as a tag and the traceback as
an artifact) or KILLED (interrupted by Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from typing import Any, Callable, Mapping

from experiments import metric_names as names
from experiments.config import RunConfig, run_key, to_flat
from orchestrator.errors import ExitCode, StoreFailure
from orchestrator.execute import stop as stopping
from orchestrator.execute.stop import StopFlag
from orchestrator.store import checkpoints, claims, provenance, tracking
from orchestrator.store.checkpoints import RunCheckpoints
from orchestrator.store.schema import Kind, Status, Tag, TrialState

log = logging.getLogger(__name__)


def cap_threads() -> None:
    """At most as many torch threads as the CPUs this process may use. Torch's default counts
    the affinity mask, which leaves out a Slurm allocation on a cluster that does not bind
    CPUs: ``orch run`` in a 4-CPU job on a 64-core node would otherwise run 64 threads."""
    import torch

    from orchestrator.execute.slots import cpu_threads

    torch.set_num_threads(max(1, min(torch.get_num_threads(), cpu_threads(1))))


def device_label(device: str | None) -> tuple[str, str]:
    """(resolved device string, human-readable device name)."""
    import platform

    import torch

    from experiments.train import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return str(dev), torch.cuda.get_device_name(dev)
    return "cpu", f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def epoch_logger(cfg: RunConfig, name: str) -> Callable[[int, Mapping[str, float]], None]:
    """A run's progress, one line per epoch on this module's logger: scores and the epoch's seconds."""
    prefix = f"[{name}] " if name else ""
    last = [time.perf_counter()]

    def log_epoch(epoch: int, values: Mapping[str, float]) -> None:
        now = time.perf_counter()
        seconds, last[0] = now - last[0], now
        scores = "  ".join(f"{k} {values[k]:.4f}" for k in names.EPOCH_SCORES if k in values)
        log.info(f"{prefix}epoch {epoch:>3}/{cfg.train.max_epochs}  {scores}  {seconds:.1f}s")

    return log_epoch


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
    stop: StopFlag | None = None,
    resume: bool | str = False,
    claim: Mapping[str, Any] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> tuple[int, str, dict[str, float]]:
    """Train ``cfg`` inside a new MLflow run; returns (exit code, run id, summary metrics).

    Exceptions from training end the run FAILED and give exit code 1; an interrupt (a second
    signal) ends it KILLED and is re-raised; a :class:`StoreFailure` (the store, not the
    point, failed) is re-raised after one attempt to end the run FAILED. ``on_epoch`` may
    raise to stop the run (pruning): its exception propagates after the run is closed.

    With ``stop`` (the flag of :func:`orchestrator.execute.stop.handling`) the run writes
    checkpoints to its artifact store every ``train.checkpoint_seconds`` and when a signal
    sets the flag; it then ends KILLED (``preempted (SIGTERM) at epoch …``) with exit code
    143 (130 for SIGINT): this is the one place a stop request becomes a run's end state.
    ``resume=True`` continues the newest unfinished run of the same run key that holds a
    checkpoint (if any); a run id continues that run. A checkpoint that cannot be used is
    skipped: the run starts from epoch 0, is tagged ``Tag.CHECKPOINT_SKIPPED``, and
    ``on_warning`` (default: a warning on this module's logger) gets one line saying so.

    A point process passes ``claim`` (its queue trial, or ``{}``): the run is then fenced
    (:mod:`orchestrator.store.claims`) and, once another process has taken the point over, writes
    no checkpoint and no final state and gives :attr:`ExitCode.LOST_CLAIM`.
    """
    deferral = stop.deferred() if stop is not None else contextlib.nullcontext()
    with deferral:  # a signal now only asks the loop to checkpoint and stop: the run is always closed
        return _run_closed(cfg, store, experiment_id, run_name, tags, parent_run_id, device, quiet, on_start,
                           on_epoch, stop, resume, claim, on_warning or _warn)


def _run_closed(cfg, store, experiment_id, run_name, tags, parent_run_id, device, quiet, on_start, on_epoch,
                stop, resume, claim, on_warning) -> tuple[int, str, dict[str, float]]:
    """:func:`run_tracked`'s body: start the run, train, and close the run however training ends."""
    cap_threads()
    dev, dev_name = device_label(device)
    previous, state, skipped = _resume_point(store, experiment_id, cfg, resume)
    if skipped is not None:
        on_warning(f"the checkpoint {skipped.where} {skipped.reason}: skipped, training from epoch 0")
    identity, continued_parent = _identity(store, resume)
    run_tags = {Tag.KIND: Kind.RUN, **identity, **(tags or {}), Tag.RUN_KEY: run_key(cfg), Tag.DEVICE: dev_name,
                **tracking.runtime_tags(), **_resume_tags(previous, state),
                **({Tag.CHECKPOINT_SKIPPED: str(skipped)} if skipped else {})}
    run_id = store.start_run(experiment_id, run_name=run_name, params=to_flat(cfg), tags=run_tags,
                             parent_run_id=parent_run_id or continued_parent)
    fence = None if claim is None else claims.Fence(store, run_id, claim)
    try:  # from here on, every ending closes the run
        provenance.record(store, run_id, run_tags.get(Tag.ENTRY))
        if state is not None:  # the epochs before the checkpoint, with their original timestamps
            store.log_history(run_id, state["progress"]["history"], state["progress"]["epoch_times"])
        if on_start:
            on_start(run_id)
        progress = None if quiet else epoch_logger(cfg, run_name or "")
        result = _train_logged(cfg, store, run_id, dev, progress, on_epoch, stop, state, fence)
        if fence is not None:
            fence.check()  # before the run ends FINISHED, or KILLED with its checkpoint
    except claims.LostClaim as err:  # another process runs the point now: leave the run as it marked it
        with contextlib.suppress(StoreFailure):
            store.close_if_live(run_id, Status.KILLED, str(err))
        log.warning(f"run {run_id} stopped: {err}; it wrote no final state")
        return ExitCode.LOST_CLAIM, run_id, {}
    except KeyboardInterrupt as err:  # a second signal: stopped at once, without a checkpoint
        store.end_run(run_id, Status.KILLED, stopping.reason(stopping.signal_of(err)))
        raise
    except StoreFailure as err:  # not the point's fault: the caller stops; the next invocation repairs
        with contextlib.suppress(StoreFailure):
            store.end_run(run_id, Status.FAILED, str(err))
        raise
    except BaseException as err:  # noqa: BLE001 - every failure is recorded, then reported
        return _close_failed(store, run_id, err, quiet)
    if result is None:  # the loop was asked to stop, and wrote its checkpoint
        return _close_stopped(store, run_id, stop, quiet)
    if stop is not None or state is not None or skipped is not None:
        checkpoints.remove(store, run_id)  # a finished run carries its final model, not the checkpoints it superseded
    store.set_note(run_id, run_note(cfg, run_tags.get(Tag.SETTING) or run_name or "run", result.summary))
    store.end_run(run_id, Status.FINISHED)
    return ExitCode.OK, run_id, result.summary


def _close_stopped(store: tracking.TrackingStore, run_id: str, stop: StopFlag, quiet: bool
                   ) -> tuple[int, str, dict]:
    """End a run whose loop stopped on request: KILLED, saying where its checkpoint is."""
    tags = store.get_run(run_id).data.tags
    where = f"epoch {int(tags[Tag.CHECKPOINT_EPOCH]) + 1}, batch {tags[Tag.CHECKPOINT_BATCH]}"
    reason = f"{stop.reason} at {where}; checkpoint saved, rerun to resume"
    store.end_run(run_id, Status.KILLED, reason)
    if not quiet:
        log.info(f"run {run_id} KILLED: {reason}")
    return stop.exit_code, run_id, {}


def _close_failed(store: tracking.TrackingStore, run_id: str, err: BaseException, quiet: bool
                  ) -> tuple[int, str, dict]:
    """End a run whose training raised: PRUNED (the tuner's exception, re-raised) or FAILED."""
    if type(err).__name__ == "TrialPruned":  # stopped by the tuner's pruner: not a result, not a failure
        store.set_tags(run_id, {Tag.TRIAL_STATE: TrialState.PRUNED})
        store.end_run(run_id, Status.KILLED, f"pruned by the tuner: {err}")
        checkpoints.remove(store, run_id)  # a pruned trial is never continued
        raise err
    reason = _reason(err)
    store.end_run(run_id, Status.FAILED, reason, "".join(traceback.format_exception(err)))
    if not quiet:
        log.info(f"run {run_id} FAILED: {reason}")
    return ExitCode.FAILED, run_id, {}


def _train_logged(cfg: RunConfig, store: tracking.TrackingStore, run_id: str, dev: str,
                  progress: Callable[[int, Mapping[str, float]], None] | None,
                  on_epoch: Callable[[int, Mapping[str, float]], None] | None, stop: StopFlag | None,
                  state: dict | None, fence: claims.Fence | None = None):
    """Train with the run's tracker, system metrics and checkpoints; log the artifacts; None
    when a stop was requested. A ``fence`` is checked at each epoch's end and before each checkpoint."""
    from experiments.train import train
    from orchestrator.store.artifacts import log_run_artifacts

    def epoch_hook(epoch: int, values: Mapping[str, float]) -> None:
        if fence is not None:
            fence.check()
        if progress:
            progress(epoch, values)
        if on_epoch:
            on_epoch(epoch, values)

    ckpts = None
    if stop is not None:
        ckpts = (RunCheckpoints(store, run_id, cfg.train.checkpoint_seconds) if fence is None
                 else claims.FencedCheckpoints(fence, store, run_id, cfg.train.checkpoint_seconds))
    tracker = store.tracker(run_id)
    try:
        with store.system_metrics(run_id):
            result = train(cfg, tracker, device=dev, on_epoch=epoch_hook, checkpoints=ckpts, resume=state,
                           should_stop=None if stop is None else stop.is_set)
            if result is not None:
                log_run_artifacts(tracker, cfg, result)
        return result
    finally:
        _flush(tracker)  # the epochs logged so far reach the store before the run ends


IDENTITY_TAGS = (Tag.KIND, Tag.SWEEP, Tag.POINT, Tag.SETTING)  # what makes a run a sweep's point


def _identity(store: tracking.TrackingStore, resume: bool | str) -> tuple[dict[str, str], str | None]:
    """(tags, parent run id) that the continuation of run ``resume`` (a run id: ``orch run
    --resume``) takes over: the continuation of a sweep's point is that point's run, under
    its sweep's parent, so every path counts it as the point's result. Tags and a parent the
    caller passes win (a tuning trial names its own)."""
    if not isinstance(resume, str):
        return {}, None
    tags = store.get_run(resume).data.tags
    return {k: tags[k] for k in IDENTITY_TAGS if k in tags}, tags.get(Tag.PARENT_RUN_ID)


def _resume_tags(previous: str | None, state: dict | None) -> dict[str, str]:
    if state is None:
        return {}
    progress = state["progress"]
    return {Tag.RESUMED_FROM: previous, Tag.RESUMED_EPOCH: str(progress["epoch"]),
            Tag.RESUMED_BATCH: str(progress["batch"])}


def run_note(cfg: RunConfig, setting: str, summary: Mapping[str, float]) -> str:
    """A finished run's one-line description: setting (or run name), seed, best epoch, headline metrics."""
    what = setting.replace(",", ", ")
    scores = ", ".join(f"{k} **{summary[k]:.4f}**" for k in (names.DEFAULT_OBJECTIVE, f"test_{names.SCORES[0]}")
                       if k in summary)
    return (f"{what}, seed {cfg.seed}: best epoch {int(summary[names.BEST_EPOCH])} of "
            f"{int(summary[names.EPOCHS_RUN])}; {scores}")


def resumed_config(store: tracking.TrackingStore, run_id: str) -> tuple[RunConfig, str, str]:
    """(config, experiment name, run name) of a run to continue with ``orch run --resume``.

    Raises:
        UserError: no such run, or it holds no checkpoint (it finished, or never wrote one).
    """
    from experiments.config import build
    from orchestrator.errors import UserError

    try:
        run = store.get_run(run_id)
    except StoreFailure:
        raise
    except Exception:  # noqa: BLE001 - MLflow raises its own exception types for a missing run
        raise UserError(f"no run {run_id!r} in {store.uri}; copy the id from the run's page or `orch run` output") from None
    if Tag.CHECKPOINT not in run.data.tags:
        state = "it finished" if run.info.status == Status.FINISHED else "it wrote no checkpoint"
        raise UserError(f"run {run_id} cannot be resumed: {state}; start it again with `orch run`")
    try:
        cfg = build(checkpoints.load(store, run_id)["config"])
    except checkpoints.UnusableCheckpoint as err:
        raise UserError(f"run {run_id} cannot be resumed: its checkpoint {err.path} {err.reason}; train its "
                        "config from epoch 0 instead (rerun its sweep, or `orch run` with its config)") from None
    experiment = store.client.get_experiment(run.info.experiment_id).name
    return cfg, experiment, run.info.run_name


def _resume_point(store: tracking.TrackingStore, experiment_id: str, cfg: RunConfig, resume: bool | str
                  ) -> tuple[str | None, dict | None, checkpoints.UnusableCheckpoint | None]:
    """(run id, checkpoint, None) to continue, or (None, None, why a checkpoint was skipped
    or None) to start at epoch 0: training from epoch 0 is always correct."""
    if not resume:
        return None, None, None
    if isinstance(resume, str):
        previous = resume
    else:
        run = checkpoints.resumable(store, experiment_id, run_key(cfg))
        if run is None:
            return None, None, None
        previous = run.info.run_id
    try:  # a StoreFailure passes: starting over because the store failed would silently break exact resume
        return previous, checkpoints.load(store, previous, cfg), None
    except checkpoints.UnusableCheckpoint as err:
        return None, None, err


def _warn(text: str) -> None:
    log.warning(f"warning: {text}")


def _flush(tracker: Any) -> None:
    try:
        tracker.flush()
    except Exception as err:  # noqa: BLE001 - a lost epoch record must not hide the run's own outcome
        log.warning(f"warning: some per-epoch metrics could not be written: {err}")


def _reason(err: BaseException) -> str:
    name = type(err).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(err).lower():
        return f"out of memory: {err}"
    return f"{name}: {err}"


def summary_line(summary: Mapping[str, Any]) -> str:
    keys = (names.DEFAULT_OBJECTIVE, *(s for s in names.SPLIT_SCORES if s.startswith("test_")),
            names.BEST_EPOCH, names.EPOCHS_RUN, names.TRAIN_SECONDS)
    return "  ".join(f"{k} {summary[k]:.4g}" for k in keys if k in summary)
