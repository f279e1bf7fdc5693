"""A grid file's sections → checked Python values, each error naming its key path and line.

:class:`GridReader` reads the sections of a parsed grid file (see :mod:`orchestrator.grid.load`
for what they mean) one value at a time and raises
:class:`~experiments.config.ConfigError` at the first problem, with ``source`` = the grid
file, ``key`` = the key path inside it (``grid.model.norm``, ``include[1].model.gn_groups``,
``--set optim.lr`` for an override) and a message that says what is wrong, how to fix it
and, where known, the line. Whole-grid checks (a point that fails ``check()``, two points
that give the same run) come later, in :mod:`orchestrator.grid.expand`.

This module imports neither torch nor mlflow.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable, NoReturn

import yaml

from experiments.config import FIELD_TYPES, KEYS, SECTIONS, ConfigError, coerce
from experiments.yaml_source import line_of
from orchestrator.grid.names import experiment_name_problem, format_value

TOP_KEYS = ("name", "base", "grid", "seeds", "include", "exclude", "tune")
DEFAULT_SEEDS = (0,)
MAX_SEED = 2**32  # numpy's legacy seeding rejects larger seeds
SEEDS_EXAMPLE = "e.g. seeds: [0, 1, 2]"

# A checked value with the key path that set it: (value, "grid.model.norm").
Located = tuple[Any, str]


@dataclass(frozen=True)
class GridSections:
    """What a grid file says, checked value by value, before expansion."""

    name: str
    base: dict[str, Located]  # dotted key → (value, key path)
    axes: dict[str, tuple[list[Any], str]]  # dotted key → (values, key path), in file order
    seeds: tuple[int, ...]
    includes: list[tuple[int, dict[str, Located]]]  # (index in the file, entry)
    excludes: list[dict[str, Located]]
    tune: Any  # the raw ``tune`` section (None without one); read by orchestrator.grid.space
    seed_pinned: bool = False  # --set seed=N: it replaces tune.seeds too


def suggest(word: str, options: Iterable[str]) -> str:
    """``"did you mean model.norm? "`` for a near miss, else ``""``."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else ""


def field_kind(key: str) -> str:
    """'int', 'float', 'bool', 'str', 'tuple' or 'other' for a dotted config key."""
    tp = FIELD_TYPES[key]
    for kind, py in (("int", int), ("float", float), ("bool", bool), ("str", str)):
        if tp is py:
            return kind
    return "tuple" if "tuple" in str(tp) else "other"


def _looks_plain(text: str) -> bool:
    """Whether a quoted string would read as a number or a boolean without its quotes."""
    if len(text) > 40:  # no number or boolean is this long; a long string is not parsed again
        return False
    try:
        return not isinstance(yaml.safe_load(text), str)
    except yaml.YAMLError:
        return False


def _shown(text: str, limit: int = 40) -> str:
    """``text`` quoted, its middle cut when it is long (a 300-character name in a message)."""
    return repr(text) if len(text) <= limit else repr(f"{text[:limit // 2]}…{text[-limit // 2:]}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class GridReader:
    """Checks the values of one grid file, raising ConfigError at the first problem."""

    def __init__(self, source: str, lines: dict[str, int]):
        self.source = source  # the grid file
        self.lines = lines  # key path → line, from experiments.yaml_source

    def fail(self, key: str | None, message: str, *, at: str | None = None, context: str = "") -> NoReturn:
        """Raise ConfigError for ``key``; ``at`` is a finer path for the line number."""
        line = line_of(self.lines, at or key)
        notes = ", ".join(n for n in (context, f"line {line}" if line else "") if n)
        raise ConfigError(f"{message} ({notes})" if notes else message, key=key, source=self.source)

    # -- single keys and values

    def config_key(self, key: str, path: str, *, seed_problem: str) -> None:
        """Refuse ``seed`` (``seed_problem`` says why it is wrong here) and unknown keys."""
        if key == "seed":
            self.fail(path, f"{seed_problem}; list seeds at the top level, {SEEDS_EXAMPLE}")
        if key not in FIELD_TYPES:
            self.fail(path, self.unknown_key(key))

    @staticmethod
    def unknown_key(key: str) -> str:
        try:
            coerce(key, None)
        except ConfigError as err:  # config's own message, which lists the valid keys
            valid = err.problem.removeprefix("unknown key; ")
            return f"unknown key {key!r}; {suggest(key, KEYS + tuple(SECTIONS))}{valid}"
        return f"unknown key {key!r}"  # pragma: no cover - only called for unknown keys

    def coerce(self, key: str, value: Any, path: str, *, at: str | None = None, one_value: str = "") -> Any:
        """coerce() with the grid file's key path; ``one_value`` hints at list misuse."""
        self.config_key(key, path, seed_problem="the seed is not set here")
        try:
            return coerce(key, value)
        except ConfigError as err:
            problem = err.problem
            if isinstance(value, list) and field_kind(key) != "tuple" and one_value:
                problem += f"; {one_value}"
            elif isinstance(value, str) and field_kind(key) in ("int", "float", "bool") and _looks_plain(value):
                problem += "; write it without quotes"
            else:
                problem += "; fix the value"
            self.fail(path, problem, at=at)

    def flatten(self, tree: Any, path: str, what: str) -> dict[str, Located]:
        """A nested or dotted mapping → {dotted key: (value, key path in the file)}."""
        if tree is None:
            return {}
        if not isinstance(tree, dict):
            self.fail(path, f"expected a mapping of config keys, got {type(tree).__name__} {tree!r}; write {what}")
        out: dict[str, Located] = {}
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

    # -- the sections

    def sections(self, data: Any) -> GridSections:
        """Every section of the parsed file, checked in file-format order; ``data`` is None
        for an empty file."""
        data = self._top_level({} if data is None else data)
        name = self.name(data)
        base = self.base(data.get("base"))
        axes = self.axes(data.get("grid"))
        seeds = self.seeds(data["seeds"]) if "seeds" in data else DEFAULT_SEEDS
        includes = list(enumerate(self.entries(data.get("include"), "include")))
        excludes = self.excludes(data.get("exclude"), axes)
        return GridSections(name, base, axes, seeds, includes, excludes, tune=data.get("tune"))

    def _top_level(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail(
                None,
                f"expected a mapping at the top level ({', '.join(k + ':' for k in TOP_KEYS)}), "
                f"got a {type(data).__name__}; start the file with name: <experiment>",
            )
        for key in data:
            if key not in TOP_KEYS:
                hint = suggest(str(key), TOP_KEYS)
                self.fail(str(key), f"unknown top-level key; {hint}valid keys: {', '.join(TOP_KEYS)}")
        return data

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
        problem = experiment_name_problem(name.strip())
        if problem:
            self.fail("name", f"the experiment name {_shown(name.strip())} {problem}")
        return name.strip()

    def base(self, raw: Any) -> dict[str, Located]:
        one = "base gives one value for every run; to sweep over several values, move the key under grid"
        flat = self.flatten(raw, "base", "key: value pairs, e.g. base: {optim.lr: 0.1}")
        return {key: (self.coerce(key, value, path, one_value=one), path) for key, (value, path) in flat.items()}

    def axes(self, raw: Any) -> dict[str, tuple[list[Any], str]]:
        flat = self.flatten(raw, "grid", "axes as key: [values], e.g. grid: {model.norm: [bn, gn]}")
        return {key: (self._axis(key, values, path), path) for key, (values, path) in flat.items()}

    def _axis(self, key: str, values: Any, path: str) -> list[Any]:
        self.config_key(key, path, seed_problem="seeds are not a grid axis")
        if not isinstance(values, list):
            shown = format_value(values) if not isinstance(values, dict) else "..."
            self.fail(
                path,
                f"a grid axis is a list of values, got {values!r}; write {key}: [{shown}], "
                "or move the key under base to give every run that one value",
            )
        if not values:
            self.fail(path, f"the axis is empty; give at least one value, e.g. {key}: [...], or remove it")
        if field_kind(key) == "tuple" and not any(isinstance(v, (list, tuple)) for v in values):
            self.fail(
                path,
                f"{key} takes a list per run, so its axis is a list of lists; "
                f"write e.g. {key}: [[16, 32, 64], [32, 64, 128]]",
            )
        checked: list[Any] = []
        seen: set[Any] = set()  # config values are hashable; a set keeps a long axis linear
        for i, value in enumerate(values):
            at = f"{path}[{i}]"
            value = self.coerce(key, value, path, at=at, one_value="an axis value is a single value")
            if value in seen:
                self.fail(path, f"{format_value(value)} appears twice in the axis; remove the duplicate", at=at)
            seen.add(value)
            checked.append(value)
        return checked

    def seeds(self, raw: Any, key: str = "seeds") -> tuple[int, ...]:
        """A list of distinct seeds in [0, 2**32); ``key``: where it is (``seeds``, ``tune.seeds``)."""
        if isinstance(raw, int) and not isinstance(raw, bool):
            like = f"seeds: [{', '.join(map(str, range(raw)))}]" if 0 < raw <= 10 else "seeds: [0, 1, 2]"
            self.fail(key, f"expected a list of seeds, got the single number {raw}; use a list, e.g. {like}")
        if not isinstance(raw, list):
            self.fail(key, f"expected a list of integers, got {raw!r}; use a list, {SEEDS_EXAMPLE}")
        if not raw:
            default = "[0]" if key == "seeds" else "the grid's first seed"
            self.fail(key, f"the list is empty; give at least one seed, {SEEDS_EXAMPLE}, or omit {key} for {default}")
        seeds: dict[int, None] = {}  # ordered, and linear on a long list
        for i, seed in enumerate(raw):
            at = f"{key}[{i}]"
            if isinstance(seed, bool) or not isinstance(seed, int):
                self.fail(key, f"seed {seed!r} is not an integer; use whole numbers, {SEEDS_EXAMPLE}", at=at)
            if seed < 0:
                self.fail(key, f"seed {seed} is negative; seeds are integers from 0, {SEEDS_EXAMPLE}", at=at)
            if seed >= MAX_SEED:
                self.fail(key, f"seed {seed} is too large; use seeds below 2**32", at=at)
            if seed in seeds:
                self.fail(key, f"seed {seed} appears twice; each seed is one repeat: remove the duplicate", at=at)
            seeds[seed] = None
        return tuple(seeds)

    def entries(self, raw: Any, section: str) -> list[dict[str, Located]]:
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

    def excludes(self, raw: Any, axes: dict[str, tuple[list[Any], str]]) -> list[dict[str, Located]]:
        """``exclude`` entries, each naming grid axes and values of them only."""
        excludes = self.entries(raw, "exclude")
        values = {key: set(axis) for key, (axis, _) in axes.items()}
        for entry in excludes:
            for key, (value, path) in entry.items():
                if key not in axes:
                    valid = f"axes: {', '.join(axes)}" if axes else "this grid has none; remove exclude"
                    self.fail(path, f"{key} is not a grid axis; exclude entries name grid axes only ({valid})")
                if value not in values[key]:
                    shown = ", ".join(format_value(v) for v in axes[key][0][:10]) + (
                        ", …" if len(axes[key][0]) > 10 else "")
                    self.fail(path, f"{format_value(value)} is not a value of the axis ({shown}), so the entry "
                                    "excludes nothing; fix the value or remove the entry")
        return excludes
