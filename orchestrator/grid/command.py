"""A command entry: an unmodified script, started once per point (docs/how-to/own-code.md)::

    entry: {command: "python train.py --lr {lr} --seed {seed}", overrides: hydra}  # or argparse, or none

The argv template is split like a shell line and run without a shell; ``{key}`` takes a point's
dotted config key or ``{seed}`` (format specs allowed), values written as YAML reads them back;
``overrides`` appends every config key. Checked when the grid is read. The script runs in the
grid file's folder with ``ORCH_RUN`` set (:func:`orchestrator.client.current`), its output in the
run's ``output/`` artifacts; a stop is one SIGTERM, then SIGKILL after :data:`KILL_AFTER_SECONDS`.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shlex
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.errors import ConfigError
from orchestrator.errors import RunFailed
from orchestrator.processes import death_signal
from orchestrator.grid.own import OwnConfig, OwnEntry
from orchestrator.grid.schema import OpenSchema, format_value

ENTRY_KEYS = ("command", "overrides")
EXAMPLE = 'e.g. entry: {command: "python train.py --lr {lr} --seed {seed}"}'
POLL_SECONDS = 0.2  # how soon a stop request reaches the script
KILL_AFTER_SECONDS = 15.0  # SIGKILL a script that outlives its SIGTERM by this long (a sweep kills
# its point processes 20 s after a stop: orchestrator.execute.slots.STOP_GRACE_SECONDS)
STDERR_LINES = 15  # of a failed script's stderr, in the run's failure reason
OUTPUT = "output"  # the artifact folder of the script's stdout.txt and stderr.txt
_HYDRA_PLAIN = re.compile(r"[\w.\-+/:@%]+")  # a Hydra override value that needs no quotes


class CommandEntry(OwnEntry):
    """A command line as an entry; ``entry`` is the grid's mapping (``command``, ``overrides``)."""

    def __init__(self, entry: Mapping[str, Any], folder: str | None, checkpoint_seconds: float):
        command, overrides = read_entry(entry)
        words = _split(command)
        self.words = [_parse_word(word) for word in words]
        if any(field is not None for _, field, _ in self.words[0]):
            raise ConfigError(f"the command's program {words[0]!r} holds a placeholder; name the program itself, "
                              f"{EXAMPLE}", key="entry")
        self.program, self.overrides = words[0], overrides
        folder = str(Path(folder or os.getcwd()).resolve())
        spec = {"entry": {"command": command, **({"overrides": overrides} if overrides else {})}, "folder": folder,
                "checkpoint_seconds": float(checkpoint_seconds)}
        name = f"{command} [{overrides} overrides]" if overrides else command
        super().__init__(name, OpenSchema(), spec, folder, checkpoint_seconds)
        self._program_found = False

    def check(self, config: OwnConfig, check_paths: bool) -> None:
        super().check(config, check_paths)
        self.argv(config)  # every placeholder names a key of this point, and formats its value
        if not self._program_found:
            check_program(self.program, str(self.folder))
            self._program_found = True

    def argv(self, config: OwnConfig) -> list[str]:
        """The command line of a point: the template filled in, then the overrides."""
        values = self.params(config)
        argv = [_fill(parts, values) for parts in self.words]
        own = [(k, v) for k, v in values.items() if k != "seed"]
        if self.overrides == "hydra":
            argv += [f"{key}={_hydra(value)}" for key, value in own]
        elif self.overrides == "argparse":
            for key, value in own:
                argv += [f"--{key}", *(map(_text, value) if isinstance(value, list) else [_text(value)])]
        return argv

    def train(self, config: OwnConfig, run: Any) -> dict[str, float] | None:
        """Run the script to its end; None when a stop was requested (the run ends KILLED)."""
        argv, out = self.argv(config), Path(run.artifact_dir) / OUTPUT
        out.mkdir(parents=True, exist_ok=True)
        cwd = self.folder if os.path.isdir(str(self.folder)) else None  # a worker elsewhere: its own folder
        started = time.monotonic()
        with open(out / "stdout.txt", "wb") as stdout, open(out / "stderr.txt", "wb") as stderr:
            child = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **run.child_env()}, stdin=subprocess.DEVNULL,
                                     stdout=stdout, stderr=stderr,
                                     preexec_fn=death_signal())  # noqa: PLW1509 - it calls prctl alone
            asked = wait(child, run)
        seconds = time.monotonic() - started
        if asked or run.should_stop():
            return None
        if child.returncode != 0:
            raise RunFailed(failure(child.returncode, out / "stderr.txt"))
        return {"exit_status": 0.0, "wall_seconds": seconds}


def read_entry(entry: Mapping[str, Any]) -> tuple[str, str | None]:
    for key in entry:
        if key not in ENTRY_KEYS:
            close = difflib.get_close_matches(str(key), ENTRY_KEYS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"unknown key {key!r} in the entry mapping; {hint}valid keys: {', '.join(ENTRY_KEYS)}",
                              key="entry")
    command, overrides = entry.get("command"), entry.get("overrides")
    if not isinstance(command, str) or not command.strip():
        raise ConfigError(f"expected a command line as command, got {command!r}; {EXAMPLE}", key="entry")
    if overrides is not None and overrides not in ("hydra", "argparse"):
        raise ConfigError(f"overrides: expected hydra (key=value) or argparse (--key value), got {overrides!r}; "
                          "or leave overrides out and name the keys in the command as {key}", key="entry")
    return command, overrides


def _split(command: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError as err:
        raise ConfigError(f"cannot split the command into words ({err}); check its quotes", key="entry") from None
    if not words:
        raise ConfigError(f"the command is empty; {EXAMPLE}", key="entry")
    return words


def _parse_word(word: str) -> list[tuple[str, str | None, str]]:
    """A word of the template → (literal text, placeholder or None, format spec) parts."""
    try:
        parts = list(string.Formatter().parse(word))
    except ValueError as err:
        raise ConfigError(f"the command's word {word!r}: {err}; write {{{{ and }}}} for a literal brace",
                          key="entry") from None
    for _, field, _, conversion in parts:
        if field == "" or conversion:
            raise ConfigError(f"the command's word {word!r} has a placeholder without a key (or with a !conversion); "
                              "write {key} with a dotted config key or seed, e.g. {lr}", key="entry")
    return [(literal, field, spec or "") for literal, field, spec, _ in parts]


def _fill(parts: list[tuple[str, str | None, str]], values: Mapping[str, Any]) -> str:
    out = []
    for literal, field, spec in parts:
        out.append(literal)
        if field is None:
            continue
        if field not in values:
            close = difflib.get_close_matches(field, list(values), n=1)
            hint = f"did you mean {{{close[0]}}}? " if close else ""
            raise ConfigError(f"the command's placeholder {{{field}}} names no config key; {hint}the keys: "
                              f"{', '.join(values)}; add {field} to base, or fix the placeholder", key="entry")
        try:
            out.append(format(values[field], spec) if spec else _text(values[field]))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"the placeholder {{{field}:{spec}}} cannot format {values[field]!r} ({err}); fix "
                              "its format spec", key="entry") from None
    return "".join(out)


def _text(value: Any) -> str:
    """A value as a word: YAML's spelling of true, false and null; a list's items joined by commas."""
    return ",".join(map(_text, value)) if isinstance(value, list) else format_value(value)


def _hydra(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(map(_hydra, value)) + "]"
    text = _text(value)
    if isinstance(value, str) and not _HYDRA_PLAIN.fullmatch(value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def check_program(program: str, folder: str) -> None:
    """The program exists: a path (relative to the grid file's folder) to an executable, or on PATH."""
    if os.sep in program:
        path = Path(folder, program)
        if not path.is_file():
            raise ConfigError(f"the command's program {program} is not found (looked for {path}); give its path "
                              "relative to the grid file's folder, or an absolute one", key="entry")
        if not os.access(path, os.X_OK):
            raise ConfigError(f"the command's program {program} is not executable; chmod +x it, or start it through "
                              f"its interpreter (e.g. bash {program})", key="entry")
    elif shutil.which(program) is None:
        raise ConfigError(f"the command's program {program!r} is not found on PATH; check its spelling, install it, "
                          "or give its path (relative to the grid file's folder)", key="entry")


def wait(child: subprocess.Popen, run: Any) -> bool:
    """Wait for ``child``, passing a stop request on as one SIGTERM (SIGKILL if it lingers);
    whether a stop was passed on. A child still running when this is left (a second signal
    interrupts the wait) is killed: it never outlives its point."""
    asked = None
    try:
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=POLL_SECONDS)
                return asked is not None
            if asked is None and run.should_stop():
                child.send_signal(signal.SIGTERM)
                asked = time.monotonic()
            elif asked is not None and time.monotonic() - asked > KILL_AFTER_SECONDS:
                child.kill()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def failure(returncode: int, stderr: Path) -> str:
    """``exit status 3: <the last lines of stderr>``, or ``killed by SIGKILL: …``."""
    try:
        what = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"
    except ValueError:
        what = f"killed by signal {-returncode}"
    with open(stderr, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - 16384))
        lines = fh.read().decode("utf-8", "replace").splitlines()
    tail = "\n".join(lines[-STDERR_LINES:]).strip()
    return f"{what}: {tail}" if tail else f"{what} (nothing on stderr)"

