"""How a point of a sweep is written: value labels, point labels and run names.

``{"model.norm": "gn", "data.batch_size": 8, "seed": 0}`` is labelled
``model.norm=gn,data.batch_size=8,seed=0`` (tag ``Tag.POINT``; without the seed it is
the setting, ``Tag.SETTING``) and its run is named ``gn-bs8-s0``. Sweeps, tuning studies
and the compare table all spell points this way. :func:`experiment_name_problem` says what
is wrong with an experiment name before anything is created. This module imports nothing heavy.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

__all__ = ["describe_point", "experiment_name_problem", "format_value", "run_name"]

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

# An experiment's name is also its sweep parent's run name, and names its artifact folder.
MAX_EXPERIMENT_CHARS = 250  # MLflow's SQL schema: runs.name is VARCHAR(250) (experiments.name 256)
MAX_EXPERIMENT_BYTES = 255  # one path component (file name) on ext4, XFS, btrfs, APFS, NTFS
_PATH_CHARACTERS = {"/": "'/'", "\\": "'\\'", "\0": "a NUL character"}
NAME_FIX = "use letters, digits, '-', '_' and '.', e.g. norm-study"


def experiment_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as an experiment name, with the fix ("is too long (…); shorten
    it"; the caller names the name); None when it is fine.

    The name becomes a folder beside the store (``mlartifacts/<name>``) and the run name of
    its sweeps' parent runs, so it must be one path component (not ``.`` or ``..``, no
    ``/``, ``\\`` or NUL) that fits the file system and MLflow's schema.
    """
    if name in (".", ".."):
        return f"is a path component, but it names the folder of the experiment's artifacts; {NAME_FIX}"
    bad = [shown for ch, shown in _PATH_CHARACTERS.items() if ch in name]
    if bad:
        return f"contains {' and '.join(bad)}, which would make the folder of its artifacts a path; {NAME_FIX}"
    n_bytes = len(name.encode("utf-8", "surrogatepass"))
    if len(name) > MAX_EXPERIMENT_CHARS or n_bytes > MAX_EXPERIMENT_BYTES:
        return (f"is too long ({len(name)} characters, {n_bytes} bytes in UTF-8); an experiment name names a folder "
                f"and a run, so it may have at most {MAX_EXPERIMENT_CHARS} characters and {MAX_EXPERIMENT_BYTES} "
                "bytes: shorten it")
    return None


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
