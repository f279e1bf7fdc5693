"""The summary on a sweep's parent run (``summary.csv``, plots, description), written by whoever
closes the sweep; it ranks by ``--metric``, else the entry's default, else the first summary metric.
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Sequence

from orchestrator.analyze import figures
from orchestrator.analyze.layout import bare_name, held_out_metric, is_validation, table_layout
from orchestrator.analyze.notes import sweep_note
from orchestrator.analyze.records import is_result, is_summary, step_metric_names, summary_rows
from orchestrator.analyze.render import render
from orchestrator.analyze.report import publish, setting_curves
from orchestrator.analyze.results import CompareError, compare
from orchestrator.store.schema import Artifact, ExpectedPoint, Tag

if TYPE_CHECKING:
    from orchestrator.store.tracking import TrackingStore


def entry_metric(entry) -> str | None:
    return getattr(entry, "default_metric", None) or None


def sweep_metric(records, metric: str | None = None) -> str | None:
    """``metric``, else the held-out score the finished runs report, else their first summary metric."""
    if metric:
        return metric
    finished = [r for r in records if is_result(r)]
    held_out = held_out_metric(*table_layout(finished))
    return held_out[0] if held_out else min((k for r in finished for k in r.metrics if is_summary(r, k)), default=None)


def compare_sweep(records, expected: Sequence[ExpectedPoint], metric: str | None, direction: str = "max"):
    """The comparison on ``metric`` (None: :func:`sweep_metric`'s); None when no finished run has it."""
    metric = sweep_metric(records, metric)
    if metric is None:
        return None
    try:
        result = compare(records, expected, metric, direction=direction)
    except CompareError:
        return None
    return result if any(row.n_finished for row in result.rows) else None


def write_summary(store: TrackingStore, parent_run_id: str, records, expected: Sequence[ExpectedPoint],
                  axes: Sequence[str], metric: str | None, default: str | None = None) -> str | None:
    """Log the summary on the parent; returns the closing table. ``default``: the entry's metric,
    whose curves are shown when ``metric`` has no validation curve."""
    metric = sweep_metric(records, metric)
    rows = summary_rows(records, expected)
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
        plots = {Artifact.metric_by_axis(metric, axis): figures.metric_by_axis(result, metric, axis) for axis in axes}
        curve = curve_metric(step_metric_names(records), metric, default)
        curves = setting_curves(store, records, expected, [curve]) if curve else []
        if curves:
            plots[Artifact.VAL_CURVES] = figures.val_curves(curves, bare_name(curve), curve)
        logged += publish(store, parent_run_id, plots)
    parent = store.get_run(parent_run_id)
    store.set_note(parent_run_id, sweep_note(
        name=parent.info.run_name or "", sweep_id=parent.data.tags.get(Tag.SWEEP, ""),
        experiment_id=parent.info.experiment_id, records=records, expected=expected, axes=axes, metric=metric,
        result=result, artifacts=logged))
    return None if result is None else render(result, "table")


def curve_metric(steps: Sequence[str], metric: str, default: str | None = None) -> str | None:
    """The step metric of the validation curves: ``metric``'s when it is a validation one, else
    ``default``'s, else the first validation step metric, else the first step metric."""
    def logged(name: str | None) -> str | None:
        return next((k for k in steps if name and bare_name(k) == name), None)

    return ((logged(metric) if is_validation(metric) else None) or logged(default)
            or next((k for k in steps if is_validation(k)), None) or next(iter(steps), None))
