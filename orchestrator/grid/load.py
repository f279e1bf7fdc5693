"""YAML grid → validated :class:`SweepSpec` → one :class:`RunSpec` per run (docs/reference/grid.md).

Settings are the product of the ``grid`` axes in file order (the first varies slowest) minus the
``exclude`` matches, then the ``include`` entries, each on top of ``base``. Runs are seed-major,
so a sweep cut short still covers every setting. ``--set key=value`` pins a key (an axis shrinks
to it, include entries that disagree are dropped). Nothing here imports torch or mlflow.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from experiments.errors import ConfigError
from experiments.yaml_source import read_yaml
from orchestrator.grid.entry import Entry
from orchestrator.grid.expand import RunSpec, expand_settings, resolve_settings, seed_major_runs, sweep_id
from orchestrator.grid.reader import GridReader, GridSections
from orchestrator.grid.space import TuneSpec, read_tune

DEFAULT_MAX_POINTS = 10_000  # about 2 s of validation here (build + check of every setting)


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
    entry: Entry  # what every run calls and how the grid reads its config (orchestrator.grid.entry)
    tune: TuneSpec | None = None  # the tune section; None without one (see tune_spec)


def load_grid(path: str | Path, overrides: Sequence[str] = (), *, check_data: bool = True,
              max_points: int | None = DEFAULT_MAX_POINTS) -> SweepSpec:
    """Read, validate and expand a grid file.

    Args:
        overrides: ``"key=value"`` strings (``--set``).
        check_data: also check that the data the runs read exists (``False``: a dry run on a
            machine without the data; every other check still runs).
        max_points: refuse a grid of more points (settings × seeds, before ``exclude``) before
            any is built; None: no limit (``--max-points``).

    Raises:
        ConfigError: the first problem: ``source`` the grid file, ``key`` the key path in it.
    """
    doc = read_yaml(path, "grid file")
    g = GridReader(doc.source, doc.lines)
    sections = g.sections(doc.data, overrides)
    check_size(g, sections, max_points)  # from the axis lengths, before anything is expanded
    settings = expand_settings(g, sections)
    axes = resolve_settings(g, sections, settings, check_data)
    runs = seed_major_runs(g.entry, settings, sections.seeds)
    tune = read_tune(g, sections.tune, [s.config for s in settings], axes, check_data)
    return SweepSpec(name=sections.name, path=doc.source, text=doc.text, axes=axes, seeds=tuple(sections.seeds),
                     runs=runs, sweep_id=sweep_id(sections.name, runs), tune=tune, entry=sections.entry)


def check_size(g: GridReader, sections: GridSections, max_points: int | None) -> None:
    """Refuse a grid of more than ``max_points`` points (None: no limit), counted before anything
    is expanded and before ``exclude`` (which bounds the expansion, a walk of the whole product),
    saying how they arise: ``"(7 optim.lr × 2 train.max_epochs + 1 included) × 3 seeds = 45 points"``."""
    axes = {key: len(values) for key, (values, _) in sections.axes.items()}
    product_used = bool(axes) or not sections.includes  # without axes, include entries are the settings
    included, seeds = len(sections.includes), len(sections.seeds)
    bound = ((math.prod(axes.values()) if product_used else 0) + included) * seeds
    if max_points is None or bound <= max_points:
        return
    terms = " × ".join(f"{n:,} {key}" for key, n in axes.items()) or ("1 base setting" if product_used else "")
    if included:
        terms = f"({terms} + {included:,} included)" if terms else f"{included:,} included"
    count = f"{terms} × {seeds:,} seed{'s' if seeds != 1 else ''} = {bound:,} points"
    g.fail(None, f"the grid expands to {count}{' before exclude' if sections.excludes else ''}, over the limit of "
                 f"{max_points:,} points; give fewer values or seeds, or raise the limit with --max-points {bound}")


def tune_spec(spec: SweepSpec) -> TuneSpec:
    """What ``orch tune`` searches for ``spec``: its ``tune`` section, else ``tune: {}`` read now
    through the same checks; ``seeds`` left out is the grid's first seed."""
    tune = spec.tune
    if tune is None:
        configs = list({r.setting: r.config for r in spec.runs}.values())
        # The data was checked (or knowingly skipped) when the grid was loaded: no I/O again.
        tune = read_tune(GridReader(spec.path, {}, spec.entry), {}, configs, spec.axes, check_data=False)
    metrics = spec.entry.summary_metrics
    if metrics and tune.metric not in metrics:  # an entry without a list takes any metric its runs log
        raise ConfigError(f"{tune.metric!r} is not a summary metric of a run; choose one of {', '.join(metrics)}",
                          key="tune.metric", source=spec.path)
    return dataclasses.replace(tune, seeds=tune.seeds or spec.seeds[:1])
