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

from experiments.metric_names import DEFAULT_OBJECTIVE
from orchestrator.store.schema import Artifact, ExpectedPoint, Tag
from orchestrator.analyze.report import setting_curves

if TYPE_CHECKING:
    from orchestrator.store.tracking import TrackingStore


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
    from orchestrator.analyze import figures

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
