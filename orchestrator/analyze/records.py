"""Run records matched to a sweep's grid: which record stands for each run key.

``tracking.py`` turns MLflow runs into :class:`RunRecord` s; this module pairs them with
the sweep's expected points (``points.json``) and answers, per run key, "which record
is the latest, and which is the latest finished result". It imports neither mlflow nor
torch, so ``orch compare`` / ``orch report`` and their tests need no tracking server.

What counts as a result is :func:`orchestrator.store.schema.is_finished_result`. When several
records share one run key (``--rerun``), the one that started last wins; on equal start
times, the one listed last. A run key without a result is counted as diverged or failed
by its latest record (:meth:`Unit.outcome`). Pruned Optuna trials are dropped entirely
(they are neither results nor the latest state of a point). Records outside the expected
grid are counted as ignored when a grid is given.

The dotted-key helpers (:func:`short_name`, :func:`value_text`) live here, at the bottom
of the comparison modules, because grouping, rendering and plots all use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from orchestrator.store.schema import ExpectedPoint, Status, Tag, TrialState, is_finished_result

SEED_KEY = "seed"
# A run whose training stopped on a non-finite loss ends FAILED with a reason that starts
# with the exception's name (runner._reason: "TrainingDiverged: non-finite training loss ...").
DIVERGED_REASON = "TrainingDiverged"


class Outcome:
    """What became of one run key, for one metric (:meth:`Unit.outcome`)."""

    RESULT = "result"  # a finished run with a finite value
    DIVERGED = "diverged"  # training stopped on a non-finite loss, or the finished value is not finite
    FAILED = "failed"  # the latest run ended FAILED for another reason (a crash, out of memory, ...)
    OPEN = "open"  # no result yet: never ran, running, killed, or finished without the metric


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as plain data (built by ``tracking.py``)."""

    run_id: str
    name: str  # e.g. "gn-bs8-s0"
    status: str  # MLflow status: FINISHED | FAILED | KILLED | RUNNING | SCHEDULED
    params: Mapping[str, str]  # dotted config keys -> string values
    metrics: Mapping[str, float]  # latest values: summary ("val_f1_macro") and "epoch/..." ones
    tags: Mapping[str, str]  # schema.Tag keys: run key, point, setting, kind, ...
    start_time: int  # ms since epoch


# --------------------------------------------------------------------------- dotted keys


def parse_point(text: str | None) -> dict[str, str]:
    """``"model.norm=gn,data.batch_size=8,seed=0"`` → ``{"model.norm": "gn", ...}``."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def param_text(value: Any) -> str:
    """The string form MLflow stores for a param value."""
    return value if isinstance(value, str) else str(value)


def value_text(value: Any) -> str:
    """A grouping value as shown and matched: the param string, ``?`` when absent."""
    return "?" if value is None else param_text(value)


def short_name(key: str) -> str:
    """``"model.norm"`` → ``"norm"``: the last dotted part of a key."""
    return key.rsplit(".", 1)[-1]


def short_names(keys: Sequence[str]) -> list[str]:
    """Last dotted part of each key, or the full key where that part is ambiguous."""
    shorts = [short_name(k) for k in keys]
    return [s if shorts.count(s) == 1 else k for s, k in zip(shorts, keys)]


# --------------------------------------------------------------------------- results


def is_result(record: RunRecord) -> bool:
    """A finished run that is not a pruned trial (the schema's one rule)."""
    return is_finished_result(record.status, record.tags)


def select_finished(records: Iterable[RunRecord]) -> list[RunRecord]:
    """Finished, non-pruned records, one per run key (the latest start wins)."""
    return list(latest_by(r for r in records if is_result(r)).values())


def _identity(record: RunRecord) -> str:
    return record.tags.get(Tag.RUN_KEY) or record.run_id


def _grid_key(record: RunRecord) -> str:
    return record.tags.get(Tag.RUN_KEY, "")


def latest_by(
    records: Iterable[RunRecord], key: Callable[[RunRecord], str] = _identity
) -> dict[str, RunRecord]:
    """The latest-started record per ``key`` (by default the run key), in first-seen order."""
    latest: dict[str, RunRecord] = {}
    for rec in records:
        k = key(rec)
        if k not in latest or rec.start_time >= latest[k].start_time:
            latest[k] = rec
    return latest


# --------------------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    """One run key: its grid point (if any), latest finished record, latest record."""

    identity: str
    expected: ExpectedPoint | None
    finished: RunRecord | None
    latest: RunRecord | None
    order: int  # position in grid order (or in order of first start without a grid)

    def point(self) -> dict[str, str]:
        """The full point (axes + seed) as strings."""
        if self.expected is not None:
            return {k: param_text(v) for k, v in self.expected.point.items()}
        rec = self.finished or self.latest
        if rec is None:
            return {}
        if Tag.POINT in rec.tags:
            return parse_point(rec.tags[Tag.POINT])
        setting = parse_point(rec.tags.get(Tag.SETTING))
        if SEED_KEY in rec.params:
            setting[SEED_KEY] = rec.params[SEED_KEY]
        return setting

    def setting_values(self) -> dict[str, Any]:
        """The point without seed; grid values keep their type."""
        if self.expected is not None:
            return {k: v for k, v in self.expected.point.items() if k != SEED_KEY}
        rec = self.finished or self.latest
        if rec is not None and Tag.SETTING in rec.tags:
            return parse_point(rec.tags[Tag.SETTING])
        return {k: v for k, v in self.point().items() if k != SEED_KEY}

    def value_of(self, key: str) -> Any:
        """A grouping value: the grid's value for an axis, else the record's param."""
        if self.expected is not None and key in self.expected.point:
            return self.expected.point[key]
        for rec in (self.finished, self.latest):
            if rec is not None and key in rec.params:
                return rec.params[key]
        if self.expected is None:
            return self.point().get(key)
        return None

    def seed(self) -> str | None:
        seed = self.point().get(SEED_KEY)
        if seed is None:
            rec = self.finished or self.latest
            seed = rec.params.get(SEED_KEY) if rec is not None else None
        return seed

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

    def name(self) -> str:
        if self.expected is not None:
            return self.expected.name
        rec = self.latest or self.finished
        return rec.name if rec is not None else self.identity


@dataclass(frozen=True)
class Matched:
    """Records matched to a grid: one unit per run key, in grid order."""

    units: tuple[Unit, ...]
    axes: tuple[str, ...]  # the setting's keys (no seed), in grid order
    n_ignored: int = 0  # records outside the expected grid


def match_units(records: Iterable[RunRecord], expected: Sequence[ExpectedPoint] | None) -> Matched:
    """Match records to grid points; without a grid, the records alone define the units."""
    records = [r for r in records if r.tags.get(Tag.TRIAL_STATE) != TrialState.PRUNED]
    if expected:
        return _units_on_grid(records, expected)
    return _units_without_grid(records)


def _units_on_grid(records: Sequence[RunRecord], expected: Sequence[ExpectedPoint]) -> Matched:
    by_key: dict[str, ExpectedPoint] = {}
    axes: dict[str, None] = {}
    for ep in expected:
        by_key.setdefault(ep.run_key, ep)
        axes.update((k, None) for k in ep.point if k != SEED_KEY)
    on_grid = [r for r in records if _grid_key(r) in by_key]
    latest = latest_by(on_grid, _grid_key)
    finished = latest_by((r for r in on_grid if is_result(r)), _grid_key)
    units = tuple(Unit(k, ep, finished.get(k), latest.get(k), i) for i, (k, ep) in enumerate(by_key.items()))
    return Matched(units, tuple(axes), len(records) - len(on_grid))


def _units_without_grid(records: Sequence[RunRecord]) -> Matched:
    latest = latest_by(records)
    finished = latest_by(r for r in records if is_result(r))
    first_start: dict[str, int] = {}
    for r in records:
        k = _identity(r)
        first_start[k] = min(first_start.get(k, r.start_time), r.start_time)
    ordered = sorted(latest, key=first_start.__getitem__)
    units = tuple(Unit(k, None, finished.get(k), latest[k], i) for i, k in enumerate(ordered))
    axes = dict.fromkeys(k for u in units for k in u.setting_values())
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
    point_keys = list(dict.fromkeys(k for u in units if u.expected is not None for k in u.expected.point))
    rows = []
    for u in units:
        rec = u.latest
        point = u.expected.point if u.expected is not None else {}
        row: dict[str, Any] = {"name": u.name()}
        row.update({k: point.get(k) for k in point_keys})
        row["status"] = rec.status if rec is not None else "missing"
        row["run_id"] = rec.run_id if rec is not None else None
        row.update({m: (rec.metrics.get(m) if rec is not None else None) for m in metric_names})
        rows.append(row)
    return rows
