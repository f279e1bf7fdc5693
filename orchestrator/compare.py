"""Sweep results → comparison tables: group, mean ± std over seeds, n done/expected, deltas.

This module works on plain records (:class:`RunRecord`) that ``tracking.py`` builds
from MLflow, and on the sweep's expected grid (:class:`ExpectedPoint`); it imports
neither mlflow nor torch, so ``orch compare`` / ``orch report`` and their tests stay
fast and need no tracking server.

What counts as a result: a record with status ``FINISHED`` that is not a pruned
Optuna trial. When several finished records share one run key (``--rerun``), the one
that started last wins. Records outside the expected grid are ignored when a grid is
given. Non-finite metric values (a diverged run that still finished) are not counted.

Example::

    result = compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch")
    print(render(result, "table"))
    print(report(records, expected, fmt="markdown"))
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from orchestrator.errors import UserError
from orchestrator.schema import ExpectedPoint, Tag, TrialState, is_finished_result


class CompareError(UserError):
    """A comparison that cannot be made as asked: names what exists instead."""

FORMATS = ("table", "csv", "markdown", "json")
REPORT_FORMATS = ("markdown", "csv", "table", "json")
DIRECTIONS = {"max": "max", "maximize": "max", "min": "min", "minimize": "min"}
SEED_KEY = "seed"
BATCH_SIZE_KEY = "data.batch_size"
REPORT_SPLITS = ("train", "val", "test")
REPORT_METRICS = (("Accuracy", "acc"), ("F1 micro", "f1_micro"), ("F1 macro", "f1_macro"))
MISSING = "–"  # shown for a value that does not exist (no run, or std of one seed)
_SEED_SUFFIX = re.compile(r"-s\d+$")
# Keys of a JSON/CSV row that are statistics, not grouping values (used to read rows back).
STAT_FIELDS = frozenset(
    {"rank", "mean", "std", "n_finished", "n_expected", "min", "max", "seeds", "values",
     "delta_mean", "delta_std", "n_pairs"}
)


# --------------------------------------------------------------------------- data model


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


@dataclass(frozen=True)
class Sample:
    """One finished run's value inside a row."""

    seed: str | None
    value: float
    run_name: str
    run_id: str


@dataclass(frozen=True)
class CompareRow:
    """One group (by default one setting, seeds pooled)."""

    group: Mapping[str, Any]  # grouping key -> value (the grid's value, else the param string)
    mean: float  # NaN when no finished run
    std: float  # sample std (ddof=1); NaN when fewer than 2 finished runs
    min: float
    max: float
    n_finished: int
    n_expected: int
    samples: tuple[Sample, ...] = ()
    rank: int | None = None  # 1 = best; None when the group has no finished run
    delta_mean: float = math.nan  # paired difference to the baseline (row - baseline)
    delta_std: float = math.nan
    n_pairs: int = 0
    order: int = 0  # position of the group in grid order (for plots and stable ties)

    @property
    def label(self) -> str:
        """``key=value,...`` in grouping-key order."""
        return ",".join(f"{k}={_fmt_value(v)}" for k, v in self.group.items())

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(s.value for s in self.samples)

    @property
    def seeds(self) -> tuple[str | None, ...]:
        return tuple(s.seed for s in self.samples)


@dataclass(frozen=True)
class CompareResult:
    metric: str
    direction: str  # "max" | "min"
    group_keys: tuple[str, ...]
    rows: tuple[CompareRow, ...]
    baseline_key: str | None = None
    baseline_value: str | None = None
    n_ignored: int = 0  # records outside the expected grid

    @property
    def baseline(self) -> str | None:
        if self.baseline_key is None:
            return None
        return f"{self.baseline_key}={self.baseline_value}"


# --------------------------------------------------------------------------- record helpers


def parse_point(text: str | None) -> dict[str, str]:
    """``"model.norm=gn,data.batch_size=8,seed=0"`` → ``{"model.norm": "gn", ...}``."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def is_result(record: RunRecord) -> bool:
    """A finished run that is not a pruned trial."""
    return is_finished_result(record.status, record.tags)


def select_finished(records: Iterable[RunRecord]) -> list[RunRecord]:
    """Finished, non-pruned records, one per run key (the latest start wins)."""
    return list(_latest_by(r for r in records if is_result(r)).values())


def _is_pruned(record: RunRecord) -> bool:
    return record.tags.get(Tag.TRIAL_STATE) == TrialState.PRUNED


def _identity(record: RunRecord) -> str:
    return record.tags.get(Tag.RUN_KEY) or record.run_id


def _latest_by(records: Iterable[RunRecord], key=_identity) -> dict[str, RunRecord]:
    latest: dict[str, RunRecord] = {}
    for rec in records:
        k = key(rec)
        if k not in latest or rec.start_time >= latest[k].start_time:
            latest[k] = rec
    return latest


def _str(value: Any) -> str:
    """The string form MLflow stores for a param value."""
    return value if isinstance(value, str) else str(value)


def _fmt_value(value: Any) -> str:
    return "?" if value is None else _str(value)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _short_names(keys: Sequence[str]) -> list[str]:
    """Last dotted part of each key, or the full key where that part is ambiguous."""
    shorts = [_short(k) for k in keys]
    return [s if shorts.count(s) == 1 else k for s, k in zip(shorts, keys)]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _metric_names(records: Iterable[RunRecord]) -> list[str]:
    names = {m for r in records for m in r.metrics}
    return sorted(names, key=lambda m: ("/" in m, m))


# --------------------------------------------------------------------------- units


@dataclass
class _Unit:
    """One run key: its grid point (if any), latest finished record, latest record."""

    identity: str
    expected: ExpectedPoint | None
    finished: RunRecord | None
    latest: RunRecord | None
    order: int

    def point(self) -> dict[str, str]:
        """The full point (axes + seed) as strings."""
        if self.expected is not None:
            return {k: _str(v) for k, v in self.expected.point.items()}
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

    def name(self) -> str:
        if self.expected is not None:
            return self.expected.name
        rec = self.latest or self.finished
        return rec.name if rec is not None else self.identity


def _collect_units(
    records: Iterable[RunRecord], expected: Sequence[ExpectedPoint] | None
) -> tuple[list[_Unit], list[str], int]:
    """Match records to grid points. Returns (units in grid order, axes, n ignored)."""
    records = [r for r in records if not _is_pruned(r)]
    expected = list(expected or [])
    if not expected:
        latest = _latest_by(records)
        finished = _latest_by(r for r in records if is_result(r))
        first_start: dict[str, int] = {}
        for r in records:
            k = _identity(r)
            first_start[k] = min(first_start.get(k, r.start_time), r.start_time)
        ordered = sorted(latest, key=first_start.__getitem__)
        units = [_Unit(k, None, finished.get(k), latest[k], i) for i, k in enumerate(ordered)]
        axes: list[str] = []
        for u in units:
            for k in u.setting_values():
                if k not in axes:
                    axes.append(k)
        return units, axes, 0

    axes = []
    by_key: dict[str, ExpectedPoint] = {}
    for ep in expected:
        by_key.setdefault(ep.run_key, ep)
        for k in ep.point:
            if k != SEED_KEY and k not in axes:
                axes.append(k)

    def match(rec: RunRecord) -> ExpectedPoint | None:
        return by_key.get(rec.tags.get(Tag.RUN_KEY, ""))

    matched: dict[str, list[RunRecord]] = {}
    ignored = 0
    for rec in records:
        ep = match(rec)
        if ep is None:
            ignored += 1
        else:
            matched.setdefault(ep.run_key, []).append(rec)

    units = []
    for i, ep in enumerate(by_key.values()):
        recs = matched.get(ep.run_key, [])
        # reversed: on equal start times the record listed last wins, as in _latest_by.
        latest = max(reversed(recs), key=lambda r: r.start_time, default=None)
        done = [r for r in recs if is_result(r)]
        finished = max(reversed(done), key=lambda r: r.start_time, default=None)
        units.append(_Unit(ep.run_key, ep, finished, latest, i))
    return units, axes, ignored


def _resolve_key(key: str, known: Sequence[str], what: str) -> str:
    """Accept a dotted key or its unambiguous short name (``norm`` → ``model.norm``)."""
    if key in known:
        return key
    hits = [k for k in known if _short(k) == key]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise CompareError(f"{what} {key!r} is ambiguous: it could be {', '.join(hits)}")
    raise CompareError(f"unknown {what}: {key!r}; choose from {', '.join(known) or '(none)'}")


# --------------------------------------------------------------------------- compare


def compare(
    records: Iterable[RunRecord],
    expected: Sequence[ExpectedPoint] | None,
    metric: str,
    *,
    group_by: Sequence[str] | None = None,
    direction: str = "max",
    baseline: str | None = None,
    top: int | None = None,
) -> CompareResult:
    """One row per setting (seeds pooled): mean ± std of ``metric``, n finished/expected.

    Args:
        records: runs of the sweep (any status; pruned trials and unfinished runs
            are not results).
        expected: the sweep's grid points; when empty or None, the records alone
            define the groups and the expected counts.
        metric: a summary metric name, e.g. ``"val_f1_macro"``.
        group_by: dotted keys (grid axes or any param; short names such as ``norm``
            are accepted when unambiguous). Default: the grid's axes.
        direction: ``"max"`` or ``"min"``: which end is best; rows sort best first
            and rows without a finished run sort last.
        baseline: ``"key=value"`` on one grouping key; each row gets the mean ± std
            of per-seed paired differences against the baseline row that has the
            same values on the other grouping keys.
        top: keep only the first ``top`` rows.

    Raises:
        CompareError: unknown metric (lists the metrics that exist), bad direction,
            group key or baseline (lists what exists).
    """
    if direction not in DIRECTIONS:
        raise CompareError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    direction = DIRECTIONS[direction]
    if top is not None and top < 0:
        raise CompareError(f"top must be a positive number of rows, not {top}")
    records = list(records)
    units, axes, ignored = _collect_units(records, expected)

    finished = [u.finished for u in units if u.finished is not None]
    if finished and not any(metric in r.metrics for r in finished):
        names = _metric_names(finished)
        raise CompareError(
            f"no finished run has metric {metric!r}; metrics logged: {', '.join(names) or '(none)'}"
        )

    # Grouping keys: the axes by default, else the requested keys.
    param_keys = sorted({k for r in records for k in r.params})
    if group_by:
        known = list(axes) + [k for k in param_keys if k not in axes]
        if SEED_KEY not in known:
            known.append(SEED_KEY)
        group_keys = tuple(dict.fromkeys(_resolve_key(k, known, "group key") for k in group_by))
    else:
        group_keys = tuple(axes)

    # Baseline: key=value on a grouping key.
    bkey = bvalue = None
    if baseline is not None:
        if "=" not in baseline:
            raise CompareError(f"baseline must look like key=value (e.g. model.norm=bn_torch), not {baseline!r}")
        bkey, bvalue = (s.strip() for s in baseline.split("=", 1))
        bkey = _resolve_key(bkey, group_keys, "baseline key (it must be a grouping key)")

    # Build groups in grid order.
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for unit in units:
        values = {k: unit.value_of(k) for k in group_keys}
        gid = tuple(_fmt_value(values[k]) for k in group_keys)
        g = groups.setdefault(gid, {"group": values, "units": [], "order": len(groups)})
        g["units"].append(unit)

    if bkey is not None:
        existing = sorted({gid[group_keys.index(bkey)] for gid in groups})
        if bvalue not in existing:
            bvalue = next((v for v in existing if _same_number(v, bvalue)), bvalue)
        if bvalue not in existing:
            raise CompareError(
                f"baseline {bkey}={bvalue} matches no setting; values of {bkey}: {', '.join(existing) or '(none)'}"
            )

    def samples_of(g: dict[str, Any]) -> list[tuple[_Unit, Sample]]:
        out = []
        for u in g["units"]:
            rec = u.finished
            if rec is not None and _finite(rec.metrics.get(metric)):
                out.append((u, Sample(u.seed(), float(rec.metrics[metric]), rec.name, rec.run_id)))
        return out

    def pair_key(gid: tuple[str, ...], unit: _Unit) -> tuple:
        others = tuple(v for k, v in zip(group_keys, gid) if k != bkey)
        point = tuple(sorted((k, v) for k, v in unit.point().items() if k != bkey))
        return others, point

    sampled = {gid: samples_of(g) for gid, g in groups.items()}
    base: dict[tuple, float] = {}
    if bkey is not None:
        bi = group_keys.index(bkey)
        for gid, pairs in sampled.items():
            if gid[bi] == bvalue:
                for unit, s in pairs:
                    base[pair_key(gid, unit)] = s.value

    rows = []
    for gid, g in groups.items():
        pairs = sampled[gid]
        vals = [s.value for _, s in pairs]
        delta_mean = delta_std = math.nan
        n_pairs = 0
        if bkey is not None:
            diffs = [s.value - base[pk] for u, s in pairs if (pk := pair_key(gid, u)) in base]
            n_pairs = len(diffs)
            delta_mean, delta_std = _mean_std(diffs)
        mean, std = _mean_std(vals)
        rows.append(CompareRow(
            group=g["group"], mean=mean, std=std,
            min=min(vals) if vals else math.nan, max=max(vals) if vals else math.nan,
            n_finished=len(vals), n_expected=len(g["units"]),
            samples=tuple(s for _, s in pairs),
            delta_mean=delta_mean, delta_std=delta_std, n_pairs=n_pairs, order=g["order"],
        ))

    sign = -1.0 if direction == "max" else 1.0
    rows.sort(key=lambda r: (r.n_finished == 0, sign * r.mean if r.n_finished else 0.0, r.order))
    ranked = []
    for i, r in enumerate(rows):
        ranked.append(dataclasses.replace(r, rank=i + 1 if r.n_finished else None))
    if top is not None:
        ranked = ranked[:top]
    return CompareResult(
        metric=metric, direction=direction, group_keys=group_keys, rows=tuple(ranked),
        baseline_key=bkey, baseline_value=bvalue, n_ignored=ignored,
    )


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, std


# --------------------------------------------------------------------------- render


def _num(x: float, digits: int) -> str:
    return MISSING if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _mean_pm_std(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return MISSING
    return f"{mean:.{digits}f} ± {_num(std, digits)}"


def _delta_text(row: CompareRow, digits: int = 4) -> str:
    if row.n_pairs == 0:
        return MISSING
    return f"{row.delta_mean:+.{digits}f} ± {_num(row.delta_std, digits)}"


def _display_table(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    """Headers and string cells shared by the table and markdown formats."""
    headers = ["rank", *_short_names(result.group_keys), f"{result.metric} mean ± std", "n"]
    if result.baseline_key is not None:
        headers += [f"Δ vs {_short(result.baseline_key)}={result.baseline_value}", "pairs"]
    body = []
    for r in result.rows:
        cells = [MISSING if r.rank is None else str(r.rank)]
        cells += [_fmt_value(r.group[k]) for k in result.group_keys]
        cells += [_mean_pm_std(r.mean, r.std), f"{r.n_finished}/{r.n_expected}"]
        if result.baseline_key is not None:
            cells += [_delta_text(r), str(r.n_pairs)]
        body.append(cells)
    return headers, body


def _json_value(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def row_to_dict(row: CompareRow, result: CompareResult) -> dict[str, Any]:
    """A flat, JSON-ready row: grouping keys, statistics, per-seed values (NaN → None)."""
    out: dict[str, Any] = {"rank": row.rank}
    out.update({k: row.group[k] for k in result.group_keys})
    out.update(mean=row.mean, std=row.std, n_finished=row.n_finished, n_expected=row.n_expected,
               min=row.min, max=row.max)
    if result.baseline_key is not None:
        out.update(delta_mean=row.delta_mean, delta_std=row.delta_std, n_pairs=row.n_pairs)
    out["seeds"] = list(row.seeds)
    out["values"] = list(row.values)
    return {k: (_json_value(v) if not isinstance(v, list) else [_json_value(x) for x in v])
            for k, v in out.items()}


def render(result: CompareResult, fmt: str = "table", *, width: int = 160) -> str:
    """Render a comparison as ``table`` (rich, plain text), ``csv``, ``markdown`` or ``json``."""
    if fmt == "table":
        return _render_rich(result, width=width)
    if fmt == "markdown":
        headers, body = _display_table(result)
        return _github_table(headers, body)
    if fmt == "json":
        return json.dumps([row_to_dict(r, result) for r in result.rows], indent=2)
    if fmt == "csv":
        dicts = [row_to_dict(r, result) for r in result.rows]
        fields = ["rank", *result.group_keys, "mean", "std", "n_finished", "n_expected", "min", "max"]
        if result.baseline_key is not None:
            fields += ["delta_mean", "delta_std", "n_pairs"]
        fields += ["seeds", "values"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for d in dicts:
            d["seeds"] = ";".join(_fmt_value(s) for s in d["seeds"])
            d["values"] = ";".join(repr(v) for v in d["values"])
            writer.writerow({k: "" if d.get(k) is None else d[k] for k in fields})
        return buf.getvalue()
    raise CompareError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _render_rich(result: CompareResult, *, width: int) -> str:
    from rich.console import Console
    from rich.table import Table

    headers, body = _display_table(result)
    title = f"{result.metric} ({'higher' if result.direction == 'max' else 'lower'} is better)"
    table = Table(title=title)
    n_keys = len(result.group_keys)
    for i, h in enumerate(headers):
        numeric = i == 0 or i > n_keys
        table.add_column(h, justify="right" if numeric else "left", no_wrap=True)
    for cells in body:
        table.add_row(*cells)
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(table)
    return console.file.getvalue()


def _github_table(headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    from tabulate import tabulate

    # disable_numparse keeps "0.790" as written instead of re-formatting it to 0.79.
    return tabulate(body, headers=list(headers), tablefmt="github", disable_numparse=True) + "\n"


# --------------------------------------------------------------------------- report


def setting_label(values: Mapping[str, Any], fallback: str = "") -> str:
    """Readable setting name: ``{"model.norm": "gn", "data.batch_size": 8}`` → ``"gn bs8"``.

    Batch sizes read ``bs<N>``; other numbers and booleans read ``<short key>=<value>``
    so that they stay unambiguous; plain strings are shown as they are.
    """
    parts = []
    for key, value in values.items():
        text = _fmt_value(value)
        if key == BATCH_SIZE_KEY:
            parts.append(f"bs{text}")
        elif _looks_numeric(value):
            parts.append(f"{_short(key)}={text}")
        else:
            parts.append(text)
    return " ".join(parts) or _SEED_SUFFIX.sub("", fallback) or "(base)"


def _looks_numeric(value: Any) -> bool:
    if isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        if value in ("True", "False"):
            return True
        try:
            float(value)
            return True
        except ValueError:
            return False
    return False


def report(
    records: Iterable[RunRecord],
    expected: Sequence[ExpectedPoint] | None,
    *,
    fmt: str = "markdown",
) -> str:
    """The study's table: ``Setting | set | Accuracy | F1 micro | F1 macro``.

    Three rows per setting (train, val, test), settings in grid order, the label on the
    first row only (markdown and table; csv repeats it on every row so that the file
    stays machine-readable). Cells are means over seeds to 3 decimals, with ``± std``
    when more than one seed finished; ``–`` when none did.
    """
    if fmt not in REPORT_FORMATS:
        raise CompareError(f"unknown report format {fmt!r}; choose one of {', '.join(REPORT_FORMATS)}")
    units, _, _ = _collect_units(list(records), expected)
    settings: dict[str, dict[str, Any]] = {}
    for u in units:
        values = u.setting_values()
        sid = ",".join(f"{k}={_fmt_value(v)}" for k, v in values.items())
        s = settings.setdefault(sid, {"label": setting_label(values, u.name()), "units": []})
        s["units"].append(u)

    headers = ["Setting", "set", *(title for title, _ in REPORT_METRICS)]
    body: list[list[str]] = []
    json_rows: list[dict[str, Any]] = []
    for s in settings.values():
        finished = [u.finished for u in s["units"] if u.finished is not None]
        for i, split in enumerate(REPORT_SPLITS):
            cells = [s["label"] if i == 0 or fmt == "csv" else "", split]
            jrow: dict[str, Any] = {"setting": s["label"], "set": split}
            for _, suffix in REPORT_METRICS:
                name = f"{split}_{suffix}"
                vals = [float(r.metrics[name]) for r in finished if _finite(r.metrics.get(name))]
                mean, std = _mean_std(vals)
                if not vals:
                    cells.append(MISSING)
                elif len(vals) == 1:
                    cells.append(f"{mean:.3f}")
                else:
                    cells.append(f"{mean:.3f} ± {std:.3f}")
                jrow.update({suffix: _json_value(mean), f"{suffix}_std": _json_value(std), f"{suffix}_n": len(vals)})
            body.append(cells)
            json_rows.append(jrow)

    if fmt == "markdown":
        return _github_table(headers, body)
    if fmt == "json":
        return json.dumps(json_rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(body)
        return buf.getvalue()
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=True)
    for n, cells in enumerate(body):
        table.add_row(*cells, end_section=(n % len(REPORT_SPLITS) == len(REPORT_SPLITS) - 1))
    console = Console(file=io.StringIO(), width=160, color_system=None, force_terminal=False)
    console.print(table)
    return console.file.getvalue()


# --------------------------------------------------------------------------- summary.csv


def summary_rows(
    records: Iterable[RunRecord], expected: Sequence[ExpectedPoint]
) -> list[dict[str, Any]]:
    """One row per grid point for summary.csv.

    Keys: ``name``, the point's keys (axes and seed), ``status`` of the latest record
    (``"missing"`` when the point never ran), ``run_id``, then every summary metric
    (names without ``/``) seen in any row's latest record, ``None`` where a row lacks it;
    all rows share the same keys, so ``csv.DictWriter`` can write them directly.
    """
    units, _, _ = _collect_units(list(records), expected)
    metric_names = sorted({m for u in units if u.latest is not None
                           for m in u.latest.metrics if "/" not in m})
    point_keys: list[str] = []
    for u in units:
        for k in u.expected.point if u.expected is not None else ():
            if k not in point_keys:
                point_keys.append(k)
    rows = []
    for u in units:
        rec = u.latest
        row: dict[str, Any] = {"name": u.name()}
        row.update({k: (u.expected.point.get(k) if u.expected is not None else None) for k in point_keys})
        row["status"] = rec.status if rec is not None else "missing"
        row["run_id"] = rec.run_id if rec is not None else None
        row.update({m: (rec.metrics.get(m) if rec is not None else None) for m in metric_names})
        rows.append(row)
    return rows
