"""How a point of a sweep is written: value labels, point labels and run names.

``{"model.norm": "gn", "data.batch_size": 8, "seed": 0}`` is labelled
``model.norm=gn,data.batch_size=8,seed=0`` (tag ``Tag.POINT``; without the seed it is
the setting, ``Tag.SETTING``) and its run is named ``gn-bs8-s0``. Sweeps, tuning studies
and the compare table all spell points this way. This module imports nothing heavy.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

__all__ = ["describe_point", "format_value", "run_name"]

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

_NAME_UNSAFE = re.compile(r"[^\w.+=-]+")


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
