"""What ``orch status`` prints: the queue's sweeps, a Slurm sweep's points (``orch sweep
--dry-run`` prints through :mod:`orchestrator.cli.dry_run`). rich is imported inside the
functions that draw, and nothing here imports torch or mlflow.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence


def print_queue_status(rows: Sequence[dict[str, Any]], where: str) -> None:
    """Per queued sweep: counts, then the running points (worker, since) and the failed ones."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    if not rows:
        console.print(f"no queued sweeps in {where}")
        return
    for row in rows:
        running, failed = row["running"], row["failed"]
        done = row["points"] - row["pending"] - len(running) - len(failed)
        console.print(f"[bold]{row['name']}[/bold] [{row['sweep']}]  points {row['points']}: "
                      f"pending {row['pending']}  running {len(running)}  done {done}  failed {len(failed)}")
        if not (running or failed):
            continue
        table = Table(show_header=True)
        for column in ("point", "state", "worker / reason", "since"):
            table.add_column(column)
        for name, who, since in running:
            table.add_row(name, "running", who, since.strftime("%Y-%m-%d %H:%M:%S") if since else "")
        for name, reason in failed:
            table.add_row(name, "failed", reason, "")
        console.print(table)


def print_sweep_status(rows: Sequence[dict[str, Any]], parent: Any) -> None:
    """A sweep's points: MLflow status, Slurm job (array task) and its state in squeue."""
    from rich.console import Console
    from rich.table import Table

    from orchestrator.store.schema import Tag

    console = Console(width=None if sys.stdout.isatty() else 200)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    tags = parent.data.tags
    console.print(f"[bold]{parent.info.run_name}[/bold] [{tags.get(Tag.SWEEP, '')}]  parent {parent.info.status}  "
                  f"points {len(rows)}: " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    table = Table(show_header=True)
    for column in ("point", "status", "slurm job", "slurm state", "run", "reason"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["status"], row["job"], row["slurm"], row["run_id"], row["reason"][:80])
    console.print(table)
