"""``orch``'s entry point: each command module's commands added to the group, and :func:`main`.

The group and what its commands share live in :mod:`orchestrator.cli.group`; each command
group has its own module: ``run``, ``sweep``, ``tune``, ``worker`` and ``results`` (status,
compare, report, ui). The shared names are also importable from here, as they were before the
split; command modules import them from :mod:`orchestrator.cli.group`.
"""

from __future__ import annotations

# The group's names are bound before the command modules are imported, so a command module
# that still imports them from here finds them.
from orchestrator.cli.group import (BadInput, check_device, check_experiment_name, cli, device_option,
                                    handle_errors, max_points_option, open_store, quiet_option, set_option,
                                    slot_options, tracking_uri_option)
from orchestrator.cli import diff, output, results, run, sweep, tune, worker  # noqa: I001 - after the group's names

__all__ = ["BadInput", "check_device", "check_experiment_name", "cli", "device_option", "handle_errors", "main",
           "max_points_option", "open_store", "quiet_option", "set_option", "slot_options", "tracking_uri_option"]

for command in (run.run_cmd, sweep.sweep_cmd, tune.tune_cmd, worker.worker_cmd,
                results.status_cmd, results.compare_cmd, results.report_cmd, results.ui_cmd, diff.diff_cmd):
    cli.add_command(command)


def main() -> None:
    """The ``orch`` console script (and ``python -m orchestrator``)."""
    output.guard()  # a closed pipe or terminal must not end a command half-way through its records
    cli(prog_name="orch")


if __name__ == "__main__":
    main()
