"""``orch sweep``: the command and its launchers (here, the PostgreSQL queue, Slurm).

Registered on :data:`orchestrator.cli.main.cli` when that module is imported; the shared
options and the error mapping live there.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from orchestrator.cli.group import (BadInput, cli, device_option, handle_errors, max_points_option, open_store,
                                    set_option, slot_options, tracking_uri_option)

if TYPE_CHECKING:
    from orchestrator.grid.load import SweepSpec
    from orchestrator.store.tracking import TrackingStore


@cli.command("sweep")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="List every point and whether it is done; start nothing.")
@slot_options
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
@max_points_option
@click.option("--until-separated", "until_metric", default=None, metavar="METRIC",
              help="After the grid's seeds, add seeds to the leader (best mean of METRIC) and to every setting "
                   "not yet separated from it, round by round, until all are or --max-seeds. Separated: a one-sided "
                   "paired t-test on the seeds both have, Holm over all K(K-1) ordered pairs of the K settings, "
                   "at --separation-alpha / L per look (L: the seed counts a setting can hold, 5 for 3,5,7,9,10). "
                   "Guarantee: for any true means, the chance of declaring some setting separated from a leader "
                   "that is not truly better is at most --separation-alpha (independent, roughly normal per-seed "
                   "differences). Cost: power falls with many settings (simulated, one rival 2 sd behind, 3 to 10 "
                   "seeds: found in 87% of sweeps with 2 settings, 59% with 7, 38% with 14; "
                   "benchmarks/separation_error.py).")
@click.option("--max-seeds", type=click.IntRange(min=2), default=10, show_default=True,
              help="With --until-separated: seeds per setting at most, the grid's included.")
@click.option("--seeds-per-round", type=click.IntRange(min=1), default=2, show_default=True,
              help="With --until-separated: seeds added to each setting not yet separated per round.")
@click.option("--separation-alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="With --until-separated: the family-wise error of declaring a separation.")
@click.option("--confirm", type=click.IntRange(min=1), default=None, metavar="N",
              help="After an --until-separated sweep of GRID: run its leader and the settings not separated from "
                   "it on N fresh seeds, as a sweep of their own (an unbiased final table for `orch compare`).")
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
              until_metric: str | None, max_seeds: int, seeds_per_round: int, separation_alpha: float,
              confirm: int | None, direction: str, tracking_uri: str | None, device: str,
              overrides: tuple[str, ...], quiet: bool) -> None:
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
    from orchestrator.store import tracking
    from orchestrator.grid.load import load_grid
    from orchestrator.cli.output import ignore_hangup

    ignore_hangup()  # a closed terminal: the sweep goes on (its output to a closed pipe is dropped, see output.py)
    slurm_given = [name for name, value in (("--partition", partition), ("--time", time_limit),
                                            ("--gpus-per-task", gpus_per_task), ("--cpus-per-task", cpus_per_task),
                                            ("--mem", mem), ("--array-parallelism", array_parallelism),
                                            ("--slurm", slurm_extra), ("--slurm-logs", slurm_logs)) if value]
    if launcher != "slurm" and slurm_given:
        raise BadInput(f"{', '.join(slurm_given)} only apply with --launcher slurm; add it or drop them")
    if until_metric is None:
        ctx = click.get_current_context()
        given = [f"--{name.replace('_', '-')}" for name in ("max_seeds", "seeds_per_round", "separation_alpha",
                                                           "direction")
                 if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)]
        if given:
            raise BadInput(f"{', '.join(given)} only apply with --until-separated METRIC; add it or drop them")
    spec = load_grid(grid_file, overrides, check_data=not dry_run, max_points=max_points)
    until = _separation(spec, until_metric, max_seeds, seeds_per_round, direction, storage, separation_alpha)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    if confirm is not None:
        if until is not None:
            raise BadInput("--confirm reruns the outcome of an earlier --until-separated sweep: drop one of them")
        spec = _confirm_spec(spec, open_store(uri), confirm)
    if until is not None and launcher == "slurm":
        raise BadInput("--until-separated runs its rounds here; it cannot submit them to Slurm: drop one")
    if launcher == "slurm":
        from orchestrator.launch import slurm

        options = slurm.SlurmOptions(partition=partition, time=time_limit, gpus_per_task=gpus_per_task,
                                     cpus_per_task=cpus_per_task, mem=mem, array_parallelism=array_parallelism,
                                     extra=slurm.parse_extra(slurm_extra), runs_per_gpu=runs_per_gpu,
                                     log_dir=slurm_logs)
        _slurm_sweep(spec, uri, options, storage=storage, dry_run=dry_run, rerun=rerun, wait=wait,
                     shared=store_is_shared, device=device, max_retries=max_retries, metric=metric, quiet=quiet)
        return
    if dry_run:
        from orchestrator.execute.display import print_dry_run

        print_dry_run(spec, uri)
        return
    if gpus and device == "cpu":
        raise BadInput("--gpus and --device cpu contradict each other; drop one")
    if storage:
        _queue_sweep(spec, open_store(uri), storage, rerun=rerun)
        return
    from orchestrator.execute import slots as point_processes
    from orchestrator.execute.scheduler import plan_slots
    from orchestrator.launch.sweep import run_sweep

    # the point processes import torch while this one opens the store and reads what is done
    with point_processes.started_ahead(plan_slots(workers, gpus, runs_per_gpu, device)[:len(spec.runs)]):
        code = run_sweep(spec, open_store(uri), workers=workers, gpus=gpus, runs_per_gpu=runs_per_gpu,
                         max_retries=max_retries, fail_fast=fail_fast, rerun=rerun, device=device, quiet=quiet,
                         metric=metric, wait=wait, until=until)
    sys.exit(code)


def _separation(spec: SweepSpec, metric: str | None, max_seeds: int, per_round: int, direction: str,
                storage: str | None, alpha: float = 0.05):
    """``--until-separated``'s settings, checked before anything starts; None without it."""
    if metric is None:
        return None
    from experiments.metric_names import SUMMARY_METRICS
    from orchestrator.analyze.separation import Separation

    if metric not in SUMMARY_METRICS:
        raise BadInput(f"--until-separated {metric}: not a summary metric; use one of {', '.join(SUMMARY_METRICS)}")
    if storage:
        raise BadInput("--until-separated runs the rounds itself; it cannot queue them (--storage): drop one")
    if max_seeds <= len(spec.seeds):
        raise BadInput(f"--max-seeds {max_seeds} leaves no room above the grid's {len(spec.seeds)} seeds; raise it")
    return Separation(metric, direction, max_seeds, per_round, alpha, grid_seeds=len(spec.seeds))


def _confirm_spec(spec: SweepSpec, store: TrackingStore, n: int) -> SweepSpec:
    """``--confirm N``: the top settings of GRID's last separation sweep on N fresh seeds."""
    from orchestrator.analyze import separation
    from orchestrator.store.schema import Artifact, read_points

    exp_id = store.experiment_id(spec.name)
    parent = store.find_sweep_parent(exp_id, spec.sweep_id) if exp_id is not None else None
    decision = None
    logged = {f.path for f in store.client.list_artifacts(parent.info.run_id)} if parent is not None else set()
    if Artifact.SEPARATION in logged:
        decision = store.download_json(parent.info.run_id, Artifact.SEPARATION)
    if decision is None:
        raise BadInput(f"--confirm: no finished --until-separated sweep of {spec.path} in {store.uri}; run "
                       f"`orch sweep {spec.path} --until-separated METRIC` first (same grid, same --set)")
    points = read_points(store.download_json(parent.info.run_id, Artifact.POINTS))
    return separation.confirm_spec(spec, decision, points, n)


def _slurm_sweep(spec: SweepSpec, uri: str, options, *, storage: str | None, dry_run: bool, rerun: bool,
                 wait: bool, shared: bool, device: str, max_retries: int, metric: str, quiet: bool) -> None:
    """``orch sweep --launcher slurm``: every check before anything is recorded or submitted."""
    import time

    from orchestrator.launch import slurm
    from orchestrator.launch import slurm_sweep
    from orchestrator.store import optuna_storage as storage_mod

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
                                              max_retries=max_retries, metric=metric, wait=wait, say=say)
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
    from orchestrator.launch import queue
    from orchestrator.store import optuna_storage as storage_mod

    url = storage_mod.check(storage)
    if store.uri.startswith("sqlite:") and storage_mod.is_postgres(url):
        click.echo(f"note: workers on other machines cannot reach the SQLite store {store.uri}; "
                   "use --tracking-uri http://HOST:5000 (an mlflow server) to share runs", err=True)
    sub = queue.submit(spec, store, url, rerun=rerun)
    click.echo(f"sweep {spec.name} [{spec.sweep_id}]: queued {sub.enqueued} point(s) in study {sub.study} "
               f"({sub.done} already finished, {sub.queued_before} already queued) at "
               f"{storage_mod.redact(url)}\nstart workers with: orch worker --storage URL", err=True)
