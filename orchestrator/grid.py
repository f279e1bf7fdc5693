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
  that give the key another value are dropped; ``seed=N`` replaces ``seeds``.

Everything is validated before anything runs: :func:`load_grid` raises
:class:`~experiments.config.ConfigError` with ``source`` = the grid file and ``key`` =
the key path inside it (``grid.model.norm``, ``include[1].model.gn_groups``,
``tune.space.schedule.gamma.low``, ``--set optim.lr`` for an override), and a
message that says what is wrong, how to fix it and, where known, the line.

This module imports neither torch nor mlflow: ``orch sweep --dry-run`` and the
CLI's up-front validation must stay fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from experiments.config import (
    FIELD_TYPES,
    KEYS,
    SECTIONS,
    ConfigError,
    RunConfig,
    build,
    check,
    coerce,
    parse_override,
    run_key,
)

__all__ = [
    "DEFAULT_SPACE",
    "ParamSpace",
    "RunSpec",
    "SweepSpec",
    "TuneSpec",
    "describe_point",
    "load_grid",
    "run_name",
]

TOP_KEYS = ("name", "base", "grid", "seeds", "include", "exclude", "tune")
TUNE_KEYS = ("metric", "direction", "n_trials", "space")
SPACE_FIELDS = ("type", "low", "high", "log", "step", "choices")
SPACE_TYPES = ("int", "float", "categorical")
DIRECTIONS = ("maximize", "minimize")
DEFAULT_METRIC = "val_f1_macro"
DEFAULT_SEEDS = (0,)
MAX_SEED = 2**32  # numpy's legacy seeding rejects larger seeds
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "schedule.step_size": {"type": "int", "low": 2, "high": 30},
    "schedule.gamma": {"type": "float", "low": 0.05, "high": 0.9, "log": True},
}

# Short run-name prefixes: "bs8", "lr0.05", "s0". Keys listed in BARE_NAME_KEYS
# show the value alone ("gn", "digits"); any other key shows its last dotted part.
NAME_PREFIXES = {
    "data.batch_size": "bs",
    "optim.lr": "lr",
    "schedule.gamma": "gamma",
    "schedule.step_size": "step",
    "model.depth_n": "n",
    "seed": "s",
}
BARE_NAME_KEYS = ("model.norm", "data.name")

# check() reports a cross-field problem under one key; when that key keeps its
# default, blame the first of these that an axis, include entry or --set varies
# (else the error names base.<key>, where the fix would go).
RELATED_KEYS = {
    "model.gn_groups": ("model.norm", "model.widths"),
    "model.norm": ("model.widths", "model.gn_groups", "model.bin_rho"),
    "data.root": ("data.name", "data.download"),
}

_NAME_UNSAFE = re.compile(r"[^\w.+=-]+")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a point of the grid with one seed, fully resolved."""

    index: int  # 0-based position in expansion order
    name: str  # readable, unique within the sweep: "gn-bs8-s0"
    point: dict[str, Any] = field(hash=False)  # varying values in axis order, then "seed"
    setting: str  # the point without its seed: "model.norm=gn,data.batch_size=8" ("" with no axes)
    point_label: str  # the point with its seed: "model.norm=gn,data.batch_size=8,seed=0" (tag orch.point)
    config: RunConfig
    run_key: str  # experiments.config.run_key(config)


@dataclass(frozen=True)
class ParamSpace:
    """One tuned key: an int or float range, or a list of categorical choices."""

    key: str
    type: str  # "int" | "float" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: Any) -> Any:
        """Draw this key's value from an Optuna ``trial`` (no optuna import here)."""
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices or ()))


@dataclass(frozen=True)
class TuneSpec:
    """The grid's ``tune`` section: what ``orch tune`` optimises and over which keys."""

    metric: str
    direction: str  # "maximize" | "minimize"
    n_trials: int | None
    space: tuple[ParamSpace, ...]


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
    tune: TuneSpec | None = None

    @property
    def settings(self) -> tuple[str, ...]:
        """Distinct settings (points without seed) in expansion order."""
        return tuple(dict.fromkeys(r.setting for r in self.runs))


# ---------------------------------------------------------------- names and labels


def format_value(value: Any) -> str:
    """A value as it appears in point labels: ``gn``, ``8``, ``0.05``, ``true``, ``16x32x64``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (tuple, list)):
        return "x".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def describe_point(point: Mapping[str, Any]) -> str:
    """``{"model.norm": "gn", "seed": 0}`` → ``"model.norm=gn,seed=0"``."""
    return ",".join(f"{k}={format_value(v)}" for k, v in point.items())


def _name_part(key: str, value: Any) -> str:
    short = NAME_PREFIXES.get(key, key.rsplit(".", 1)[-1])
    if isinstance(value, bool):
        return short if value else f"no-{short}"
    if key in BARE_NAME_KEYS:
        return format_value(value)
    return f"{short}{format_value(value)}"


def run_name(point: Mapping[str, Any]) -> str:
    """``{"model.norm": "gn", "data.batch_size": 8, "seed": 0}`` → ``"gn-bs8-s0"``."""
    name = "-".join(_name_part(k, v) for k, v in point.items())
    return _NAME_UNSAFE.sub("_", name) or "run"


# ---------------------------------------------------------------- YAML with lines


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """Parse ``text``; return the data and a map key path → 1-based line.

    Duplicate keys in one mapping are an error (PyYAML would silently keep the last).
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[str, int] = {}
        if node is not None:
            _index_lines(node, "", lines, source, set())
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"invalid YAML{where}: {problem}; fix the syntax", source=source) from None
    finally:
        loader.dispose()
    return data, lines


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _index_lines(node: yaml.Node, path: str, lines: dict[str, int], source: str, active: set[int]) -> None:
    if id(node) in active:  # a recursive alias; constructing it fails later with its own message
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{key!r} is given twice (lines {seen[key]} and {line}); keep one of them",
                    key=_join(path, key),
                    source=source,
                )
            seen[key] = line
            lines.setdefault(_join(path, key), line)
            _index_lines(value_node, _join(path, key), lines, source, active)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault(f"{path}[{i}]", item.start_mark.line + 1)
            _index_lines(item, f"{path}[{i}]", lines, source, active)
    active.discard(id(node))


# ---------------------------------------------------------------- the reader


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else ""


def _looks_plain(text: str) -> bool:
    """Whether a quoted string would read as a number or a boolean without its quotes."""
    try:
        return not isinstance(yaml.safe_load(text), str)
    except yaml.YAMLError:
        return False


def _field_kind(key: str) -> str:
    """'int', 'float', 'bool', 'str', 'tuple' or 'optional-str' for a dotted config key."""
    tp = FIELD_TYPES[key]
    for kind, py in (("int", int), ("float", float), ("bool", bool), ("str", str)):
        if tp is py:
            return kind
    return "tuple" if "tuple" in str(tp) else "other"


@dataclass
class _Setting:
    """A point of the sweep before seeds: its own values and where each value came from."""

    values: dict[str, Any]  # the keys this setting sets beyond base
    origin: str  # "grid" or "include[i]"
    where: dict[str, str]  # key -> key path in the grid file (or "--set key")


class _GridReader:
    """Turns the parsed YAML into checked Python values, raising ConfigError at the first problem."""

    def __init__(self, source: str, lines: dict[str, int]):
        self.source = source
        self.lines = lines

    def fail(self, key: str | None, message: str, *, at: str | None = None, context: str = "") -> None:
        """Raise ConfigError for ``key``; ``at`` is a finer path for the line number."""
        line = self._line(at or key)
        notes = ", ".join(n for n in (context, f"line {line}" if line else "") if n)
        raise ConfigError(f"{message} ({notes})" if notes else message, key=key, source=self.source)

    def _line(self, path: str | None) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None

    # -- single values

    def coerce(self, key: str, value: Any, path: str, *, at: str | None = None, one_value: str = "") -> Any:
        """coerce() with the grid file's key path; ``one_value`` hints at list misuse."""
        if key == "seed":
            self.fail(path, "the seed is not set here; list seeds at the top level, e.g. seeds: [0, 1, 2]")
        if key not in FIELD_TYPES:
            self.fail(path, self.unknown_key(key))
        try:
            return coerce(key, value)
        except ConfigError as err:
            problem = err.problem
            if isinstance(value, list) and _field_kind(key) != "tuple" and one_value:
                problem += f"; {one_value}"
            elif isinstance(value, str) and _field_kind(key) in ("int", "float", "bool") and _looks_plain(value):
                problem += "; write it without quotes"
            else:
                problem += "; fix the value"
            self.fail(path, problem, at=at)
        raise AssertionError  # unreachable: fail() raises

    @staticmethod
    def unknown_key(key: str) -> str:
        try:
            coerce(key, None)
        except ConfigError as err:  # config's own message, which lists the valid keys
            valid = err.problem.removeprefix("unknown key; ")
            return f"unknown key {key!r}; {_suggest(key, KEYS + tuple(SECTIONS))}{valid}"
        return f"unknown key {key!r}"  # pragma: no cover - only called for unknown keys

    def flatten(self, tree: Any, path: str, what: str) -> dict[str, tuple[Any, str]]:
        """A nested or dotted mapping → {dotted key: (value, key path in the file)}."""
        if tree is None:
            return {}
        if not isinstance(tree, dict):
            self.fail(path, f"expected a mapping of config keys, got {type(tree).__name__} {tree!r}; write {what}")
        out: dict[str, tuple[Any, str]] = {}
        for k, v in tree.items():
            if not isinstance(k, str):
                self.fail(_join(path, str(k)), f"keys are dotted config names like data.batch_size, got {k!r}")
            if k in SECTIONS:
                if not isinstance(v, dict):
                    example = next(key for key in KEYS if key.startswith(k + "."))
                    self.fail(
                        _join(path, k),
                        f"{k} is a section; give a mapping of its keys (e.g. {k}: {{{example.split('.')[1]}: ...}}) "
                        f"or dotted keys (e.g. {example}: ...)",
                    )
                items = [(f"{k}.{sub}", subv) for sub, subv in v.items()]
            else:
                items = [(k, v)]
            for key, value in items:
                key_path = _join(path, key)
                if key in out:
                    self.fail(key_path, f"{key} is given twice (nested and dotted); keep one of them")
                out[key] = (value, key_path)
        return out

    # -- sections

    def name(self, data: dict[str, Any]) -> str:
        if "name" not in data or data["name"] is None:
            self.fail("name", "missing; every grid needs a name, the MLflow experiment, e.g. name: norm-study")
        name = data["name"]
        if isinstance(name, (int, float, bool)):
            self.fail("name", f"expected a string, got {name!r}; quote it, e.g. name: \"{name}\"")
        if not isinstance(name, str):
            self.fail("name", f"expected a string, got {type(name).__name__} {name!r}; e.g. name: norm-study")
        if not name.strip():
            self.fail("name", "empty; give the MLflow experiment a name, e.g. name: norm-study")
        return name.strip()

    def base(self, raw: Any) -> dict[str, tuple[Any, str]]:
        values = {}
        one = "base gives one value for every run; to sweep over several values, move the key under grid"
        flat = self.flatten(raw, "base", "key: value pairs, e.g. base: {optim.lr: 0.1}")
        for key, (value, path) in flat.items():
            values[key] = (self.coerce(key, value, path, one_value=one), path)
        return values

    def axes(self, raw: Any) -> dict[str, tuple[list[Any], str]]:
        axes: dict[str, tuple[list[Any], str]] = {}
        flat = self.flatten(raw, "grid", "axes as key: [values], e.g. grid: {model.norm: [bn, gn]}")
        for key, (values, path) in flat.items():
            if key == "seed":
                self.fail(path, "seeds are not a grid axis; list them at the top level, e.g. seeds: [0, 1, 2]")
            if key not in FIELD_TYPES:
                self.fail(path, self.unknown_key(key))
            if not isinstance(values, list):
                shown = format_value(values) if not isinstance(values, dict) else "..."
                self.fail(
                    path,
                    f"a grid axis is a list of values, got {values!r}; write {key}: [{shown}], "
                    "or move the key under base to give every run that one value",
                )
            if not values:
                self.fail(path, f"the axis is empty; give at least one value, e.g. {key}: [...], or remove it")
            if _field_kind(key) == "tuple" and not any(isinstance(v, (list, tuple)) for v in values):
                self.fail(
                    path,
                    f"{key} takes a list per run, so its axis is a list of lists; "
                    f"write e.g. {key}: [[16, 32, 64], [32, 64, 128]]",
                )
            checked: list[Any] = []
            for i, value in enumerate(values):
                at = f"{path}[{i}]"
                value = self.coerce(key, value, path, at=at, one_value="an axis value is a single value")
                if value in checked:
                    self.fail(path, f"{format_value(value)} appears twice in the axis; remove the duplicate", at=at)
                checked.append(value)
            axes[key] = (checked, path)
        return axes

    def seeds(self, raw: Any) -> tuple[int, ...]:
        example = "e.g. seeds: [0, 1, 2]"
        if isinstance(raw, int) and not isinstance(raw, bool):
            like = f"seeds: [{', '.join(map(str, range(raw)))}]" if 0 < raw <= 10 else "seeds: [0, 1, 2]"
            self.fail("seeds", f"expected a list of seeds, got the single number {raw}; use a list, e.g. {like}")
        if not isinstance(raw, list):
            self.fail("seeds", f"expected a list of integers, got {raw!r}; use a list, {example}")
        if not raw:
            self.fail("seeds", f"the list is empty; give at least one seed, {example}, or omit seeds for [0]")
        seeds: list[int] = []
        for i, seed in enumerate(raw):
            at = f"seeds[{i}]"
            if isinstance(seed, bool) or not isinstance(seed, int):
                self.fail("seeds", f"seed {seed!r} is not an integer; use whole numbers, {example}", at=at)
            if seed < 0:
                self.fail("seeds", f"seed {seed} is negative; seeds are integers from 0, {example}", at=at)
            if seed >= MAX_SEED:
                self.fail("seeds", f"seed {seed} is too large; use seeds below 2**32", at=at)
            if seed in seeds:
                self.fail("seeds", f"seed {seed} appears twice; each seed is one repeat: remove the duplicate", at=at)
            seeds.append(seed)
        return tuple(seeds)

    def entries(self, raw: Any, section: str) -> list[dict[str, tuple[Any, str]]]:
        """``include`` or ``exclude``: a list of partial points (dotted key → one value)."""
        example = f"{section}: [{{model.norm: gn, data.batch_size: 8}}]"
        if raw is None:
            return []
        if isinstance(raw, dict):
            self.fail(section, f"expected a list of points, got a mapping; put it in a list, e.g. {example}")
        if not isinstance(raw, list):
            self.fail(section, f"expected a list of points, got {raw!r}; e.g. {example}")
        entries = []
        for i, entry in enumerate(raw):
            path = f"{section}[{i}]"
            if not isinstance(entry, dict):
                self.fail(path, f"each entry is a mapping of keys to one value each, got {entry!r}; e.g. {example}")
            if not entry:
                self.fail(path, f"the entry is empty; name at least one key, e.g. {example}")
            one = f"each {section} entry gives one value per key; add one entry per point"
            flat = self.flatten(entry, path, f"key: value pairs, e.g. {example}")
            entries.append({k: (self.coerce(k, v, p, one_value=one), p) for k, (v, p) in flat.items()})
        return entries


# ---------------------------------------------------------------- load_grid


def load_grid(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    check_data: bool = True,
) -> SweepSpec:
    """Read, validate and expand a grid file.

    Args:
        path: the grid YAML.
        overrides: ``"key=value"`` strings (``--set``): a grid axis shrinks to that one
            value, another key overrides ``base``, ``seed=N`` replaces ``seeds``.
        check_data: also check that dataset folders exist; ``False`` for a dry run
            on a machine without the data (every other check still runs).

    Returns:
        The sweep with every run resolved, in expansion order.

    Raises:
        ConfigError: the first problem found, naming the key path in the grid file.

    Example:
        >>> spec = load_grid("experiments/grids/demo.yaml")  # doctest: +SKIP
        >>> len(spec.runs), spec.runs[0].name
        (14, 'bn_torch-bs8-s0')
    """
    source = str(path)
    if isinstance(overrides, str):  # one "key=value", not a sequence of characters
        overrides = [overrides]
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ConfigError(f"cannot read the grid file ({reason}); check the path", source=source) from None
    data, lines = _parse_yaml(text, source)
    g = _GridReader(source, lines)

    if data is None:
        data = {}
    if not isinstance(data, dict):
        g.fail(
            None,
            f"expected a mapping at the top level ({', '.join(k + ':' for k in TOP_KEYS)}), "
            f"got a {type(data).__name__}; start the file with name: <experiment>",
        )
    for key in data:
        if key not in TOP_KEYS:
            hint = _suggest(str(key), TOP_KEYS)
            g.fail(str(key), f"unknown top-level key; {hint}valid keys: {', '.join(TOP_KEYS)}")

    name = g.name(data)
    base = g.base(data.get("base"))
    axes = g.axes(data.get("grid"))
    seeds = g.seeds(data["seeds"]) if "seeds" in data else DEFAULT_SEEDS
    includes = list(enumerate(g.entries(data.get("include"), "include")))  # (index in the file, entry)
    excludes = g.entries(data.get("exclude"), "exclude")
    for entry in excludes:
        for key, (value, path) in entry.items():
            if key not in axes:
                valid = f"axes: {', '.join(axes)}" if axes else "this grid has none; remove exclude"
                g.fail(path, f"{key} is not a grid axis; exclude entries name grid axes only ({valid})")
            if value not in axes[key][0]:
                shown = ", ".join(format_value(v) for v in axes[key][0])
                g.fail(path, f"{format_value(value)} is not a value of the axis ({shown}), so the entry "
                             "excludes nothing; fix the value or remove the entry")

    base, axes, seeds, includes = _apply_overrides(g, overrides, base, axes, seeds, includes)
    settings = _settings(g, base, axes, includes, excludes)
    extra = [k for s in settings if s.origin != "grid" for k in s.values if k not in axes]
    all_axes = tuple(axes) + tuple(dict.fromkeys(extra))

    # Resolve and check each setting once (seeds never change what check() sees).
    resolved: list[tuple[_Setting, RunConfig, dict[str, Any]]] = []
    first_by_key: dict[str, tuple[_Setting, dict[str, Any]]] = {}
    for s in settings:
        values = {k: v for k, (v, _) in base.items()} | s.values
        cfg = build(values, source=source)
        # Grid axes (an include entry's unset ones resolved from base) and the entry's own keys.
        point = {k: s.values[k] if k in s.values else _get(cfg, k) for k in all_axes if k in s.values or k in axes}
        _check_setting(g, cfg, s, point, check_data)
        key = run_key(cfg)
        if key in first_by_key:
            first, first_point = first_by_key[key]
            g.fail(
                s.origin,
                f"{_describe_setting(s, point, this=True)} gives the same run as "
                f"{_describe_setting(first, first_point)}; remove one of them",
            )
        first_by_key[key] = (s, point)
        resolved.append((s, cfg, point))

    runs: list[RunSpec] = []
    for seed in seeds:
        for _, cfg, point in resolved:
            cfg_seeded = dataclasses.replace(cfg, seed=seed)
            full = {**point, "seed": seed}
            runs.append(
                RunSpec(
                    index=len(runs),
                    name=run_name(full),
                    point=full,
                    setting=describe_point(point),
                    point_label=describe_point(full),
                    config=cfg_seeded,
                    run_key=run_key(cfg_seeded),
                )
            )
    runs = _unique_names(runs)

    configs = [cfg for _, cfg, _ in resolved]
    tune = _tune(g, data.get("tune"), configs, all_axes, check_data) if "tune" in data else None
    digest = hashlib.sha256(json.dumps({"name": name, "runs": sorted(r.run_key for r in runs)}).encode())
    return SweepSpec(
        name=name,
        path=source,
        text=text,
        axes=all_axes,
        seeds=tuple(seeds),
        runs=tuple(runs),
        sweep_id=digest.hexdigest()[:12],
        tune=tune,
    )


def _get(cfg: RunConfig, key: str) -> Any:
    if key == "seed":
        return cfg.seed
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)


def _apply_overrides(
    g: _GridReader,
    overrides: Sequence[str],
    base: dict[str, tuple[Any, str]],
    axes: dict[str, tuple[list[Any], str]],
    seeds: tuple[int, ...],
    includes: list[tuple[int, dict[str, tuple[Any, str]]]],
) -> tuple[dict, dict, tuple[int, ...], list]:
    base, axes, includes = dict(base), dict(axes), list(includes)
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
            seeds = (raw,)
            continue
        value = g.coerce(key, raw, where, one_value="--set gives one value")
        if key in axes:
            axes[key] = ([value], where)
        else:
            base[key] = (value, where)
        includes = [(i, e) for i, e in includes if key not in e or e[key][0] == value]
    return base, axes, seeds, includes


def _settings(
    g: _GridReader,
    base: dict[str, tuple[Any, str]],
    axes: dict[str, tuple[list[Any], str]],
    includes: list[tuple[int, dict[str, tuple[Any, str]]]],
    excludes: list[dict[str, tuple[Any, str]]],
) -> list[_Setting]:
    base_where = {k: p for k, (_, p) in base.items()}
    settings: list[_Setting] = []
    if axes or not includes:
        keys = list(axes)
        product = [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k][0] for k in keys))]
        kept = [
            p for p in product
            if not any(all(p[k] == v for k, (v, _) in e.items()) for e in excludes)
        ]
        if product and not kept:
            g.fail(
                "exclude",
                f"the grid is empty after exclude: every one of its {len(product)} points matches an "
                "exclude entry; remove or narrow the entries",
            )
        axis_where = {k: p for k, (_, p) in axes.items()}
        settings += [_Setting(p, "grid", base_where | axis_where) for p in kept]
    for i, entry in includes:
        values = {k: v for k, (v, _) in entry.items()}
        settings.append(_Setting(values, f"include[{i}]", base_where | {k: p for k, (_, p) in entry.items()}))
    return settings


def _describe_setting(s: _Setting, point: Mapping[str, Any], *, this: bool = False) -> str:
    label = describe_point(point) or "the base config"
    if s.origin == "grid":
        return f"grid point {label}"
    return f"this entry ({label})" if this else f"{s.origin} ({label})"


def _check_setting(
    g: _GridReader, cfg: RunConfig, s: _Setting, point: Mapping[str, Any], check_data: bool
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


def _unique_names(runs: list[RunSpec]) -> list[RunSpec]:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    return [dataclasses.replace(r, name=f"{r.name}-{r.index}") if counts[r.name] > 1 else r for r in runs]


# ---------------------------------------------------------------- tune


def _tune(
    g: _GridReader, raw: Any, configs: list[RunConfig], axes: tuple[str, ...], check_data: bool
) -> TuneSpec | None:
    """The ``tune`` section; every bound and choice must pass check() in every setting (``configs``)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        g.fail("tune", f"expected a mapping ({', '.join(TUNE_KEYS)}), got {raw!r}; e.g. tune: {{n_trials: 30}}")
    for key in raw:
        if key not in TUNE_KEYS:
            hint = _suggest(str(key), TUNE_KEYS)
            g.fail(f"tune.{key}", f"unknown tune key; {hint}valid keys: {', '.join(TUNE_KEYS)}")
    metric = raw.get("metric", DEFAULT_METRIC)
    if not isinstance(metric, str) or not metric.strip():
        g.fail("tune.metric", f"expected a summary metric name, got {metric!r}; e.g. metric: {DEFAULT_METRIC}")
    direction = raw.get("direction", "maximize")
    if direction not in DIRECTIONS:
        g.fail("tune.direction", f"expected maximize or minimize, got {direction!r}; e.g. direction: maximize")
    n_trials = raw.get("n_trials")
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        g.fail("tune.n_trials", f"expected a positive integer, got {n_trials!r}; e.g. n_trials: 30, or omit it")
    space_raw = raw.get("space", DEFAULT_SPACE)
    if not isinstance(space_raw, dict) or not space_raw:
        g.fail(
            "tune.space",
            f"expected a mapping of dotted keys to ranges, got {space_raw!r}; "
            "e.g. schedule.gamma: {type: float, low: 0.05, high: 0.9, log: true}, or omit space for the default",
        )
    space = tuple(_param(g, str(k), v, configs, axes, check_data) for k, v in space_raw.items())
    return TuneSpec(metric=metric.strip(), direction=direction, n_trials=n_trials, space=space)


def _param(
    g: _GridReader, key: str, raw: Any, configs: list[RunConfig], axes: tuple[str, ...], check_data: bool
) -> ParamSpace:
    path = f"tune.space.{key}"
    if key == "seed":
        g.fail(path, "the seed is not tuned; list seeds at the top level")
    if key not in FIELD_TYPES:
        g.fail(path, g.unknown_key(key))
    if key in axes:
        g.fail(path, f"{key} is a grid axis; a key is either swept or tuned, so remove it from grid or tune.space")
    example = "e.g. {type: float, low: 0.05, high: 0.9, log: true}"
    if not isinstance(raw, dict):
        g.fail(path, f"expected a mapping, got {raw!r}; {example}")
    for f in raw:
        if f not in SPACE_FIELDS:
            hint = _suggest(str(f), SPACE_FIELDS)
            g.fail(f"{path}.{f}", f"unknown field; {hint}valid fields: {', '.join(SPACE_FIELDS)}")
    kind = raw.get("type")
    if kind not in SPACE_TYPES:
        g.fail(f"{path}.type", f"expected one of {', '.join(SPACE_TYPES)}, got {kind!r}; {example}")
    field_kind = _field_kind(key)

    def bound_ok(value: Any, at: str) -> None:
        """A bound or choice must give a config that passes check() in every setting."""
        for reference in configs:
            try:
                check(build({**_flat_values(reference), key: value}), check_paths=check_data)
            except ConfigError as err:
                prefix = f"{err.key}: " if err.key and err.key != key else ""
                fix = "; remove that choice" if kind == "categorical" else "; narrow the range"
                fix = "" if ";" in err.problem else fix
                g.fail(at, f"{prefix}{err.problem}{fix}", context=f"with {key}={format_value(value)}")

    if kind == "categorical":
        for f in ("low", "high", "log", "step"):
            if f in raw:
                g.fail(f"{path}.{f}", f"a categorical space takes only choices; remove {f} or use type: int/float")
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            g.fail(f"{path}.choices", f"a categorical space needs a non-empty list of choices, got {choices!r}; "
                                      "e.g. choices: [bn, gn]")
        checked: list[Any] = []
        for i, c in enumerate(choices):
            at = f"{path}.choices"
            value = g.coerce(key, c, at, at=f"{at}[{i}]", one_value="each choice is a single value")
            if isinstance(value, tuple):
                g.fail(at, f"{key} takes a list, which Optuna cannot use as a choice; tune single-valued keys")
            if value in checked:
                g.fail(at, f"{format_value(value)} appears twice; remove the duplicate", at=f"{at}[{i}]")
            bound_ok(value, at)
            checked.append(value)
        return ParamSpace(key=key, type=kind, choices=tuple(checked))

    if field_kind != kind:
        names = {"int": "an integer", "float": "a number", "bool": "a true/false", "str": "a string"}
        what = names.get(field_kind, "a list")
        fix = f"use type: {field_kind}" if field_kind in ("int", "float") else "use type: categorical with choices"
        g.fail(f"{path}.type", f"{key} is {what} field, so type: {kind} does not fit; {fix}")
    if "choices" in raw:
        g.fail(f"{path}.choices", "choices belong to type: categorical; remove them, or change the type")
    bounds: dict[str, Any] = {}
    for f in ("low", "high"):
        if f not in raw:
            article = "an" if kind == "int" else "a"
            g.fail(f"{path}.{f}", f"missing; {article} {kind} space needs low and high, {example}")
        value = raw[f]
        ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            expected = "an integer" if kind == "int" else "a number"
            g.fail(f"{path}.{f}", f"expected {expected}, got {value!r}; {example}")
        bounds[f] = value if kind == "int" else float(value)
    low, high = bounds["low"], bounds["high"]
    if low >= high:
        g.fail(f"{path}.low", f"low ({low}) must be below high ({high}); swap or fix them")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        g.fail(f"{path}.log", f"expected true or false, got {log!r}; e.g. log: true")
    if log and low <= 0:
        g.fail(f"{path}.low", f"a log-scale range needs low > 0, got {low}; raise low or set log: false")
    step = raw.get("step")
    if step is not None:
        ok = isinstance(step, int) if kind == "int" else isinstance(step, (int, float))
        if isinstance(step, bool) or not ok or step <= 0:
            g.fail(f"{path}.step", f"expected a positive {'integer' if kind == 'int' else 'number'}, got {step!r}; "
                                   "e.g. step: 1, or omit step")
        if log:
            g.fail(f"{path}.step", "step and log: true cannot be combined (Optuna rejects it); drop one of them")
        step = step if kind == "int" else float(step)
    bound_ok(low, f"{path}.low")
    bound_ok(high, f"{path}.high")
    return ParamSpace(key=key, type=kind, low=low, high=high, log=log, step=step)


def _flat_values(cfg: RunConfig) -> dict[str, Any]:
    return {key: _get(cfg, key) for key in KEYS}
