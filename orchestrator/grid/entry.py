"""The entry: the code a sweep runs, and all that the grid knows about its config. A grid may name
one (``entry: module:name``, a function or an entry object, or ``entry: {command: ...}``); without
one the built-in study, :data:`experiments.study.STUDY`, is the entry. The grid reads, checks,
keys and names points through it alone: it knows no study's keys.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from experiments.config import ConfigError

BUILTIN = "experiments.study:STUDY"


@runtime_checkable
class Entry(Protocol):
    """What the grid asks of the code a sweep runs. A config is the entry's own object, which the
    grid only hands back; a bad value or config raises :class:`~experiments.config.ConfigError`
    naming the dotted key. ``build`` takes values as ``coerce`` or ``params`` give them."""

    # dotted config key → type: int, float, bool, str, tuple[int, ...], X | None; None: open, keys taken as given
    fields: Mapping[str, Any] | None
    related_keys: Mapping[str, tuple[str, ...]]  # key a check() problem names → keys whose values can cause it
    name_prefixes: Mapping[str, str]  # key → its run-name prefix ("" shows the value alone); others: last dotted part
    headline_keys: tuple[str, ...]  # the keys that tell runs apart at a glance (a lone run's name)
    summary_metrics: tuple[str, ...]  # what a finished run reports: orch tune's objectives (empty: any metric)
    default_metric: str  # orch tune's objective when a grid names none ("": the grid must name one)

    def coerce(self, key: str, value: Any) -> Any: ...  # checked against the key's type, normalised ("1e-3" → 0.001)
    def build(self, values: Mapping[str, Any]) -> Any: ...  # dotted key → value; defaults for the other keys
    def check(self, config: Any, check_paths: bool) -> None: ...  # ranges, cross-field rules; paths: the data exists
    def check_device(self, config: Any, device_type: str) -> None: ...  # "cpu"/"cuda" slots can run it (ConfigError)
    def params(self, config: Any) -> dict[str, Any]: ...  # dotted key → value, seed included: a run's params
    def seeded(self, config: Any, seed: int) -> Any: ...  # the config with this seed
    def run_key(self, config: Any) -> str: ...  # a stable id of what the config computes, whatever wrote it
    # orch tune's search space when a grid names none, for settings with these params (key → range or choices)
    def default_space(self, settings: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]: ...
    # orch tune's pruning: the logged key whose value at each step the pruner sees when the objective is
    # ``metric`` (a summary metric, or a logged one), and the last step a run of this config logs (None: unknown)
    def report_metric(self, metric: str, direction: str) -> str: ...
    def max_steps(self, config: Any) -> int | None: ...
    # orch run: one config from a config file and --set overrides (ConfigError naming the key and line)
    def load_config(self, path: str | None, overrides: Sequence[str]) -> Any: ...

    # Running a point (orchestrator.execute.runner). ``run`` is the orchestrator.client.Run of the point.
    name: str  # the entry as a run's Tag.ENTRY records it: "module:name", or the command entry's template
    spec: Mapping[str, Any]  # JSON: resolve_entry(**spec) rebuilds this entry in a point process
    folder: str | None  # the folder its code lives in (provenance's git state; a command's working folder)
    progress_keys: tuple[str, ...]  # logged metrics to show first in progress lines and run notes

    def user_config(self, config: Any) -> Any: ...  # what the code sees as run.config
    def checkpoint_seconds(self, config: Any) -> float: ...  # how often save_checkpoint() writes (0: every call)
    def train(self, config: Any, run: Any) -> Mapping[str, float] | None: ...  # summary metrics; None: stopped


def resolve_entry(entry: Any = None, folder: str | None = None, checkpoint_seconds: float = 60.0) -> Entry:
    """The entry a grid names (None: the built-in study): ``"module:name"`` imported from ``folder``
    (the grid's) or the environment, an :class:`Entry` as it is or a function as a FunctionEntry;
    ``{command: ...}`` a CommandEntry. ConfigError (key ``entry``) names the problem and the fix."""
    from orchestrator.grid import command, own

    if entry is None:
        return own.load_attribute(BUILTIN, None)
    if isinstance(entry, Mapping):
        return command.CommandEntry(entry, folder, checkpoint_seconds)
    if not isinstance(entry, str):
        raise ConfigError(f"expected module:function or a mapping with a command, got {entry!r}; "
                          f"{own.FUNCTION_EXAMPLE}, or {command.EXAMPLE}", key="entry")
    found = own.load_attribute(entry, folder)
    if isinstance(found, Entry):
        return found
    if callable(found):
        return own.FunctionEntry(entry, found, folder, checkpoint_seconds)
    raise ConfigError(f"{entry} is {type(found).__name__}, neither a function main(config, run) nor an entry "
                      f"(orchestrator.grid.entry.Entry); {own.FUNCTION_EXAMPLE}", key="entry")
