"""A sweep from start to end: parent run, resume, scheduling, and the summary on the parent.

Resume rule: a point is done when its run key has a FINISHED run in the experiment;
everything else (missing, FAILED, KILLED, or RUNNING under a dead process) runs again.
"""

from __future__ import annotations

import csv
import io
import signal
import sys
from dataclasses import dataclass
from typing import Sequence

from experiments.config import check_device
from experiments.metric_names import DEFAULT_OBJECTIVE, epoch_key
from orchestrator import locks
from orchestrator.errors import ExitCode
from orchestrator.display import make_display
from orchestrator.grid import SweepSpec
from orchestrator.scheduler import Job, ListSource, Outcome, Scheduler, plan_slots
from orchestrator.schema import Artifact, ExpectedPoint, Kind, Status, Tag, points_json
from orchestrator.tracking import TrackingStore, to_record

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
    return [ExpectedPoint(name=r.name, run_key=r.run_key, point=r.point, setting=r.setting, index=r.index)
            for r in spec.runs]


def open_sweep(store: TrackingStore, spec: SweepSpec, *, rerun: bool = False) -> SweepState:
    """Find or create the parent run, close orphans, and split points into done and pending."""
    exp_id = store.ensure_experiment(spec.name)
    parent = store.find_sweep_parent(exp_id, spec.sweep_id)
    if parent is None:
        parent_id = store.start_run(
            exp_id, run_name=spec.name, params={"axes": ",".join(spec.axes) or "-",
                                                "seeds": ",".join(map(str, spec.seeds)),
                                                "n_points": len(spec.runs)},
            tags={Tag.KIND: Kind.SWEEP, Tag.SWEEP: spec.sweep_id, Tag.GRID_FILE: spec.path,
                  Tag.N_POINTS: str(len(spec.runs))},
        )
        store.log_text(parent_id, spec.text, Artifact.GRID)
        store.log_text(parent_id, points_json(expected_points(spec)), Artifact.POINTS)
        resumed = False
    else:
        parent_id = parent.info.run_id
        store.reopen_run(parent_id)
        resumed = True
    store.fail_orphans(exp_id, spec.sweep_id, ORPHAN_REASON)
    finished = set() if rerun else store.finished_run_keys(exp_id, kind=Kind.POINT)
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
) -> int:
    """Run what is missing of ``spec``; returns the exit code (0, 1 failures, 130 Ctrl-C, 143 SIGTERM).

    Holds the experiment's sweep lock (:mod:`orchestrator.locks`) while it runs: a second
    sweep of the same experiment and store is refused (``SweepBusy``, exit 2) or, with
    ``wait``, waits for this one.
    """
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    slots = plan_slots(workers, gpus, runs_per_gpu, device)
    for r in spec.runs:  # e.g. bf16 on CPU slots: refused before anything is recorded
        check_device(r.config, "cuda" if slots[0].gpu is not None else "cpu")
    with locks.hold(store.uri, spec.name, wait=wait, say=say):
        state = open_sweep(store, spec, rerun=rerun)
        say(f"sweep {spec.name} [{spec.sweep_id}]: {len(spec.runs)} points, {len(state.done)} already finished, "
            f"{len(state.pending)} to run{' (resumed)' if state.resumed else ''}")
        jobs = [Job.from_spec(r, uri=store.uri, experiment_id=state.experiment_id,
                              parent_run_id=state.parent_run_id, sweep_id=spec.sweep_id, resume=not rerun)
                for r in state.pending]
        outcome = Outcome()
        try:
            if jobs:
                scheduler = Scheduler(slots=slots, fail_fast=fail_fast, display=make_display(quiet))
                outcome = scheduler.run(ListSource(jobs, max_retries))
        except KeyboardInterrupt:
            outcome.interrupted = True
        if outcome.interrupted:
            return _interrupted(store, state, outcome, say)
        return _finish(store, spec, state, outcome, metric, say)


def _interrupted(store: TrackingStore, state: SweepState, outcome: Outcome, say) -> int:
    preempted = outcome.signal in (signal.SIGTERM, signal.SIGUSR1)
    reason = f"preempted ({signal.Signals(outcome.signal).name})" if preempted else "interrupted"
    store.end_run(state.parent_run_id, Status.KILLED, reason)
    say(f"{'preempted' if preempted else 'interrupted'}: running points checkpointed and were recorded KILLED; "
        "rerun the same command to resume them where they stopped")
    return ExitCode.PREEMPTED if preempted else ExitCode.INTERRUPTED


def _finish(store: TrackingStore, spec: SweepSpec, state: SweepState, outcome: Outcome, metric: str, say) -> int:
    table = summarize(store, spec, state, metric)
    if table:
        print(table)
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


def sweep_records(store: TrackingStore, experiment_id: str, sweep_id: str, run_keys: Sequence[str] = ()):
    """The sweep's own runs, plus FINISHED points of other sweeps of the experiment that it reused.

    A point is a run key: a sweep skips a point that any sweep of the same experiment has
    finished (editing a grid, e.g. adding a seed, makes a new sweep that reruns nothing
    done), so its results are found by run key, not only among its own children.
    """
    runs = store.sweep_children(experiment_id, sweep_id)
    if run_keys:
        own = {r.info.run_id for r in runs}
        wanted = set(run_keys)
        runs += [r for r in store.finished_runs(experiment_id, kind=Kind.POINT)
                 if r.data.tags[Tag.RUN_KEY] in wanted and r.info.run_id not in own]
    return [to_record(r) for r in runs]


def summarize(store: TrackingStore, spec: SweepSpec, state: SweepState, metric: str) -> str | None:
    """Comparison table, summary.csv and plots on the parent run; returns the table text."""
    records = sweep_records(store, state.experiment_id, spec.sweep_id, [r.run_key for r in spec.runs])
    return summarize_records(store, state.parent_run_id, records, expected_points(spec), spec.axes, metric)


def summarize_records(store: TrackingStore, parent_run_id: str, records, expected: Sequence[ExpectedPoint],
                      axes: Sequence[str], metric: str) -> str | None:
    """Log ``summary.csv``, ``plots/<metric>_by_<axis>.png`` and ``plots/val_curves.png`` on the parent."""
    from orchestrator import compare, summary_plots

    rows = compare.summary_rows(records, expected)
    if rows:
        buf = io.StringIO()
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        store.log_text(parent_run_id, buf.getvalue(), Artifact.SUMMARY)
    try:
        result = compare.compare(records, expected, metric)
    except compare.CompareError:
        return None  # no finished run has this metric
    if not any(row.n_finished for row in result.rows):
        return None
    for axis in axes:
        fig = summary_plots.metric_by_axis(result, metric, axis)
        store.log_figure(parent_run_id, fig, Artifact.metric_by_axis(metric, axis))
    curve_metric = metric if metric.startswith("val_") else DEFAULT_OBJECTIVE
    curves: dict[str, list[list[float]]] = {}
    finished = {r.tags.get(Tag.RUN_KEY): r for r in compare.select_finished(records)}
    for point in expected:
        rec = finished.get(point.run_key)
        if rec is not None:
            label = compare.setting_label({k: v for k, v in point.point.items() if k != "seed"}, point.name)
            curves.setdefault(label, []).append(store.metric_history(rec.run_id, epoch_key(curve_metric)))
    if curves:
        fig = summary_plots.val_curves(curves, curve_metric)
        store.log_figure(parent_run_id, fig, Artifact.VAL_CURVES)
    return compare.render(result, "table")
