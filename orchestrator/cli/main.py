"""``orch``'s entry point: each command module's commands added to the group (:mod:`orchestrator.cli.group`),
and :func:`main`."""

from __future__ import annotations

from orchestrator.cli import diff, output, results, run, sweep, tune, worker
from orchestrator.cli.group import cli

for command in (run.run_cmd, sweep.sweep_cmd, tune.tune_cmd, worker.worker_cmd,
                results.status_cmd, results.compare_cmd, results.report_cmd, results.ui_cmd, diff.diff_cmd):
    cli.add_command(command)


def main() -> None:
    """The ``orch`` console script (and ``python -m orchestrator``)."""
    output.guard()  # a closed pipe or terminal must not end a command half-way through its records
    cli(prog_name="orch")
