"""Sweep results → comparison tables and the report's table: the public names in one place.

``records.py`` says which record stands for each run key of the grid, ``results.py``
computes the numbers (with ``stats.py``) (groups, mean ± std and 95% CI over seeds, ranks, paired deltas with
a paired t-test and its p adjusted for the table's number of tests, diverged and failed
runs per row, the report's statistics), ``render.py`` lays them out as text. None of them
imports mlflow or torch, so ``orch compare`` / ``orch report`` and their tests stay fast.

Example::

    result = compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch")
    print(render(result, "table"))
    print(report(records, expected, fmt="markdown"))
"""

from __future__ import annotations

from orchestrator.analyze.records import Outcome, RunRecord, select_finished, summary_rows
from orchestrator.analyze.render import FORMATS, REPORT_FORMATS, compare_notes, render, render_report, report
from orchestrator.analyze.results import CompareError, CompareResult, CompareRow, compare
from orchestrator.analyze.stats import PairedStats, Stats

__all__ = [
    "FORMATS", "REPORT_FORMATS", "CompareError", "CompareResult", "CompareRow", "Outcome", "PairedStats",
    "RunRecord", "Stats", "compare", "compare_notes", "render", "render_report", "report", "select_finished",
    "summary_rows",
]
