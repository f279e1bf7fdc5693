"""Run one point's code (its entry) as one tracked MLflow run, whatever started it (``orch run``
in its own process, the point processes of sweeps, workers and the tuner). The run always ends
FINISHED, FAILED (reason tag, traceback artifact) or KILLED (a stop).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import traceback
from typing import Any, Callable, Mapping

from orchestrator.errors import ExitCode, RunFailed, StoreFailure, UserError
from orchestrator.execute import stop as stopping
from orchestrator.execute.plan import find_run
from orchestrator.execute.run import Run, active
from orchestrator.execute.slots import cpu_threads
from orchestrator.execute.stop import StopFlag
from orchestrator.grid.entry import Entry
from orchestrator.store import checkpoints, claims, provenance, tracking
from orchestrator.store.schema import Kind, Status, Tag, TrialState

log = logging.getLogger(__name__)


def cap_threads() -> None:
    """At most as many torch threads as usable CPUs: torch's default counts the affinity mask,
    which leaves out a Slurm allocation on a cluster that does not bind CPUs."""
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), cpu_threads(1))))


def device_label() -> str:
    """The device this process trains on, as torch sees it."""
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _headline(entry: Entry, values: Mapping[str, Any], n: int) -> list[str]:
    """The first ``n`` keys of ``values`` to show: the entry's progress keys first."""
    return list(dict.fromkeys([k for k in (*entry.progress_keys, *values) if k in values][:n]))


def step_logger(entry: Entry, name: str) -> Callable[[int, Mapping[str, float]], None]:
    """A run's progress, one line per logged step: its first values and seconds."""
    prefix = f"[{name}] " if name else ""
    last = [time.perf_counter()]

    def log_step(step: int, values: Mapping[str, float]) -> None:
        now = time.perf_counter()
        seconds, last[0] = now - last[0], now
        scores = "  ".join(f"{k} {values[k]:.4g}" for k in _headline(entry, values, 4))
        log.info(f"{prefix}step {step:>3}  {scores}  {seconds:.1f}s")

    return log_step


def run_tracked(
    entry: Entry,
    cfg: Any,
    *,
    store: tracking.TrackingStore,
    experiment_id: str,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    quiet: bool = False,
    on_start: Callable[[str], None] | None = None,
    on_log: Callable[[int, Mapping[str, float]], None] | None = None,
    stop: StopFlag | None = None,
    resume: bool | str = False,
    claim: Mapping[str, Any] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> tuple[int, str, dict[str, float]]:
    """Run ``entry.train(cfg, run)`` inside a new MLflow run; (exit code, run id, summary metrics).

    The code's exceptions end the run FAILED (exit 1); a second signal ends it KILLED and is
    re-raised; a :class:`StoreFailure` is re-raised after one try to end the run FAILED. ``on_log``
    sees every ``run.log()`` and may raise the tuner's ``TrialPruned`` (re-raised once the run is
    closed). With ``stop``, a signal makes ``run.should_stop()`` true and, once the code returns,
    the run ends KILLED with its checkpoint and exit 143 (130 for SIGINT): the one place a stop
    becomes a run's end. ``resume``: True continues the newest checkpointed run of the run key, a
    run id that run; an unusable checkpoint is skipped (tagged, and one line to ``on_warning``).
    With ``claim`` the run is fenced (:mod:`orchestrator.store.claims`): once another process took
    the point over it writes no checkpoint nor final state and gives :attr:`ExitCode.LOST_CLAIM`.
    """
    deferral = stop.deferred() if stop is not None else contextlib.nullcontext()
    with deferral:  # a signal now only asks the code to checkpoint and stop: the run is always closed
        return _run_closed(entry, cfg, store, experiment_id, run_name, tags, parent_run_id, quiet, on_start,
                           on_log, stop, resume, claim,
                           on_warning or (lambda text: log.warning(f"warning: {text}")))


def _run_closed(entry, cfg, store, experiment_id, run_name, tags, parent_run_id, quiet, on_start, on_log,
                stop, resume, claim, on_warning) -> tuple[int, str, dict[str, float]]:
    """:func:`run_tracked`'s body: start the run, call the code, and close the run however it ends."""
    cap_threads()
    key, params = entry.run_key(cfg), entry.params(cfg)
    previous, saved, skipped = _resume_point(store, experiment_id, key, resume)
    if skipped is not None:
        on_warning(f"the checkpoint {skipped.where} {skipped.reason}: skipped, starting afresh")
    identity, continued_parent = _identity(store, resume)
    run_tags = {Tag.KIND: Kind.RUN, **identity, **(tags or {}), Tag.RUN_KEY: key, Tag.DEVICE: device_label(),
                **tracking.runtime_tags(),
                **({Tag.RESUMED_FROM: previous, Tag.RESUMED_STEP: str(saved["step"])} if saved is not None else {}),
                **({Tag.CHECKPOINT_SKIPPED: str(skipped)} if skipped else {})}
    run_id = store.start_run(experiment_id, run_name=run_name, params=params, tags=run_tags,
                             parent_run_id=parent_run_id or continued_parent)
    fence = None if claim is None else claims.Fence(store, run_id, claim)
    hooks = [h for h in (None if quiet else step_logger(entry, run_name or ""), on_log) if h]
    with tempfile.TemporaryDirectory(prefix="orch-artifacts-") as artifact_dir:
        run = Run(entry.user_config(cfg), int(params.get("seed", 0)), artifact_dir, store=store, run_id=run_id,
                  run_key=key, params=params, checkpoint_seconds=entry.checkpoint_seconds(cfg),
                  state=saved and saved["state"], stop=stop.is_set if stop is not None else (lambda: False),
                  on_log=lambda step, values: [h(step, values) for h in hooks], fence=fence, resume_from=previous)
        try:  # from here on, every ending closes the run
            provenance.record(store, run_id, entry.name, entry.folder)
            if saved is not None:  # the steps before the checkpoint, with their original timestamps
                store.copy_history(previous, run_id, saved["step"])
            if on_start:
                on_start(run_id)
            summary = _call(entry, cfg, run, store, run_id)
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
    if run.pruned is not None:
        _close_pruned(store, run_id, run.pruned)
    if summary is None and stop is not None and stop.is_set():  # the code was asked to stop, and returned
        return _close_stopped(store, run_id, stop, quiet)
    summary = {k: float(v) for k, v in (summary or {}).items()}
    if summary:
        store.log_metrics(run_id, summary, step=0)
    if previous or skipped is not None or Tag.CHECKPOINT in store.get_run(run_id).data.tags:
        checkpoints.remove(store, run_id)  # a finished run carries its results, not the checkpoints it superseded
    store.set_note(run_id, run_note(entry, params, run_tags.get(Tag.SETTING) or run_name or "run", summary))
    store.end_run(run_id, Status.FINISHED)
    return ExitCode.OK, run_id, summary


def _call(entry: Entry, cfg: Any, run: Run, store: tracking.TrackingStore, run_id: str) -> Mapping[str, float] | None:
    """The code, with MLflow's system metrics around it; its artifact folder logged however it ends."""
    try:
        with store.system_metrics(run_id), active(run):
            return entry.train(cfg, run)
    finally:
        try:
            run.finish()  # the steps logged so far reach the store before the run ends
        finally:
            if any(run.artifact_dir.iterdir()):
                store.log_artifacts(run_id, str(run.artifact_dir), None)


def _close_stopped(store: tracking.TrackingStore, run_id: str, stop: StopFlag, quiet: bool
                   ) -> tuple[int, str, dict]:
    """End a run whose code stopped on request: KILLED, saying where its checkpoint is."""
    tags = store.get_run(run_id).data.tags
    if Tag.CHECKPOINT in tags:
        reason = f"{stop.reason} at step {tags.get(Tag.CHECKPOINT_STEP, 0)}; checkpoint saved, rerun to resume"
    else:
        reason = f"{stop.reason}; no checkpoint saved, a rerun starts afresh"
    store.end_run(run_id, Status.KILLED, reason)
    if not quiet:
        log.info(f"run {run_id} KILLED: {reason}")
    return stop.exit_code, run_id, {}


def _close_pruned(store: tracking.TrackingStore, run_id: str, err: BaseException) -> None:
    """End a run the tuner pruned (not a result, not a failure), and re-raise its verdict."""
    store.set_tags(run_id, {Tag.TRIAL_STATE: TrialState.PRUNED})
    store.end_run(run_id, Status.KILLED, f"pruned by the tuner: {err}")
    checkpoints.remove(store, run_id)  # a pruned trial is never continued
    raise err


def _close_failed(store: tracking.TrackingStore, run_id: str, err: BaseException, quiet: bool
                  ) -> tuple[int, str, dict]:
    """End a run whose code raised: FAILED, with the reason and the traceback."""
    if type(err).__name__ == "TrialPruned":  # raised by code that runs the tuner's verdict itself
        _close_pruned(store, run_id, err)
    reason = _reason(err)
    store.end_run(run_id, Status.FAILED, reason, "".join(traceback.format_exception(err)))
    if not quiet:
        log.info(f"run {run_id} FAILED: {reason}")
    return ExitCode.FAILED, run_id, {}


def _identity(store: tracking.TrackingStore, resume: bool | str) -> tuple[dict[str, str], str | None]:
    """(tags, parent run id) the continuation of run ``resume`` (a run id) takes over, so that a
    sweep point's continuation counts as the point's result; the caller's own tags and parent win."""
    if not isinstance(resume, str):
        return {}, None
    tags = store.get_run(resume).data.tags
    identity = (Tag.KIND, Tag.SWEEP, Tag.POINT, Tag.SETTING)  # what makes a run a sweep's point
    return {k: tags[k] for k in identity if k in tags}, tags.get(Tag.PARENT_RUN_ID)


def run_note(entry: Entry, params: Mapping[str, Any], setting: str, summary: Mapping[str, float]) -> str:
    """A finished run's one-line description: setting (or run name), seed, headline metrics."""
    what = setting.replace(",", ", ")
    scores = ", ".join(f"{k} **{summary[k]:.4g}**" for k in _headline(entry, summary, 2))
    return f"{what}, seed {params.get('seed', 0)}" + (f": {scores}" if scores else "")


def resumed_config(store: tracking.TrackingStore, run_id: str, entry: Entry) -> tuple[Any, str, str]:
    """(config, experiment name, run name) of a run to continue with ``orch run --resume``; a
    :class:`UserError` when there is no such run or it holds no checkpoint."""
    run = find_run(store, run_id)
    if run is None:
        raise UserError(f"no run {run_id!r} in {store.uri}; copy the id from the run's page or `orch run` output")
    if Tag.CHECKPOINT not in run.data.tags:
        state = "it finished" if run.info.status == Status.FINISHED else "it wrote no checkpoint"
        raise UserError(f"run {run_id} cannot be resumed: {state}; start it again with `orch run`")
    try:
        cfg = entry.build(checkpoints.load(store, run_id)["params"])
    except checkpoints.UnusableCheckpoint as err:
        raise UserError(f"run {run_id} cannot be resumed: its checkpoint {err.path} {err.reason}; train its "
                        "config afresh instead (rerun its sweep, or `orch run` with its config)") from None
    experiment = store.client.get_experiment(run.info.experiment_id).name
    return cfg, experiment, run.info.run_name


def _resume_point(store: tracking.TrackingStore, experiment_id: str, key: str, resume: bool | str
                  ) -> tuple[str | None, dict | None, checkpoints.UnusableCheckpoint | None]:
    """(run id, checkpoint envelope, None) to continue, or (None, None, why a checkpoint was
    skipped or None) to start afresh: starting afresh is always correct."""
    if not resume:
        return None, None, None
    if isinstance(resume, str):
        previous = resume
    else:
        run = checkpoints.resumable(store, experiment_id, key)
        if run is None:
            return None, None, None
        previous = run.info.run_id
    try:  # a StoreFailure passes: starting over because the store failed would silently break exact resume
        return previous, checkpoints.load(store, previous, key), None
    except checkpoints.UnusableCheckpoint as err:
        return None, None, err


def _reason(err: BaseException) -> str:
    if isinstance(err, RunFailed):
        return str(err)
    name = type(err).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(err).lower():
        return f"out of memory: {err}"
    return f"{name}: {err}"


def summary_line(entry: Entry, summary: Mapping[str, Any]) -> str:
    return "  ".join(f"{k} {summary[k]:.4g}" for k in _headline(entry, summary, 6))
