"""A sweep's results and the summary written on its parent run.

The summary is ``summary.csv``, ``plots/<metric>_by_<axis>.png``, ``plots/val_curves.png``
and the parent's description (:func:`orchestrator.analyze.notes.sweep_note`). Whoever closes
the sweep writes it: a local sweep at its end, the queue worker that ends the last point,
Slurm's close.
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Sequence

from experiments.metric_names import DEFAULT_OBJECTIVE, epoch_key
from orchestrator.store.schema import Artifact, ExpectedPoint, Tag
from orchestrator.store.tracking import to_record

if TYPE_CHECKING:
    from orchestrator.store.tracking import TrackingStore


def sweep_records(store: TrackingStore, experiment_id: str, sweep_id: str, run_keys: Sequence[str] = ()):
    """The sweep's own runs, plus the finished results of its run keys that others finished.

    A point is a run key: a sweep skips a point whose run key has a finished result in the
    experiment, whoever finished it (editing a grid, e.g. adding a seed, makes a new sweep
    that reruns nothing done), so its results are found by run key, not only among its own
    children.
    """
    runs = store.sweep_children(experiment_id, sweep_id)
    if run_keys:
        own = {r.info.run_id for r in runs}
        wanted = set(run_keys)
        runs += [r for r in store.finished_runs(experiment_id)
                 if r.data.tags[Tag.RUN_KEY] in wanted and r.info.run_id not in own]
    return [to_record(r) for r in runs]


def compare_sweep(records, expected: Sequence[ExpectedPoint], metric: str, direction: str = "max"):
    """The sweep's comparison on ``metric``; None when no finished run has it."""
    from orchestrator.analyze import compare

    try:
        result = compare.compare(records, expected, metric, direction=direction)
    except compare.CompareError:
        return None
    return result if any(row.n_finished for row in result.rows) else None


def write_summary(store: TrackingStore, parent_run_id: str, records, expected: Sequence[ExpectedPoint],
                  axes: Sequence[str], metric: str) -> str | None:
    """Log the summary on the parent (see the module docstring); returns the closing table's text."""
    from orchestrator.analyze import compare

    rows = compare.summary_rows(records, expected)
    logged = [Artifact.GRID, Artifact.POINTS]
    if rows:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
        store.log_text(parent_run_id, buf.getvalue(), Artifact.SUMMARY)
        logged.append(Artifact.SUMMARY)
    result = compare_sweep(records, expected, metric)
    if result is not None:
        logged += _summary_plots(store, parent_run_id, records, expected, axes, metric, result)
    _describe_parent(store, parent_run_id, records, expected, axes, metric, result, logged)
    return None if result is None else compare.render(result, "table")


def _summary_plots(store: TrackingStore, parent_run_id: str, records, expected: Sequence[ExpectedPoint],
                   axes: Sequence[str], metric: str, result) -> list[str]:
    """The metric by each axis and the validation curves on the parent; the paths logged."""
    from orchestrator.analyze import compare, summary_plots

    logged = []
    for axis in axes:
        fig = summary_plots.metric_by_axis(result, metric, axis)
        store.log_figure(parent_run_id, fig, Artifact.metric_by_axis(metric, axis))
        logged.append(Artifact.metric_by_axis(metric, axis))
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
