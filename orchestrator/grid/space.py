"""What ``orch tune`` searches: a grid's ``tune`` section, or the default space, checked once.

A grid's ``tune`` section (every key optional)::

    tune:
      metric: val_f1_macro    # a summary metric of a run (default)
      direction: maximize     # or minimize
      n_trials: 30            # per study (default: --n-trials, else 20)
      seeds: [0, 1, 2]        # every trial trains each; its value is their mean (default: the grid's first seed)
      space:                  # dotted config key → a range or a list of choices
        schedule.gamma: {type: float, low: 0.05, high: 0.9, log: true}
        optim.lr: {type: float, low: 0.01, high: 0.5, step: 0.01}
        model.norm: {type: categorical, choices: [bn, gn]}

One path for every space. A written ``space`` and the default one (:data:`DEFAULT_SPACE`,
used when ``space`` is left out or the grid has no ``tune`` section at all) go through the
same checks: every key must be a config key, every bound and choice must give a config
that passes ``check()`` in every setting of the grid. They differ in one rule only, about
keys that are grid axes (a key is either swept or tuned): a written space that names an
axis is refused, while the default space leaves such keys out (they are swept, so not
tuned) and is refused only when every one of its keys is an axis.

Errors are :class:`~experiments.config.ConfigError` with the key path in the grid file
(``tune.space.schedule.gamma.high``) and a fix. This module imports neither torch, mlflow
nor optuna: a :class:`ParamSpace` draws from the trial it is handed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from experiments import metric_names as names
from experiments.config import ConfigError, RunConfig, build, check, to_flat
from orchestrator.grid.reader import GridReader, field_kind, suggest
from orchestrator.grid.names import format_value

if TYPE_CHECKING:
    from orchestrator.grid.load import SweepSpec

__all__ = ["DEFAULT_METRIC", "DEFAULT_SPACE", "ParamSpace", "TuneSpec", "read_tune", "tune_spec"]

TUNE_KEYS = ("metric", "direction", "n_trials", "seeds", "space")
SPACE_FIELDS = ("type", "low", "high", "log", "step", "choices")
SPACE_TYPES = ("int", "float", "categorical")
DIRECTIONS = ("maximize", "minimize")
DEFAULT_METRIC = names.DEFAULT_OBJECTIVE
# The StepLR schedule: epochs between decays and the decay factor. The step size's range
# ends below the grid's max_epochs (_step_sizes).
STEP_SIZE = "schedule.step_size"
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    STEP_SIZE: {"type": "int", "low": 2, "high": 30},
    "schedule.gamma": {"type": "float", "low": 0.05, "high": 0.9, "log": True},
}
SPACE_EXAMPLE = "e.g. {type: float, low: 0.05, high: 0.9, log: true}"
# Every bound and choice is checked in every setting (build + check, ~0.2 ms each here):
# this caps that work at about 2 s, far above any real study (14 settings × 4 bounds).
MAX_SPACE_CHECKS = 10_000


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


def tune_spec(spec: SweepSpec) -> TuneSpec:
    """What ``orch tune`` searches for ``spec``: its ``tune`` section, read when the grid
    was loaded, or else the section ``tune: {}`` (the default space, ``val_f1_macro``
    maximised), read now through the same checks; ``seeds`` left out is the grid's first seed.

    Raises:
        ConfigError: every key of the default space is a grid axis, or the metric is
            not a summary metric of a run.
    """
    tune = spec.tune
    if tune is None:
        configs = list({r.setting: r.config for r in spec.runs}.values())
        # The data folders were checked (or knowingly skipped) when the grid was loaded,
        # and the default space holds no data key: check_data=False repeats no I/O.
        tune = read_tune(GridReader(spec.path, {}), {}, configs, spec.axes, check_data=False)
        assert tune is not None  # a section, even an empty one, gives a TuneSpec
    if tune.metric not in names.SUMMARY_METRICS:
        raise ConfigError(f"{tune.metric!r} is not a summary metric of a run; choose one of "
                          f"{', '.join(names.SUMMARY_METRICS)}", key="tune.metric", source=spec.path)
    return dataclasses.replace(tune, seeds=tune.seeds or spec.seeds[:1])


def read_tune(
    g: GridReader, raw: Any, configs: Sequence[RunConfig], axes: Sequence[str], check_data: bool
) -> TuneSpec | None:
    """The ``tune`` section ``raw`` (None: no section); every bound and choice must pass
    check() in every setting (``configs``, one per setting); ``axes``: the grid's varying keys."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        g.fail("tune", f"expected a mapping ({', '.join(TUNE_KEYS)}), got {raw!r}; e.g. tune: {{n_trials: 30}}")
    for key in raw:
        if key not in TUNE_KEYS:
            hint = suggest(str(key), TUNE_KEYS)
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
    seeds = g.seeds(raw["seeds"], "tune.seeds") if "seeds" in raw else None
    reader = _SpaceReader(g, configs, axes, check_data)
    space = reader.space(raw["space"]) if "space" in raw else reader.default_space()
    return TuneSpec(metric=metric.strip(), direction=direction, n_trials=n_trials, space=space, seeds=seeds)


def _step_sizes(max_epochs: int) -> dict[str, Any]:
    """The default range of ``schedule.step_size`` for runs of ``max_epochs`` epochs.

    StepLR decays after every ``step_size`` epochs, so a step size of ``max_epochs`` or more
    never acts, and every trial drawing one trains the same run. The range ends at
    ``max_epochs - 1`` (at most 30); a run of 1 or 2 epochs keeps the range 1..2, the
    narrowest an int range can be.
    """
    high = min(DEFAULT_SPACE[STEP_SIZE]["high"], max(2, max_epochs - 1))
    return {**DEFAULT_SPACE[STEP_SIZE], "low": min(DEFAULT_SPACE[STEP_SIZE]["low"], high - 1), "high": high}


def _is_number(value: Any, kind: str) -> bool:
    """An integer for an int space, an integer or float for a float one (never a bool)."""
    ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
    return ok and not isinstance(value, bool)


class _SpaceReader:
    """Reads ``tune.space`` entries against the grid's settings and axes."""

    def __init__(self, g: GridReader, configs: Sequence[RunConfig], axes: Sequence[str], check_data: bool):
        self.g = g
        self.flat_configs = [to_flat(cfg) for cfg in configs]  # one per setting
        self.axes = axes
        self.check_data = check_data

    def default_space(self) -> tuple[ParamSpace, ...]:
        """:data:`DEFAULT_SPACE` without the grid axes (swept, so not tuned), read as if written,
        with ``schedule.step_size`` below the shortest setting's ``train.max_epochs``."""
        keys = [k for k in DEFAULT_SPACE if k not in self.axes]
        if not keys:
            self.g.fail("tune", f"every key of the default search space ({', '.join(DEFAULT_SPACE)}) is a grid "
                                "axis; add a tune.space section naming the keys to search")
        space = {k: DEFAULT_SPACE[k] for k in keys}
        if STEP_SIZE in space and self.flat_configs:
            space[STEP_SIZE] = _step_sizes(min(int(f["train.max_epochs"]) for f in self.flat_configs))
        return self.space(space)

    def space(self, raw: Any) -> tuple[ParamSpace, ...]:
        if not isinstance(raw, dict) or not raw:
            self.g.fail(
                "tune.space",
                f"expected a mapping of dotted keys to ranges, got {raw!r}; "
                "e.g. schedule.gamma: {type: float, low: 0.05, high: 0.9, log: true}, or omit space for the default",
            )
        self._check_work(raw)
        return tuple(self.param(str(k), v) for k, v in raw.items())

    def _check_work(self, raw: Mapping[str, Any]) -> None:
        """Refuse a space whose bounds and choices, checked in every setting, would take
        more than MAX_SPACE_CHECKS config checks."""
        def n_values(entry: Any) -> int:
            choices = entry.get("choices") if isinstance(entry, dict) else None
            return len(choices) if isinstance(choices, list) else 2
        values = sum(n_values(v) for v in raw.values())
        checks = values * len(self.flat_configs)
        if checks > MAX_SPACE_CHECKS:
            self.g.fail("tune.space", f"its {values:,} bounds and choices, each checked in the grid's "
                                      f"{len(self.flat_configs):,} settings, make {checks:,} config checks, over "
                                      f"the limit of {MAX_SPACE_CHECKS:,}; tune fewer settings (pin axes with "
                                      "--set) or list fewer choices")

    def param(self, key: str, raw: Any) -> ParamSpace:
        g, path = self.g, f"tune.space.{key}"
        g.config_key(key, path, seed_problem="the seed is not tuned")
        if key in self.axes:
            g.fail(path, f"{key} is a grid axis; a key is either swept or tuned, so remove it from grid or tune.space")
        if not isinstance(raw, dict):
            g.fail(path, f"expected a mapping, got {raw!r}; {SPACE_EXAMPLE}")
        for f in raw:
            if f not in SPACE_FIELDS:
                hint = suggest(str(f), SPACE_FIELDS)
                g.fail(f"{path}.{f}", f"unknown field; {hint}valid fields: {', '.join(SPACE_FIELDS)}")
        kind = raw.get("type")
        if kind not in SPACE_TYPES:
            g.fail(f"{path}.type", f"expected one of {', '.join(SPACE_TYPES)}, got {kind!r}; {SPACE_EXAMPLE}")
        if kind == "categorical":
            return self._categorical(key, path, raw)
        return self._range(key, path, kind, raw)

    def _categorical(self, key: str, path: str, raw: Mapping[str, Any]) -> ParamSpace:
        g = self.g
        for f in ("low", "high", "log", "step"):
            if f in raw:
                g.fail(f"{path}.{f}", f"a categorical space takes only choices; remove {f} or use type: int/float")
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            g.fail(f"{path}.choices", f"a categorical space needs a non-empty list of choices, got {choices!r}; "
                                      "e.g. choices: [bn, gn]")
        at = f"{path}.choices"
        checked: list[Any] = []
        for i, c in enumerate(choices):
            value = g.coerce(key, c, at, at=f"{at}[{i}]", one_value="each choice is a single value")
            if isinstance(value, tuple):
                g.fail(at, f"{key} takes a list, which Optuna cannot use as a choice; tune single-valued keys")
            if value in checked:
                g.fail(at, f"{format_value(value)} appears twice; remove the duplicate", at=f"{at}[{i}]")
            self._check_value(key, value, at, fix="; remove that choice")
            checked.append(value)
        return ParamSpace(key=key, type="categorical", choices=tuple(checked))

    def _range(self, key: str, path: str, kind: str, raw: Mapping[str, Any]) -> ParamSpace:
        g, wanted = self.g, field_kind(key)
        if wanted != kind:
            kinds = {"int": "an integer", "float": "a number", "bool": "a true/false", "str": "a string"}
            fix = f"use type: {wanted}" if wanted in ("int", "float") else "use type: categorical with choices"
            g.fail(f"{path}.type", f"{key} is {kinds.get(wanted, 'a list')} field, so type: {kind} does not fit; {fix}")
        if "choices" in raw:
            g.fail(f"{path}.choices", "choices belong to type: categorical; remove them, or change the type")
        low, high = (self._bound(path, f, kind, raw) for f in ("low", "high"))
        if low >= high:
            g.fail(f"{path}.low", f"low ({low}) must be below high ({high}); swap or fix them")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            g.fail(f"{path}.log", f"expected true or false, got {log!r}; e.g. log: true")
        if log and low <= 0:
            g.fail(f"{path}.low", f"a log-scale range needs low > 0, got {low}; raise low or set log: false")
        step = raw.get("step")
        if step is not None:
            if not _is_number(step, kind) or step <= 0:
                g.fail(f"{path}.step", f"expected a positive {'integer' if kind == 'int' else 'number'}, "
                                       f"got {step!r}; e.g. step: 1, or omit step")
            if log:
                g.fail(f"{path}.step", "step and log: true cannot be combined (Optuna rejects it); drop one of them")
            step = step if kind == "int" else float(step)
        self._check_value(key, low, f"{path}.low", fix="; narrow the range")
        self._check_value(key, high, f"{path}.high", fix="; narrow the range")
        return ParamSpace(key=key, type=kind, low=low, high=high, log=log, step=step)

    def _bound(self, path: str, f: str, kind: str, raw: Mapping[str, Any]) -> int | float:
        if f not in raw:
            article = "an" if kind == "int" else "a"
            self.g.fail(f"{path}.{f}", f"missing; {article} {kind} space needs low and high, {SPACE_EXAMPLE}")
        value = raw[f]
        if not _is_number(value, kind):
            expected = "an integer" if kind == "int" else "a number"
            self.g.fail(f"{path}.{f}", f"expected {expected}, got {value!r}; {SPACE_EXAMPLE}")
        return value if kind == "int" else float(value)

    def _check_value(self, key: str, value: Any, at: str, *, fix: str) -> None:
        """A bound or choice must give a config that passes check() in every setting."""
        for flat in self.flat_configs:
            try:
                check(build({**flat, key: value}), check_paths=self.check_data)
            except ConfigError as err:
                prefix = f"{err.key}: " if err.key and err.key != key else ""
                fix = "" if ";" in err.problem else fix
                self.g.fail(at, f"{prefix}{err.problem}{fix}", context=f"with {key}={format_value(value)}")
