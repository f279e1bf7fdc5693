"""The ``orch`` command: thin wrappers that parse, call and map errors to exit codes.

Exit codes (:class:`orchestrator.errors.ExitCode`): 0 done, 1 some work failed, 2 bad
input (nothing was started), 130 interrupted. Every error the user must fix derives from
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
    from orchestrator.grid import SweepSpec
    from orchestrator.tracking import TrackingStore

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
    from orchestrator import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_store(uri, write=write)
    return tracking.TrackingStore(uri)


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
@click.option("--experiment", default="orch", show_default=True, help="MLflow experiment name.")
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

    store = open_store(tracking_uri)
    if resume_run:
        if config_file or overrides:
            raise BadInput("--resume continues a run with its own config; drop CONFIG.yaml and --set")
        from orchestrator.runner import resumed_config

        cfg, experiment, run_name = resumed_config(store, resume_run)
    else:
        cfg = load(config_file, overrides)
    check_device(device)

    from orchestrator.runner import run_tracked, stop_on_signals, summary_line

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


@cli.command("sweep")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="List every point and whether it is done; start nothing.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel points on the CPU (torch threads are divided among them).")
@click.option("--gpus", default=None, metavar="0,1,...", callback=split_gpus,
              help="GPU indices to use; default: every visible GPU (none: the CPU).")
@click.option("--runs-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
              help="Points packed on each GPU at once.")
@click.option("--max-retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="Retries of a point that fails before it is recorded FAILED.")
@click.option("--fail-fast", is_flag=True, help="Start no new point after the first failure.")
@click.option("--rerun", is_flag=True, help="Run every point again, even those already finished.")
@click.option("--metric", default="val_f1_macro", show_default=True, help="Metric of the closing table.")
@click.option("--storage", default=None, metavar="URL",
              help="Queue the points in this database (postgresql://…) for `orch worker`s and return.")
@click.option("--wait", is_flag=True,
              help="If another sweep of this experiment runs on this store, wait for it instead of exiting 2; "
                   "with --launcher slurm, follow the jobs until they end.")
@click.option("--launcher", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="Where the points run: here, or as Slurm jobs (see the README's 'On a Slurm cluster').")
@click.option("--partition", default=None, help="[slurm] Partition to submit to (default: the cluster's).")
@click.option("--time", "time_limit", default=None, metavar="LIMIT",
              help="[slurm] Time limit of a task, in Slurm's format (90, 1:30:00, 2-00:00).")
@click.option("--gpus-per-task", type=click.IntRange(min=0), default=None, help="[slurm] GPUs per task.")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=None, help="[slurm] CPU cores per task.")
@click.option("--mem", default=None, metavar="SIZE", help="[slurm] Memory per task, e.g. 16G.")
@click.option("--array-parallelism", type=click.IntRange(min=1), default=None, metavar="K",
              help="[slurm] Tasks running at once (queue mode: the number of worker tasks, default 4).")
@click.option("--slurm", "slurm_extra", multiple=True, metavar="KEY=VALUE",
              help="[slurm] Any other sbatch option, e.g. --slurm account=lab --slurm qos=high (repeatable).")
@click.option("--store-is-shared", is_flag=True, envvar="ORCH_STORE_IS_SHARED",
              help="[slurm] The tracking store (and --storage) is reachable from the compute nodes as given, "
                   "even on a path or address that looks local (a one-machine cluster).")
@click.option("--slurm-logs", default=None, metavar="DIR",
              help="[slurm] Folder of the tasks' output files, on a shared filesystem (default: ./slurm-logs).")
@click.option("--max-points", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Refuse a grid of more points (settings x seeds) than this.")
@click.option("--until-separated", "until_metric", default=None, metavar="METRIC",
              help="After the grid's seeds, add seeds to the leader and to every setting whose 95% interval "
                   "of METRIC overlaps the leader's, round by round, until none does or --max-seeds.")
@click.option("--max-seeds", type=click.IntRange(min=2), default=10, show_default=True,
              help="With --until-separated: seeds per setting at most, the grid's included.")
@click.option("--seeds-per-round", type=click.IntRange(min=1), default=2, show_default=True,
              help="With --until-separated: seeds added to each overlapping setting per round.")
@click.option("--direction", type=click.Choice(["max", "min"]), default="max", show_default=True,
              help="With --until-separated: which end of METRIC is best.")
@tracking_uri_option
@device_option
@set_option
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@handle_errors
def sweep_cmd(grid_file: str, dry_run: bool, workers: int, gpus: list[str] | None, runs_per_gpu: int,
              max_retries: int, fail_fast: bool, rerun: bool, metric: str, storage: str | None, wait: bool,
              max_points: int, launcher: str, partition: str | None, time_limit: str | None,
              gpus_per_task: int | None, cpus_per_task: int | None, mem: str | None, array_parallelism: int | None,
              slurm_extra: tuple[str, ...], store_is_shared: bool, slurm_logs: str | None,
              until_metric: str | None, max_seeds: int, seeds_per_round: int, direction: str,
              tracking_uri: str | None, device: str, overrides: tuple[str, ...], quiet: bool) -> None:
    """Run every point of GRID.yaml, each as a child MLflow run under one parent run.

    \b
    Rerunning the same grid resumes it: points with a FINISHED run in the experiment
    (from this sweep or an earlier one, e.g. before a seed was added) are skipped;
    points that were stopped or killed continue from their checkpoints; failed and
    missing ones run. One sweep per experiment and store runs at a time (--wait queues
    behind it). Exit codes: 0 all finished, 1 some failed, 2 bad input (nothing started),
    130 Ctrl-C, 143 SIGTERM (running points checkpoint and are recorded KILLED).

    \b
    --launcher slurm submits the missing points as a Slurm job array (one task per
    --runs-per-gpu points) and returns; --wait follows the jobs; --dry-run prints the
    job script. With --storage, K array tasks are `orch worker`s on the queue.
    """
    from orchestrator import tracking
    from orchestrator.grid import load_grid

    slurm_given = [name for name, value in (("--partition", partition), ("--time", time_limit),
                                            ("--gpus-per-task", gpus_per_task), ("--cpus-per-task", cpus_per_task),
                                            ("--mem", mem), ("--array-parallelism", array_parallelism),
                                            ("--slurm", slurm_extra), ("--slurm-logs", slurm_logs)) if value]
    if launcher != "slurm" and slurm_given:
        raise BadInput(f"{', '.join(slurm_given)} only apply with --launcher slurm; add it or drop them")
    spec = load_grid(grid_file, overrides, check_data=not dry_run, max_points=max_points)
    until = _separation(spec, until_metric, max_seeds, seeds_per_round, direction, storage)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    if launcher == "slurm":
        from orchestrator import slurm

        options = slurm.SlurmOptions(partition=partition, time=time_limit, gpus_per_task=gpus_per_task,
                                     cpus_per_task=cpus_per_task, mem=mem, array_parallelism=array_parallelism,
                                     extra=slurm.parse_extra(slurm_extra), runs_per_gpu=runs_per_gpu,
                                     log_dir=slurm_logs)
        _slurm_sweep(spec, uri, options, storage=storage, dry_run=dry_run, rerun=rerun, wait=wait,
                     shared=store_is_shared, device=device, max_retries=max_retries, metric=metric, quiet=quiet)
        return
    if dry_run:
        from orchestrator.display import print_dry_run

        print_dry_run(spec, uri)
        return
    if gpus and device == "cpu":
        raise BadInput("--gpus and --device cpu contradict each other; drop one")
    store = open_store(uri)
    if storage:
        _queue_sweep(spec, store, storage, rerun=rerun)
        return
    from orchestrator.sweep import run_sweep

    sys.exit(run_sweep(spec, store, workers=workers, gpus=gpus, runs_per_gpu=runs_per_gpu,
                       max_retries=max_retries, fail_fast=fail_fast, rerun=rerun, device=device, quiet=quiet,
                       metric=metric, wait=wait, until=until))


def _separation(spec: SweepSpec, metric: str | None, max_seeds: int, per_round: int, direction: str,
                storage: str | None):
    """``--until-separated``'s settings, checked before anything starts; None without it."""
    if metric is None:
        return None
    from experiments.metric_names import SUMMARY_METRICS
    from orchestrator.separation import Separation

    if metric not in SUMMARY_METRICS:
        raise BadInput(f"--until-separated {metric}: not a summary metric; use one of {', '.join(SUMMARY_METRICS)}")
    if storage:
        raise BadInput("--until-separated runs the rounds itself; it cannot queue them (--storage): drop one")
    if max_seeds <= len(spec.seeds):
        raise BadInput(f"--max-seeds {max_seeds} leaves no room above the grid's {len(spec.seeds)} seeds; raise it")
    return Separation(metric, direction, max_seeds, per_round)


def _slurm_sweep(spec: SweepSpec, uri: str, options, *, storage: str | None, dry_run: bool, rerun: bool,
                 wait: bool, shared: bool, device: str, max_retries: int, metric: str, quiet: bool) -> None:
    """``orch sweep --launcher slurm``: every check before anything is recorded or submitted."""
    import time

    from orchestrator import slurm, slurm_sweep
    from orchestrator import storage as storage_mod

    url = storage_mod.check(storage) if storage else None
    if url and not storage_mod.is_postgres(url):
        raise BadInput("--launcher slurm --storage needs a PostgreSQL queue (postgresql://…): SQLite cannot hand "
                       "out points exactly once to several tasks")
    if dry_run:
        options.minutes()
        slurm.check_reachable_from_nodes(uri, shared)
        click.echo(slurm_sweep.dry_run_script(spec, uri, options, device=device, max_retries=max_retries,
                                              storage=url), nl=False)
        return
    slurm.check(options, uri, shared=shared, storage=url)
    slurm.test_only(slurm_sweep.dry_run_script(spec, uri, options, device=device, max_retries=max_retries,
                                               storage=url))
    store = open_store(uri)
    say = slurm_sweep.say_to_stderr(quiet)
    since_ms = int(time.time() * 1000)
    if url:
        sub = slurm_sweep.submit_workers(spec, store, options, url, rerun=rerun, device=device,
                                         max_retries=max_retries, say=say)
        state = None
    else:
        sub, state = slurm_sweep.submit_sweep(spec, store, options, rerun=rerun, device=device,
                                              max_retries=max_retries, metric=metric, say=say)
    if sub.job_ids:
        say(f"sweep {spec.name} [{spec.sweep_id}]: submitted {sub.points} point(s) as Slurm job "
            f"{sub.job_ids[0]}" + (f" (close job {sub.job_ids[1]})" if len(sub.job_ids) > 1 else "")
            + f"; {sub.done} already finished, {sub.skipped_live} queued or running in earlier jobs\n"
            f"follow it with: squeue -n {slurm.job_name(spec.sweep_id)}  or  orch status --tracking-uri {store.uri}"
            f"\ntask logs: {slurm.log_dir(options)}")
    if wait and (sub.job_ids or sub.skipped_live):
        sys.exit(slurm_sweep.wait_and_close(store, spec, state, sub, quiet=quiet, metric=metric, since_ms=since_ms,
                                            say=say))


def _queue_sweep(spec: SweepSpec, store: TrackingStore, storage: str, *, rerun: bool) -> None:
    """``orch sweep --storage``: queue the unfinished points for workers and say where."""
    from orchestrator import queue
    from orchestrator import storage as storage_mod

    url = storage_mod.check(storage)
    if store.uri.startswith("sqlite:") and storage_mod.is_postgres(url):
        click.echo(f"note: workers on other machines cannot reach the SQLite store {store.uri}; "
                   "use --tracking-uri http://HOST:5000 (an mlflow server) to share runs", err=True)
    sub = queue.submit(spec, store, url, rerun=rerun)
    click.echo(f"sweep {spec.name} [{spec.sweep_id}]: queued {sub.enqueued} point(s) in study {sub.study} "
               f"({sub.done} already finished, {sub.queued_before} already queued) at "
               f"{storage_mod.redact(url)}\nstart workers with: orch worker --storage URL", err=True)


def _resolve_sweep(store, experiment: str | None, sweep: str):
    """(experiment id, parent run) for --experiment/--sweep, with messages listing what exists."""
    from orchestrator.schema import Tag

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
    if sweep in ("latest", "", None):
        parent = parents[0]
    else:
        matches = [p for p in parents if p.data.tags.get(Tag.SWEEP, "").startswith(sweep)]
        if not matches:
            known = ", ".join(f"{p.data.tags.get(Tag.SWEEP)} ({p.info.run_name})" for p in parents[:20])
            raise BadInput(f"no sweep {sweep!r}; sweeps: {known}")
        parent = matches[0]
    return parent.info.experiment_id, parent


def _sweep_data(store, experiment: str | None, sweep: str):
    from orchestrator.schema import Artifact, Tag, read_points
    from orchestrator.sweep import sweep_records

    exp_id, parent = _resolve_sweep(store, experiment, sweep)
    points = read_points(store.download_json(parent.info.run_id, Artifact.POINTS))
    records = sweep_records(store, exp_id, parent.data.tags[Tag.SWEEP], [p.run_key for p in points])
    return records, points


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
@click.option("--max-points", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Refuse a grid of more points (settings x seeds) than this.")
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
    from orchestrator.grid import load_grid

    spec = load_grid(grid_file, overrides, max_points=max_points)
    store = open_store(tracking_uri)
    from orchestrator.tuning import run_tune

    sys.exit(run_tune(spec, store, n_trials=n_trials, timeout=timeout, storage=storage, study_name=study_name,
                      sampler=sampler, pruner=pruner, device=device, quiet=quiet))


@cli.command("worker")
@click.option("--storage", required=True, metavar="URL", help="The queue's database (postgresql://…).")
@click.option("--sweep", default=None, help="Serve only this sweep id (a prefix is enough); default: all.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Points run at once on the CPU.")
@click.option("--gpus", default=None, metavar="0,1,...", callback=split_gpus,
              help="GPU indices to use; default: every visible GPU.")
@click.option("--runs-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
              help="Points packed on each GPU at once.")
@click.option("--max-retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="Requeues of a point that fails before it is recorded FAILED.")
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
    from orchestrator import storage as storage_mod

    url = storage_mod.check(storage)
    uri = open_store(tracking_uri).uri if tracking_uri else None
    from orchestrator import queue

    if url.startswith("sqlite:"):
        queue.register_worker(url, stale_after=max(60.0, 3 * poll))
    sys.exit(queue.run_worker(url, sweep=sweep, tracking_uri=uri, workers=workers, gpus=gpus,
                              runs_per_gpu=runs_per_gpu, device=device, max_retries=max_retries, wait=wait,
                              poll=poll, quiet=quiet))


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
    from orchestrator.display import print_queue_status

    if storage:
        from orchestrator import queue
        from orchestrator import storage as storage_mod
        from orchestrator.store_uri import sqlite_path

        url = storage_mod.check(storage)
        db = sqlite_path(url)
        if db is not None and not db.exists():  # reading never creates a queue
            print_queue_status([], storage_mod.redact(url))
            return
        print_queue_status(queue.status_rows(url, sweep), storage_mod.redact(url))
        return
    from orchestrator.display import print_sweep_status
    from orchestrator.slurm_sweep import status_rows

    store = open_store(tracking_uri, write=False)
    _, parent = _resolve_sweep(store, experiment, sweep or "latest")
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
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "markdown", "json"]), default="table",
              show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=None, help="Show the best K rows only.")
@tracking_uri_option
@handle_errors
def compare_cmd(experiment: str | None, sweep: str, metric: str, group_by: str | None, direction: str,
                baseline: str | None, fmt: str, top: int | None, tracking_uri: str | None) -> None:
    """Rank the settings of a sweep: mean ± std and 95% CI over seeds, n finished / n expected.

    \b
    With --baseline, each setting's per-seed differences to the baseline (over the
    seeds both have): mean ± std, 95% CI, p of a two-sided paired t-test, * when p < 0.05.
    The table format ends with notes on the statistics; other formats print them on stderr.
    """
    from orchestrator import compare

    records, expected = _sweep_data(open_store(tracking_uri, write=False), experiment, sweep)
    keys = [k.strip() for k in group_by.split(",") if k.strip()] if group_by else None
    result = compare.compare(records, expected, metric, group_by=keys, direction=direction,
                             baseline=baseline, top=top)
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

    from orchestrator import compare, study_report

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
    from orchestrator import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        tracking.check_reachable(uri)
        click.echo(f"{uri} is a tracking server: open it in a browser.", err=True)
        click.echo(uri)
        if open_it:
            from orchestrator.ui import open_browser

            if not open_browser(uri):
                click.echo("no browser found on this machine; open the URL above in yours", err=True)
        return
    tracking.check_store(uri, write=False)  # `mlflow ui` would create a missing store
    from orchestrator.ui import serve

    sys.exit(serve(uri, host, port, open_it=open_it))


def main() -> None:
    cli(prog_name="orch")


if __name__ == "__main__":
    main()
