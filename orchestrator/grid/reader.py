"""A grid file's sections → values checked against its entry's config keys and types. The first
problem raises :class:`~experiments.config.ConfigError`: ``source`` the grid file, ``key`` the key
path in it (``include[1].optim.lr``, ``--set optim.lr``), a message with the fix and the line."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NoReturn, Sequence

import yaml

from experiments.config import ConfigError
from experiments.yaml_source import line_of
from orchestrator.grid.entry import Entry, resolve_entry
from orchestrator.grid.names import experiment_name_problem, format_value, shown_name

TOP_KEYS = ("name", "entry", "base", "grid", "seeds", "include", "exclude", "tune", "checkpoint_seconds")
MAX_SEED = 2**32  # numpy's legacy seeding rejects larger seeds
SEEDS_EXAMPLE = "e.g. seeds: [0, 1, 2]"
CHECKPOINT_SECONDS = 60.0  # the top-level checkpoint_seconds when a grid gives none
OPEN_EXAMPLE_KEY = "lr"  # the key that messages show for an entry whose config is open

Located = tuple[Any, str]  # a checked value and the key path that set it: (0.1, "grid.optim.lr")


@dataclass(frozen=True)
class GridSections:
    """What a grid file says, checked value by value, before expansion."""

    name: str
    entry: Entry
    base: dict[str, Located]  # dotted key → (value, key path)
    axes: dict[str, tuple[list[Any], str]]  # dotted key → (values, key path), in file order
    seeds: tuple[int, ...]
    includes: list[tuple[int, dict[str, Located]]]  # (index in the file, entry)
    excludes: list[dict[str, Located]]
    tune: Any  # the raw ``tune`` section (None without one); read by orchestrator.grid.space


def suggest(word: Any, options: Iterable[str]) -> str:
    """``"did you mean optim.lr? "`` for a near miss, else ``""``."""
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else ""


def field_kind(entry: Entry, key: str) -> str:
    """'int', 'float', 'bool', 'str', 'tuple' or 'other' for a config key of ``entry``; 'any' when
    its config is open (``fields`` None)."""
    if entry.fields is None:
        return "any"
    tp = entry.fields[key]
    if any(tp is py for py in (int, float, bool, str)):
        return tp.__name__
    return "tuple" if "tuple" in str(tp) or typing.get_origin(tp) is list else "other"


class GridReader:
    """Checks the values of one grid file, raising ConfigError at the first problem."""

    def __init__(self, source: str, lines: dict[str, int], entry: Entry | None = None):
        self.source = source  # the grid file
        self.lines = lines  # key path → line, from experiments.yaml_source
        self.folder = str(Path(source).resolve().parent)  # where the entry's own code is looked for first
        self.entry = entry or resolve_entry()  # sections() takes the one the file names

    def fail(self, key: str | None, message: str, *, at: str | None = None, context: str = "") -> NoReturn:
        """Raise ConfigError for ``key``; ``at`` is a finer path for the line number."""
        line = line_of(self.lines, at or key)
        notes = ", ".join(n for n in (context, f"line {line}" if line else "") if n)
        raise ConfigError(f"{message} ({notes})" if notes else message, key=key, source=self.source)

    def config_key(self, key: str, path: str, *, seed_problem: str) -> None:
        """Refuse ``seed`` (``seed_problem`` says why it is wrong here) and unknown keys."""
        if key == "seed":
            self.fail(path, f"{seed_problem}; list seeds at the top level, {SEEDS_EXAMPLE}")
        if self.entry.fields is not None and key not in self.entry.fields:
            hint = suggest(key, {*self.entry.fields, *(k.split(".")[0] for k in self.entry.fields)})
            self.fail(path, f"unknown key {key!r}; {hint}valid keys: {', '.join(self.entry.fields)}")

    def coerce(self, key: str, value: Any, path: str, *, at: str | None = None, one_value: str = "") -> Any:
        """The entry's coerce() with the grid file's key path; ``one_value`` hints at list misuse."""
        self.config_key(key, path, seed_problem="the seed is not set here")
        try:
            return self.entry.coerce(key, value)
        except ConfigError as err:
            misused = isinstance(value, list) and field_kind(self.entry, key) != "tuple" and one_value
            self.fail(path, f"{err.problem}; {one_value if misused else 'fix the value'}", at=at)

    def distinct(self, values: list[Any], path: str, read: Callable[[Any, str], Any], what: str = "") -> list[Any]:
        """``values``, each read by ``read(value, its key path)``; a value given twice is refused."""
        checked: dict[Any, None] = {}  # values are hashable: a long list is read in linear time
        for i, value in enumerate(values):
            value = read(value, f"{path}[{i}]")
            if value in checked:
                self.fail(path, f"{what}{format_value(value)} appears twice; remove the duplicate", at=f"{path}[{i}]")
            checked[value] = None
        return list(checked)

    def flatten(self, tree: Any, path: str, what: str, read: Callable[[str, Any, str], Any]) -> dict[str, Located]:
        """A nested or dotted mapping → {dotted key: (read(key, value, key path), key path)}."""
        if tree is None:
            return {}
        if not isinstance(tree, dict):
            self.fail(path, f"expected a mapping of config keys, got {type(tree).__name__} {tree!r}; write {what}")
        out: dict[str, Located] = {}
        for key, value in self._dotted(tree, path, ""):
            if key in out:
                self.fail(f"{path}.{key}", f"{key} is given twice (nested and dotted); keep one of them")
            out[key] = (read(key, value, f"{path}.{key}"), f"{path}.{key}")
        return out

    def _dotted(self, tree: dict, path: str, prefix: str) -> list[tuple[str, Any]]:
        """(dotted key, value) of every leaf of ``tree``: a section's mapping is walked into (an open
        config's every mapping is one), a value given to a section is refused."""
        items: list[tuple[str, Any]] = []
        for k, v in tree.items():
            key = f"{prefix}{k}"
            if self.entry.fields is None:
                nested = isinstance(v, dict)
            else:
                section = [f for f in self.entry.fields if f.startswith(f"{key}.")]  # key = "optim" of optim.lr
                if section and not isinstance(v, dict):
                    sub = section[0][len(key) + 1:]
                    self.fail(f"{path}.{key}", f"{key} is a section; give a mapping of its keys (e.g. {key}: "
                                               f"{{{sub}: ...}}) or dotted keys (e.g. {section[0]}: ...)")
                nested = bool(section)
            items += self._dotted(v, path, f"{key}.") if nested else [(key, v)]
        return items

    def sections(self, data: Any, overrides: Sequence[str]) -> GridSections:
        """Every section of the parsed file (None: empty), checked in file order, then ``overrides``."""
        data = {} if data is None else data
        if not isinstance(data, dict):
            self.fail(None, f"expected a mapping at the top level ({', '.join(k + ':' for k in TOP_KEYS)}), "
                            f"got a {type(data).__name__}; start the file with name: <experiment>")
        for key in data:
            if key not in TOP_KEYS:
                self.fail(str(key), f"unknown top-level key; {suggest(key, TOP_KEYS)}valid keys: {', '.join(TOP_KEYS)}")
        name = self.name(data)
        seconds = self.checkpoint_seconds(data)
        try:
            self.entry = resolve_entry(data.get("entry"), folder=self.folder, checkpoint_seconds=seconds)
        except ConfigError as err:
            self.fail("entry", err.problem)
        if "checkpoint_seconds" in data and "checkpoint_seconds" not in self.entry.spec:
            own = [k for k in self.entry.fields or () if k.rsplit(".", 1)[-1] == "checkpoint_seconds"]
            fix = f"give {own[0]} under base instead" if own else "remove it"
            self.fail("checkpoint_seconds", f"{self.entry.name} does not read a top-level checkpoint_seconds; {fix}")
        example = next((k for k in self.entry.fields or () if k != "seed"), OPEN_EXAMPLE_KEY)
        one = "base gives one value for every run; to sweep over several values, move the key under grid"
        base = self.flatten(data.get("base"), "base", f"key: value pairs, e.g. base: {{{example}: ...}}",
                            functools.partial(self.coerce, one_value=one))
        axes = self.flatten(data.get("grid"), "grid", f"axes as key: [values], e.g. grid: {{{example}: [...]}}",
                            self._axis)
        seeds = self.seeds(data["seeds"]) if "seeds" in data else (0,)
        includes = list(enumerate(self.entries(data.get("include"), "include", example)))
        excludes = self.entries(data.get("exclude"), "exclude", example, axes)
        sections = GridSections(name, self.entry, base, axes, seeds, includes, excludes, tune=data.get("tune"))
        for item in overrides:
            sections = self.override(sections, item)
        return sections

    def override(self, sections: GridSections, item: str) -> GridSections:
        """``--set key=value`` (value read as YAML): an axis shrinks to that value, another key overrides
        ``base``, include entries that disagree are dropped; ``seed=N`` replaces both seed lists."""
        key, eq, text = (part.strip() for part in item.partition("="))
        if not eq or not key:
            self.fail("--set", f"expected key=value, got {item!r}; e.g. --set optim.lr=0.05")
        try:
            raw = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            raw = text  # not YAML: the text itself, which the key's type may refuse
        where = f"--set {key}"
        if key == "seed":
            tune = {**sections.tune, "seeds": [raw]} if isinstance(sections.tune, dict) else sections.tune
            return dataclasses.replace(sections, seeds=self.seeds([raw], where), tune=tune)
        value = self.coerce(key, raw, where, one_value="--set gives one value")
        axes = {**sections.axes, key: ([value], where)} if key in sections.axes else sections.axes
        base = sections.base if key in sections.axes else {**sections.base, key: (value, where)}
        includes = [(i, e) for i, e in sections.includes if key not in e or e[key][0] == value]
        return dataclasses.replace(sections, base=base, axes=axes, includes=includes)

    def checkpoint_seconds(self, data: dict[str, Any]) -> float:
        value = data.get("checkpoint_seconds", CHECKPOINT_SECONDS)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            self.fail("checkpoint_seconds", f"expected a number of seconds, 0 or more, got {value!r}; e.g. "
                                            "checkpoint_seconds: 60 (0: at every save_checkpoint call)")
        return float(value)

    def name(self, data: dict[str, Any]) -> str:
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            problem = ("missing" if name is None else "empty" if isinstance(name, str)
                       else f"expected a string, got {type(name).__name__} {name!r}")
            self.fail("name", f"{problem}; every grid names its MLflow experiment, e.g. name: norm-study")
        name = name.strip()
        problem = experiment_name_problem(name)
        if problem:
            self.fail("name", f"the experiment name {shown_name(name)} {problem}")
        return name

    def _axis(self, key: str, values: Any, path: str) -> list[Any]:
        self.config_key(key, path, seed_problem="seeds are not a grid axis")
        if not isinstance(values, list):
            shown = format_value(values) if not isinstance(values, dict) else "..."
            self.fail(path, f"a grid axis is a list of values, got {values!r}; write {key}: [{shown}], "
                            "or move the key under base to give every run that one value")
        if not values:
            self.fail(path, f"the axis is empty; give at least one value, e.g. {key}: [...], or remove it")
        if field_kind(self.entry, key) == "tuple" and not any(isinstance(v, (list, tuple)) for v in values):
            default = self.entry.params(self.entry.build({})).get(key)
            self.fail(path, f"{key} takes a list per run, so its axis is a list of lists; "
                            f"write e.g. {key}: [{list(default) if default is not None else '[...]'}, [...]]")
        one = "an axis value is a single value"
        return self.distinct(values, path, lambda value, at: self.coerce(key, value, path, at=at, one_value=one))

    def seeds(self, raw: Any, key: str = "seeds") -> tuple[int, ...]:
        """A list of distinct seeds in [0, 2**32); ``key``: where it is (``seeds``, ``tune.seeds``)."""
        if not isinstance(raw, list):
            got = f"the single number {raw}" if isinstance(raw, int) and not isinstance(raw, bool) else repr(raw)
            self.fail(key, f"expected a list of seeds, got {got}; use a list, {SEEDS_EXAMPLE}")
        if not raw:
            default = "[0]" if key == "seeds" else "the grid's first seed"
            self.fail(key, f"the list is empty; give at least one seed, {SEEDS_EXAMPLE}, or omit {key} for {default}")

        def seed(value: Any, at: str) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, f"seed {value!r} is not an integer; use whole numbers, {SEEDS_EXAMPLE}", at=at)
            if not 0 <= value < MAX_SEED:
                self.fail(key, f"seed {value} is {'negative' if value < 0 else 'too large'}; use seeds below 2**32, "
                               f"from 0, {SEEDS_EXAMPLE}", at=at)
            return value

        return tuple(self.distinct(raw, key, seed, what="seed "))

    def entries(self, raw: Any, section: str, example_key: str, axes: dict[str, Any] | None = None
                ) -> list[dict[str, Located]]:
        """``include``, or with the grid's ``axes`` ``exclude``: a list of partial points (dotted
        key → one value; an exclude entry names grid axes and values of them only)."""
        example = f"{section}: [{{{example_key}: ...}}]"
        one = f"each {section} entry gives one value per key; add one entry per point"

        def read(key: str, value: Any, path: str) -> Any:
            value = self.coerce(key, value, path, one_value=one)
            if axes is not None and key not in axes:
                valid = f"axes: {', '.join(axes)}" if axes else "this grid has none; remove exclude"
                self.fail(path, f"{key} is not a grid axis; exclude entries name grid axes only ({valid})")
            if axes is not None and value not in axes[key][0]:
                shown = ", ".join(map(format_value, axes[key][0][:10])) + (", …" if len(axes[key][0]) > 10 else "")
                self.fail(path, f"{format_value(value)} is not a value of the axis ({shown}), so the entry excludes "
                                "nothing; fix the value or remove the entry")
            return value

        if raw is not None and not isinstance(raw, list):
            got = "a mapping; put it in a list" if isinstance(raw, dict) else f"{raw!r}"
            self.fail(section, f"expected a list of points, got {got}; e.g. {example}")
        entries = []
        for i, entry in enumerate(raw or []):
            if not isinstance(entry, dict) or not entry:
                self.fail(f"{section}[{i}]", f"each entry maps keys to one value each, got {entry!r}; e.g. {example}")
            entries.append(self.flatten(entry, f"{section}[{i}]", f"key: value pairs, e.g. {example}", read))
        return entries
