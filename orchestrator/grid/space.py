"""What ``orch tune`` searches: a grid's ``tune`` section, or the entry's default space, checked once.

``tune: {metric, direction, n_trials, seeds, space: {optim.lr: {type: float, low: 0.01, high: 0.5}}}``,
every key optional (docs/how-to/tuning.md). A written and a default space pass the same checks
(a config key; every bound and choice valid in every setting). A key is swept or tuned: a written
space naming a grid axis is refused; the default space leaves the axes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from experiments.config import ConfigError
from orchestrator.grid.names import format_value
from orchestrator.grid.reader import GridReader, field_kind, suggest

TUNE_KEYS = ("metric", "direction", "n_trials", "seeds", "space")
SPACE_FIELDS = ("type", "low", "high", "log", "step", "choices")  # a range's, then a categorical's
SPACE_TYPES = ("int", "float", "categorical")
SPACE_EXAMPLE = "e.g. {type: float, low: 0.05, high: 0.9, log: true}"


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
    seeds: tuple[int, ...] | None = None  # every trial trains each; None: the grid's first seed (tune_spec)


def read_tune(g: GridReader, raw: Any, configs: Sequence[Any], axes: Sequence[str], check_data: bool
              ) -> TuneSpec | None:
    """The ``tune`` section ``raw`` (None: no section); every bound and choice must pass the
    entry's check in every setting (``configs``, one per setting); ``axes``: the grid's varying keys."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        g.fail("tune", f"expected a mapping ({', '.join(TUNE_KEYS)}), got {raw!r}; e.g. tune: {{n_trials: 30}}")
    for key in raw:
        if key not in TUNE_KEYS:
            g.fail(f"tune.{key}", f"unknown tune key; {suggest(str(key), TUNE_KEYS)}valid keys: {', '.join(TUNE_KEYS)}")
    if "metric" not in raw and not g.entry.default_metric:
        g.fail("tune.metric", f"missing; {g.entry.name} has no default objective: name a metric its runs log, e.g. "
                              "tune: {metric: val_acc}")
    metric = raw.get("metric", g.entry.default_metric)
    if not isinstance(metric, str) or not metric.strip():
        g.fail("tune.metric", f"expected a metric name, got {metric!r}; e.g. metric: {g.entry.default_metric or 'val_acc'}")
    direction = raw.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        g.fail("tune.direction", f"expected maximize or minimize, got {direction!r}; e.g. direction: maximize")
    n_trials = raw.get("n_trials")
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        g.fail("tune.n_trials", f"expected a positive integer, got {n_trials!r}; e.g. n_trials: 30, or omit it")
    seeds = g.seeds(raw["seeds"], "tune.seeds") if "seeds" in raw else None
    reader = _SpaceReader(g, configs, axes, check_data)
    space = raw.get("space")
    if "space" not in raw:  # the entry's default, read as if written, without the grid axes (swept, so not tuned)
        default = g.entry.default_space(reader.settings)
        space = {k: v for k, v in default.items() if k not in axes}
        if not default:
            g.fail("tune.space", f"missing; {g.entry.name} has no default search space: name the config keys to "
                                 "search, e.g. tune: {space: {lr: {type: float, low: 0.001, high: 0.1, log: true}}}")
        if not space:
            g.fail("tune", f"every key of the default search space ({', '.join(default)}) is a grid axis; add a "
                           "tune.space section naming the keys to search")
    if not isinstance(space, dict) or not space:
        g.fail("tune.space", f"expected a mapping of config keys to ranges, got {space!r}; e.g. space: {{optim.lr: "
                             "{type: float, low: 0.01, high: 0.5}}, or omit space for the default")
    return TuneSpec(metric=metric.strip(), direction=direction, n_trials=n_trials, seeds=seeds,
                    space=tuple(reader.param(str(k), v) for k, v in space.items()))


class _SpaceReader:
    """Reads ``tune.space`` entries against the grid's settings and axes."""

    def __init__(self, g: GridReader, configs: Sequence[Any], axes: Sequence[str], check_data: bool):
        self.g, self.axes, self.check_data = g, axes, check_data
        self.settings = [g.entry.params(cfg) for cfg in configs]  # one per setting

    def param(self, key: str, raw: Any) -> ParamSpace:
        g, path = self.g, f"tune.space.{key}"
        g.config_key(key, path, seed_problem="the seed is not tuned")
        if key in self.axes:
            g.fail(path, f"{key} is a grid axis; a key is either swept or tuned, so remove it from grid or tune.space")
        if not isinstance(raw, dict):
            g.fail(path, f"expected a mapping, got {raw!r}; {SPACE_EXAMPLE}")
        kind = raw.get("type")
        if kind not in SPACE_TYPES:
            g.fail(f"{path}.type", f"expected one of {', '.join(SPACE_TYPES)}, got {kind!r}; {SPACE_EXAMPLE}")
        fields = ("type", "choices") if kind == "categorical" else ("type", "low", "high", "log", "step")
        for f in raw:
            if f in SPACE_FIELDS and f not in fields:
                g.fail(f"{path}.{f}", f"type: {kind} takes {', '.join(fields[1:])}; remove {f} or change the type")
            if f not in fields:
                g.fail(f"{path}.{f}", f"unknown field; {suggest(str(f), fields)}valid fields: {', '.join(fields)}")
        if kind != "categorical":
            return self._range(key, path, kind, raw)
        at, choices = f"{path}.choices", raw.get("choices")
        if not isinstance(choices, list) or not choices:
            g.fail(at, f"a categorical space needs a non-empty list of choices, got {choices!r}; e.g. choices: [a, b]")
        if field_kind(g.entry, key) == "tuple":
            g.fail(at, f"{key} takes a list, which Optuna cannot use as a choice; tune single-valued keys")

        def choice(value: Any, item: str) -> Any:
            value = g.coerce(key, value, at, at=item, one_value="each choice is a single value")
            if isinstance(value, (list, tuple)):  # an open config takes lists; Optuna's choices cannot be
                g.fail(at, "a choice is a single value (Optuna cannot choose a list); remove that choice", at=item)
            self._check_value(key, value, at, fix="; remove that choice")
            return value

        return ParamSpace(key=key, type="categorical", choices=tuple(g.distinct(choices, at, choice)))

    def _range(self, key: str, path: str, kind: str, raw: Mapping[str, Any]) -> ParamSpace:
        g, wanted = self.g, field_kind(self.g.entry, key)
        if wanted != kind and wanted != "any":
            fix = f"use type: {wanted}" if wanted in ("int", "float") else "use type: categorical with choices"
            g.fail(f"{path}.type", f"{key} is not a {kind} field, so type: {kind} does not fit; {fix}")
        for f in ("low", "high"):
            if f not in raw:
                g.fail(f"{path}.{f}", f"missing; a {kind} range needs low and high, {SPACE_EXAMPLE}")
        low, high = (self._bound(key, kind, raw[f], f"{path}.{f}") for f in ("low", "high"))
        if low >= high:
            g.fail(f"{path}.low", f"low ({low}) must be below high ({high}); swap or fix them")
        log, step = raw.get("log", False), raw.get("step")
        if not isinstance(log, bool):
            g.fail(f"{path}.log", f"expected true or false, got {log!r}; e.g. log: true")
        if log and low <= 0:
            g.fail(f"{path}.low", f"a log-scale range needs low > 0, got {low}; raise low or set log: false")
        if step is not None:
            step = self._bound(key, kind, step, f"{path}.step")
            if step <= 0:
                g.fail(f"{path}.step", f"must be above 0, got {step}; e.g. step: 1, or omit step")
            if log:
                g.fail(f"{path}.step", "step and log: true cannot be combined (Optuna rejects it); drop one of them")
        self._check_value(key, low, f"{path}.low", fix="; narrow the range")
        self._check_value(key, high, f"{path}.high", fix="; narrow the range")
        return ParamSpace(key=key, type=kind, low=low, high=high, log=log, step=step)

    def _bound(self, key: str, kind: str, value: Any, at: str) -> Any:
        """A range's low, high or step as the key's type takes it; an open config's key takes the range's type."""
        value = self.g.coerce(key, value, at)
        if field_kind(self.g.entry, key) == "any":
            number = not isinstance(value, bool) and isinstance(value, (int, float))
            if not number or (kind == "int" and not float(value).is_integer()):
                self.g.fail(at, f"expected {'an integer' if kind == 'int' else 'a number'}, got {value!r}; fix the value")
            value = int(value) if kind == "int" else float(value)
        return value

    def _check_value(self, key: str, value: Any, at: str, *, fix: str) -> None:
        """A bound or choice must give a config that passes the entry's check in every setting."""
        entry = self.g.entry
        for params in self.settings:
            try:
                entry.check(entry.build({**params, key: value}), self.check_data)
            except ConfigError as err:
                prefix = f"{err.key}: " if err.key and err.key != key else ""
                fix = "" if ";" in err.problem else fix
                self.g.fail(at, f"{prefix}{err.problem}{fix}", context=f"with {key}={format_value(value)}")
