"""Checked grid sections → settings → one :class:`RunSpec` per setting and seed.

The expansion rules (product of the axes in file order, ``exclude``, ``include`` on top
of ``base``, ``--set`` overrides, seed-major order) are stated in :mod:`orchestrator.grid.load`.
Every setting is resolved to a :class:`~experiments.config.RunConfig` and checked once
here; a failure blames the key path in the grid file that set the failing value. This
module imports neither torch nor mlflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from experiments.config import ConfigError, RunConfig, build, check, parse_override, run_key
from orchestrator.grid.reader import MAX_SEED, GridReader, GridSections, Located
from orchestrator.grid.names import describe_point, run_name

# check() reports a cross-field problem under one key; when that key keeps its
# default, blame the first of these that an axis, include entry or --set varies
# (else the error names base.<key>, where the fix would go).
RELATED_KEYS = {
    "model.gn_groups": ("model.norm", "model.widths"),
    "model.norm": ("model.widths", "model.gn_groups", "model.bin_rho"),
    "data.root": ("data.name", "data.download"),
}


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a point of the grid with one seed, fully resolved."""

    index: int  # 0-based position in expansion order
    name: str  # readable, unique within the sweep: "gn-bs8-s0"
    point: dict[str, Any] = field(hash=False)  # varying values in axis order, then "seed"
    setting: str  # the point without its seed: "model.norm=gn,data.batch_size=8" ("" with no axes)
    point_label: str  # the point with its seed: "model.norm=gn,data.batch_size=8,seed=0" (tag Tag.POINT)
    config: RunConfig
    run_key: str  # experiments.config.run_key(config)


@dataclass
class Setting:
    """A point of the sweep before seeds: its own values and where each value came from."""

    values: dict[str, Any]  # the keys this setting sets beyond base
    origin: str  # "grid" or "include[i]"
    where: dict[str, str]  # key -> key path in the grid file (or "--set key")


@dataclass(frozen=True)
class ResolvedSetting:
    """A checked setting: its config (seed from base) and its point (varying keys → values)."""

    setting: Setting
    config: RunConfig
    point: dict[str, Any]


def apply_overrides(g: GridReader, overrides: Sequence[str], sections: GridSections) -> GridSections:
    """``--set key=value`` on top of the file: a grid axis shrinks to that one value, any
    other key overrides ``base``, include entries that give the key another value are
    dropped, and ``seed=N`` replaces ``seeds`` (and ``tune.seeds``)."""
    base, axes, includes = dict(sections.base), dict(sections.axes), list(sections.includes)
    seeds, seed_pinned = sections.seeds, sections.seed_pinned
    for item in overrides:
        try:
            key, raw = parse_override(item)
        except ConfigError as err:
            where = f"--set {err.key}" if err.key else "--set"
            raise ConfigError(err.problem, key=where, source=g.source) from None
        where = f"--set {key}"
        if key == "seed":
            if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < MAX_SEED:
                g.fail(where, f"expected a seed, an integer from 0, got {raw!r}; e.g. --set seed=1")
            seeds, seed_pinned = (raw,), True
            continue
        value = g.coerce(key, raw, where, one_value="--set gives one value")
        if key in axes:
            axes[key] = ([value], where)
        else:
            base[key] = (value, where)
        includes = [(i, e) for i, e in includes if key not in e or e[key][0] == value]
    return dataclasses.replace(sections, base=base, axes=axes, seeds=seeds, includes=includes,
                               seed_pinned=seed_pinned)


def expand_settings(g: GridReader, sections: GridSections) -> list[Setting]:
    """The product of the axes minus the excluded points, then the include entries."""
    base, axes, includes = sections.base, sections.axes, sections.includes
    base_where = {k: p for k, (_, p) in base.items()}
    settings: list[Setting] = []
    if axes or not includes:
        keys = list(axes)
        product = [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k][0] for k in keys))]
        excluded = _exclude_lookup(sections.excludes)
        kept = [p for p in product if not any(tuple(p[k] for k in ks) in values for ks, values in excluded)]
        if product and not kept:
            g.fail(
                "exclude",
                f"the grid is empty after exclude: every one of its {len(product)} points matches an "
                "exclude entry; remove or narrow the entries",
            )
        axis_where = {k: p for k, (_, p) in axes.items()}
        settings += [Setting(p, "grid", base_where | axis_where) for p in kept]
    for i, entry in includes:
        values = {k: v for k, (v, _) in entry.items()}
        settings.append(Setting(values, f"include[{i}]", base_where | {k: p for k, (_, p) in entry.items()}))
    return settings


def _exclude_lookup(excludes: Sequence[Mapping[str, Located]]) -> list[tuple[tuple[str, ...], set[tuple]]]:
    """Exclude entries grouped by the axes they name, each group a set of value tuples: a
    point is then checked against every group in one lookup, not against every entry."""
    groups: dict[tuple[str, ...], set[tuple]] = {}
    for entry in excludes:
        keys = tuple(sorted(entry))
        groups.setdefault(keys, set()).add(tuple(entry[k][0] for k in keys))
    return list(groups.items())


def varying_keys(settings: Sequence[Setting], axes: Mapping[str, Any]) -> tuple[str, ...]:
    """Grid axes in file order, then keys that only include entries set."""
    extra = [k for s in settings if s.origin != "grid" for k in s.values if k not in axes]
    return tuple(axes) + tuple(dict.fromkeys(extra))


def resolve_settings(
    g: GridReader,
    base: Mapping[str, Located],
    settings: Sequence[Setting],
    axes: Mapping[str, Any],
    all_axes: Sequence[str],
    check_data: bool,
) -> list[ResolvedSetting]:
    """Build and check each setting once (seeds never change what check() sees); refuse
    two settings that give the same run. ``all_axes``: :func:`varying_keys`."""
    resolved: list[ResolvedSetting] = []
    first_by_key: dict[str, ResolvedSetting] = {}
    for s in settings:
        cfg = build({k: v for k, (v, _) in base.items()} | s.values, source=g.source)
        # Grid axes (an include entry's unset ones resolved from base) and the entry's own keys.
        point = {k: s.values[k] if k in s.values else config_value(cfg, k)
                 for k in all_axes if k in s.values or k in axes}
        _check_setting(g, cfg, s, point, check_data)
        this = ResolvedSetting(s, cfg, point)
        key = run_key(cfg)
        if key in first_by_key:
            first = first_by_key[key]
            g.fail(
                s.origin,
                f"{_describe_setting(s, point, this=True)} gives the same run as "
                f"{_describe_setting(first.setting, first.point)}; remove one of them",
            )
        first_by_key[key] = this
        resolved.append(this)
    return resolved


def config_value(cfg: RunConfig, key: str) -> Any:
    """The value of dotted ``key`` in ``cfg``."""
    if key == "seed":
        return cfg.seed
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)


def _describe_setting(s: Setting, point: Mapping[str, Any], *, this: bool = False) -> str:
    label = describe_point(point) or "the base config"
    if s.origin == "grid":
        return f"grid point {label}"
    return f"this entry ({label})" if this else f"{s.origin} ({label})"


def _check_setting(
    g: GridReader, cfg: RunConfig, s: Setting, point: Mapping[str, Any], check_data: bool
) -> None:
    """check() on a resolved setting, blaming the grid key path that set the failing value."""
    try:
        check(cfg, check_paths=check_data)
    except ConfigError as err:
        key = err.key or ""
        if key in s.where:
            path, problem = s.where[key], err.problem
        else:
            # The key is left at its default: blame a varying key that makes this point
            # fail, or else name the base key to set.
            varying = [k for k in RELATED_KEYS.get(key, ()) if k in s.where and not s.where[k].startswith("base.")]
            path = s.where[varying[0]] if varying else f"base.{key}"
            problem = f"{key}: {err.problem}" if varying else f"{err.problem}; set {path}"
        if ";" not in problem:  # a bare range message: say where the fix goes
            axis = path.startswith("grid.")
            problem += "; change or remove that value of the axis" if axis else "; change the value"
        label = describe_point(point)
        g.fail(path, problem, context=f"at {label}" if label else "")


def seed_major_runs(resolved: Sequence[ResolvedSetting], seeds: Sequence[int]) -> tuple[RunSpec, ...]:
    """Every setting with the first seed, then every setting with the next, ...: a sweep
    cut short still covers every setting. Names that collide get ``-<index>`` appended."""
    runs: list[RunSpec] = []
    for seed in seeds:
        for r in resolved:
            runs.append(run_with_seed(r.point, r.config, seed, len(runs)))
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    return tuple(dataclasses.replace(r, name=f"{r.name}-{r.index}") if counts[r.name] > 1 else r for r in runs)


def run_with_seed(point: Mapping[str, Any], config: RunConfig, seed: int, index: int) -> RunSpec:
    """The run of a setting (``point`` without its seed) with ``seed``."""
    cfg = dataclasses.replace(config, seed=seed)
    full = {**point, "seed": seed}
    return RunSpec(index=index, name=run_name(full), point=full, setting=describe_point(point),
                   point_label=describe_point(full), config=cfg, run_key=run_key(cfg))


def sweep_id(name: str, runs: Sequence[RunSpec]) -> str:
    """12 hex characters over the sweep's name and its sorted run keys."""
    digest = hashlib.sha256(json.dumps({"name": name, "runs": sorted(r.run_key for r in runs)}).encode())
    return digest.hexdigest()[:12]
