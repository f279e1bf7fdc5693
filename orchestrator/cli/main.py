"""The ``orch`` command: thin wrappers that parse, call and map errors to exit codes.

Exit codes (:class:`orchestrator.errors.ExitCode`): 0 done, 1 some work failed, 2 bad
input (nothing was started), 130 Ctrl-C, 143 SIGTERM. Every error the user must fix derives from
:class:`orchestrator.errors.UserError`; :func:`handle_errors` turns it into one line and
exit 2. Heavy imports (torch, mlflow, optuna) happen inside the commands that need them,
so ``orch --help`` and grid validation stay fast.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any, Callable

import click

from orchestrator import __version__
from orchestrator.errors import ExitCode, StoreFailure, UserError

if TYPE_CHECKING:
    from orchestrator.store.tracking import TrackingStore

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class BadInput(click.ClickException):
    """A user mistake: one message naming the problem and the fix; exit code 2."""

    exit_code = ExitCode.BAD_INPUT


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`UserError` into exit 2 and a :class:`StoreFailure` into exit 1, each with
    one line (a traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            raise BadInput(str(err)) from None
        except StoreFailure as err:  # the store failed mid-command; the next invocation repairs
            if click.get_current_context().find_root().params.get("debug"):
                raise
            click.echo(f"error: {err}; fix the store and run the command again", err=True)
            sys.exit(ExitCode.FAILED)
        except KeyboardInterrupt:  # Ctrl-C before any run exists (reading, validating, opening the store)
            click.echo("interrupted", err=True)
            sys.exit(ExitCode.INTERRUPTED)

    return wrapper


def open_store(tracking_uri: str | None, *, write: bool = True) -> TrackingStore:
    """The command's tracking store: resolved, checked (:func:`tracking.check_store`), opened once.

    ``write=False`` for commands that only read: they never create a store.
    """
    from orchestrator.store import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_store(uri, write=write)
    return tracking.TrackingStore(uri)


def check_experiment_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:  # noqa: ARG001
    """An ``--experiment`` that would create an experiment: refused before anything is created."""
    from orchestrator.grid.names import experiment_name_problem

    problem = experiment_name_problem(value) if value is not None else None
    if problem:
        shown = value if len(value) <= 40 else f"{value[:20]}…{value[-20:]}"
        raise BadInput(f"--experiment {shown!r} {problem}")
    return value


def check_device(device: str) -> None:
    """``--device cuda`` on a machine without a visible GPU is a usage mistake (imports torch)."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BadInput("--device cuda: no CUDA GPU is visible here; use --device cpu or auto")


tracking_uri_option = click.option(
    "--tracking-uri", metavar="URI", envvar=None,
    help="MLflow tracking URI (sqlite:///PATH.db or http://HOST:PORT). "
         "Default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db.",
)
max_points_option = click.option("--max-points", type=click.IntRange(min=1), default=10_000, show_default=True,
                                 help="Refuse a grid of more points (settings x seeds) than this.")
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config value by dotted key, e.g. --set optim.lr=0.05 (repeatable).",
)
device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Where to train: CUDA when available under auto.",
)


def split_gpus(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:  # noqa: ARG001
    """``--gpus 0,1`` -> ["0", "1"]; None when not given (every visible GPU)."""
    gpus = [g.strip() for g in value.split(",") if g.strip()] if value else []
    return gpus or None


def slot_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--workers, --gpus, --runs-per-gpu, --max-retries: where points run and how often one is retried."""
    for option in reversed((
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Parallel points on the CPU (torch threads are divided among them)."),
        click.option("--gpus", default=None, metavar="0,1,...", callback=split_gpus,
                     help="GPU indices to use; default: every visible GPU (none: the CPU)."),
        click.option("--runs-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Points packed on each GPU at once."),
        click.option("--max-retries", type=click.IntRange(min=0), default=1, show_default=True,
                     help="Retries (requeues) of a point that fails before it is recorded FAILED."),
    )):
        fn = option(fn)
    return fn


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="orch")
@click.option("--debug", is_flag=True, help="Show full tracebacks for input errors.")
def cli(debug: bool) -> None:
    """orch: sweep orchestration with experiment tracking for training-recipe ablations.

    \b
    orch run [CONFIG.yaml]        train one configuration, logged to MLflow
    orch sweep GRID.yaml          run every point of a grid (resumable; --launcher slurm)
    orch compare --metric M       rank the settings of a sweep, mean ± std over seeds
    orch report                   the study's table: accuracy and F1 per split
    orch tune GRID.yaml           tune the LR schedule with Optuna, trials as MLflow runs
    orch worker --storage URL     run queued points (several machines, PostgreSQL)
    orch status [--storage URL]   a sweep's points and Slurm jobs; the queue's state
    orch ui                       browse runs in MLflow's UI
    """


@cli.command("run")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@set_option
@tracking_uri_option
@click.option("--experiment", default="orch", show_default=True, callback=check_experiment_name,
              help="MLflow experiment name.")
@device_option
@click.option("--run-name", default=None, help="MLflow run name (default: <norm>-bs<batch>-s<seed>).")
@click.option("--resume", "resume_run", default=None, metavar="RUN_ID",
              help="Continue a run that was stopped or killed, from its checkpoint, in a new run.")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch progress.")
@handle_errors
def run_cmd(config_file: str | None, overrides: tuple[str, ...], tracking_uri: str | None, experiment: str,
            device: str, run_name: str | None, resume_run: str | None, quiet: bool) -> None:
    """Train one configuration (defaults: the digits dataset) as one MLflow run.

    \b
    CONFIG.yaml holds config sections (data, model, optim, schedule, train, seed);
    --set overrides single keys. Ctrl-C or SIGTERM checkpoint the run and end it KILLED;
    `orch run --resume RUN_ID` continues it exactly where it stopped. Exit codes: 0
    finished, 1 failed (recorded FAILED), 2 bad input, 130 Ctrl-C, 143 SIGTERM.
    """
    from experiments.config import load
    from orchestrator.cli.output import ignore_hangup

    ignore_hangup()
    store = open_store(tracking_uri)
    if resume_run:
        if config_file or overrides:
            raise BadInput("--resume continues a run with its own config; drop CONFIG.yaml and --set")
        from orchestrator.execute.runner import resumed_config

        cfg, experiment, run_name = resumed_config(store, resume_run)
    else:
        cfg = load(config_file, overrides)
    check_device(device)

    from orchestrator.execute.runner import run_tracked, stop_on_signals, summary_line

    stop = stop_on_signals()
    exp_id = store.ensure_experiment(experiment)
    name = run_name or f"{cfg.model.norm}-bs{cfg.data.batch_size}-s{cfg.seed}"
    code, run_id, summary = run_tracked(cfg, store=store, experiment_id=exp_id, run_name=name, device=device,
                                        quiet=quiet, stop=stop, resume=resume_run or False)
    if code == ExitCode.OK and not quiet:
        click.echo(f"run {run_id} FINISHED  {summary_line(summary)}", err=True)
    elif code in (ExitCode.INTERRUPTED, ExitCode.PREEMPTED):
        click.echo(f"continue it with: orch run --resume {run_id}", err=True)
    sys.exit(code)


def _resolve_sweep(store, experiment: str | None, sweep: str):
    """(experiment id, parent run) for --experiment/--sweep, with messages listing what exists."""
    from orchestrator.store.schema import Tag

    if experiment:
        exp_id = store.experiment_id(experiment)
        if exp_id is None:
            names = ", ".join(store.experiment_names()) or "none"
            raise BadInput(f"no experiment {experiment!r} in {store.uri}; experiments: {names}")
        exp_ids = [exp_id]
    else:
        exp_ids = store.experiment_ids()
    parents = store.sweep_parents(exp_ids)
    if not parents:
        where = f"experiment {experiment!r}" if experiment else store.uri
        raise BadInput(f"no sweep found in {where}; run `orch sweep GRID.yaml` first")
    if sweep in ("latest", None):
        return parents[0].info.experiment_id, parents[0]
    matches = [p for p in parents if p.data.tags.get(Tag.SWEEP, "").startswith(sweep)]
    if len(matches) == 1 and sweep:
        return matches[0].info.experiment_id, matches[0]
    if not matches:
        raise BadInput(f"no sweep {sweep!r}; sweeps: {_sweep_list(parents)}")
    raise BadInput(f"--sweep {sweep!r} matches {len(matches)} sweeps: {_sweep_list(matches)}; "
                   "give enough of the id to name one")


def _one_queued_sweep(sweep: str, queued: list[str], *, may_come: bool = False) -> None:
    """``--sweep`` of a queue command names one queued sweep; ``may_come``: none yet is fine
    (a worker with --wait waits for it)."""
    matches = sorted(s for s in queued if s.startswith(sweep))
    if sweep and (len(matches) == 1 or may_come and not matches):
        return
    if not matches:
        raise BadInput(f"no queued sweep {sweep!r}; queued sweeps: {', '.join(sorted(queued)) or 'none'}")
    raise BadInput(f"--sweep {sweep!r} matches {len(matches)} queued sweeps: {', '.join(matches[:20])}"
                   f"{', …' if len(matches) > 20 else ''}; give enough of the id to name one")


def _sweep_list(parents, limit: int = 20) -> str:
    """``0a1f… (norm-study), …`` for a message; newest first."""
    from orchestrator.store.schema import Tag

    shown = ", ".join(f"{p.data.tags.get(Tag.SWEEP)} ({p.info.run_name})" for p in parents[:limit])
    return shown + (f", … ({len(parents) - limit} more)" if len(parents) > limit else "")


def _sweep_data(store, experiment: str | None, sweep: str):
    from orchestrator.analyze.report import sweep_results

    _, parent = _resolve_sweep(store, experiment, sweep)
    return sweep_results(store, parent)


@cli.command("tune")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Trials per study (default: the grid's tune.n_trials, else 20).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Stop starting trials after S seconds.")
@click.option("--storage", default=None, metavar="URL",
              help="Optuna storage (default: sqlite beside the MLflow store; postgresql://… to share with workers).")
@click.option("--study", "study_name", default=None, help="Study name (default: derived from the grid).")
@click.option("--sampler", type=click.Choice(["tpe", "random"]), default="tpe", show_default=True,
              help="Optuna sampler of the search space.")
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default="median", show_default=True,
              help="Stops unpromising trials early on their per-epoch validation metric.")
@max_points_option
@tracking_uri_option
@device_option
@set_option
@click.option("--quiet", "-q", is_flag=True, help="No per-trial progress.")
@handle_errors
def tune_cmd(grid_file: str, n_trials: int | None, timeout: float | None, storage: str | None,
             study_name: str | None, sampler: str, pruner: str, max_points: int, tracking_uri: str | None,
             device: str, overrides: tuple[str, ...], quiet: bool) -> None:
    """Tune the grid's `tune.space` (default: StepLR step_size and gamma) with Optuna.

    Grid axes that are not searched give one study per setting; --set fixes them.
    Every trial is a nested MLflow run under one parent run per study; rerunning with
    the same study name resumes it.
    """
    from orchestrator.grid.load import load_grid

    from orchestrator.store import optuna_storage as storage_mod
    from orchestrator.cli.output import ignore_hangup
    from orchestrator.store.uri import resolve_tracking_uri

    ignore_hangup()
    spec = load_grid(grid_file, overrides, max_points=max_points)
    # the Optuna storage is checked before the tracking store is opened (and perhaps created)
    storage = storage_mod.check(storage or storage_mod.default_storage(resolve_tracking_uri(tracking_uri)))
    store = open_store(tracking_uri)
    from orchestrator.tune.tuning import run_tune

    sys.exit(run_tune(spec, store, n_trials=n_trials, timeout=timeout, storage=storage, study_name=study_name,
                      sampler=sampler, pruner=pruner, device=device, quiet=quiet))


@cli.command("worker")
@click.option("--storage", required=True, metavar="URL", help="The queue's database (postgresql://…).")
@click.option("--sweep", default=None, help="Serve only this sweep id (a prefix is enough); default: all.")
@slot_options
@click.option("--wait", is_flag=True, help="Keep waiting for new points instead of exiting when the queue is empty.")
@click.option("--poll", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds between looks at an empty queue (with --wait).")
@tracking_uri_option
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@handle_errors
def worker_cmd(storage: str, sweep: str | None, workers: int, gpus: list[str] | None, runs_per_gpu: int,
               max_retries: int, wait: bool, poll: float, tracking_uri: str | None, device: str, quiet: bool) -> None:
    """Claim queued points one at a time and run them; exit 0 when the queue is empty.

    Runs log to the MLflow store the sweep was queued with, or to --tracking-uri.
    A worker that dies is noticed by its missing heartbeat: its point is requeued and
    its MLflow run marked FAILED. Without --sweep it also joins the `orch tune` studies
    of the storage that still want trials.
    """
    from orchestrator.execute import slots as point_processes
    from orchestrator.launch import queue
    from orchestrator.store import optuna_storage as storage_mod
    from orchestrator.cli.output import ignore_hangup
    from orchestrator.execute.scheduler import plan_slots

    ignore_hangup()
    url = storage_mod.check(storage)
    if sweep is not None:
        _one_queued_sweep(sweep, queue.queued_sweeps(url), may_come=wait)
    slots = plan_slots(workers, gpus, runs_per_gpu, device)
    # the point processes import torch while this one opens the tracking store and joins the queue
    with point_processes.started_ahead(slots):
        uri = open_store(tracking_uri).uri if tracking_uri else None
        if url.startswith("sqlite:"):
            queue.register_worker(url, stale_after=max(60.0, 3 * poll))
        code = queue.run_worker(url, slots, sweep=sweep, tracking_uri=uri, device=device, max_retries=max_retries,
                                wait=wait, poll=poll, quiet=quiet)
    sys.exit(code)


@cli.command("status")
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
    from orchestrator.execute.display import print_queue_status

    if storage:
        from orchestrator.launch import queue
        from orchestrator.store import optuna_storage as storage_mod
        from orchestrator.store.uri import sqlite_path

        url = storage_mod.check(storage)
        db = sqlite_path(url)
        if db is not None and not db.exists():  # reading never creates a queue
            print_queue_status([], storage_mod.redact(url))
            return
        if sweep is not None:
            _one_queued_sweep(sweep, queue.queued_sweeps(url))
        print_queue_status(queue.status_rows(url, sweep), storage_mod.redact(url))
        return
    from orchestrator.execute.display import print_sweep_status
    from orchestrator.launch.slurm_sweep import status_rows

    store = open_store(tracking_uri, write=False)
    _, parent = _resolve_sweep(store, experiment, "latest" if sweep is None else sweep)
    rows, closed = status_rows(store, parent)
    print_sweep_status(rows, parent)
    if closed:
        click.echo(closed, err=True)


@cli.command("compare")
@click.option("--experiment", default=None, help="MLflow experiment (default: the one of the newest sweep).")
@click.option("--sweep", default="latest", show_default=True, help="Sweep id (a prefix is enough) or 'latest'.")
@click.option("--metric", required=True, help="Summary metric to rank by, e.g. val_f1_macro or test_acc.")
@click.option("--group-by", default=None, metavar="AXES",
              help="Comma-separated dotted keys to group by (default: the sweep's axes).")
@click.option("--direction", type=click.Choice(["max", "min"]), default="max", show_default=True)
@click.option("--baseline", default=None, metavar="KEY=VALUE",
              help="Paired per-seed differences against this setting, with their 95% CI and the p of a "
                   "paired t-test, e.g. model.norm=bn_torch.")
@click.option("--correction", type=click.Choice(["holm", "bonferroni", "none"]), default="holm", show_default=True,
              help="Adjust the baseline tests' p for their number (p_holm / p_bonferroni); * follows the "
                   "adjusted p. holm and bonferroni keep the chance of any false * at most 5%.")
@click.option("--failed-as", type=click.Choice(["drop", "worst"]), default="drop", show_default=True,
              help="Diverged and failed runs: leave them out of the statistics, or count each as the worst "
                   "value of the metric among the table's finished runs. Their count is always shown.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "markdown", "json"]), default="table",
              show_default=True)
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
    from orchestrator.analyze import compare

    records, expected = _sweep_data(open_store(tracking_uri, write=False), experiment, sweep)
    keys = [k.strip() for k in group_by.split(",") if k.strip()] if group_by else None
    result = compare.compare(records, expected, metric, group_by=keys, direction=direction,
                             baseline=baseline, top=top, correction=correction, failed_as=failed_as)
    click.echo(compare.render(result, fmt))
    if fmt != "table":
        for note in compare.compare_notes(result):
            click.echo(f"note: {note}", err=True)


@cli.command("report")
@click.option("--experiment", default=None, help="MLflow experiment (default: the one of the newest sweep).")
@click.option("--sweep", default="latest", show_default=True, help="Sweep id (a prefix is enough) or 'latest'.")
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv", "latex", "table", "json"]),
              default="markdown", show_default=True, help="latex: a booktabs tabular (\\usepackage{booktabs}).")
@click.option("--out", "out_dir", default=None, metavar="DIR", type=click.Path(file_okay=False),
              help="Also write the figures to DIR as PNG (created if missing).")
@click.option("--no-figures", is_flag=True, help="Print the table only: draw and log no figures.")
@tracking_uri_option
@handle_errors
def report_cmd(experiment: str | None, sweep: str, fmt: str, out_dir: str | None, no_figures: bool,
               tracking_uri: str | None) -> None:
    """The study's report: its table on stdout, its figures on the sweep's parent run.

    \b
    Table: one row per (setting, split) with Accuracy, F1 micro, F1 macro as
    mean ± std over seeds, and n (seeds counted).
    Figures, logged under report/ on the sweep's parent run (and written to --out DIR):
    training_curves.png (loss and accuracy by epoch per setting, mean ± std over seeds),
    quantiles.png (feature percentiles of the first validation example, first seed),
    test_acc.png (test accuracy by norm × batch size, 95% CI error bars).
    """
    from pathlib import Path

    from orchestrator.analyze import compare
    from orchestrator.analyze import report as study_report

    if out_dir is not None and no_figures:
        raise BadInput("--out writes the figures and --no-figures draws none; drop one of them")
    store = open_store(tracking_uri, write=False)
    _, parent = _resolve_sweep(store, experiment, sweep)
    records, expected = study_report.sweep_results(store, parent)
    click.echo(compare.report(records, expected, fmt=fmt))
    if no_figures:
        return
    figures = study_report.report_figures(store, records, expected)
    logged = study_report.publish(store, parent.info.run_id, figures, out_dir and Path(out_dir))
    where = f" and written to {out_dir}" if out_dir is not None else ""
    click.echo(f"figures {', '.join(logged) or '(none: no finished run)'} logged on run {parent.info.run_id}"
               f"{where}", err=True)


@cli.command("ui")
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
    from orchestrator.store import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        tracking.check_reachable(uri)
        click.echo(f"{uri} is a tracking server: open it in a browser.", err=True)
        click.echo(uri)
        if open_it:
            from orchestrator.cli.ui import open_browser

            if not open_browser(uri):
                click.echo("no browser found on this machine; open the URL above in yours", err=True)
        return
    tracking.check_store(uri, write=False)  # `mlflow ui` would create a missing store
    from orchestrator.cli.ui import serve

    sys.exit(serve(uri, host, port, open_it=open_it))


from orchestrator.cli import sweep as cli_sweep  # noqa: E402,F401 - registers `orch sweep` on the group
from orchestrator.cli.diff import diff_cmd  # noqa: E402 - after the shared options it uses
cli.add_command(diff_cmd)


def main() -> None:
    from orchestrator.cli import output

    output.guard()  # a closed pipe or terminal must not end a command half-way through its records
    cli(prog_name="orch")


if __name__ == "__main__":
    main()
