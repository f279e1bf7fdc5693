"""Run records matched to a sweep's grid points: per run key, the latest record and the latest
finished result (the one started last wins; on equal start times, the one listed last). Pruned
trials and records off the grid are dropped. One pass per step: linear in the records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from orchestrator.store.schema import ExpectedPoint, RunRecord, Status, Tag, TrialState, is_finished_result

SYSTEM_PREFIX = "system/"  # MLflow's system metrics (CPU, memory, GPU): the machine's, not the run's
DIVERGED_REASON = "TrainingDiverged"  # the start of a FAILED run's reason when its loss went non-finite


class Outcome:
    """What became of one run key, for one metric (:meth:`Unit.outcome`)."""

    RESULT = "result"  # a finished run with a finite value
    DIVERGED = "diverged"  # training stopped on a non-finite loss, or the finished value is not finite
    FAILED = "failed"  # the latest run ended FAILED for another reason (a crash, out of memory, ...)
    OPEN = "open"  # no result yet: never ran, running, killed, or finished without the metric


def value_text(value: Any) -> str:
    """A grouping value as MLflow stores a param; ``?`` when absent."""
    return "?" if value is None else str(value)


def short_name(key: str) -> str:
    """``"model.norm"`` → ``"norm"``."""
    return key.rsplit(".", 1)[-1]


def short_names(keys: Sequence[str]) -> list[str]:
    """Last dotted part of each key, or the full key where that part is ambiguous."""
    shorts = [short_name(k) for k in keys]
    return [s if shorts.count(s) == 1 else k for s, k in zip(shorts, keys)]


def setting_label(point: ExpectedPoint) -> str:
    """Its run name without the seed's part, ``gn-bs8-s0`` → ``gn bs8`` (dashes kept where a value
    holds one)."""
    parts = point.name.split("-")
    if len(parts) == len(point.point) > 1:
        return " ".join(parts[:-1])
    return point.name.rpartition("-")[0] or "(base)"


def is_result(record: RunRecord) -> bool:
    """A finished run that is not a pruned trial."""
    return is_finished_result(record.status, record.tags)


def _latest_by_key(records: Iterable[RunRecord]) -> dict[str, RunRecord]:
    latest: dict[str, RunRecord] = {}
    for rec in records:
        key = rec.tags.get(Tag.RUN_KEY, "")
        if key not in latest or rec.start_time >= latest[key].start_time:
            latest[key] = rec
    return latest


def is_summary(record: RunRecord, key: str) -> bool:
    """A metric logged once (step 0), not a system metric."""
    return record.steps.get(key, 0) == 0 and not key.startswith(SYSTEM_PREFIX)


def step_metric_names(records: Iterable[RunRecord]) -> list[str]:
    """The metrics the finished runs logged per step, sorted."""
    return sorted({k for r in records if is_result(r) for k, step in r.steps.items()
                   if step > 0 and not k.startswith(SYSTEM_PREFIX)})


@dataclass(frozen=True)
class Unit:
    """One run key of the grid: its point, its latest finished record and its latest record."""

    expected: ExpectedPoint
    finished: RunRecord | None
    latest: RunRecord | None

    def setting_values(self) -> dict[str, Any]:
        """The point without seed; grid values keep their type."""
        return {k: v for k, v in self.expected.point.items() if k != "seed"}

    def value_of(self, key: str) -> Any:
        """A grouping value: the grid's value for an axis, else the record's param (None without one)."""
        if key in self.expected.point:
            return self.expected.point[key]
        for rec in (self.finished, self.latest):
            if rec is not None and key in rec.params:
                return rec.params[key]
        return None

    def seed(self) -> str:
        return value_text(self.expected.point.get("seed"))

    def outcome(self, metric: str) -> str:
        """From the finished record's value if any, else from the latest record's status and reason."""
        if self.finished is not None:
            value = self.finished.metrics.get(metric)
            if isinstance(value, (int, float)):
                return Outcome.RESULT if math.isfinite(value) else Outcome.DIVERGED
            return Outcome.OPEN
        if self.latest is not None and self.latest.status == Status.FAILED:
            diverged = self.latest.tags.get(Tag.FAILURE_REASON, "").startswith(DIVERGED_REASON)
            return Outcome.DIVERGED if diverged else Outcome.FAILED
        return Outcome.OPEN


def match_units(records: Iterable[RunRecord],
                expected: Sequence[ExpectedPoint]) -> tuple[tuple[Unit, ...], tuple[str, ...]]:
    """(one unit per run key, the setting's keys without the seed), both in grid order: records matched
    to the grid's points by run key (pruned trials and records off the grid dropped)."""
    by_key: dict[str, ExpectedPoint] = {}
    axes: dict[str, None] = {}
    for ep in expected:
        by_key.setdefault(ep.run_key, ep)
        axes.update((k, None) for k in ep.point if k != "seed")
    on_grid = [r for r in records if r.tags.get(Tag.RUN_KEY, "") in by_key
               and r.tags.get(Tag.TRIAL_STATE) != TrialState.PRUNED]
    latest = _latest_by_key(on_grid)
    finished = _latest_by_key(r for r in on_grid if is_result(r))
    units = tuple(Unit(ep, finished.get(k), latest.get(k)) for k, ep in by_key.items())
    return units, tuple(axes)


def summary_rows(records: Iterable[RunRecord], expected: Sequence[ExpectedPoint]) -> list[dict[str, Any]]:
    """summary.csv: per grid point ``name``, its keys, the latest record's ``status`` (or
    ``"missing"``) and ``run_id``, then every summary metric; every row has the same keys."""
    units, _ = match_units(records, expected)
    metric_names = sorted({m for u in units if u.latest is not None for m in u.latest.metrics if "/" not in m})
    point_keys = list(dict.fromkeys(k for u in units for k in u.expected.point))
    rows = []
    for u in units:
        rec = u.latest
        rows.append({"name": u.expected.name, **{k: u.expected.point.get(k) for k in point_keys},
                     "status": rec.status if rec is not None else "missing",
                     "run_id": rec.run_id if rec is not None else None,
                     **{m: rec.metrics.get(m) if rec is not None else None for m in metric_names}})
    return rows
