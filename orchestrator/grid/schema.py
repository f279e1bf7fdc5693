"""The config of a sweep's own code (:mod:`orchestrator.grid.own`): open, or a dataclass's fields.

A ``config`` parameter annotated with a dataclass makes it the schema (:class:`DataclassSchema`:
its fields, nested ones as dotted keys, type-checked, required without a default); otherwise the
config is open (:class:`OpenSchema`: a nested dict mirroring the YAML). Values are scalars or
lists (tuples here, hashable); ``1e-3`` is a number. The seed is ``run.seed``, not a config key.
Nothing here imports the user's code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from experiments.errors import ConfigError

SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
VALUE_KINDS = "a number, a string, true/false, null or a list of them"


def plain(value: Any, key: str) -> Any:
    """``value`` as an open config holds it: a scalar, or a tuple of values; else ConfigError."""
    if isinstance(value, str) and SCIENTIFIC.match(value.strip()):
        return float(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(plain(v, key) for v in value)
    shown = "a mapping inside a list" if isinstance(value, dict) else f"{value!r} ({type(value).__name__})"
    raise ConfigError(f"expected {VALUE_KINDS}, got {shown}; quote it to pass it as a string", key=key)


def as_given(value: Any) -> Any:
    return [as_given(v) for v in value] if isinstance(value, tuple) else value


def format_value(value: Any) -> str:
    """A value as it appears in point labels: ``gn``, ``8``, ``0.05``, ``true``, ``16x32x64``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (tuple, list)):
        return "x".join(format_value(v) for v in value)
    return str(value)


class OpenSchema:
    """Every key is accepted as the grid gives it (``fields`` None: the reader's open config)."""

    fields = None
    defaults: typing.ClassVar[dict[str, Any]] = {}

    @staticmethod
    def coerce(key: str, value: Any) -> Any:
        return plain(value, key)

    @staticmethod
    def check(values: Mapping[str, Any]) -> None:
        """A key that is both a value and a section (``optim: 1`` and ``optim.lr: 2``) cannot nest."""
        for key in values:
            parts = key.split(".")
            for i in range(1, len(parts)):
                if ".".join(parts[:i]) in values:
                    raise ConfigError(f"{'.'.join(parts[:i])} is given a value and also has keys below it ({key}), "
                                      "so the config cannot nest; rename one of them", key=key)

    @staticmethod
    def user_config(values: Mapping[str, Any], seed: int) -> dict[str, Any]:  # the seed is run.seed
        """``{"optim.lr": 0.1, "width": 64}`` → ``{"optim": {"lr": 0.1}, "width": 64}``."""
        nested: dict[str, Any] = {}
        for key, value in values.items():
            *sections, last = key.split(".")
            node = nested
            for part in sections:
                node = node.setdefault(part, {})
            node[last] = as_given(value)
        return nested


class DataclassSchema:
    """The fields of a dataclass (nested dataclasses give dotted keys) are the config's keys."""

    def __init__(self, cls: type):
        self.cls = cls
        self.fields: dict[str, Any] = {}  # dotted key → type
        self.defaults: dict[str, Any] = {}  # dotted key → default, for the fields that have one
        self.required: list[str] = []
        self._read(cls, "")

    def _read(self, cls: type, prefix: str) -> None:
        try:
            hints = typing.get_type_hints(cls)
        except Exception as err:  # noqa: BLE001 - a NameError, or whatever an annotation's evaluation raised
            raise ConfigError(f"cannot read the field types of {cls.__name__} ({type(err).__name__}: {err}); "
                              "give its fields types defined at the module's top level", key="entry") from None
        for f in dataclasses.fields(cls):
            key, tp = f"{prefix}{f.name}", hints.get(f.name, Any)
            if not f.init or key == "seed":  # a top-level seed field gets run.seed
                continue
            if dataclasses.is_dataclass(tp) and isinstance(tp, type):
                self._read(tp, f"{key}.")
                continue
            self.fields[key] = tp
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                with contextlib.suppress(ConfigError):  # a default no grid writes (an object): the dataclass applies it
                    self.defaults[key] = plain(default, key)
            else:
                self.required.append(key)

    def coerce(self, key: str, value: Any) -> Any:
        if key not in self.fields:
            raise ConfigError(f"unknown key; {self.cls.__name__} has the fields {', '.join(self.fields)}", key=key)
        return coerce_type(self.fields[key], value, key)

    def check(self, values: Mapping[str, Any]) -> None:
        for key in self.required:
            if key not in values:
                raise ConfigError(f"missing: {self.cls.__name__} requires it (the field has no default)", key=key)

    def user_config(self, values: Mapping[str, Any], seed: int) -> Any:
        return self._build(self.cls, "", values, seed)

    def _build(self, cls: type, prefix: str, values: Mapping[str, Any], seed: int) -> Any:
        hints, kwargs = typing.get_type_hints(cls), {}
        for f in dataclasses.fields(cls):
            key, tp = f"{prefix}{f.name}", hints.get(f.name, Any)
            if not f.init:
                continue
            if key == "seed":
                kwargs[f.name] = seed
            elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
                kwargs[f.name] = self._build(tp, f"{key}.", values, seed)
            elif key in values:
                value = values[key]
                keep_tuple = typing.get_origin(tp) is tuple or tp is tuple
                kwargs[f.name] = value if keep_tuple or not isinstance(value, tuple) else as_given(value)
        return cls(**kwargs)


def type_name(tp: Any) -> str:
    """How a message names what a field of type ``tp`` takes."""
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", type(None): "null"}
    if tp in names:
        return names[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values ({', '.join(type_name(a) for a in args)})"
        return f"a list of {type_name(args[0])}" if args else "a list"
    return getattr(tp, "__name__", str(tp))


def coerce_type(tp: Any, value: Any, key: str) -> Any:
    """``value`` checked against a field's type and normalised (``"1e-3"`` → 0.001, an int to a
    float field → float, lists → tuples); a type a grid cannot write takes the value as given."""
    bad = ConfigError(f"expected {type_name(tp)}, got {value!r}", key=key)
    if tp in (int, float) and isinstance(value, str) and SCIENTIFIC.match(value.strip()):
        value = float(value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            with contextlib.suppress(ConfigError):
                return coerce_type(arg, value, key)
        raise bad
    if origin is Literal:
        if value in args and all(type(value) is type(a) for a in args if a == value):
            return value
        raise bad
    if tp is bool or tp is str:
        if isinstance(value, tp):
            return value
        raise bad
    if tp is int or tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if tp is int and not float(value).is_integer():
            raise bad
        return tp(value)
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise bad
            return tuple(coerce_type(a, v, key) for a, v in zip(args, value))
        return tuple(coerce_type(args[0], v, key) if args else plain(v, key) for v in value)
    return plain(value, key)  # Any, or a type no grid value is checked against
