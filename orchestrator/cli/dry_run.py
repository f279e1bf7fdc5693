"""What ``orch sweep GRID --dry-run`` prints: the grid's points and whether the store already
holds each, as a summary (the default), every row (``--list``), or JSON or CSV for scripts
(``--format``). The text is written plainly, without rich: a 10,000-point grid prints in
well under a second. Nothing here imports torch, and mlflow only where a store exists.
"""

from __future__ import annotations

import collections
import csv
import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import click

from orchestrator.grid.names import format_value

if TYPE_CHECKING:
    from orchestrator.grid.load import SweepSpec

STATES = ("done", "pending", "failed", "unknown")  # unknown: the store could not be read
SHOW_ALL = 20  # a grid of at most this many points shows every row
HEAD = TAIL = 5  # a larger one: its first and last rows
MAX_VALUES = 20  # values listed per axis in the summary (--format json lists all)
_UNSET = object()  # an include-only key that a point does not set


@dataclass(frozen=True)
class DryRun:
    """A grid and what the store holds of it."""

    spec: SweepSpec
    uri: str
    store: str  # "read", "absent" (no store yet: nothing done) or "unreadable"
    states: tuple[str, ...]  # per run, in order: one of STATES

    columns = property(lambda self: (*self.spec.axes, "seed"))

    def counts(self, indices: Sequence[int] | None = None) -> dict[str, int]:
        """How many of the runs (all, or those at ``indices``) are in each state."""
        found = collections.Counter(self.states if indices is None else [self.states[i] for i in indices])
        return {state: found[state] for state in STATES}

    def by_value(self, axis: str) -> dict[Any, list[int]]:
        """The axis's values in order of first appearance → the indices of the runs that have it;
        the key :data:`_UNSET` gathers the runs that do not set an include-only key."""
        groups: dict[Any, list[int]] = {}
        for r in self.spec.runs:
            value = r.point.get(axis, _UNSET)
            groups.setdefault(tuple(value) if isinstance(value, list) else value, []).append(r.index)
        return groups


def print_dry_run(spec: SweepSpec, uri: str, *, fmt: str = "table", every_row: bool = False) -> None:
    """The grid's runs with their states in the store at ``uri`` (see :mod:`orchestrator.store.peek`).
    ``fmt`` table: the summary, with every row when ``every_row`` or the grid is small; json or csv:
    every point, for scripts."""
    from orchestrator.store import peek

    known = peek.run_key_states(uri, spec.name)
    if known is None:
        plan = DryRun(spec, uri, "unreadable", ("unknown",) * len(spec.runs))
    else:
        store = "read" if peek.exists(uri) else "absent"
        plan = DryRun(spec, uri, store, tuple(known.get(r.run_key, "pending") for r in spec.runs))
    if fmt == "json":
        click.echo(as_json(plan))
    elif fmt == "csv":
        click.echo(as_csv(plan), nl=False)
    else:
        n, seeds = len(spec.runs), len(spec.seeds)
        click.echo("\n".join([f"{spec.name} [{spec.sweep_id}]  {spec.path}",
                              f"{n:,} points = {n // seeds:,} setting{'s' if n // seeds != 1 else ''} × {seeds} "
                              f"seed{'s' if seeds != 1 else ''}", "", "points per axis value:", *_axis_table(plan),
                              "", *_point_table(plan, every_row or n <= SHOW_ALL), _totals(plan),
                              *_missing_data_root(spec)]))


def _axis_table(plan: DryRun) -> list[str]:
    """Per axis (and the seed): each value with its number of points, and when the store was
    read, how many of them are done, pending and failed."""
    states = ("done", "pending", "failed") if plan.store == "read" else ()
    rows = [["axis", "value", "points", *states]]
    for axis in plan.columns:
        groups = list(plan.by_value(axis).items())
        for k, (value, indices) in enumerate(groups[:MAX_VALUES]):
            counts = plan.counts(indices)
            rows.append([axis if k == 0 else "", "(not set)" if value is _UNSET else format_value(value),
                         f"{len(indices):,}", *(f"{counts[s]:,}" for s in states)])
        if len(groups) > MAX_VALUES:
            rows.append(["", f"… {len(groups) - MAX_VALUES:,} more values; --format json lists all"])
    return _aligned(rows, right=range(2, len(rows[0])), indent="  ")


def _point_table(plan: DryRun, every_row: bool) -> list[str]:
    """The per-point table: every row, or the first and last few around a line that says how
    many are left out."""
    runs = plan.spec.runs
    shown = list(range(len(runs))) if every_row else [*range(HEAD), *range(len(runs) - TAIL, len(runs))]
    rows = [["#", "run name", *plan.columns, "status"]]
    rows += [[str(i), runs[i].name, *(_cell(runs[i].point, c) for c in plan.columns), plan.states[i]] for i in shown]
    lines = _aligned(rows, right=(0,))
    if not every_row:
        left_out = len(runs) - HEAD - TAIL
        lines.insert(1 + HEAD, f"… {left_out:,} more rows; --list shows all")
    return lines


def _totals(plan: DryRun) -> str:
    n = len(plan.spec.runs)
    if plan.store == "unreadable":
        return f"{n:,} points; status unknown (store {plan.uri} could not be read)"
    counts = plan.counts()
    where = f"store {plan.uri}" + (" does not exist yet" if plan.store == "absent" else "")
    done, pending, failed = (f"{counts[state]:,}" for state in ("done", "pending", "failed"))
    return f"{n:,} points: {done} done, {pending} pending, {failed} failed  ({where})"


def _aligned(rows: list[list[str]], right: Sequence[int], indent: str = "") -> list[str]:
    """Rows of cells as lines of aligned columns (those in ``right`` right-aligned); a shorter
    row's last cell runs on past the columns, setting no width."""
    width = len(rows[0])
    widths = [max((len(r[i]) for r in rows if len(r) == width), default=0) for i in range(width)]
    lines = []
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row[:-1], widths))]
        last = row[-1] if len(row) < width else (row[-1].rjust if width - 1 in right else row[-1].ljust)(widths[-1])
        lines.append((indent + "  ".join([*cells, last])).rstrip())
    return lines


def _missing_data_root(spec: SweepSpec) -> list[str]:
    """A note on what a real run would stop on that the dry run does not check (a missing dataset
    root); checked once per setting: seeds do not change it."""
    from experiments.errors import ConfigError

    for config in {r.setting: r.config for r in spec.runs}.values():
        try:
            spec.entry.check(config, True)
        except ConfigError as err:
            return [f"note: a real run would stop here: {err}"]
    return []


def as_json(plan: DryRun) -> str:
    """The summary and every point, indented, but each point on one line: 10,000 of them read (and
    print) well; values as the grid gives them (a list for a tuple)."""
    spec = plan.spec
    axes = {axis: [{**({"unset": True} if value is _UNSET else {"value": value}), "points": len(indices),
                    **plan.counts(indices)} for value, indices in plan.by_value(axis).items()]
            for axis in plan.columns}
    summary = {"points": len(spec.runs), "settings": len(spec.runs) // len(spec.seeds), "seeds": list(spec.seeds),
               **plan.counts(), "axes": axes}
    points = [{"index": r.index, "name": r.name, "run_key": r.run_key, "setting": r.setting, "seed": r.point["seed"],
               "state": state, "values": {a: r.point[a] for a in spec.axes if a in r.point}}
              for r, state in zip(spec.runs, plan.states)]
    head = json.dumps({"name": spec.name, "sweep_id": spec.sweep_id, "grid": spec.path,
                       "store": {"uri": plan.uri, "state": plan.store}, "summary": summary, "points": []},
                      indent=2).removesuffix("[]\n}")  # the points go last
    body = ",\n".join(f"    {json.dumps(point)}" for point in points)
    return f"{head}[\n{body}\n  ]\n}}"


def as_csv(plan: DryRun) -> str:
    """A header, then one row per point: index, name, run key, setting, seed, state, then each
    axis's value as point labels write it (empty where an include entry does not set it)."""
    spec = plan.spec
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "name", "run_key", "setting", "seed", "state", *spec.axes])
    writer.writerows([r.index, r.name, r.run_key, r.setting, r.point["seed"], state,
                      *(_cell(r.point, a) for a in spec.axes)] for r, state in zip(spec.runs, plan.states))
    return buf.getvalue()


def _cell(point: dict[str, Any], key: str) -> str:
    return format_value(point[key]) if key in point else ""

