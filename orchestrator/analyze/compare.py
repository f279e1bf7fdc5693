"""Sweep results → comparison tables and the study's report: the public names in one place.

The work is split by the question each part answers:

* ``records.py``: which record stands for each run key of the grid (:class:`RunRecord`,
  :func:`select_finished`, :func:`summary_rows`);
* ``results.py``: the numbers: groups, mean ± std and 95% CI over seeds, ranks, paired
  deltas with a paired t-test and its p adjusted for the table's number of tests,
  diverged and failed runs per row, the report's statistics (:func:`compare`,
  :func:`report_stats`, :class:`Stats`, :class:`PairedStats`);
* ``render.py``: the text: table, csv, markdown, json, and latex for the report
  (:func:`render`, :func:`report`, :func:`compare_notes`).

None of them imports mlflow or torch (scipy is imported when an interval or a test is
first computed, statsmodels when p-values are adjusted), so ``orch compare`` / ``orch report`` and their
tests stay fast and need no tracking server. What counts as a result is
:func:`orchestrator.store.schema.is_finished_result`; when several finished records share one
run key (``--rerun``), the one that started last wins.

Example::

    result = compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch")
    print(render(result, "table"))
    print(report(records, expected, fmt="markdown"))
"""

from __future__ import annotations

from orchestrator.analyze.records import Outcome, RunRecord, is_result, parse_point, select_finished, summary_rows
from orchestrator.analyze.render import (
    FORMATS,
    REPORT_FORMATS,
    STAT_FIELDS,
    compare_notes,
    render,
    render_report,
    report,
    row_to_dict,
    setting_label,
)
from orchestrator.analyze.results import (
    CORRECTIONS,
    FAILED_AS,
    CompareError,
    CompareResult,
    CompareRow,
    PairedStats,
    Sample,
    SettingStats,
    SplitStats,
    Stats,
    compare,
    report_stats,
)

__all__ = [
    "CORRECTIONS",
    "FAILED_AS",
    "FORMATS",
    "REPORT_FORMATS",
    "STAT_FIELDS",
    "CompareError",
    "CompareResult",
    "CompareRow",
    "Outcome",
    "PairedStats",
    "RunRecord",
    "Sample",
    "SettingStats",
    "SplitStats",
    "Stats",
    "compare",
    "compare_notes",
    "is_result",
    "parse_point",
    "render",
    "render_report",
    "report",
    "report_stats",
    "row_to_dict",
    "select_finished",
    "setting_label",
    "summary_rows",
]
