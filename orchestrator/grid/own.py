"""A sweep's own code as an entry: ``entry: mytrain:main`` names a function ``main(config, run)``.

What every entry of the user's own code shares (:class:`OwnEntry`, also the base of
:class:`~orchestrator.grid.command.CommandEntry`): an :class:`OwnConfig` (dotted key → value, the
seed apart); params are the keys as given plus ``seed``, hashed with the entry's name into the run
key; summary metrics are whatever the code returns or logs (``orch tune`` needs ``tune.metric`` and
``tune.space``). ``spec`` is JSON: ``resolve_entry(**spec)`` rebuilds the entry in a point process.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.errors import ConfigError
from orchestrator.grid.schema import DataclassSchema, OpenSchema, as_given

FUNCTION_EXAMPLE = "e.g. entry: mytrain:main for def main(config, run) in mytrain.py beside the grid file"


@dataclass(frozen=True)
class OwnConfig:
    """A resolved config of the user's code: dotted key → value (lists as tuples), and the seed."""

    values: tuple[tuple[str, Any], ...]
    seed: int = 0


class OwnEntry:
    """The config side of the user's own code; subclasses add ``train``."""

    related_keys: Mapping[str, tuple[str, ...]] = {}
    name_prefixes: Mapping[str, str] = {}  # run names use the last dotted part of each key
    headline_keys: tuple[str, ...] = ()
    summary_metrics: tuple[str, ...] = ()  # whatever the code returns: orch tune takes any metric it names
    default_metric = ""  # none: orch tune needs tune.metric
    progress_keys: tuple[str, ...] = ()

    def __init__(self, name: str, schema: OpenSchema | DataclassSchema, spec: Mapping[str, Any], folder: str | None,
                 checkpoint_seconds: float):
        self.name, self.schema, self.spec, self.folder = name, schema, dict(spec), folder
        self.fields = schema.fields  # None: open, any key is taken as given
        self._checkpoint_seconds = float(checkpoint_seconds)

    def coerce(self, key: str, value: Any) -> Any:
        return self.schema.coerce(key, value)

    def build(self, values: Mapping[str, Any]) -> OwnConfig:
        given = dict(values)
        seed = int(given.pop("seed", 0))
        held = {**self.schema.defaults, **{k: self.schema.coerce(k, v) for k, v in given.items()}}
        if self.fields is not None:  # a dataclass's keys in field order
            held = {k: held[k] for k in self.fields if k in held}
        return OwnConfig(tuple(held.items()), seed)

    def check(self, config: OwnConfig, check_paths: bool) -> None:  # no data of orch's to check
        self.schema.check(dict(config.values))

    def check_device(self, config: OwnConfig, device_type: str) -> None:  # the code picks its device
        pass

    def params(self, config: OwnConfig) -> dict[str, Any]:
        return {**{k: as_given(v) for k, v in config.values}, "seed": config.seed}

    def seeded(self, config: OwnConfig, seed: int) -> OwnConfig:
        return dataclasses.replace(config, seed=seed)

    def run_key(self, config: OwnConfig) -> str:
        """16 hex characters over the entry's name and the params (seed included), key order aside."""
        canonical = json.dumps({"entry": self.name, "params": self.params(config)}, sort_keys=True,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def default_space(self, settings: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        return {}  # orch tune needs tune.space

    def report_metric(self, metric: str, direction: str) -> str:
        return metric  # the pruner sees the metric itself at every step the code logs it

    def max_steps(self, config: OwnConfig) -> int | None:
        return None  # unknown: Hyperband learns it, several seeds' steps follow the largest one seen

    def load_config(self, path: str | None, overrides: Sequence[str]) -> OwnConfig:
        raise ConfigError(f"orch run trains one config of the built-in study; sweep {self.name} with a grid "
                          "(orch sweep grid.yaml --set key=value)", key="entry")

    def user_config(self, config: OwnConfig) -> Any:
        return self.schema.user_config(dict(config.values), config.seed)

    def checkpoint_seconds(self, config: OwnConfig) -> float:  # one interval for the grid
        return self._checkpoint_seconds


class FunctionEntry(OwnEntry):
    """``main(config, run)``: called with ``run.config`` and the run; returns summary metrics or None."""

    def __init__(self, name: str, fn: Callable[..., Any], folder: str | None, checkpoint_seconds: float):
        folder = str(Path(folder).resolve()) if folder else None
        spec = {"entry": name, "folder": folder, "checkpoint_seconds": float(checkpoint_seconds)}
        module = sys.modules.get(getattr(fn, "__module__", "") or "")
        code = getattr(module, "__file__", None)  # provenance: the repository of the function's own file
        super().__init__(name, schema_of(fn, name), spec, str(Path(code).parent) if code else folder,
                         checkpoint_seconds)
        self.fn = fn

    def train(self, config: OwnConfig, run: Any) -> dict[str, float] | None:
        result = self.fn(run.config, run)
        if result is None:
            return None
        if not isinstance(result, Mapping):
            raise TypeError(f"{self.name} returned {type(result).__name__} {result!r:.80}; return a dict of summary "
                            "metrics (e.g. {'test_acc': 0.93}) or None")
        summary = {}
        for key, value in result.items():
            try:
                summary[str(key)] = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"{self.name} returned {key!r}: {value!r:.80}, not a number; summary metrics "
                                "are numbers") from None
        return summary


def schema_of(fn: Callable[..., Any], name: str) -> OpenSchema | DataclassSchema:
    """The dataclass ``fn``'s first parameter is annotated with, else an open config."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: called as main(config, run) all the same
        return OpenSchema()
    try:
        signature.bind(None, None)
    except TypeError:
        raise ConfigError(f"{name} takes ({', '.join(signature.parameters)}); an entry function takes (config, run), "
                          "e.g. def main(config: dict, run): ...", key="entry") from None
    first = next(iter(signature.parameters.values()))
    annotation = first.annotation
    if isinstance(annotation, str):  # from __future__ import annotations
        try:
            annotation = eval(annotation, dict(getattr(fn, "__globals__", {})))  # what typing.get_type_hints does
        except Exception as err:  # noqa: BLE001 - whatever evaluating the user's annotation raised
            raise ConfigError(f"cannot read the type of {name}'s {first.name} parameter ({annotation!r}: "
                              f"{type(err).__name__}: {err}); define the type at the module's top level",
                              key="entry") from None
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return DataclassSchema(annotation)
    return OpenSchema()


def load_attribute(name: str, folder: str | None) -> Any:
    """The object ``module:attribute`` names, imported from ``folder`` or the environment."""
    module_name, colon, attribute = str(name).partition(":")
    if not (colon and module_name and attribute):
        raise ConfigError(f"expected module:function, got {name!r}; {FUNCTION_EXAMPLE}", key="entry")
    module = import_module(module_name, folder)
    if hasattr(module, attribute):
        return getattr(module, attribute)
    functions = [n for n, v in vars(module).items() if not n.startswith("_") and inspect.isfunction(v)
                 and v.__module__ == module.__name__]
    close = difflib.get_close_matches(attribute, functions, n=1, cutoff=0.6)
    fix = (f"did you mean {close[0]}?" if close else f"its functions: {', '.join(functions)}" if functions
           else f"define def {attribute}(config, run) in it")
    raise ConfigError(f"{module_name} has no function {attribute!r}; {fix}", key="entry")


def import_module(module: str, folder: str | None) -> Any:
    """Import ``module`` with ``folder`` first on ``sys.path``; afterwards the folder stays on it,
    last, so that the module's own imports of its neighbours at call time still resolve."""
    usable = bool(folder) and os.path.isdir(str(folder))
    where = f"from {folder} or the environment" if usable else "from the environment"
    if usable:
        sys.path.insert(0, str(folder))
        importlib.invalidate_caches()  # a module written since the folder was last listed
        cached = getattr(sys.modules.get(module), "__file__", None)
        beside = Path(str(folder), *module.split(".")).with_suffix(".py")
        if cached and beside.is_file() and Path(cached).resolve() != beside.resolve():
            del sys.modules[module]  # a module of that name from another grid's folder (a worker serving both)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and f"{module}.".startswith(f"{err.name}."):  # the module itself (or its package) is missing
            raise ConfigError(f"cannot import module {module!r} {where} (ModuleNotFoundError: {err}); put "
                              f"{module.replace('.', '/')}.py beside the grid file or install it", key="entry") from None
        raise ConfigError(import_failure(module, err), key="entry") from None
    except (Exception, SystemExit) as err:  # noqa: BLE001 - the user's module ran and failed: say where
        raise ConfigError(import_failure(module, err), key="entry") from None
    finally:
        if usable:
            sys.path.remove(str(folder))
            if str(folder) not in sys.path:
                sys.path.append(str(folder))


def import_failure(module: str, err: BaseException) -> str:
    """What went wrong while ``module`` ran at import, where, and the fix."""
    if isinstance(err, SystemExit):
        return (f"importing {module} exited (SystemExit: {err.code}): does it run a script at import, e.g. parse its "
                "arguments? move that under if __name__ == '__main__':, or sweep the script as a command entry")
    text = str(err)
    if isinstance(err, SyntaxError):
        text, where = err.msg, f"{Path(err.filename or '?').name} line {err.lineno}"
    else:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if "importlib" not in f.filename]
        where = f"{Path(frames[-1].filename).name} line {frames[-1].lineno}" if frames else module
    fix = "install it" if isinstance(err, ModuleNotFoundError) else "fix the module"
    return f"importing {module} raised {type(err).__name__}: {text} ({where}); {fix}"
