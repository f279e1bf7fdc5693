"""The rounds of ``orch sweep --until-separated`` and the points of ``--confirm N``.

The leader and the rivals not yet separated (:mod:`orchestrator.analyze.separation`) get the
next ``per_round`` seeds: the integers after the grid's largest seed, in order, so a rerun picks
the same ones; an added point is an ordinary point, marked as added in ``points.json``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from orchestrator.analyze.records import value_text
from orchestrator.analyze.separation import Separation, Verdict
from orchestrator.errors import UserError
from orchestrator.grid.expand import RunSpec, run_with_seed, sweep_id
from orchestrator.grid.load import SweepSpec
from orchestrator.store.schema import ExpectedPoint


class ConfirmError(UserError):
    """No separation verdict to confirm, or the grid lost one of its settings."""


def _setting(point: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """A setting's identity: its point (or a row's group) without the seed, as text, by key."""
    return tuple(sorted((k, value_text(v)) for k, v in point.items() if k != "seed"))


def _runs_by_setting(spec: SweepSpec) -> dict[tuple[tuple[str, str], ...], list[RunSpec]]:
    """The sweep's runs of each setting, indexed once (a round costs one pass over the runs)."""
    out: dict[tuple[tuple[str, str], ...], list[RunSpec]] = {}
    for run in spec.runs:
        out.setdefault(_setting(run.point), []).append(run)
    return out


def _with_seed(spec: SweepSpec, template: RunSpec, seed: int, index: int) -> RunSpec:
    return run_with_seed({k: v for k, v in template.point.items() if k != "seed"}, template.config, seed, index,
                         spec.entry)


def next_round(spec: SweepSpec, verdict: Verdict, sep: Separation, finished: set[str]) -> list[RunSpec]:
    """This round's runs: for the leader and each rival not separated, its unfinished planned seeds,
    then new seeds, ``per_round`` at most and never past ``max_seeds`` finished (``finished``: run
    keys with a FINISHED run); none once every rival is separated."""
    if verdict.leader is None or not verdict.undecided:
        return []
    todo: list[RunSpec] = []
    by_setting = _runs_by_setting(spec)
    index = len(spec.runs)  # of the next new run
    for row in [verdict.leader, *(r for r, _ in verdict.undecided)]:
        runs = by_setting.get(_setting(row.group), [])
        done = {r.point["seed"] for r in runs if r.run_key in finished}
        want = max(min(sep.per_round, sep.max_seeds - len(done)), 0)
        chosen = [r for r in runs if r.point["seed"] not in done][:want]
        taken = {r.point["seed"] for r in runs}
        seed = max(spec.seeds) + 1
        while runs and len(chosen) < want:
            if seed not in taken:
                chosen.append(_with_seed(spec, runs[0], seed, index))
                index += 1
            seed += 1
        todo += chosen
    return todo


def restore_added(spec: SweepSpec, points: Sequence[ExpectedPoint]) -> SweepSpec:
    """``spec`` with the seeds that earlier rounds added (read from the parent's ``points.json``)."""
    known = {r.run_key for r in spec.runs}
    by_setting = _runs_by_setting(spec)
    extra: list[RunSpec] = []
    for p in points:
        templates = by_setting.get(_setting(p.point)) if p.run_key not in known else None
        if templates:  # else a point of the grid, or of an older version of it
            run = _with_seed(spec, templates[0], int(p.point["seed"]), len(spec.runs) + len(extra))
            if run.run_key == p.run_key:
                extra.append(run)
    return dataclasses.replace(spec, runs=spec.runs + tuple(extra)) if extra else spec


def confirm_spec(spec: SweepSpec, decision: Mapping[str, Any], points: Sequence[ExpectedPoint], n: int) -> SweepSpec:
    """``--confirm N``'s sweep: the leader and the settings not separated from it (``decision``:
    ``separation.json``), on ``n`` seeds no run of ``points`` used, seed-major, under their own sweep id."""
    if not decision.get("leader"):
        raise ConfirmError("--confirm: the separation sweep declared no leader (fewer than two settings had a value)")
    top = [decision["leader"]["setting"], *(e["setting"] for e in decision.get("not_separated", []))]
    by_setting = _runs_by_setting(spec)
    templates = []
    for setting in top:
        if _setting(setting) not in by_setting:
            label = ",".join(f"{k}={value_text(v)}" for k, v in setting.items())
            raise ConfirmError(f"--confirm: setting {label} of the separation sweep is not in this grid any more")
        templates.append(by_setting[_setting(setting)][0])
    first = max([*spec.seeds, *(int(p.point["seed"]) for p in points)]) + 1
    seeds = tuple(range(first, first + n))
    runs = tuple(_with_seed(spec, t, seed, i * len(templates) + j)
                 for i, seed in enumerate(seeds) for j, t in enumerate(templates))
    return dataclasses.replace(spec, seeds=seeds, runs=runs, sweep_id=sweep_id(spec.name, runs))
