"""A sweep from start to end: plan it, hand its missing points to a launcher, close it.

:func:`orchestrator.execute.plan.plan_sweep` decides what is missing, once, under the sweep
lock. :class:`LocalLauncher` runs the points here; the queue's and Slurm's launchers hand them
on, and whoever ends the last point closes the sweep. A store that fails (:class:`StoreFailure`)
ends the sweep with one message and exit 1 wherever it happens; nothing more is written, and
the next invocation closes the runs left RUNNING and runs exactly the points not finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from orchestrator.analyze import separation, sweep_summary
from orchestrator.analyze.render import render
from orchestrator.analyze.report import sweep_records, sweep_results
from orchestrator.errors import ExitCode, StoreFailure
from orchestrator.execute import stop
from orchestrator.execute.display import make_display
from orchestrator.execute.job import Job
from orchestrator.execute.plan import Plan, expected_points, finished_results, plan_sweep
from orchestrator.execute.scheduler import ListSource, Outcome, Scheduler
from orchestrator.execute.slots import Slot
from orchestrator.launch import rounds
from orchestrator.store import locks
from orchestrator.store.schema import Artifact, Status, points_json, read_points

if TYPE_CHECKING:
    from orchestrator.analyze.separation import Separation
    from orchestrator.grid.load import SweepSpec
    from orchestrator.store.tracking import TrackingStore

log = logging.getLogger(__name__)


class Launcher(Protocol):
    """Where a sweep's missing points run. ``setup`` refuses (:class:`UserError`) what it cannot
    take, before anything is recorded; ``close`` lets go of what ``launch`` kept for a next round."""

    runs_here: bool  # launch() returns once the points ran here (an Outcome), else once handed on

    def setup(self, spec: SweepSpec, uri: str) -> None: ...

    def launch(self, plan: Plan, jobs: Sequence[Job]) -> Outcome | int:
        """The Outcome of the points run here, or the exit code once they were handed on."""

    def close(self) -> None: ...


class LocalLauncher:
    """This machine's slots: returns once the points ran; the slots' processes last until :meth:`close`."""

    runs_here = True

    def __init__(self, slots: Sequence[Slot], *, max_retries: int = 1, fail_fast: bool = False, quiet: bool = False):
        self.slots, self.max_retries, self.fail_fast, self.quiet = list(slots), max_retries, fail_fast, quiet
        self.scheduler: Scheduler | None = None

    def setup(self, spec: SweepSpec, uri: str) -> None:  # noqa: ARG002
        for r in spec.runs:  # e.g. the study's bf16 on CPU slots: refused before anything is recorded
            spec.entry.check_device(r.config, "cuda" if self.slots[0].gpu is not None else "cpu")

    def launch(self, plan: Plan, jobs: Sequence[Job]) -> Outcome:
        if not jobs:
            return Outcome()
        if self.scheduler is None:
            self.scheduler = Scheduler(slots=self.slots, fail_fast=self.fail_fast, display=make_display(self.quiet),
                                       keep_processes=True)
        return self.scheduler.run(ListSource(jobs, self.max_retries))

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()


def run_sweep(spec: SweepSpec, store: TrackingStore, launcher: Launcher, *, rerun: bool = False,
              wait: bool = False, until: Separation | None = None, metric: str | None = None) -> int:
    """Run or hand on what is missing of ``spec``; the exit code (0, 1 failures, 130 Ctrl-C, 143 SIGTERM).

    Holds the experiment's sweep lock while it plans, and while points run here beats on the
    parent: a second sweep of the experiment is refused (``SweepBusy``, exit 2) or, with ``wait``,
    waits. ``until``: rounds of added seeds follow. ``metric``: the table's (None: the entry's, else
    the runs' first). ``launcher`` is set up (:meth:`Launcher.setup`) before ``store`` is opened.
    """
    heartbeat = locks.ParentHeartbeat(store, spec.name, wait=wait) if launcher.runs_here else None
    with stop.handling(), contextlib.ExitStack() as held:
        held.enter_context(locks.hold(store.uri, spec.name, wait=wait))
        plan, outcome = None, Outcome()
        try:
            plan = plan_sweep(store, spec, rerun=rerun, heartbeat=heartbeat, reopen=until is not None)
            log.info(f"sweep {spec.name} [{spec.sweep_id}]: {len(plan.missing) + len(plan.done)} points, "
                     f"{len(plan.done)} already finished, {len(plan.missing)} to run"
                     f"{' (resumed)' if plan.resumed else ''}")
            if plan.resumed and launcher.runs_here:  # seeds earlier --until-separated rounds added: in the table too
                points = read_points(store.download_json(plan.parent_run_id, Artifact.POINTS))
                plan.spec = rounds.restore_added(plan.spec, points)
            result = launcher.launch(plan, plan.jobs())
            if not isinstance(result, Outcome):  # handed on: whoever ends the last point closes the sweep
                follow = getattr(launcher, "follow", None)  # Slurm's --wait
                if follow is None or not wait or result != ExitCode.OK:
                    return result
                held.close()  # the lock guarded the planning and the hand-on; following holds nothing
                return follow(plan)
            outcome, verdict = _rounds(store, plan, launcher, result, until)
            if outcome.store_failure:
                return _store_failed(plan, outcome, outcome.store_failure)
            if outcome.interrupted:
                return _interrupted(store, plan, outcome.signal or signal.SIGINT)
            if verdict is not None:  # kept on the parent; its lines go below the table
                store.log_text(plan.parent_run_id, json.dumps(separation.verdict_json(verdict, until), indent=1),
                               Artifact.SEPARATION)
            notes = separation.summary_lines(verdict, until) if verdict is not None else []
            return _finish(store, plan, outcome, metric, notes)
        except StoreFailure as err:
            return _store_failed(plan, outcome, str(err))
        except stop.Stopped as err:  # a signal outside the scheduler: opening, between rounds, the summary
            if plan is None or not launcher.runs_here:
                return err.exit_code
            return _interrupted(store, plan, err.signum)
        finally:
            launcher.close()
            if heartbeat is not None:
                heartbeat.stop()


def _rounds(store: TrackingStore, plan: Plan, launcher: LocalLauncher, outcome: Outcome,
            until: Separation | None) -> tuple[Outcome, Any]:
    """``--until-separated``: rounds of added seeds; (the sweep's outcome, the last verdict). Rounds
    go on past failed points and stop after L looks (alpha/L is spent over them): no endless loop."""
    verdict, looks = None, 0
    while until is not None and not (outcome.interrupted or outcome.store_failure
                                     or (launcher.fail_fast and outcome.failed)):
        todo, verdict = _next_round(store, plan, until)
        looks += 1
        if not todo or looks >= until.looks:
            break
        verdict = None  # the round's new values decide again
        outcome = _merged(outcome, launcher.launch(plan, plan.jobs(todo)))
    return outcome, verdict


def _merged(before: Outcome, after: Outcome) -> Outcome:
    """The outcome over rounds: a point failed in one and finished in a later one counts as finished."""
    failed = {name: why for name, why in before.failed.items() if name not in after.finished}
    return dataclasses.replace(after, finished=before.finished + after.finished,
                               failed={**failed, **after.failed}, lost={**before.lost, **after.lost},
                               skipped=before.skipped + after.skipped, seconds=before.seconds + after.seconds)


def _next_round(store: TrackingStore, plan: Plan, until: Separation):
    """(the round's runs, this look's verdict or None); ``plan.spec`` gains the round's new points."""
    spec = plan.spec
    records = sweep_records(store, plan.experiment_id, spec.sweep_id, [r.run_key for r in spec.runs])
    result = sweep_summary.compare_sweep(records, expected_points(spec), until.metric, until.direction)
    if result is None:
        return [], None
    finished = set(finished_results(store, plan.experiment_id, [r.run_key for r in spec.runs]))
    verdict = separation.decide(result, until)
    todo = rounds.next_round(spec, verdict, until, finished)
    if todo:
        known = {r.run_key for r in spec.runs}
        plan.spec = dataclasses.replace(spec, runs=spec.runs + tuple(r for r in todo if r.run_key not in known))
        store.log_text(plan.parent_run_id, points_json(expected_points(plan.spec)), Artifact.POINTS)
        rivals = len(verdict.separated) + len(verdict.undecided)
        log.info(f"until separated on {until.metric}: {len(verdict.separated)} of {rivals} rival(s) separated from "
                 f"{verdict.leader.label}; {len(todo)} more point(s): {', '.join(r.name for r in todo)}")
    return todo, verdict


def _store_failed(plan: Plan | None, outcome: Outcome, failure: str) -> int:
    """The one message of a sweep whose store failed: what finished, what did not, how to resume."""
    if plan is None:
        log.error(f"error: {failure}\nthe sweep could not be opened and no point was started; fix the store (free "
                  "space, unlock or restore it), then rerun the same command")
        return ExitCode.FAILED
    runs = plan.spec.runs
    finished = {r.name for r in plan.done} | set(outcome.finished)
    missing = [r.name for r in runs if r.name not in finished]
    if not missing:
        what = (f"all {len(runs)} point(s) finished, but the sweep's summary could not be recorded; "
                "rerun the same command to record it (no point runs again)")
    else:
        names = ", ".join(missing[:10]) + (f", … ({len(missing) - 10} more)" if len(missing) > 10 else "")
        what = (f"{len(runs) - len(missing)} of {len(runs)} point(s) finished; "
                f"{len(missing)} did not ({names}) and no further point was started. Fix the store (free space, "
                "unlock or restore it), then rerun the same command: it closes the runs left RUNNING and runs "
                "only the points that did not finish")
    log.error(f"error: {failure}\n{what}")
    return ExitCode.FAILED


def _interrupted(store: TrackingStore, plan: Plan, signum: int) -> int:
    store.end_run(plan.parent_run_id, Status.KILLED, stop.reason(signum))
    log.info(f"{'interrupted' if signum == signal.SIGINT else 'preempted'}: running points checkpointed and were "
             "recorded KILLED; rerun the same command to resume them where they stopped")
    return stop.exit_code(signum)


def _finish(store: TrackingStore, plan: Plan, outcome: Outcome, metric: str | None, notes: Sequence[str] = ()) -> int:
    """The closing table (and the separation's verdict below it); the summary and the parent's end."""
    spec = plan.spec
    records = sweep_records(store, plan.experiment_id, spec.sweep_id, [r.run_key for r in spec.runs])
    expected = expected_points(spec)
    default = sweep_summary.entry_metric(spec.entry)
    metric = metric or default
    if plan.closed:  # a rerun of a finished sweep: its summary stands, nothing is written
        result = sweep_summary.compare_sweep(records, expected, metric)
        if result is not None:
            print(render(result, "table"), flush=True)
        log.info(f"nothing to do: every point is finished; browse with: orch ui --tracking-uri {store.uri}")
        return ExitCode.OK
    for text in (sweep_summary.write_summary(store, plan.parent_run_id, records, expected, spec.axes, metric,
                                             default), "\n".join(notes)):
        if text:
            print(text, flush=True)
    if outcome.failed or outcome.skipped:
        store.end_run(plan.parent_run_id, Status.FAILED, f"{len(outcome.failed)} point(s) failed")
        log.info(f"{len(outcome.failed)} point(s) FAILED:")
        for name, reason in outcome.failed.items():
            log.info(f"  {name}: {reason}")
        if outcome.skipped:
            log.info(f"{len(outcome.skipped)} point(s) not started (--fail-fast): {', '.join(outcome.skipped)}")
        log.info("rerun the same command to retry only what is missing")
        return ExitCode.FAILED
    store.end_run(plan.parent_run_id, Status.FINISHED)
    log.info(f"sweep finished in {outcome.seconds:.1f}s; browse with: orch ui --tracking-uri {store.uri}")
    return ExitCode.OK


def close_sweep(store: TrackingStore, parent_run_id: str, *, metric: str | None = None) -> list[str]:
    """Close a sweep handed on (queued, submitted): its summary from ``points.json``, and the parent
    ended FINISHED, or FAILED naming the points without a finished result; their names."""
    parent = store.get_run(parent_run_id)
    records, points = sweep_results(store, parent)
    axes = [k for k in (points[0].point if points else {}) if k != "seed"]
    sweep_summary.write_summary(store, parent_run_id, records, points, axes, metric)
    finished = finished_results(store, parent.info.experiment_id, [p.run_key for p in points])
    missing = [p.name for p in points if p.run_key not in finished]
    if missing:
        store.end_run(parent_run_id, Status.FAILED,
                      f"{len(missing)} point(s) not finished ({', '.join(missing[:10])}); rerun the sweep to run them")
    else:
        store.end_run(parent_run_id, Status.FINISHED)
    return missing
