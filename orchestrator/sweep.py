"""A sweep from start to end: parent run, resume, scheduling, and the summary on the parent.

Resume rule: a point is done when its run key has a FINISHED run in the experiment;
everything else (missing, FAILED, KILLED, or RUNNING under a dead process) runs again.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from typing import Sequence

from orchestrator import tracking
from orchestrator.executor import Job, ListSource, Outcome, Scheduler, make_display, plan_slots
from orchestrator.grid import SweepSpec

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
ORPHAN_REASON = "left RUNNING by a sweep process that died; marked FAILED when the sweep resumed"


@dataclass
class SweepState:
    experiment_id: str
    parent_run_id: str
    resumed: bool
    pending: list
    done: list


def expected_points(spec: SweepSpec) -> list[dict]:
    """The sweep's points as logged in ``points.json`` (read back by ``orch compare``)."""
    return [
        {"index": r.index, "name": r.name, "run_key": r.run_key, "point": r.point, "setting": r.setting}
        for r in spec.runs
    ]


def open_sweep(uri: str, spec: SweepSpec, *, rerun: bool = False) -> SweepState:
    """Find or create the parent run, close orphans, and split points into done and pending."""
    exp_id = tracking.ensure_experiment(uri, spec.name)
    parent = tracking.find_sweep_parent(uri, exp_id, spec.sweep_id)
    if parent is None:
        parent_id = tracking.start_run(
            uri, exp_id, run_name=spec.name, params={"axes": ",".join(spec.axes) or "-",
                                                     "seeds": ",".join(map(str, spec.seeds)),
                                                     "n_points": len(spec.runs)},
            tags={"orch.kind": "sweep", "orch.sweep": spec.sweep_id, "orch.grid_file": spec.path,
                  "orch.n_points": str(len(spec.runs))},
        )
        tracking.log_artifact_text(uri, parent_id, spec.text, "grid.yaml")
        tracking.log_artifact_text(uri, parent_id, json.dumps(expected_points(spec), indent=1), "points.json")
        resumed = False
    else:
        parent_id = parent.info.run_id
        tracking.reopen_run(uri, parent_id)
        resumed = True
    tracking.fail_orphans(uri, exp_id, spec.sweep_id, ORPHAN_REASON)
    finished = set() if rerun else tracking.finished_run_keys(uri, exp_id, kind="point")
    pending = [r for r in spec.runs if r.run_key not in finished]
    done = [r for r in spec.runs if r.run_key in finished]
    return SweepState(exp_id, parent_id, resumed, pending, done)


def run_sweep(
    spec: SweepSpec,
    uri: str,
    *,
    workers: int = 1,
    gpus: Sequence[str] | None = None,
    runs_per_gpu: int = 1,
    max_retries: int = 1,
    fail_fast: bool = False,
    rerun: bool = False,
    device: str = "auto",
    quiet: bool = False,
    metric: str = "val_f1_macro",
) -> int:
    """Run what is missing of ``spec``; returns the exit code (0, 1 failures, 130 interrupted)."""
    state = open_sweep(uri, spec, rerun=rerun)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    say(f"sweep {spec.name} [{spec.sweep_id}]: {len(spec.runs)} points, {len(state.done)} already finished, "
        f"{len(state.pending)} to run{' (resumed)' if state.resumed else ''}")
    slots = plan_slots(workers, gpus, runs_per_gpu, device)
    scheduler = Scheduler(slots=slots, fail_fast=fail_fast, display=make_display(quiet))
    jobs = [Job.from_spec(r, uri=uri, experiment_id=state.experiment_id, parent_run_id=state.parent_run_id,
                          sweep_id=spec.sweep_id) for r in state.pending]
    outcome = Outcome()
    try:
        if jobs:
            outcome = scheduler.run(ListSource(jobs, max_retries))
    except KeyboardInterrupt:
        outcome.interrupted = True
    if outcome.interrupted:
        tracking.end_run(uri, state.parent_run_id, tracking.KILLED, "interrupted")
        say("interrupted: running points were recorded KILLED; rerun the same command to resume")
        return EXIT_INTERRUPTED

    table = summarize(uri, spec, state, metric)
    if table:
        print(table)
    if outcome.failed or outcome.skipped:
        tracking.end_run(uri, state.parent_run_id, tracking.FAILED,
                         f"{len(outcome.failed)} point(s) failed")
        say(f"{len(outcome.failed)} point(s) FAILED:")
        for name, reason in outcome.failed.items():
            say(f"  {name}: {reason}")
        if outcome.skipped:
            say(f"{len(outcome.skipped)} point(s) not started (--fail-fast): {', '.join(outcome.skipped)}")
        say("rerun the same command to retry only what is missing")
        return EXIT_FAILED
    tracking.end_run(uri, state.parent_run_id, tracking.FINISHED)
    say(f"sweep finished in {outcome.seconds:.1f}s; browse with: orch ui --tracking-uri {uri}")
    return EXIT_OK


def sweep_records(uri: str, experiment_id: str, sweep_id: str, run_keys: Sequence[str] = ()):
    """The sweep's own runs, plus FINISHED points of other sweeps of the experiment that it reused.

    A point is a run key: a sweep skips a point that any sweep of the same experiment has
    finished (editing a grid, e.g. adding a seed, makes a new sweep that reruns nothing
    done), so its results are found by run key, not only among its own children.
    """
    runs = tracking.sweep_children(uri, experiment_id, sweep_id)
    if run_keys:
        own = {r.info.run_id for r in runs}
        wanted = set(run_keys)
        runs += [r for r in tracking.finished_runs(uri, experiment_id, kind="point")
                 if r.data.tags["orch.run_key"] in wanted and r.info.run_id not in own]
    return [tracking.to_record(r) for r in runs]


def summarize(uri: str, spec: SweepSpec, state: SweepState, metric: str) -> str | None:
    """Comparison table, summary.csv and plots on the parent run; returns the table text."""
    from orchestrator import compare

    records = sweep_records(uri, state.experiment_id, spec.sweep_id, [r.run_key for r in spec.runs])
    expected = [compare.ExpectedPoint(**{k: p[k] for k in ("name", "run_key", "point", "setting")})
                for p in expected_points(spec)]
    return summarize_records(uri, state.parent_run_id, records, expected, spec.axes, metric)


def summarize_records(uri: str, parent_run_id: str, records, expected, axes: Sequence[str],
                      metric: str) -> str | None:
    """Log ``summary.csv``, ``plots/<metric>_by_<axis>.png`` and ``plots/val_curves.png`` on the parent."""
    import matplotlib.pyplot as plt

    from orchestrator import compare, summary_plots

    rows = compare.summary_rows(records, expected)
    if rows:
        buf = io.StringIO()
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        tracking.log_artifact_text(uri, parent_run_id, buf.getvalue(), "summary.csv")
    try:
        result = compare.compare(records, expected, metric)
    except ValueError:
        return None  # no finished run has this metric
    if not any(row.n_finished for row in result.rows):
        return None
    for axis in axes:
        fig = summary_plots.metric_by_axis(result, metric, axis)
        tracking.log_figure(uri, parent_run_id, fig, f"plots/{metric}_by_{axis}.png")
        plt.close(fig)
    curve_metric = metric if metric.startswith("val_") else "val_f1_macro"
    curves: dict[str, list[list[float]]] = {}
    finished = {r.tags.get("orch.run_key"): r for r in compare.select_finished(records)}
    for point in expected:
        rec = finished.get(point.run_key)
        if rec is not None:
            label = compare.setting_label({k: v for k, v in point.point.items() if k != "seed"}, point.name)
            curves.setdefault(label, []).append(tracking.metric_history(uri, rec.run_id, f"epoch/{curve_metric}"))
    if curves:
        fig = summary_plots.val_curves(curves, curve_metric)
        tracking.log_figure(uri, parent_run_id, fig, "plots/val_curves.png")
        plt.close(fig)
    return compare.render(result, "table")
