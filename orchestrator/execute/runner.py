"""Run one configuration as one tracked MLflow run, whatever started it.

``orch run`` calls :func:`run_tracked` in its own process; a sweep, a worker and the tuner
call it in a child process per point (``python -m orchestrator.execute.point``). The run always
ends in a final state: FINISHED, FAILED (with the reason as a tag and the traceback as
an artifact) or KILLED (interrupted by Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, Mapping

from experiments import metric_names as names
from experiments.config import RunConfig, run_key, to_flat
from orchestrator.store import checkpoints
from orchestrator.store import claims, provenance
from orchestrator.store import tracking
from orchestrator.store.checkpoints import RunCheckpoints, StopFlag
from orchestrator.errors import ExitCode, StoreFailure
from orchestrator.store.schema import Kind, Status, Tag, TrialState

if TYPE_CHECKING:
    from experiments.train import Stopped


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)  # preemption, Ctrl-C, Slurm's time-limit warning
REPEAT_WINDOW_SECONDS = 1.0  # the same signal again within this is the same request


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that the run can be closed as KILLED."""


def stop_on_signals() -> StopFlag:
    """SIGTERM, SIGINT or SIGUSR1 ask the running training loop to checkpoint and stop at
    its next batch boundary; a second signal interrupts at once.

    A repeat of the first signal within :data:`REPEAT_WINDOW_SECONDS` counts as the same
    request: a parent that dies sends its ``PR_SET_PDEATHSIG`` once per exiting thread.
    """
    flag = StopFlag()
    first: list[tuple[int, float]] = []

    def handler(signum, frame):  # noqa: ARG001
        name = signal.Signals(signum).name
        now = time.monotonic()
        if first and first[0][0] == signum and now - first[0][1] < REPEAT_WINDOW_SECONDS:
            return
        first[:] = first or [(signum, now)]
        if flag.reason is not None or not flag.busy:
            flag.reason = flag.reason or name
            raise Interrupted(name if not flag.busy else f"{name} (second signal)")
        flag.reason = name

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    return flag


def interrupt_signal(err: KeyboardInterrupt) -> str:
    """The signal behind an interrupt: :class:`Interrupted` names it; Python's own is Ctrl-C."""
    return (str(err).split() or ["SIGINT"])[0]


def interrupt_reason(err: KeyboardInterrupt) -> str:
    """The failure-reason tag of a run or parent that an interrupt ended: ``preempted
    (SIGTERM)``, or ``interrupted (SIGINT)`` for Ctrl-C."""
    what = "interrupted" if interrupt_signal(err) == "SIGINT" else "preempted"
    return f"{what} ({str(err) or 'SIGINT'})"


def stop_exit_code(reason: str | None) -> int:
    """130 for Ctrl-C, 143 for a preemption (SIGTERM, SIGUSR1)."""
    return ExitCode.INTERRUPTED if reason == "SIGINT" else ExitCode.PREEMPTED


def stop_reason(err: Stopped) -> str:
    """The failure-reason tag of a run stopped by a signal: starts with ``preempted`` (or
    ``interrupted`` for Ctrl-C) and says where its checkpoint is."""
    what = "interrupted" if err.reason == "SIGINT" else "preempted"
    return f"{what} ({err.reason}) at epoch {err.epoch + 1}, batch {err.batch}; checkpoint saved, rerun to resume"


def cap_threads() -> None:
    """At most as many torch threads as the CPUs this process may use. Torch's default counts
    the affinity mask, which leaves out a Slurm allocation on a cluster that does not bind
    CPUs: ``orch run`` in a 4-CPU job on a 64-core node would otherwise run 64 threads."""
    import torch

    from orchestrator.execute.scheduler import cpu_threads

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
    stop: StopFlag | None = None,
    resume: bool | str = False,
    claim: Mapping[str, Any] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> tuple[int, str, dict[str, float]]:
    """Train ``cfg`` inside a new MLflow run; returns (exit code, run id, summary metrics).

    Exceptions from training end the run FAILED and give exit code 1; an interrupt ends
    it KILLED and is re-raised; a :class:`StoreFailure` (the store, not the point, failed)
    is re-raised after one attempt to end the run FAILED. ``on_epoch`` may raise to stop the run (pruning): its
    exception propagates after the run is closed by the caller's handler of that type.

    With ``stop`` (see :func:`stop_on_signals`) the run writes checkpoints to its artifact
    store every ``train.checkpoint_seconds`` and when a signal sets the flag; it then ends
    KILLED (reason ``preempted …``) with exit code 143 (130 for SIGINT). ``resume=True``
    continues the newest unfinished run of the same run key that holds a checkpoint (if
    any); a run id continues that run. A checkpoint that cannot be used is skipped: the run
    starts from epoch 0, is tagged ``Tag.CHECKPOINT_SKIPPED``, and ``on_warning`` (default:
    print to stderr) gets one line saying so.

    A point process passes ``claim`` (its queue trial, or ``{}``): the run is then fenced
    (:mod:`orchestrator.store.claims`) and, once another process has taken the point over, writes
    no checkpoint and no final state and gives :attr:`ExitCode.LOST_CLAIM`.
    """
    with _busy(stop):  # a signal now only asks the loop to checkpoint and stop: the run is always closed
        return _run_closed(cfg, store, experiment_id, run_name, tags, parent_run_id, device, quiet, on_start,
                           on_epoch, stop, resume, claim, on_warning or _print_warning)


@contextlib.contextmanager
def _busy(stop: StopFlag | None):
    if stop is None:
        yield
        return
    stop.busy = True
    try:
        yield
    finally:
        stop.busy = False


def _run_closed(cfg, store, experiment_id, run_name, tags, parent_run_id, device, quiet, on_start, on_epoch,
                stop, resume, claim, on_warning) -> tuple[int, str, dict[str, float]]:
    """:func:`run_tracked`'s body: start the run, train, and close the run however training ends."""
    from experiments.train import Stopped

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
    printer = EpochPrinter(cfg, quiet, run_name or "")
    fence = None if claim is None else claims.Fence(store, run_id, claim)
    try:  # from here on, every ending closes the run
        provenance.record(store, run_id, run_tags.get(Tag.ENTRY))
        if state is not None:  # the epochs before the checkpoint, with their original timestamps
            store.log_history(run_id, state["progress"]["history"], state["progress"]["epoch_times"])
        if on_start:
            on_start(run_id)
        result = _train_logged(cfg, store, run_id, dev, printer, on_epoch, stop, state, fence)
        if fence is not None:
            fence.check()  # before the run ends FINISHED
    except claims.LostClaim as err:  # another process runs the point now: leave the run as it marked it
        with contextlib.suppress(StoreFailure):
            store.close_if_live(run_id, Status.KILLED, str(err))
        print(f"run {run_id} stopped: {err}; it wrote no final state", file=sys.stderr)
        return ExitCode.LOST_CLAIM, run_id, {}
    except Stopped as err:
        store.end_run(run_id, Status.KILLED, stop_reason(err))
        if not quiet:
            print(f"run {run_id} KILLED: {stop_reason(err)}", file=sys.stderr)
        return stop_exit_code(err.reason), run_id, {}
    except KeyboardInterrupt as err:
        store.end_run(run_id, Status.KILLED, interrupt_reason(err))
        raise
    except StoreFailure as err:  # not the point's fault: the caller stops; the next invocation repairs
        with contextlib.suppress(StoreFailure):
            store.end_run(run_id, Status.FAILED, str(err))
        raise
    except BaseException as err:  # noqa: BLE001 - every failure is recorded, then reported
        if _is_pruned(err):  # stopped by the tuner's pruner: not a result, not a failure
            store.set_tags(run_id, {Tag.TRIAL_STATE: TrialState.PRUNED})
            store.end_run(run_id, Status.KILLED, f"pruned by the tuner: {err}")
            checkpoints.remove(store, run_id)  # a pruned trial is never continued
            raise
        reason = _reason(err)
        store.end_run(run_id, Status.FAILED, reason, traceback.format_exc())
        if not quiet:
            print(f"run {run_id} FAILED: {reason}", file=sys.stderr)
        return ExitCode.FAILED, run_id, {}
    if stop is not None or state is not None or skipped is not None:
        checkpoints.remove(store, run_id)  # a finished run carries its final model, not the checkpoints it superseded
    store.set_note(run_id, run_note(cfg, run_tags.get(Tag.SETTING, ""), result.summary))
    store.end_run(run_id, Status.FINISHED)
    return ExitCode.OK, run_id, result.summary


def _train_logged(cfg: RunConfig, store: tracking.TrackingStore, run_id: str, dev: str, printer: EpochPrinter,
                  on_epoch: Callable[[int, Mapping[str, float]], None] | None, stop: StopFlag | None,
                  state: dict | None, fence: claims.Fence | None = None):
    """Train with the run's tracker, system metrics and checkpoints; log the artifacts. A
    ``fence`` is checked at each epoch's end and before each checkpoint."""
    from experiments.train import train
    from orchestrator.store.artifacts import log_run_artifacts

    def epoch_hook(epoch: int, values: Mapping[str, float]) -> None:
        if fence is not None:
            fence.check()
        printer(epoch, values)
        if on_epoch:
            on_epoch(epoch, values)

    ckpts = None
    if stop is not None:
        ckpts = (RunCheckpoints(store, run_id, cfg.train.checkpoint_seconds, stop) if fence is None
                 else claims.FencedCheckpoints(fence, store, run_id, cfg.train.checkpoint_seconds, stop))
    tracker = store.tracker(run_id)
    try:
        with store.system_metrics(run_id):
            result = train(cfg, tracker, device=dev, on_epoch=epoch_hook, checkpoints=ckpts, resume=state)
            log_run_artifacts(tracker, cfg, result)
        return result
    finally:
        printer.close()
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
    """A finished run's one-line description: setting, seed, best epoch, headline metrics."""
    what = setting.replace(",", ", ") or f"{cfg.model.norm}, batch {cfg.data.batch_size}"
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


def _print_warning(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def _flush(tracker: Any) -> None:
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
