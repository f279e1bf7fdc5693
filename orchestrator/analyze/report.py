"""``orch report``'s figures: read per-epoch histories from the tracking store, draw, publish.

The table is ``render.report``'s; this module gathers what the figures need (the
per-epoch metrics of every finished run of the sweep), asks ``report_plots.py`` to draw
them, and logs them on the sweep's parent run under ``report/`` (the paths are
``schema.Artifact.REPORT_*``) and, when asked, writes them to a folder as PNG.

The sweep's parent is orch's own record of the sweep, so a report that only reads the
results still (re)writes these figures there: rerunning ``orch report`` replaces them.

Example::

    records, expected = sweep_results(store, parent)
    figures = report_figures(store, records, expected)
    publish(store, parent.info.run_id, figures, Path("figures"))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from experiments.metric_names import QUANTILES, TRAIN_LOSS, VAL_LOSS, VAL_SCORES, epoch_key
from orchestrator.errors import UserError
from orchestrator.analyze.records import RunRecord
from orchestrator.analyze.render import setting_label
from orchestrator.analyze.results import SPLIT_SCORE, CompareError, compare, units_by_setting
from orchestrator.store.schema import Artifact, ExpectedPoint, Tag, read_points

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from orchestrator.analyze.report_plots import SettingCurves
    from orchestrator.store.tracking import TrackingStore

CURVE_NAMES = (TRAIN_LOSS, VAL_LOSS, VAL_SCORES[0])  # per-epoch values of the training-curve panels
TEST_ACC = SPLIT_SCORE["test", "acc"]


class NoPointsRecorded(UserError):
    """A sweep's parent run without ``points.json``: the sweep stopped before recording its grid."""


def sweep_points(store: "TrackingStore", parent: Any) -> list[ExpectedPoint]:
    """The grid points recorded on the sweep's parent run (``parent``, an MLflow Run).

    Raises:
        NoPointsRecorded: the parent has no ``points.json``.
    """
    data = store.download_json_if_any(parent.info.run_id, Artifact.POINTS)
    if data is None:
        tags = parent.data.tags
        raise NoPointsRecorded(
            f"sweep {tags.get(Tag.SWEEP, '?')} ({parent.info.run_name}, parent run {parent.info.run_id}) has no "
            f"points recorded: it stopped before writing {Artifact.POINTS}; rerun `orch sweep "
            f"{tags.get(Tag.GRID_FILE, 'GRID.yaml')}` to record them, or pick another sweep with --sweep")
    return read_points(data)


def sweep_results(store: "TrackingStore", parent: Any) -> tuple[list[RunRecord], list[ExpectedPoint]]:
    """The records and grid points of the sweep whose parent run is ``parent`` (an MLflow Run).

    Raises:
        NoPointsRecorded: the parent has no ``points.json``.
    """
    from orchestrator.analyze.sweep_summary import sweep_records

    points = sweep_points(store, parent)
    records = sweep_records(store, parent.info.experiment_id, parent.data.tags[Tag.SWEEP],
                            [p.run_key for p in points])
    return records, points


def setting_curves(store: "TrackingStore", records: Sequence[RunRecord], expected: Sequence[ExpectedPoint] | None,
                   names: Sequence[str], *, first_seed_only: bool = False) -> list["SettingCurves"]:
    """Per setting (grid order), the per-epoch histories of ``names`` of its finished seeds.

    ``names`` are per-epoch names of ``metric_names`` (``"val_loss"``); settings
    without a finished run are left out.
    """
    from orchestrator.analyze.report_plots import SettingCurves

    out = []
    for units in units_by_setting(records, expected):
        finished = [u for u in units if u.finished is not None][: 1 if first_seed_only else None]
        if not finished:
            continue
        histories = tuple({name: store.metric_history(u.finished.run_id, epoch_key(name)) for name in names}
                          for u in finished)
        label = setting_label(units[0].setting_values(), units[0].name())
        out.append(SettingCurves(label, tuple(str(u.seed()) for u in finished), histories))
    return out


def report_figures(store: "TrackingStore", records: Sequence[RunRecord],
                   expected: Sequence[ExpectedPoint] | None) -> dict[str, "Figure"]:
    """The report's figures by artifact path; a figure without data (no finished run) is left out,
    and so is the test-accuracy figure of a sweep without axes."""
    from orchestrator.analyze import report_plots

    figures = {}
    curves = setting_curves(store, records, expected, CURVE_NAMES)
    if curves:
        figures[Artifact.REPORT_CURVES] = report_plots.training_curves(curves)
        quantiles = setting_curves(store, records, expected, tuple(QUANTILES), first_seed_only=True)
        figures[Artifact.REPORT_QUANTILES] = report_plots.quantiles(quantiles)
    try:
        result = compare(records, expected, TEST_ACC)
    except CompareError:  # no finished run logged a test accuracy
        result = None
    # A sweep without axes (seeds only) has one setting: nothing to set side by side.
    if result is not None and result.group_keys and any(row.n_finished for row in result.rows):
        figures[Artifact.REPORT_TEST_ACC] = report_plots.score_by_setting(result)
    return figures


def publish(store: "TrackingStore", parent_run_id: str, figures: dict[str, "Figure"],
            out_dir: Path | None = None) -> list[str]:
    """Log each figure on the parent run at its path; with ``out_dir``, also save it there as PNG.

    Returns the artifact paths logged.
    """
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    for path, fig in figures.items():
        store.log_figure(parent_run_id, fig, path)
        if out_dir is not None:
            fig.savefig(out_dir / Path(path).name)
    return list(figures)
