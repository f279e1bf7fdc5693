"""A sweep from start to end: parent run, resume, scheduling, and the summary on the parent.

Resume rule: a point is done when its run key has a finished result in the experiment
(:func:`orchestrator.store.schema.is_finished_result`), whoever finished it (this sweep, another
sweep, a queue worker, a Slurm task, ``orch run --resume`` of one of its runs); everything
else (missing, FAILED, KILLED, or RUNNING under a dead process) runs again. The dry run,
the queue and Slurm apply the same rule.

A store that fails during the sweep (:class:`StoreFailure`: full disk, a vanished or
locked store) ends it with one message and exit 1, wherever it happens: while opening
the sweep, in the scheduler (which then starts no more points and lets the running ones
end), or while writing the summary and closing the parent. Nothing more is written after
the failure; the next invocation closes the runs left RUNNING (:data:`ORPHAN_REASON`,
the parent is reopened) and runs exactly the points that did not finish.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import signal
import sys
from dataclasses import dataclass
from typing import Sequence

from experiments.config import check_device
from experiments.metric_names import DEFAULT_OBJECTIVE
from orchestrator.store import locks
from orchestrator.analyze import separation
from orchestrator.launch import rounds
from orchestrator.errors import ExitCode, StoreFailure
from orchestrator.execute.display import make_display
from orchestrator.grid.load import SweepSpec
from orchestrator.execute.slots import release_unadopted
from orchestrator.execute.scheduler import Job, ListSource, Outcome, Scheduler, plan_slots
from orchestrator.analyze.report import sweep_records
from orchestrator.analyze.separation import Separation
from orchestrator.store.schema import Artifact, ExpectedPoint, Kind, Status, Tag, points_json, read_points
from orchestrator.store.tracking import TrackingStore

ORPHAN_REASON = "left RUNNING by a sweep process that died; marked FAILED when the sweep resumed"


@dataclass
class SweepState:
    experiment_id: str
    parent_run_id: str
    resumed: bool
    pending: list
    done: list


def expected_points(spec: SweepSpec) -> list[ExpectedPoint]:
    """The sweep's points as logged in ``points.json`` (read back by ``orch compare``)."""
    return [ExpectedPoint(name=r.name, run_key=r.run_key, point=r.point, setting=r.setting, index=r.index,
                          added=r.point.get("seed") not in spec.seeds)
            for r in spec.runs]


def open_sweep(store: TrackingStore, spec: SweepSpec, *, rerun: bool = False,
               heartbeat: locks.ParentHeartbeat | None = None) -> SweepState:
    """Find or create the parent run, close orphans, and split points into done and pending.

    With ``heartbeat``, first wait for (or refuse, ``SweepBusy``) a sweep of the experiment
    that beats elsewhere, then beat on the parent from the moment it is found or created.
    """
    exp_id = store.ensure_experiment(spec.name)
    if heartbeat is not None:
        heartbeat.claim(exp_id)
    parent = store.find_sweep_parent(exp_id, spec.sweep_id)
    if parent is None:
        parent_id = store.start_run(
            exp_id, run_name=spec.name, params={"axes": ",".join(spec.axes) or "-",
                                                "seeds": ",".join(map(str, spec.seeds)),
                                                "n_points": len(spec.runs)},
            tags={Tag.KIND: Kind.SWEEP, Tag.SWEEP: spec.sweep_id, Tag.GRID_FILE: spec.path,
                  Tag.N_POINTS: str(len(spec.runs))},
        )
        if heartbeat is not None:
            heartbeat.start(parent_id)
        store.log_text(parent_id, spec.text, Artifact.GRID)
        store.log_text(parent_id, points_json(expected_points(spec)), Artifact.POINTS)
        resumed = False
    else:
        parent_id = parent.info.run_id
        if heartbeat is not None:
            heartbeat.start(parent_id)
        store.reopen_run(parent_id)
        if store.download_json_if_any(parent_id, Artifact.POINTS) is None:  # stopped before recording them
            store.log_text(parent_id, spec.text, Artifact.GRID)
            store.log_text(parent_id, points_json(expected_points(spec)), Artifact.POINTS)
        resumed = True
    store.fail_orphans(exp_id, spec.sweep_id, ORPHAN_REASON)
    finished = set() if rerun else store.finished_run_keys(exp_id)
    pending = [r for r in spec.runs if r.run_key not in finished]
    done = [r for r in spec.runs if r.run_key in finished]
    return SweepState(exp_id, parent_id, resumed, pending, done)


def run_sweep(
    spec: SweepSpec,
    store: TrackingStore,
    *,
    workers: int = 1,
    gpus: Sequence[str] | None = None,
    runs_per_gpu: int = 1,
    max_retries: int = 1,
    fail_fast: bool = False,
    rerun: bool = False,
    device: str = "auto",
    quiet: bool = False,
    metric: str = DEFAULT_OBJECTIVE,
    wait: bool = False,
    until: Separation | None = None,
) -> int:
    """Run what is missing of ``spec``; returns the exit code (0, 1 failures, 130 Ctrl-C, 143 SIGTERM).

    Holds the experiment's sweep lock (:mod:`orchestrator.store.locks`) while it runs, and through
    a tracking server beats a heartbeat on the parent: a second sweep of the same experiment
    and store is refused (``SweepBusy``, exit 2) or, with ``wait``, waits for this one. With
    ``until``, rounds of added seeds follow the grid's own (:mod:`orchestrator.launch.rounds`).
    """
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    slots = plan_slots(workers, gpus, runs_per_gpu, device)
    for r in spec.runs:  # e.g. bf16 on CPU slots: refused before anything is recorded
        check_device(r.config, "cuda" if slots[0].gpu is not None else "cpu")
    # the processes started ahead would idle while another sweep runs: the scheduler starts its own
    heartbeat = locks.ParentHeartbeat(store, spec.name, wait=wait, say=say, on_wait=release_unadopted)
    with locks.hold(store.uri, spec.name, wait=wait, say=say, on_wait=release_unadopted), _signals_raise():
        state, outcome = None, Outcome()
        try:
            state = open_sweep(store, spec, rerun=rerun, heartbeat=heartbeat)
            release_unadopted(keep=slots[:len(state.pending)])  # processes started ahead for finished points
            say(f"sweep {spec.name} [{spec.sweep_id}]: {len(spec.runs)} points, {len(state.done)} already "
                f"finished, {len(state.pending)} to run{' (resumed)' if state.resumed else ''}")
            if state.resumed:  # the seeds that earlier --until-separated rounds added: in the closing table too
                spec = rounds.restore_added(spec, read_points(store.download_json(state.parent_run_id,
                                                                                      Artifact.POINTS)))
            # with rounds, the slots keep their processes from one round to the next
            scheduler = Scheduler(slots=slots, fail_fast=fail_fast, display=make_display(quiet),
                                  keep_processes=until is not None)

            def run(runs) -> Outcome:
                jobs = [Job.from_spec(r, uri=store.uri, experiment_id=state.experiment_id,
                                      parent_run_id=state.parent_run_id, sweep_id=spec.sweep_id, resume=not rerun)
                        for r in runs]
                try:
                    return scheduler.run(ListSource(jobs, max_retries)) if jobs else Outcome()
                except KeyboardInterrupt:
                    return Outcome(interrupted=True)

            verdict = None
            try:
                outcome = run(state.pending)
                # Rounds go on past failed points (a setting that diverges on some seeds just has fewer
                # values; one with none is not compared) and stop after L looks, the number the level
                # alpha/L is spent over, so that seeds failing again and again cannot loop for ever.
                looks = 0
                while until is not None and not (outcome.interrupted or outcome.store_failure
                                                  or (fail_fast and outcome.failed)):
                    spec, todo, verdict = _next_round(store, spec, state, until, say)
                    looks += 1
                    if not todo or looks >= until.looks:
                        break
                    verdict = None  # the round's new values decide again
                    outcome = _merged(outcome, run(todo))
            finally:
                scheduler.close()
            if outcome.store_failure:
                return _store_failed(spec, state, outcome, outcome.store_failure)
            if outcome.interrupted:
                return _interrupted(store, state, outcome, say)
            notes = _record_separation(store, state, verdict, until) if verdict is not None else []
            return _finish(store, spec, state, outcome, metric, say, notes)
        except StoreFailure as err:
            return _store_failed(spec, state, outcome, str(err))
        except KeyboardInterrupt as err:  # a signal outside the scheduler: opening, between rounds, the summary
            stopped = Outcome(interrupted=True, signal=getattr(err, "signum", signal.SIGINT))
            if state is None:
                return ExitCode.PREEMPTED if stopped.signal != signal.SIGINT else ExitCode.INTERRUPTED
            return _interrupted(store, state, stopped, say)
        finally:
            heartbeat.stop()


def _merged(before: Outcome, after: Outcome) -> Outcome:
    """The sweep's outcome over rounds: a point failed in one round and finished in a later one
    (a retried planned seed) counts as finished."""
    failed = {name: why for name, why in before.failed.items() if name not in after.finished}
    return dataclasses.replace(after, finished=before.finished + after.finished,
                               failed={**failed, **after.failed}, lost={**before.lost, **after.lost},
                               skipped=before.skipped + after.skipped, seconds=before.seconds + after.seconds)


class _Signalled(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise():
    """SIGTERM and SIGUSR1 raise like Ctrl-C while a sweep is open, so that it ends in a defined
    state wherever they land (the scheduler installs its own handlers while points run)."""
    def handler(signum, frame):  # noqa: ARG001
        raise _Signalled(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _next_round(store: TrackingStore, spec: SweepSpec, state: SweepState, until: Separation, say):
    """(spec with this round's new points, the round's runs, this look's verdict or None); no runs
    once every rival is separated or at the maximum."""
    result = compare_sweep(store, spec, state, until.metric, until.direction)
    if result is None:
        return spec, [], None
    finished = store.finished_run_keys(state.experiment_id)
    verdict = separation.decide(result, until)
    todo = rounds.next_round(spec, verdict, until, finished)
    if todo:
        known = {r.run_key for r in spec.runs}
        spec = dataclasses.replace(spec, runs=spec.runs + tuple(r for r in todo if r.run_key not in known))
        store.log_text(state.parent_run_id, points_json(expected_points(spec)), Artifact.POINTS)
        rivals = len(verdict.separated) + len(verdict.undecided)
        say(f"until separated on {until.metric}: {len(verdict.separated)} of {rivals} rival(s) separated from "
            f"{verdict.leader.label}; {len(todo)} more point(s): {', '.join(r.name for r in todo)}")
    return spec, todo, verdict


def _record_separation(store: TrackingStore, state: SweepState, verdict, until: Separation) -> list[str]:
    """Keep the separation's verdict on the parent as ``separation.json``; returns the summary's lines."""
    import json

    store.log_text(state.parent_run_id, json.dumps(separation.verdict_json(verdict, until), indent=1),
                   Artifact.SEPARATION)
    return separation.summary_lines(verdict, until)


def _store_failed(spec: SweepSpec, state: SweepState | None, outcome: Outcome, failure: str) -> int:
    """The one message of a sweep whose store failed: what finished, what did not, how to resume."""
    if state is None:
        print(f"error: {failure}\nthe sweep could not be opened and no point was started; fix the store (free "
              "space, unlock or restore it), then rerun the same command", file=sys.stderr, flush=True)
        return ExitCode.FAILED
    finished = {r.name for r in state.done} | set(outcome.finished)
    missing = [r.name for r in spec.runs if r.name not in finished]
    if not missing:
        what = (f"all {len(spec.runs)} point(s) finished, but the sweep's summary could not be recorded; "
                "rerun the same command to record it (no point runs again)")
    else:
        names = ", ".join(missing[:10]) + (f", … ({len(missing) - 10} more)" if len(missing) > 10 else "")
        what = (f"{len(spec.runs) - len(missing)} of {len(spec.runs)} point(s) finished; "
                f"{len(missing)} did not ({names}) and no further point was started. Fix the store (free space, "
                "unlock or restore it), then rerun the same command: it closes the runs left RUNNING and runs "
                "only the points that did not finish")
    print(f"error: {failure}\n{what}", file=sys.stderr, flush=True)
    return ExitCode.FAILED


def _interrupted(store: TrackingStore, state: SweepState, outcome: Outcome, say) -> int:
    preempted = outcome.signal in (signal.SIGTERM, signal.SIGUSR1)
    reason = f"preempted ({signal.Signals(outcome.signal).name})" if preempted else "interrupted"
    store.end_run(state.parent_run_id, Status.KILLED, reason)
    say(f"{'preempted' if preempted else 'interrupted'}: running points checkpointed and were recorded KILLED; "
        "rerun the same command to resume them where they stopped")
    return ExitCode.PREEMPTED if preempted else ExitCode.INTERRUPTED


def _finish(store: TrackingStore, spec: SweepSpec, state: SweepState, outcome: Outcome, metric: str, say,
            notes: Sequence[str] = ()) -> int:
    table = summarize(store, spec, state, metric)
    if table:
        print(table)
    if notes:  # the separation's verdict, below the table
        print("\n".join(notes), flush=True)
    if outcome.failed or outcome.skipped:
        store.end_run(state.parent_run_id, Status.FAILED, f"{len(outcome.failed)} point(s) failed")
        say(f"{len(outcome.failed)} point(s) FAILED:")
        for name, reason in outcome.failed.items():
            say(f"  {name}: {reason}")
        if outcome.skipped:
            say(f"{len(outcome.skipped)} point(s) not started (--fail-fast): {', '.join(outcome.skipped)}")
        say("rerun the same command to retry only what is missing")
        return ExitCode.FAILED
    store.end_run(state.parent_run_id, Status.FINISHED)
    say(f"sweep finished in {outcome.seconds:.1f}s; browse with: orch ui --tracking-uri {store.uri}")
    return ExitCode.OK


def compare_sweep(store: TrackingStore, spec: SweepSpec, state: SweepState, metric: str, direction: str):
    """The sweep's comparison on ``metric``; None when no finished run has it."""
    from orchestrator.analyze import compare

    records = sweep_records(store, state.experiment_id, spec.sweep_id, [r.run_key for r in spec.runs])
    try:
        return compare.compare(records, expected_points(spec), metric, direction=direction)
    except compare.CompareError:
        return None


def summarize(store: TrackingStore, spec: SweepSpec, state: SweepState, metric: str) -> str | None:
    """Comparison table, summary.csv and plots on the parent run; returns the table text."""
    records = sweep_records(store, state.experiment_id, spec.sweep_id, [r.run_key for r in spec.runs])
    return summarize_records(store, state.parent_run_id, records, expected_points(spec), spec.axes, metric)


def summarize_records(store: TrackingStore, parent_run_id: str, records, expected: Sequence[ExpectedPoint],
                      axes: Sequence[str], metric: str) -> str | None:
    """Log ``summary.csv``, ``plots/<metric>_by_<axis>.png`` and ``plots/val_curves.png`` on the
    parent, and its description (:func:`orchestrator.analyze.notes.sweep_note`); returns the table text."""
    from orchestrator.analyze import compare

    rows = compare.summary_rows(records, expected)
    logged = [Artifact.GRID, Artifact.POINTS]
    if rows:
        buf = io.StringIO()
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        store.log_text(parent_run_id, buf.getvalue(), Artifact.SUMMARY)
        logged.append(Artifact.SUMMARY)
    try:
        result = compare.compare(records, expected, metric)
    except compare.CompareError:
        result = None  # no finished run has this metric
    if result is not None and not any(row.n_finished for row in result.rows):
        result = None
    if result is not None:
        logged += _summary_plots(store, parent_run_id, records, expected, axes, metric, result)
    _describe_parent(store, parent_run_id, records, expected, axes, metric, result, logged)
    return None if result is None else compare.render(result, "table")


def _summary_plots(store: TrackingStore, parent_run_id: str, records, expected: Sequence[ExpectedPoint],
                   axes: Sequence[str], metric: str, result) -> list[str]:
    """The metric by each axis and the validation curves on the parent; the paths logged."""
    from orchestrator.analyze import figures
    from orchestrator.analyze.report import setting_curves

    logged = []
    for axis in axes:
        fig = figures.metric_by_axis(result, metric, axis)
        store.log_figure(parent_run_id, fig, Artifact.metric_by_axis(metric, axis))
        logged.append(Artifact.metric_by_axis(metric, axis))
    curve_metric = metric if metric.startswith("val_") else DEFAULT_OBJECTIVE
    curves = setting_curves(store, records, expected, [curve_metric])
    if curves:
        fig = figures.val_curves(curves, curve_metric)
        store.log_figure(parent_run_id, fig, Artifact.VAL_CURVES)
        logged.append(Artifact.VAL_CURVES)
    return logged


def _describe_parent(store: TrackingStore, parent_run_id: str, records, expected: Sequence[ExpectedPoint],
                     axes: Sequence[str], metric: str, result, artifacts: Sequence[str]) -> None:
    from orchestrator.analyze.notes import sweep_note

    parent = store.get_run(parent_run_id)
    store.set_note(parent_run_id, sweep_note(
        name=parent.info.run_name or "", sweep_id=parent.data.tags.get(Tag.SWEEP, ""),
        experiment_id=parent.info.experiment_id, records=records, expected=expected, axes=axes, metric=metric,
        result=result, artifacts=artifacts))
