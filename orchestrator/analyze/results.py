"""Sweep results as numbers: groups of runs, mean ± std over seeds, ranks, paired deltas to a
baseline with p-values adjusted for the table's number of tests (Holm by default: family-wise
error at most ALPHA), and the report's statistics per (setting, split).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Mapping, Sequence

from orchestrator.analyze.layout import table_layout
from orchestrator.analyze.records import Outcome, RunRecord, Unit, match_units, setting_label, short_name, value_text
from orchestrator.analyze.stats import ALPHA, PairedStats, Stats
from orchestrator.errors import UserError
from orchestrator.store.schema import ExpectedPoint

DIRECTIONS = ("max", "min")  # which end of the metric is best
CORRECTIONS = ("holm", "bonferroni", "none")  # --correction: a statsmodels multipletests method, or the raw p
FAILED_AS = ("drop", "worst")  # what a diverged or failed run key counts as


class CompareError(UserError):
    """A comparison that cannot be made as asked: names what exists instead."""


@dataclass(frozen=True)
class Sample:
    """One finished run's value inside a row."""

    seed: str | None
    value: float
    run_name: str
    run_id: str
    point: Mapping[str, Any] = field(default_factory=dict, compare=False)  # the grid point: axes + seed
    stand_in: bool = False  # a diverged or failed run counted as the table's worst value (failed_as="worst")


@dataclass(frozen=True)
class CompareRow:
    """One group (by default one setting, seeds pooled)."""

    group: Mapping[str, Any]  # grouping key -> value (the grid's value, else the param string)
    n_expected: int
    samples: tuple[Sample, ...] = ()  # the finished runs with a finite value (and stand-ins), grid order
    rank: int | None = None  # 1 = best; None when the group has no value
    delta: PairedStats = PairedStats()  # paired differences to the baseline (row - baseline), one per pair
    order: int = 0  # position of the group in grid order (for plots and stable ties)
    n_diverged: int = 0  # run keys whose training diverged (Outcome.DIVERGED)
    n_failed: int = 0  # run keys whose latest run FAILED otherwise (Outcome.FAILED)
    p_adjusted: float = math.nan  # p_value adjusted over the table's tests; NaN without correction or p
    correction: str = "none"  # one of CORRECTIONS: which p decides ``significant``
    extra_seeds: bool = False  # --until-separated added seeds to it: its interval is optimistic if it leads

    @cached_property
    def stats(self) -> Stats:
        """The metric over the group's samples (finished runs, and stand-ins with failed_as="worst")."""
        return Stats(self.values)

    label = property(lambda self: ",".join(f"{k}={value_text(v)}" for k, v in self.group.items()),
                     doc="``key=value,...`` in grouping-key order.")
    values = property(lambda self: tuple(s.value for s in self.samples))
    seeds = property(lambda self: tuple(s.seed for s in self.samples))
    mean = property(lambda self: self.stats.mean, doc="NaN when no finished run.")
    std = property(lambda self: self.stats.std, doc="Sample std (ddof=1); NaN below two finished runs.")
    min = property(lambda self: self.stats.min)
    max = property(lambda self: self.stats.max)
    n_finished = property(lambda self: sum(not s.stand_in for s in self.samples),
                          doc="Finished runs with a finite value (stand-ins not counted).")
    ci_low = property(lambda self: self.stats.ci_low, doc="95% CI of the mean (Student t); NaN below two runs.")
    ci_high = property(lambda self: self.stats.ci_high)
    delta_mean = property(lambda self: self.delta.mean, doc="NaN without a baseline or a pair.")
    delta_std = property(lambda self: self.delta.std)
    n_pairs = property(lambda self: self.delta.n)
    delta_ci_low = property(lambda self: self.delta.ci_low, doc="95% CI of the mean paired difference.")
    delta_ci_high = property(lambda self: self.delta.ci_high)
    p_value = property(lambda self: self.delta.p_value, doc="Paired t-test against the baseline (two-sided).")

    @property
    def significant(self) -> bool | None:
        """The adjusted p (the raw one with ``correction="none"``) < ALPHA; None without a p."""
        p = self.p_value if self.correction == "none" else self.p_adjusted
        return None if math.isnan(p) else bool(p < ALPHA)


@dataclass(frozen=True)
class CompareResult:
    metric: str
    direction: str  # "max" | "min"
    group_keys: tuple[str, ...]
    rows: tuple[CompareRow, ...]
    baseline_key: str | None = None
    baseline_value: str | None = None
    correction: str = "none"  # one of CORRECTIONS
    n_tests: int = 0  # paired tests in the table (rows with a p, before ``top``): the correction's m
    failed_as: str = "drop"  # one of FAILED_AS
    worst: float = math.nan  # the stand-in value with failed_as="worst"; NaN when no run has a value
    pooled_axes: tuple[str, ...] = ()  # grid axes that are not grouping keys: their runs share a row

    baseline = property(lambda self: None if self.baseline_key is None
                        else f"{self.baseline_key}={self.baseline_value}")


@dataclass(frozen=True)
class SplitStats:
    """One row of the report: a setting's scores on one split, over its finished seeds."""

    split: str  # a split of the table (orchestrator.analyze.layout): "train", "val", "test", ...
    scores: Mapping[str, Stats]  # score ("acc", ...) -> values of <split>_<score> over seeds; every row has the same


@dataclass(frozen=True)
class SettingStats:
    """One setting of the report: its values (no seed), its label and one :class:`SplitStats` per split."""

    values: Mapping[str, Any]  # setting key -> value, grid order
    label: str  # records.setting_label: "gn bs8"
    splits: tuple[SplitStats, ...]


def compare(
    records: Iterable[RunRecord],
    expected: Sequence[ExpectedPoint],
    metric: str,
    *,
    group_by: Sequence[str] | None = None,
    direction: str = "max",
    baseline: str | None = None,
    top: int | None = None,
    correction: str = "holm",
    failed_as: str = "drop",
) -> CompareResult:
    """One row per setting (seeds pooled): mean ± std and 95% CI of ``metric``, n finished/expected,
    and how many of its run keys diverged or failed.

    Args:
        records: runs of the sweep (any status; pruned trials and unfinished runs
            are not results).
        expected: the sweep's grid points (``points.json``): they define the groups and
            the expected counts.
        metric: a summary metric name, e.g. ``"val_f1_macro"``.
        group_by: dotted keys (grid axes or any param; short names such as ``norm``
            are accepted when unambiguous). Default: the grid's axes.
        direction: ``"max"`` or ``"min"``: which end is best; rows sort best first
            and rows without a finished run sort last.
        baseline: ``"key=value"`` on one grouping key; each row gets the per-seed
            paired differences against the baseline row that has the same values on
            the other grouping keys (:class:`PairedStats`: mean ± std, 95% CI and the
            paired t-test's p).
        top: keep only the first ``top`` rows (the correction still counts every test).
        correction: ``"holm"``, ``"bonferroni"`` or ``"none"``: how the baseline tests'
            p-values are adjusted for their number (``CompareRow.p_adjusted``; the row's
            ``significant`` follows it).
        failed_as: ``"drop"`` (diverged and failed run keys leave the statistics) or
            ``"worst"`` (each counts as the worst finite value of ``metric`` among all
            the table's finished runs, in ``direction``).

    Raises:
        CompareError: unknown metric (lists the metrics that exist), bad direction,
            correction, failed_as, group key or baseline (lists what exists).
    """
    _check_options(direction, top, correction, failed_as)
    records = list(records)
    units, axes = match_units(records, expected)
    _check_metric(units, metric)
    group_keys = _group_keys(group_by, axes, records)
    rows, worst = _rows(group_units(units, group_keys), metric, direction, failed_as)
    base_key, base_value = _baseline(baseline, group_keys, rows) or (None, None)
    if base_key is not None:
        rows = adjust_p_values(paired_deltas(rows, base_key, base_value), correction)
    return CompareResult(
        metric=metric, direction=direction, group_keys=group_keys, rows=tuple(rank_rows(rows, direction)[:top]),
        baseline_key=base_key, baseline_value=base_value, correction=correction,
        n_tests=sum(not math.isnan(r.p_value) for r in rows), failed_as=failed_as, worst=worst,
        pooled_axes=tuple(a for a in axes if a not in group_keys),
    )


def _check_options(direction: str, top: int | None, correction: str, failed_as: str) -> None:
    for name, value, allowed in (("direction", direction, DIRECTIONS), ("correction", correction, CORRECTIONS),
                                 ("failed_as", failed_as, FAILED_AS)):
        if value not in allowed:
            raise CompareError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    if top is not None and top < 0:
        raise CompareError(f"top must be a positive number of rows, not {top}")


def _check_metric(units: Sequence[Unit], metric: str) -> None:
    finished = [u.finished for u in units if u.finished is not None]
    if finished and not any(metric in r.metrics for r in finished):
        names = sorted({m for r in finished for m in r.metrics}, key=lambda m: ("/" in m, m))
        raise CompareError(
            f"no finished run has metric {metric!r}; metrics logged: {', '.join(names) or '(none)'}"
        )


def resolve_key(key: str, known: Sequence[str], what: str) -> str:
    """Accept a dotted key or its unambiguous short name (``norm`` → ``model.norm``)."""
    if key in known:
        return key
    hits = [k for k in known if short_name(k) == key]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise CompareError(f"{what} {key!r} is ambiguous: it could be {', '.join(hits)}")
    raise CompareError(f"unknown {what}: {key!r}; choose from {', '.join(known) or '(none)'}")


def _group_keys(group_by: Sequence[str] | None, axes: Sequence[str], records: Sequence[RunRecord]) -> tuple[str, ...]:
    if not group_by:
        return tuple(axes)
    known = list(dict.fromkeys([*axes, *sorted({k for r in records for k in r.params}), "seed"]))
    return tuple(dict.fromkeys(resolve_key(k, known, "group key") for k in group_by))


def group_units(units: Iterable[Unit], keys: Sequence[str]) -> list[tuple[dict[str, Any], list[Unit]]]:
    """``(values on keys, units)`` per group, groups in order of first appearance."""
    groups: dict[tuple[str, ...], tuple[dict[str, Any], list[Unit]]] = {}
    for unit in units:
        values = {k: unit.value_of(k) for k in keys}
        groups.setdefault(tuple(map(value_text, values.values())), (values, []))[1].append(unit)
    return list(groups.values())


def _samples(units: Sequence[Unit], metric: str, stand_in: float | None = None) -> tuple[Sample, ...]:
    """The finished runs' finite values, in grid order; with ``stand_in``, that value for each
    diverged or failed run key."""
    out = []
    for u in units:
        outcome = u.outcome(metric)
        if outcome == Outcome.RESULT:
            rec = u.finished
            out.append(Sample(u.seed(), float(rec.metrics[metric]), rec.name, rec.run_id, u.expected.point))
        elif stand_in is not None and outcome in (Outcome.DIVERGED, Outcome.FAILED):
            rec = u.finished or u.latest
            out.append(Sample(u.seed(), stand_in, rec.name, rec.run_id, u.expected.point, stand_in=True))
    return tuple(out)


def _rows(groups: Sequence[tuple[dict[str, Any], list[Unit]]], metric: str, direction: str,
          failed_as: str) -> tuple[list[CompareRow], float]:
    """One row per group, and the table's worst finite value (NaN when there is none)."""
    finite = [s.value for _, units in groups for s in _samples(units, metric)]
    worst = (min if direction == "max" else max)(finite, default=math.nan)
    stand_in = worst if failed_as == "worst" and finite else None
    rows = []
    for order, (values, units) in enumerate(groups):
        outcomes = [u.outcome(metric) for u in units]
        rows.append(CompareRow(group=values, n_expected=len(units), samples=_samples(units, metric, stand_in),
                               order=order, n_diverged=outcomes.count(Outcome.DIVERGED),
                               n_failed=outcomes.count(Outcome.FAILED),
                               extra_seeds=any(u.expected.added for u in units)))
    return rows, worst


def _baseline(text: str | None, group_keys: Sequence[str], rows: Sequence[CompareRow]) -> tuple[str, str] | None:
    """Parse ``key=value`` of a grouping key and one of its values."""
    if text is None:
        return None
    if "=" not in text:
        example = f"{group_keys[0]}={value_text(rows[0].group[group_keys[0]])}" if group_keys and rows else "key=value"
        raise CompareError(f"baseline must look like key=value (e.g. {example}), not {text!r}")
    key, value = (s.strip() for s in text.split("=", 1))
    key = resolve_key(key, group_keys, "baseline key (it must be a grouping key)")
    existing = sorted({value_text(r.group[key]) for r in rows})
    if value not in existing:
        raise CompareError(
            f"baseline {key}={value} matches no setting; values of {key}: {', '.join(existing) or '(none)'}"
        )
    return key, value


def paired_deltas(rows: Sequence[CompareRow], key: str, value: str) -> list[CompareRow]:
    """Each row with ``delta``: its samples minus the baseline's with the same point off ``key``."""
    def pair_key(row: CompareRow, sample: Sample) -> tuple:
        others = tuple(value_text(v) for k, v in row.group.items() if k != key)
        return others, tuple(sorted((k, value_text(v)) for k, v in sample.point.items() if k != key))

    base = {pair_key(r, s): s.value for r in rows if value_text(r.group[key]) == value for s in r.samples}
    out = []
    for row in rows:
        pairs = [(s.value, base[pk]) for s in row.samples if (pk := pair_key(row, s)) in base]
        out.append(dataclasses.replace(row, delta=PairedStats.of(pairs)))
    return out


def adjust_p_values(rows: Sequence[CompareRow], correction: str) -> list[CompareRow]:
    """Each row with ``correction`` and ``p_adjusted`` over the table's m tests (statsmodels)."""
    rows = [dataclasses.replace(r, correction=correction) for r in rows]
    tested = [i for i, r in enumerate(rows) if not math.isnan(r.p_value)]
    if correction == "none" or not tested:
        return rows
    from statsmodels.stats.multitest import multipletests

    adjusted = multipletests([rows[i].p_value for i in tested], alpha=ALPHA, method=correction)[1]
    for i, p in zip(tested, adjusted):
        rows[i] = dataclasses.replace(rows[i], p_adjusted=float(p))
    return rows


def rank_rows(rows: Sequence[CompareRow], direction: str) -> list[CompareRow]:
    """Best first (``"max"``: highest mean); rows without a value last, unranked."""
    sign = -1.0 if direction == "max" else 1.0
    ordered = sorted(rows, key=lambda r: (r.stats.n == 0, sign * r.mean if r.stats.n else 0.0, r.order))
    return [dataclasses.replace(r, rank=i + 1 if r.stats.n else None) for i, r in enumerate(ordered)]


def units_by_setting(records: Iterable[RunRecord], expected: Sequence[ExpectedPoint]) -> list[list[Unit]]:
    """The units of each setting, in grid order (a setting's first unit is its first seed)."""
    return [units for _, units in group_units(*match_units(records, expected))]


def report_stats(records: Iterable[RunRecord], expected: Sequence[ExpectedPoint]) -> list[SettingStats]:
    """Per setting and split: every score over the setting's finished seeds."""
    records = list(records)
    split_names, scores = table_layout(records)
    out = []
    for units in units_by_setting(records, expected):
        splits = tuple(SplitStats(split, {score: Stats(tuple(s.value for s in _samples(units, f"{split}_{score}")))
                                          for score in scores}) for split in split_names)
        out.append(SettingStats(units[0].setting_values(), setting_label(units[0].expected), splits))
    return out
