"""How a point is written: ``{"model.norm": "gn", "data.batch_size": 8, "seed": 0}`` is labelled
``model.norm=gn,data.batch_size=8,seed=0`` (tag ``Tag.POINT``; without the seed, the setting) and,
with the built-in study's name prefixes, its run is named ``gn-bs8-s0``."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from orchestrator.grid.entry import Entry, resolve_entry
from orchestrator.grid.schema import format_value

_NAME_UNSAFE = re.compile(r"[^\w.+=-]+")

MAX_EXPERIMENT_CHARS = 250  # MLflow's SQL schema: runs.name is VARCHAR(250) (experiments.name 256)
MAX_EXPERIMENT_BYTES = 255  # one path component (file name) on ext4, XFS, btrfs, APFS, NTFS
_PATH_CHARACTERS = {"/": "'/'", "\\": "'\\'", "\0": "a NUL character"}
NAME_FIX = "use letters, digits, '-', '_' and '.', e.g. norm-study"


def experiment_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as an experiment name, with the fix; None when it is fine. It
    becomes a folder beside the store (``mlartifacts/<name>``) and its sweeps' parent runs' name,
    so it must be one path component that fits the file system and MLflow's schema."""
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


def shown_name(name: str) -> str:
    """``repr`` of a name for a message, its middle cut when longer than 40 characters."""
    return repr(name if len(name) <= 40 else f"{name[:20]}…{name[-20:]}")


def describe_point(point: Mapping[str, Any]) -> str:
    """``{"optim.lr": 0.05, "seed": 0}`` → ``"optim.lr=0.05,seed=0"``."""
    return ",".join(f"{k}={format_value(v)}" for k, v in point.items())


def run_name(point: Mapping[str, Any], entry: Entry | None = None) -> str:
    """``{"optim.lr": 0.05, "train.augment": True, "seed": 0}`` → ``"lr0.05-augment-s0"``: each
    key's part is its prefix from ``entry`` (default: the built-in study), else its last dotted
    part, then the value; a boolean reads ``key`` or ``no-key``."""
    return join_name(name_parts(point, entry))


def name_parts(point: Mapping[str, Any], entry: Entry | None = None) -> list[str]:
    """:func:`run_name`'s parts, one per key: ``["lr0.05", "augment", "s0"]``."""
    prefixes = {**(entry or resolve_entry()).name_prefixes, "seed": "s"}  # every run name ends in its seed
    parts = []
    for key, value in point.items():
        short = prefixes.get(key, key.rsplit(".", 1)[-1])
        if isinstance(value, bool):
            parts.append(short if value else f"no-{short}")
        else:
            parts.append(f"{short}{format_value(value)}")
    return parts


def join_name(parts: Sequence[str]) -> str:
    """Run-name parts → the run name: ``-`` between them, and ``_`` for any run of characters
    a name does not take."""
    return _NAME_UNSAFE.sub("_", "-".join(parts)) or "run"
