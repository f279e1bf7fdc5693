"""Checked grid sections → settings → one :class:`RunSpec` per setting and seed (the rules are
:mod:`orchestrator.grid.load`'s). A setting that fails its entry's check blames the key path in
the grid file that set the failing value.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from experiments.config import ConfigError
from orchestrator.grid.entry import Entry
from orchestrator.grid.names import describe_point, join_name, name_parts
from orchestrator.grid.reader import GridReader, GridSections


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a point of the grid with one seed, fully resolved."""

    index: int  # 0-based position in expansion order
    name: str  # readable, unique within the sweep: "gn-bs8-s0"
    point: dict[str, Any] = field(hash=False)  # varying values in axis order, then "seed"
    setting: str  # the point without its seed: "optim.lr=0.1,train.max_epochs=8" ("" with no axes)
    point_label: str  # the point with its seed: "optim.lr=0.1,train.max_epochs=8,seed=0" (tag Tag.POINT)
    config: Any  # the entry's config (the built-in study's: an experiments.config.RunConfig)
    run_key: str  # the entry's run_key(config)


@dataclass
class Setting:
    """A point of the sweep before seeds; resolve_settings() adds its config and point."""

    values: dict[str, Any]  # the keys this setting sets beyond base
    origin: str  # "grid" or "include[i]"
    where: dict[str, str]  # key -> key path in the grid file (or "--set key")
    config: Any = None
    point: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``grid point optim.lr=0.1`` or ``include[1] optim.lr=0.1``."""
        return f"{'grid point' if self.origin == 'grid' else self.origin} {describe_point(self.point)}"


def expand_settings(g: GridReader, sections: GridSections) -> list[Setting]:
    """The product of the axes minus the excluded points, then the include entries."""
    base_where = {k: p for k, (_, p) in sections.base.items()}
    settings: list[Setting] = []
    if sections.axes or not sections.includes:
        keys = list(sections.axes)
        product = [dict(zip(keys, combo)) for combo in itertools.product(*(sections.axes[k][0] for k in keys))]
        kept = [p for p in product
                if not any(all(p[k] == v for k, (v, _) in e.items()) for e in sections.excludes)]
        if product and not kept:
            g.fail("exclude", f"the grid is empty after exclude: every one of its {len(product)} points matches an "
                              "exclude entry; remove or narrow the entries")
        axis_where = {k: p for k, (_, p) in sections.axes.items()}
        settings += [Setting(p, "grid", base_where | axis_where) for p in kept]
    for i, entry in sections.includes:
        values = {k: v for k, (v, _) in entry.items()}
        settings.append(Setting(values, f"include[{i}]", base_where | {k: p for k, (_, p) in entry.items()}))
    return settings


def resolve_settings(g: GridReader, sections: GridSections, settings: Sequence[Setting], check_data: bool
                     ) -> tuple[str, ...]:
    """Build and check each setting once (seeds never change what a check sees), refusing two that
    give the same run; returns the varying keys: grid axes in file order, then include entries' keys."""
    extra = [k for s in settings if s.origin != "grid" for k in s.values if k not in sections.axes]
    all_axes = tuple(sections.axes) + tuple(dict.fromkeys(extra))
    entry, base = g.entry, {k: v for k, (v, _) in sections.base.items()}
    first_by_key: dict[str, Setting] = {}
    for s in settings:
        s.config = entry.build(base | s.values)
        # Grid axes (an include entry's unset ones resolved from base) and the entry's own keys.
        keys = [k for k in all_axes if k in s.values or k in sections.axes]
        params = entry.params(s.config) if any(k not in s.values for k in keys) else {}
        s.point = {k: s.values[k] if k in s.values else entry.coerce(k, params[k]) for k in keys
                   if k in s.values or k in params}  # an open config has no value for a key nobody gave
        _check_setting(g, s, check_data)
        first = first_by_key.setdefault(entry.run_key(s.config), s)
        if first is not s:
            g.fail(s.origin, f"{s.label} gives the same run as {first.label}; remove one of them")
    return all_axes


def _check_setting(g: GridReader, s: Setting, check_data: bool) -> None:
    """The entry's check() on a resolved setting, blaming the grid key path that set the failing value."""
    try:
        g.entry.check(s.config, check_data)
    except ConfigError as err:
        key = err.key or ""
        if key == "entry":  # the entry itself (a command's placeholder, its program), not a config key
            g.fail("entry", err.problem)
        if key in s.where:
            path, problem = s.where[key], err.problem
        else:
            # The key keeps its default: blame a varying key that makes this point fail, else name the base key.
            varying = [k for k in g.entry.related_keys.get(key, ())
                       if k in s.where and not s.where[k].startswith("base.")]
            path = s.where[varying[0]] if varying else f"base.{key}"
            problem = f"{key}: {err.problem}" if varying else f"{err.problem}; set {path}"
        if ";" not in problem:  # a bare range message: say where the fix goes
            axis = path.startswith("grid.")
            problem += "; change or remove that value of the axis" if axis else "; change the value"
        label = describe_point(s.point)
        g.fail(path, problem, context=f"at {label}" if label else "")


def seed_major_runs(entry: Entry, settings: Sequence[Setting], seeds: Sequence[int]) -> tuple[RunSpec, ...]:
    """Every setting with the first seed, then every setting with the next, ...: a sweep
    cut short still covers every setting. Names that collide get ``-<index>`` appended."""
    # A setting's name parts and label are the same for every seed: made once per setting.
    named = [(s, name_parts(s.point, entry), describe_point(s.point)) for s in settings]
    runs = [run_with_seed(s.point, s.config, seed, i * len(settings) + j, entry, parts, setting)
            for i, seed in enumerate(seeds) for j, (s, parts, setting) in enumerate(named)]
    counts = collections.Counter(r.name for r in runs)
    return tuple(dataclasses.replace(r, name=f"{r.name}-{r.index}") if counts[r.name] > 1 else r for r in runs)


def run_with_seed(point: Mapping[str, Any], config: Any, seed: int, index: int, entry: Entry,
                  parts: Sequence[str] | None = None, setting: str | None = None) -> RunSpec:
    """The run of a setting (``point`` without its seed, ``config`` its config) with ``seed``, named
    ``run_name({**point, "seed": seed})``; ``entry``: the sweep's (``SweepSpec.entry``); ``parts`` and
    ``setting``: the setting's name parts and label, when already made."""
    parts = name_parts(point, entry) if parts is None else parts
    setting = describe_point(point) if setting is None else setting
    cfg, seed_point = entry.seeded(config, seed), {"seed": seed}
    seed_label = describe_point(seed_point)
    return RunSpec(index=index, name=join_name([*parts, *name_parts(seed_point, entry)]), point={**point, **seed_point},
                   setting=setting, point_label=f"{setting},{seed_label}" if setting else seed_label, config=cfg,
                   run_key=entry.run_key(cfg))


def sweep_id(name: str, runs: Sequence[RunSpec]) -> str:
    """12 hex characters over the sweep's name and its sorted run keys."""
    digest = hashlib.sha256(json.dumps({"name": name, "runs": sorted(r.run_key for r in runs)}).encode())
    return digest.hexdigest()[:12]
