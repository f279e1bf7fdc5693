"""Run records matched to a sweep's grid: which record stands for each run key.

``store.tracking.to_record`` turns MLflow runs into :class:`RunRecord` s; this module pairs
them with the sweep's expected points (``points.json``) and answers, per run key, "which
record is the latest, and which is the latest finished result". It imports neither mlflow
nor torch, so ``orch compare`` / ``orch report`` and their tests need no tracking server.

What counts as a result is :func:`orchestrator.store.schema.is_finished_result`. When several
records share one run key (``--rerun``), the one that started last wins; on equal start
times, the one listed last. A run key without a result is counted as diverged or failed
by its latest record (:meth:`Unit.outcome`). Pruned Optuna trials are dropped entirely
(they are neither results nor the latest state of a point), and so are records outside
the grid. Every step is one pass over the records with a dictionary by run key, so a
10,000-point sweep costs no more per record than a 10-point one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from orchestrator.store.schema import ExpectedPoint, RunRecord, Status, Tag, TrialState, is_finished_result

SEED_KEY = "seed"
SYSTEM_PREFIX = "system/"  # MLflow's system metrics (CPU, memory, GPU): the machine's, not the run's
# A run whose training stopped on a non-finite loss ends FAILED with a reason that starts
# with the exception's name (runner._reason: "TrainingDiverged: non-finite training loss ...").
DIVERGED_REASON = "TrainingDiverged"


class Outcome:
    """What became of one run key, for one metric (:meth:`Unit.outcome`)."""

    RESULT = "result"  # a finished run with a finite value
    DIVERGED = "diverged"  # training stopped on a non-finite loss, or the finished value is not finite
    FAILED = "failed"  # the latest run ended FAILED for another reason (a crash, out of memory, ...)
    OPEN = "open"  # no result yet: never ran, running, killed, or finished without the metric


# --------------------------------------------------------------------------- keys and labels


def value_text(value: Any) -> str:
    """A grouping value as shown and matched: the string MLflow stores for a param, ``?`` when absent."""
    if value is None:
        return "?"
    return value if isinstance(value, str) else str(value)


def short_name(key: str) -> str:
    """``"model.norm"`` → ``"norm"``: the last dotted part of a key."""
    return key.rsplit(".", 1)[-1]


def short_names(keys: Sequence[str]) -> list[str]:
    """Last dotted part of each key, or the full key where that part is ambiguous."""
    shorts = [short_name(k) for k in keys]
    return [s if shorts.count(s) == 1 else k for s, k in zip(shorts, keys)]


def setting_label(point: ExpectedPoint) -> str:
    """A setting's readable name: its run name without the seed's part, ``gn-bs8-s0`` → ``gn bs8``.

    Run names follow the grid's naming rules (one ``-``-joined part per key of the point,
    the seed last), so the label does too, whatever the axes. Where a value holds a ``-``
    itself the parts cannot be told apart, and the label keeps the name's dashes.
    """
    parts = point.name.split("-")
    if len(parts) == len(point.point) > 1:
        return " ".join(parts[:-1])
    return point.name.rpartition("-")[0] or "(base)"


def is_result(record: RunRecord) -> bool:
    """A finished run that is not a pruned trial (the schema's one rule)."""
    return is_finished_result(record.status, record.tags)


def select_finished(records: Iterable[RunRecord]) -> list[RunRecord]:
    """Finished, non-pruned records, one per run key (the latest start wins)."""
    return list(_latest_by_key(r for r in records if is_result(r)).values())


def _latest_by_key(records: Iterable[RunRecord]) -> dict[str, RunRecord]:
    """The latest-started record per run key, in first-seen order."""
    latest: dict[str, RunRecord] = {}
    for rec in records:
        key = rec.tags.get(Tag.RUN_KEY, "")
        if key not in latest or rec.start_time >= latest[key].start_time:
            latest[key] = rec
    return latest


# --------------------------------------------------------------------------- metrics


def is_summary(record: RunRecord, key: str) -> bool:
    """A metric the run reports once, at its end (step 0), rather than per step; not a system metric."""
    return record.steps.get(key, 0) == 0 and not key.startswith(SYSTEM_PREFIX)


def summary_metric_names(records: Iterable[RunRecord]) -> list[str]:
    """The summary metrics of the finished runs among ``records``, sorted."""
    return sorted({k for r in records if is_result(r) for k in r.metrics if is_summary(r, k)})


def step_metric_names(records: Iterable[RunRecord]) -> list[str]:
    """The metrics the finished runs among ``records`` logged per step (step > 0), sorted."""
    return sorted({k for r in records if is_result(r) for k, step in r.steps.items()
                   if step > 0 and not k.startswith(SYSTEM_PREFIX)})


# --------------------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    """One run key of the grid: its point, its latest finished record and its latest record."""

    expected: ExpectedPoint
    finished: RunRecord | None
    latest: RunRecord | None

    def setting_values(self) -> dict[str, Any]:
        """The point without seed; grid values keep their type."""
        return {k: v for k, v in self.expected.point.items() if k != SEED_KEY}

    def value_of(self, key: str) -> Any:
        """A grouping value: the grid's value for an axis, else the record's param (None without one)."""
        if key in self.expected.point:
            return self.expected.point[key]
        for rec in (self.finished, self.latest):
            if rec is not None and key in rec.params:
                return rec.params[key]
        return None

    def seed(self) -> str:
        return value_text(self.expected.point.get(SEED_KEY))

    def outcome(self, metric: str) -> str:
        """An :class:`Outcome`: the finished record's value if there is one, else the latest
        record's status (and its failure reason)."""
        if self.finished is not None:
            value = self.finished.metrics.get(metric)
            if isinstance(value, (int, float)):
                return Outcome.RESULT if math.isfinite(value) else Outcome.DIVERGED
            return Outcome.OPEN
        if self.latest is not None and self.latest.status == Status.FAILED:
            diverged = self.latest.tags.get(Tag.FAILURE_REASON, "").startswith(DIVERGED_REASON)
            return Outcome.DIVERGED if diverged else Outcome.FAILED
        return Outcome.OPEN


@dataclass(frozen=True)
class Matched:
    """Records matched to a grid: one unit per run key, in grid order."""

    units: tuple[Unit, ...]
    axes: tuple[str, ...]  # the setting's keys (no seed), in grid order


def match_units(records: Iterable[RunRecord], expected: Sequence[ExpectedPoint]) -> Matched:
    """Match records to the grid's points by run key (pruned trials and records off the grid dropped)."""
    by_key: dict[str, ExpectedPoint] = {}
    axes: dict[str, None] = {}
    for ep in expected:
        by_key.setdefault(ep.run_key, ep)
        axes.update((k, None) for k in ep.point if k != SEED_KEY)
    on_grid = [r for r in records if r.tags.get(Tag.RUN_KEY, "") in by_key
               and r.tags.get(Tag.TRIAL_STATE) != TrialState.PRUNED]
    latest = _latest_by_key(on_grid)
    finished = _latest_by_key(r for r in on_grid if is_result(r))
    units = tuple(Unit(ep, finished.get(k), latest.get(k)) for k, ep in by_key.items())
    return Matched(units, tuple(axes))


# --------------------------------------------------------------------------- summary.csv


def summary_rows(records: Iterable[RunRecord], expected: Sequence[ExpectedPoint]) -> list[dict[str, Any]]:
    """One row per grid point for summary.csv.

    Keys: ``name``, the point's keys (axes and seed), ``status`` of the latest record
    (``"missing"`` when the point never ran), ``run_id``, then every summary metric
    (names without ``/``) seen in any row's latest record, ``None`` where a row lacks it;
    all rows share the same keys, so ``csv.DictWriter`` can write them directly.
    """
    units = match_units(records, expected).units
    metric_names = sorted({m for u in units if u.latest is not None for m in u.latest.metrics if "/" not in m})
    point_keys = list(dict.fromkeys(k for u in units for k in u.expected.point))
    rows = []
    for u in units:
        rec = u.latest
        row: dict[str, Any] = {"name": u.expected.name}
        row.update({k: u.expected.point.get(k) for k in point_keys})
        row["status"] = rec.status if rec is not None else "missing"
        row["run_id"] = rec.run_id if rec is not None else None
        row.update({m: (rec.metrics.get(m) if rec is not None else None) for m in metric_names})
        rows.append(row)
    return rows
