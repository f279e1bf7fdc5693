"""``orch sweep --until-separated METRIC``: add seeds where the ranking is still uncertain.

After the grid's own seeds, each round compares the sweep's settings on ``METRIC``
(seeds pooled, 95% Student-t interval of the mean, as ``orch compare`` shows it). The
leader (rank 1) and every setting whose interval overlaps the leader's get the next
``per_round`` seeds; a setting with fewer than two finished runs has no interval and
counts as overlapping. Rounds stop when no interval overlaps the leader's, or when every
overlapping setting holds ``max_seeds`` seeds.

Added seeds are the integers after the grid's largest seed, in order, so a rerun picks
the same ones: an added point is an ordinary point (same run key rules, resume from its
checkpoint, listed in the parent's ``points.json`` for ``orch compare``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from orchestrator.grid import SweepSpec
from orchestrator.grid_expand import RunSpec, run_with_seed
from orchestrator.results import CompareResult, CompareRow, value_text
from orchestrator.schema import ExpectedPoint


@dataclass(frozen=True)
class Separation:
    metric: str
    direction: str = "max"  # "max" | "min": which end of METRIC is best
    max_seeds: int = 10  # seeds per setting at most, the grid's included
    per_round: int = 2  # seeds added to each overlapping setting per round


def overlapping(result: CompareResult) -> list[CompareRow]:
    """The leader and the settings whose 95% interval overlaps its own; [] once separated."""
    ranked = sorted((r for r in result.rows if r.rank is not None), key=lambda r: r.rank)
    if len(ranked) < 2:
        return []
    leader, rest = ranked[0], ranked[1:]

    def overlaps(row: CompareRow) -> bool:
        bounds = (leader.ci_low, leader.ci_high, row.ci_low, row.ci_high)
        if any(math.isnan(b) for b in bounds):
            return True  # fewer than two runs: no interval yet
        return row.ci_low <= leader.ci_high and row.ci_high >= leader.ci_low

    close = [r for r in rest if overlaps(r)]
    return [leader, *close] if close else []


def _setting_runs(spec: SweepSpec, group: Mapping[str, Any]) -> list[RunSpec]:
    """The sweep's runs of the setting ``group`` names (axis -> value; any seed)."""
    want = {k: value_text(v) for k, v in group.items() if k != "seed"}
    return [r for r in spec.runs if all(value_text(r.point.get(k)) == v for k, v in want.items())]


def _without_seed(point: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in point.items() if k != "seed"}


def next_round(spec: SweepSpec, result: CompareResult, sep: Separation, finished: set[str]) -> list[RunSpec]:
    """This round's runs: for each overlapping setting, its planned seeds that have not
    finished (a stopped round resumes them), then new seeds, ``per_round`` at most and
    never past ``max_seeds`` finished. ``finished``: the run keys with a FINISHED run (a
    finished run whose metric is not finite is done too, though it adds nothing to the
    interval). Runs not yet in ``spec`` are new RunSpecs."""
    todo: list[RunSpec] = []
    index = len(spec.runs)
    for row in overlapping(result):
        runs = _setting_runs(spec, row.group)
        if not runs:
            continue
        done = {r.point["seed"] for r in runs if r.run_key in finished}
        want = min(sep.per_round, sep.max_seeds - len(done))
        chosen = [r for r in runs if r.point["seed"] not in done][:max(want, 0)]
        taken = {r.point["seed"] for r in runs}
        setting = _without_seed(runs[0].point)
        seed = max(spec.seeds) + 1
        while len(chosen) < want:
            if seed not in taken:
                chosen.append(run_with_seed(setting, runs[0].config, seed, index))
                index += 1
            seed += 1
        todo += chosen
    return todo


def restore_added(spec: SweepSpec, points: Sequence[ExpectedPoint]) -> SweepSpec:
    """``spec`` with the seeds that earlier rounds added (read from the parent's ``points.json``)."""
    known = {r.run_key for r in spec.runs}
    extra: list[RunSpec] = []
    for p in points:
        if p.run_key in known:
            continue
        template = next(iter(_setting_runs(spec, p.point)), None)
        if template is None:
            continue  # a point of an older version of the grid
        run = run_with_seed(_without_seed(template.point), template.config, int(p.point["seed"]),
                            len(spec.runs) + len(extra))
        if run.run_key == p.run_key:
            extra.append(run)
    return dataclasses.replace(spec, runs=spec.runs + tuple(extra)) if extra else spec
