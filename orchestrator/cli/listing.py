"""What ``orch sweep --dry-run`` and ``orch status`` print: a grid's points with whether each is
done, the queue's sweeps, a Slurm sweep's points. rich is imported inside the functions that
draw, and nothing here imports torch or mlflow, so ``orch sweep --dry-run`` stays fast.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from orchestrator.grid.load import SweepSpec


def print_dry_run(spec: SweepSpec, uri: str) -> None:
    """Every point of the grid with whether the store already holds it finished."""
    from rich.console import Console
    from rich.table import Table

    from orchestrator.store import peek

    done = peek.finished_keys(uri, spec.name)  # the done rule of every path: a finished result of the run key
    columns = (*spec.axes, "seed")
    table = Table(title=f"{spec.name} [{spec.sweep_id}]  {spec.path}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("run name")
    for axis in columns:
        table.add_column(axis)
    table.add_column("status")
    n_done = 0
    for r in spec.runs:
        status = "?" if done is None else ("done" if r.run_key in done else "pending")
        n_done += status == "done"
        table.add_row(str(r.index), r.name, *(str(r.point.get(a, "")) for a in columns), status)
    console = Console(width=200 if not sys.stdout.isatty() else None)
    console.print(table)
    if done is None:
        console.print(f"{len(spec.runs)} points; status unknown (store {uri} could not be read)")
    else:
        console.print(f"{len(spec.runs)} points: {n_done} done, {len(spec.runs) - n_done} pending  (store {uri})")
    missing = _missing_data_root(spec)
    if missing:
        console.print(f"note: {missing}")


def _missing_data_root(spec: SweepSpec) -> str | None:
    """What a real run would stop on that the dry run does not check (a missing dataset root)."""
    from experiments.config import ConfigError

    for r in spec.runs:
        try:
            spec.entry.check(r.config, True)
        except ConfigError as err:
            return f"a real run would stop here: {err}"
    return None


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
