"""YAML grid → validated :class:`SweepSpec` → one :class:`RunSpec` per run.

A grid file names an MLflow experiment, a ``base`` config shared by every run, the
``grid`` axes whose cartesian product gives the settings, the ``seeds`` each setting
is repeated with, ``include``/``exclude`` tweaks and an optional ``tune`` section::

    name: norm-study
    base: {data: {name: digits}, train: {max_epochs: 4}}
    grid:
      model.norm: [bn, gn]
      data.batch_size: [8, 128]
    seeds: [0, 1]
    exclude: [{model.norm: gn, data.batch_size: 128}]
    include: [{model.norm: gn, model.gn_groups: 8}]

Semantics:

* Settings are the product of the axes in file order (the first axis varies
  slowest), minus every point that matches all key/values of an ``exclude``
  entry, followed by the ``include`` entries, each applied on top of ``base`` (not
  on top of a grid point; ``exclude`` never drops them). With no axes the one
  setting is ``base`` itself, unless ``include`` entries are given: then they are
  the settings. A point carries the grid axes (an include entry's unset ones at
  their base values) plus the keys its include entry adds.
* Runs are seed-major: every setting with the first seed, then every setting with
  the second, ... so a sweep cut short still covers every setting.
* ``overrides`` (``--set key=value``) pin a key for the whole sweep: a grid axis
  shrinks to that one value, any other key overrides ``base``; ``include`` entries
  that give the key another value are dropped; ``seed=N`` replaces ``seeds`` (and
  ``tune.seeds``).
* A grid of more than ``max_points`` points (10,000 by default; settings × seeds,
  counted before ``exclude``) is refused before anything is expanded
  (:mod:`orchestrator.grid.size`).

Everything is validated before anything runs: :func:`load_grid` raises
:class:`~experiments.config.ConfigError` with ``source`` = the grid file and ``key`` =
the key path inside it (``grid.model.norm``, ``include[1].model.gn_groups``,
``tune.space.schedule.gamma.low``, ``--set optim.lr`` for an override), and a
message that says what is wrong, how to fix it and, where known, the line.

The work is split by question: :mod:`experiments.yaml_source` parses the file with the
line of every key, :mod:`orchestrator.grid.reader` checks each section,
:mod:`orchestrator.grid.expand` expands and checks the settings and names the runs
(:mod:`orchestrator.grid.names`), and :mod:`orchestrator.grid.space` reads the ``tune``
section. This module ties them together and keeps the public names in one place.

None of them imports torch or mlflow: ``orch sweep --dry-run`` and the CLI's up-front
validation must stay fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from experiments.yaml_source import read_yaml
from orchestrator.grid.expand import (
    RunSpec,
    apply_overrides,
    expand_settings,
    resolve_settings,
    seed_major_runs,
    sweep_id,
    varying_keys,
)
from orchestrator.grid.reader import GridReader
from orchestrator.grid.size import DEFAULT_MAX_POINTS, check_size
from orchestrator.grid.names import describe_point, format_value, run_name
from orchestrator.grid.space import DEFAULT_METRIC, DEFAULT_SPACE, ParamSpace, TuneSpec, read_tune

__all__ = [
    "DEFAULT_MAX_POINTS",
    "DEFAULT_METRIC",
    "DEFAULT_SPACE",
    "ParamSpace",
    "RunSpec",
    "SweepSpec",
    "TuneSpec",
    "describe_point",
    "format_value",
    "load_grid",
    "run_name",
]


@dataclass(frozen=True)
class SweepSpec:
    """A validated grid: every run resolved, nothing started."""

    name: str  # MLflow experiment
    path: str  # the grid file
    text: str  # the grid file's text, logged as an artifact
    axes: tuple[str, ...]  # varying keys in file order: grid axes, then keys only in include entries
    seeds: tuple[int, ...]
    runs: tuple[RunSpec, ...]
    sweep_id: str  # 12 hex chars over the name and the sorted run keys
    tune: TuneSpec | None = None  # the tune section; None without one (see tune_space.tune_spec)

    @property
    def settings(self) -> tuple[str, ...]:
        """Distinct settings (points without seed) in expansion order."""
        return tuple(dict.fromkeys(r.setting for r in self.runs))


def load_grid(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    check_data: bool = True,
    max_points: int | None = DEFAULT_MAX_POINTS,
) -> SweepSpec:
    """Read, validate and expand a grid file.

    Args:
        path: the grid YAML.
        overrides: ``"key=value"`` strings (``--set``): a grid axis shrinks to that one
            value, another key overrides ``base``, ``seed=N`` replaces ``seeds`` (and ``tune.seeds``).
        check_data: also check that dataset folders exist; ``False`` for a dry run
            on a machine without the data (every other check still runs).
        max_points: refuse a grid of more points (settings × seeds, counted before
            ``exclude``) before any of them is built; None: no limit (``--max-points``).

    Returns:
        The sweep with every run resolved, in expansion order.

    Raises:
        ConfigError: the first problem found, naming the key path in the grid file, or a
            grid of more than ``max_points`` points, naming how many and how they arise.

    Example:
        >>> spec = load_grid("experiments/grids/demo.yaml")  # doctest: +SKIP
        >>> len(spec.runs), spec.runs[0].name
        (14, 'bn_torch-bs8-s0')
    """
    if isinstance(overrides, str):  # one "key=value", not a sequence of characters
        overrides = [overrides]
    doc = read_yaml(path, "grid file")
    g = GridReader(doc.source, doc.lines)
    sections = apply_overrides(g, overrides, g.sections(doc.data))
    check_size(g, sections, max_points)  # from the axis lengths, before anything is expanded
    settings = expand_settings(g, sections)
    axes = varying_keys(settings, sections.axes)
    resolved = resolve_settings(g, sections.base, settings, sections.axes, axes, check_data)
    runs = seed_major_runs(resolved, sections.seeds)
    tune = read_tune(g, sections.tune, [r.config for r in resolved], axes, check_data)
    if tune is not None and sections.seed_pinned:  # --set seed=N pins the tuning seed too
        tune = dataclasses.replace(tune, seeds=sections.seeds)
    return SweepSpec(
        name=sections.name,
        path=doc.source,
        text=doc.text,
        axes=axes,
        seeds=tuple(sections.seeds),
        runs=runs,
        sweep_id=sweep_id(sections.name, runs),
        tune=tune,
    )
