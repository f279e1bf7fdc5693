"""A sweep's results read from the tracking store, and ``orch report``'s figures logged on the
sweep's parent under ``report/`` (a rerun replaces them), and written to a folder when asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from orchestrator.analyze import figures
from orchestrator.analyze.figures import SettingCurves
from orchestrator.analyze.layout import curve_panels, held_out_metric, quantile_names, table_layout
from orchestrator.analyze.records import RunRecord, setting_label, step_metric_names
from orchestrator.analyze.results import CompareError, compare, units_by_setting
from orchestrator.errors import UserError
from orchestrator.store.schema import Artifact, ExpectedPoint, Tag, read_points

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from orchestrator.store.tracking import TrackingStore


def sweep_points(store: "TrackingStore", parent: Any) -> list[ExpectedPoint]:
    """The grid points recorded on the sweep's parent run; UserError without them (the sweep stopped
    before recording its grid)."""
    data = store.download_json_if_any(parent.info.run_id, Artifact.POINTS)
    if data is None:
        tags = parent.data.tags
        raise UserError(
            f"sweep {tags.get(Tag.SWEEP, '?')} ({parent.info.run_name}, parent run {parent.info.run_id}) has no "
            f"points recorded: it stopped before writing {Artifact.POINTS}; rerun `orch sweep "
            f"{tags.get(Tag.GRID_FILE, 'GRID.yaml')}` to record them, or pick another sweep with --sweep")
    return read_points(data)


def sweep_records(store: "TrackingStore", experiment_id: str, sweep_id: str,
                  run_keys: Sequence[str]) -> list[RunRecord]:
    """The sweep's own runs, plus the finished results of its run keys that others finished (a
    sweep skips a point finished by anyone)."""
    from orchestrator.store.tracking import to_record

    runs = store.sweep_children(experiment_id, sweep_id)
    own, wanted = {r.info.run_id for r in runs}, set(run_keys)
    runs += [r for r in store.finished_runs(experiment_id)
             if r.data.tags[Tag.RUN_KEY] in wanted and r.info.run_id not in own]
    return [to_record(r) for r in runs]


def sweep_results(store: "TrackingStore", parent: Any) -> tuple[list[RunRecord], list[ExpectedPoint]]:
    points = sweep_points(store, parent)
    records = sweep_records(store, parent.info.experiment_id, parent.data.tags[Tag.SWEEP],
                            [p.run_key for p in points])
    return records, points


def setting_curves(store: "TrackingStore", records: Sequence[RunRecord], expected: Sequence[ExpectedPoint],
                   names: Sequence[str], *, first_seed_only: bool = False) -> list[SettingCurves]:
    """Per setting with a finished run (grid order), its finished seeds' histories of ``names``."""
    out = []
    for units in units_by_setting(records, expected):
        finished = [u for u in units if u.finished is not None][: 1 if first_seed_only else None]
        if finished:
            histories = tuple({name: store.metric_history(u.finished.run_id, name) for name in names}
                              for u in finished)
            out.append(SettingCurves(setting_label(units[0].expected), units[0].setting_values(),
                                     tuple(str(u.seed()) for u in finished), histories))
    return out


def report_figures(store: "TrackingStore", records: Sequence[RunRecord],
                   expected: Sequence[ExpectedPoint]) -> dict[str, "Figure"]:
    """The report's figures by artifact path: training curves, percentiles, and the held-out score
    by setting; a figure without data is left out, and so are the bars of a sweep without axes."""
    out = {}
    steps = step_metric_names(records)
    panels = curve_panels(steps)
    curves = setting_curves(store, records, expected, [k for p in panels for k, _ in p.series]) if panels else []
    if curves:
        out[Artifact.REPORT_CURVES] = figures.training_curves(curves, panels)
    percentiles = list(quantile_names(steps))
    if percentiles:
        first_seeds = setting_curves(store, records, expected, percentiles, first_seed_only=True)
        if first_seeds:
            out[Artifact.REPORT_QUANTILES] = figures.quantiles(first_seeds, percentiles)
    held_out = held_out_metric(*table_layout(records))
    try:
        result = compare(records, expected, held_out[0]) if held_out else None
    except CompareError:  # no finished run logged it
        result = None
    if result is not None and result.group_keys and any(row.n_finished for row in result.rows):
        out[Artifact.report_by_setting(held_out[0])] = figures.metric_by_axis(result, held_out[1],
                                                                              result.group_keys[0], interval="ci")
    return out


def publish(store: "TrackingStore", parent_run_id: str, figures: dict[str, "Figure"],
            out_dir: Path | None = None) -> list[str]:
    """Log each figure on the parent run (and save it in ``out_dir``); returns the paths logged."""
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    for path, fig in figures.items():
        store.log_figure(parent_run_id, fig, path)
        if out_dir is not None:
            fig.savefig(out_dir / Path(path).name)
    return list(figures)
