"""The commands that read what sweeps recorded: ``orch status``, ``compare``, ``report`` and ``ui``.

None of them creates a store; each names the sweep it reads with ``--experiment``/``--sweep``
(default: the newest), and a name that matches none or several lists what exists.
"""

from __future__ import annotations

import collections
import logging
import sys
from typing import Any, Sequence

import click

from orchestrator.cli.group import BadInput, handle_errors, one_queued_sweep, open_store, tracking_uri_option
from orchestrator.store.schema import Kind, Tag, tag_filter

log = logging.getLogger(__name__)

experiment_option = click.option("--experiment", default=None,
                                 help="MLflow experiment (default: the one of the newest sweep).")
sweep_option = click.option("--sweep", default="latest", show_default=True,
                            help="Sweep id (a prefix is enough) or 'latest'.")


def open_sweep(tracking_uri: str | None, experiment: str | None, sweep: str):
    """The store (never created) and the parent run of the sweep --experiment/--sweep name, with
    messages listing what exists."""
    store = open_store(tracking_uri, write=False)
    if experiment:
        exp_id = store.experiment_id(experiment)
        if exp_id is None:
            names = ", ".join(store.experiment_names()) or "none"
            raise BadInput(f"no experiment {experiment!r} in {store.uri}; experiments: {names}")
        exp_ids = [exp_id]
    else:
        exp_ids = store.experiment_ids()
    newest_first = ["attributes.start_time DESC"]
    parents = store.search(exp_ids, tag_filter(Tag.KIND, Kind.SWEEP), newest_first) if exp_ids else []
    if not parents:
        where = f"experiment {experiment!r}" if experiment else store.uri
        raise BadInput(f"no sweep found in {where}; run `orch sweep GRID.yaml` first")
    if sweep in ("latest", None):
        return store, parents[0]
    matches = [p for p in parents if p.data.tags.get(Tag.SWEEP, "").startswith(sweep)]
    if len(matches) == 1 and sweep:
        return store, matches[0]
    if not matches:
        raise BadInput(f"no sweep {sweep!r}; sweeps: {_sweep_list(parents)}")
    raise BadInput(f"--sweep {sweep!r} matches {len(matches)} sweeps: {_sweep_list(matches)}; "
                   "give enough of the id to name one")


def _sweep_list(parents, limit: int = 20) -> str:
    """``0a1f… (norm-study), …`` for a message; newest first."""
    shown = ", ".join(f"{p.data.tags.get(Tag.SWEEP)} ({p.info.run_name})" for p in parents[:limit])
    return shown + (f", … ({len(parents) - limit} more)" if len(parents) > limit else "")


def _table(columns: Sequence[str], rows) -> Any:
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*row)
    return table


@click.command("status")
@click.option("--storage", default=None, metavar="URL", help="The queue's database (queued sweeps).")
@click.option("--sweep", default=None, help="Only this sweep id (a prefix is enough); without --storage: "
                                            "the sweep to show (default: the newest).")
@click.option("--experiment", default=None, help="Without --storage: the sweep's MLflow experiment.")
@tracking_uri_option
@handle_errors
def status_cmd(storage: str | None, sweep: str | None, experiment: str | None, tracking_uri: str | None) -> None:
    """Queued sweeps (--storage): pending / running (which worker, since when) / done / failed.

    Without --storage: a sweep's points from the tracking store, each with its MLflow
    status and its Slurm job (array task) and state; a Slurm sweep whose jobs have all
    ended but which nobody closed gets its summary written and its parent run closed.
    """
    from rich.console import Console

    if storage:
        from orchestrator.launch import queue
        from orchestrator.store import optuna_storage as storage_mod
        from orchestrator.store.uri import sqlite_path

        url = storage_mod.check(storage)
        db = sqlite_path(url)
        exists = db is None or db.exists()  # reading never creates a queue
        if sweep is not None and exists:
            one_queued_sweep(sweep, queue.queued_sweeps(url))
        rows = queue.status_rows(url, sweep) if exists else []
        console = Console(width=None if sys.stdout.isatty() else 160)
        if not rows:
            console.print(f"no queued sweeps in {storage_mod.redact(url)}")
        for row in rows:  # counts, then the running points (worker, since) and the failed ones
            running, failed = row["running"], row["failed"]
            done = row["points"] - row["pending"] - len(running) - len(failed)
            console.print(f"[bold]{row['name']}[/bold] [{row['sweep']}]  points {row['points']}: "
                          f"pending {row['pending']}  running {len(running)}  done {done}  failed {len(failed)}")
            if running or failed:
                console.print(_table(("point", "state", "worker / reason", "since"), [
                    *((name, "running", who, since.strftime("%Y-%m-%d %H:%M:%S") if since else "")
                      for name, who, since in running),
                    *((name, "failed", reason, "") for name, reason in failed)]))
        return
    from orchestrator.launch.slurm_sweep import status_rows

    # the points: MLflow status, Slurm job (array task) and its state in squeue
    store, parent = open_sweep(tracking_uri, experiment, "latest" if sweep is None else sweep)
    rows, closed = status_rows(store, parent)
    counts = collections.Counter(row["status"] for row in rows)
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(f"[bold]{parent.info.run_name}[/bold] [{parent.data.tags.get(Tag.SWEEP, '')}]  parent "
                  f"{parent.info.status}  points {len(rows)}: "
                  + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    console.print(_table(("point", "status", "slurm job", "slurm state", "run", "reason"),
                         [(r["name"], r["status"], r["job"], r["slurm"], r["run_id"], r["reason"][:80]) for r in rows]))
    if closed:
        log.info(closed)


@click.command("compare")
@experiment_option
@sweep_option
@click.option("--metric", required=True, help="Metric to rank by: any the runs logged (its summary or last value), "
                                              "e.g. val_f1_macro or test_acc.")
@click.option("--group-by", default=None, metavar="AXES",
              help="Comma-separated dotted keys to group by (default: the sweep's axes).")
@click.option("--direction", type=click.Choice(["max", "min"]), default="max", show_default=True,
              help="Which end of the metric is best.")
@click.option("--baseline", default=None, metavar="KEY=VALUE",
              help="Paired per-seed differences against this setting, with their 95% CI and the p of a "
                   "paired t-test, e.g. optim.lr=0.1.")
@click.option("--correction", type=click.Choice(["holm", "bonferroni", "none"]), default="holm", show_default=True,
              help="Adjust the baseline tests' p for their number (p_holm / p_bonferroni); * follows the "
                   "adjusted p. holm and bonferroni keep the chance of any false * at most 5%.")
@click.option("--failed-as", type=click.Choice(["drop", "worst"]), default="drop", show_default=True,
              help="Diverged and failed runs: leave them out of the statistics, or count each as the worst "
                   "value of the metric among the table's finished runs. Their count is always shown.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "markdown", "json"]), default="table",
              show_default=True, help="Output format; all but table print the notes on stderr.")
@click.option("--top", type=click.IntRange(min=1), default=None, help="Show the best K rows only.")
@tracking_uri_option
@handle_errors
def compare_cmd(experiment: str | None, sweep: str, metric: str, group_by: str | None, direction: str,
                baseline: str | None, correction: str, failed_as: str, fmt: str, top: int | None,
                tracking_uri: str | None) -> None:
    """Rank the settings of a sweep: mean ± std and 95% CI over seeds, n finished / n expected,
    and how many runs diverged or failed.

    \b
    With --baseline, each setting's per-seed differences to the baseline (over the
    seeds both have): mean ± std, 95% CI, p of a two-sided paired t-test, that p
    adjusted for the table's number of tests (--correction), * when the adjusted p < 0.05.
    Grouping by fewer axes than the grid has pools the others (the notes name them).
    The table format ends with notes on the statistics; other formats print them on stderr.
    """
    from orchestrator.analyze.render import compare_notes, render
    from orchestrator.analyze.report import sweep_results
    from orchestrator.analyze.results import compare

    store, parent = open_sweep(tracking_uri, experiment, sweep)
    records, expected = sweep_results(store, parent)
    keys = [k.strip() for k in group_by.split(",") if k.strip()] if group_by else None
    result = compare(records, expected, metric, group_by=keys, direction=direction,
                     baseline=baseline, top=top, correction=correction, failed_as=failed_as)
    click.echo(render(result, fmt))
    if fmt != "table":
        for note in compare_notes(result):
            log.info("note: %s", note)


@click.command("report")
@experiment_option
@sweep_option
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv", "latex", "table", "json"]),
              default="markdown", show_default=True, help="latex: a booktabs tabular (\\usepackage{booktabs}).")
@click.option("--out", "out_dir", default=None, metavar="DIR", type=click.Path(file_okay=False),
              help="Also write the figures to DIR as PNG (created if missing).")
@click.option("--no-figures", is_flag=True, help="Print the table only: draw and log no figures.")
@tracking_uri_option
@handle_errors
def report_cmd(experiment: str | None, sweep: str, fmt: str, out_dir: str | None, no_figures: bool,
               tracking_uri: str | None) -> None:
    """A sweep's report: its table on stdout, its figures on the sweep's parent run.

    \b
    Read from the metrics the runs logged, named <split>_<score> (e.g. test_acc):
    Table: one row per (setting, split), one column per score (the built-in study:
    Accuracy, F1 micro, F1 macro), as mean ± std over seeds, and n (seeds counted).
    Figures, logged under report/ on the sweep's parent run (and written to --out DIR):
    training_curves.png (losses and a validation score by step per setting, mean ± std
    over seeds), quantiles.png (feat_qNN percentiles by step, first seed; only when
    logged), <split>_<score>.png (the last split's first score, e.g. test_acc, by the
    grid's first axis, one bar series per value of the others, 95% CI error bars).
    """
    from pathlib import Path

    from orchestrator.analyze import report as study_report
    from orchestrator.analyze.render import report

    if out_dir is not None and no_figures:
        raise BadInput("--out writes the figures and --no-figures draws none; drop one of them")
    store, parent = open_sweep(tracking_uri, experiment, sweep)
    records, expected = study_report.sweep_results(store, parent)
    click.echo(report(records, expected, fmt=fmt))
    if no_figures:
        return
    figures = study_report.report_figures(store, records, expected)
    logged = study_report.publish(store, parent.info.run_id, figures, out_dir and Path(out_dir))
    where = f" and written to {out_dir}" if out_dir is not None else ""
    log.info("figures %s logged on run %s%s", ", ".join(logged) or "(none: no finished run)", parent.info.run_id,
             where)


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (0.0.0.0 exposes it).")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port of the UI.")
@click.option("--open", "open_it", is_flag=True, help="Open the newest sweep's parent run in this machine's browser.")
@tracking_uri_option
@handle_errors
def ui_cmd(host: str, port: int, open_it: bool, tracking_uri: str | None) -> None:
    """Browse runs, curves, artifacts and system metrics in MLflow's UI on the configured store.

    \b
    One server worker, MLflow's job execution off, quiet logs. Once it answers, prints the
    URL of the newest sweep's (or tuning study's) parent run on stdout. Never creates a
    store. Exit codes: 130 Ctrl-C, 143 SIGTERM, 1 the server stopped by itself, 2 no store
    or the port is taken.
    """
    from orchestrator.cli.ui import open_browser, serve
    from orchestrator.store.uri import check_reachable, check_store, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        check_reachable(uri)
        log.info("%s is a tracking server: open it in a browser.", uri)
        click.echo(uri)
        if open_it and not open_browser(uri):
            log.warning("no browser found on this machine; open the URL above in yours")
        return
    check_store(uri, write=False)  # `mlflow ui` would create a missing store
    sys.exit(serve(uri, host, port, open_it=open_it))
