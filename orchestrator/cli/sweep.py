"""``orch sweep``: the command, and the launcher its options name.

The points run on this machine's slots (the default), go on the PostgreSQL queue
(``--storage``) or to Slurm (``--launcher slurm``, its sbatch options as ``--slurm KEY=VALUE``);
:func:`orchestrator.launch.sweep.run_sweep` plans the sweep and hands the launcher what is missing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from orchestrator.cli.group import (BadInput, device_option, handle_errors, max_points_option, open_store,
                                    quiet_option, set_option, slot_options, tracking_uri_option)

if TYPE_CHECKING:
    from orchestrator.grid.load import SweepSpec
    from orchestrator.store.tracking import TrackingStore

# --slurm keys orch reads itself (checks the partition and time; array-parallelism and logs are its own); the
# other keys are sbatch options, passed on as given
SLURM_OWN_KEYS = ("partition", "time", "array-parallelism", "logs")


@click.command("sweep")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@set_option
@max_points_option
@click.option("--dry-run", is_flag=True, help="Summarise the points and whether each is done; start nothing.")
@click.option("--list", "list_all", is_flag=True, help="[dry run] Print every point, not the first and last few.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="[dry run] json or csv: every point, for scripts.")
@click.option("--rerun", is_flag=True, help="Run every point again, finished or not.")
@click.option("--wait", is_flag=True, help="Wait for another sweep of the experiment instead of exiting 2; "
                                           "with Slurm, follow the jobs.")
@click.option("--metric", default=None, help="Metric of the closing table (default: the entry's default metric, e.g. "
                                             "the built-in study's val_f1_macro, else the first summary metric of "
                                             "the runs).")
@slot_options
@device_option
@click.option("--fail-fast", is_flag=True, help="Start no new point after the first failure.")
@click.option("--storage", default=None, metavar="URL",
              help="Queue the points in this database (postgresql://…) for `orch worker`s and return.")
@click.option("--launcher", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="Run the points here, or submit them as a Slurm job array.")
@click.option("--slurm", multiple=True, metavar="KEY=VALUE",
              help="[slurm] An sbatch option (partition=gpu, time=2:00:00, gpus-per-task=1, mem=32G, "
                   "account=lab, …), or orch's array-parallelism=K (tasks at once) or logs=DIR.")
@click.option("--store-is-shared", is_flag=True, envvar="ORCH_STORE_IS_SHARED",
              help="[slurm] The nodes reach the store as given, though it looks local.")
@click.option("--until-separated", "until_metric", default=None, metavar="METRIC",
              help="Add seeds where settings are not yet separated on METRIC (docs/how-to/seeds.md says how "
                   "and what it guarantees).")
@click.option("--max-seeds", type=click.IntRange(min=2), default=10, metavar="N",
              help="[separation] Seeds per setting at most (10).")
@click.option("--seeds-per-round", type=click.IntRange(min=1), default=2, metavar="N",
              help="[separation] Seeds added per round (2).")
@click.option("--separation-alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              metavar="A", help="[separation] Chance of any false separation (0.05).")
@click.option("--direction", type=click.Choice(["max", "min"]), default="max",
              help="[separation] Which end of METRIC is best (max).")
@click.option("--confirm", type=click.IntRange(min=1), default=None, metavar="N",
              help="Rerun an --until-separated sweep's leader and close rivals on N fresh seeds.")
@tracking_uri_option
@quiet_option("No progress display.")
@handle_errors
def sweep_cmd(grid_file: str, overrides: tuple[str, ...], max_points: int, dry_run: bool, list_all: bool, fmt: str,
              rerun: bool, wait: bool, metric: str | None, tracking_uri: str | None, quiet: bool,
              **launch: Any) -> None:
    """Run every point of GRID.yaml, each as a child MLflow run under one parent run.

    \b
    A rerun skips finished points, resumes stopped ones from their checkpoints and runs
    the rest. Exit codes: 0 all finished, 1 some failed, 2 bad input (nothing started),
    130 Ctrl-C, 143 SIGTERM (running points checkpoint and are recorded KILLED).
    """
    from orchestrator.execute.stop import ignore_hangup
    from orchestrator.grid.load import load_grid
    from orchestrator.store.uri import resolve_tracking_uri

    ignore_hangup()  # a closed terminal: the sweep goes on (its output to a closed pipe is dropped, see output.py)
    if launch["slurm"] and launch["launcher"] != "slurm":
        raise BadInput("--slurm options only apply with --launcher slurm; add it or drop them")
    _check_dry_run_options(dry_run, list_all, fmt, launch["launcher"])
    spec = load_grid(grid_file, overrides, check_data=not dry_run, max_points=max_points)
    until = _separation(spec, launch)
    uri = resolve_tracking_uri(tracking_uri)
    if launch["confirm"] is not None:
        spec = _confirm_spec(spec, open_store(uri), launch["confirm"])
    if dry_run:
        _dry_run(spec, uri, launch, list_all=list_all, fmt=fmt)
        return
    from orchestrator.launch.sweep import run_sweep

    launcher = _launcher(launch, metric=metric, quiet=quiet)
    launcher.setup(spec, uri)  # before open_store, which creates a SQLite store: bad input records nothing
    sys.exit(run_sweep(spec, open_store(uri), launcher, rerun=rerun, wait=wait, until=until, metric=metric))


def _separation(spec: SweepSpec, launch: dict[str, Any]):
    """``--until-separated``'s settings, checked before anything starts; None without it."""
    until_metric, max_seeds = launch["until_metric"], launch["max_seeds"]
    if until_metric is None:
        ctx = click.get_current_context()
        given = [f"--{name.replace('_', '-')}" for name in ("max_seeds", "seeds_per_round", "separation_alpha",
                                                           "direction")
                 if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)]
        if given:
            raise BadInput(f"{', '.join(given)} only apply with --until-separated METRIC; add it or drop them")
        return None
    from orchestrator.analyze.separation import Separation

    known = spec.entry.summary_metrics  # an entry that does not list them takes any name
    if known and until_metric not in known:
        raise BadInput(f"--until-separated {until_metric}: not a summary metric; use one of "
                       f"{', '.join(known)}")
    if launch["storage"] or launch["launcher"] != "local":
        raise BadInput("--until-separated runs its rounds here; it cannot queue them (--storage) or submit them "
                       "(--launcher slurm): drop one")
    if launch["confirm"] is not None:
        raise BadInput("--confirm reruns the outcome of an earlier --until-separated sweep: drop one of them")
    if max_seeds <= len(spec.seeds):
        raise BadInput(f"--max-seeds {max_seeds} leaves no room above the grid's {len(spec.seeds)} seeds; raise it")
    return Separation(until_metric, launch["direction"], max_seeds, launch["seeds_per_round"],
                      launch["separation_alpha"], grid_seeds=len(spec.seeds))


def _confirm_spec(spec: SweepSpec, store: TrackingStore, n: int) -> SweepSpec:
    """``--confirm N``: the top settings of GRID's last separation sweep on N fresh seeds."""
    from orchestrator.launch import rounds
    from orchestrator.store.schema import Artifact, read_points

    exp_id = store.experiment_id(spec.name)
    parent = store.find_sweep_parent(exp_id, spec.sweep_id) if exp_id is not None else None
    decision = store.download_json_if_any(parent.info.run_id, Artifact.SEPARATION) if parent is not None else None
    if decision is None:
        raise BadInput(f"--confirm: no finished --until-separated sweep of {spec.path} in {store.uri}; run "
                       f"`orch sweep {spec.path} --until-separated METRIC` first (same grid, same --set)")
    points = read_points(store.download_json(parent.info.run_id, Artifact.POINTS))
    return rounds.confirm_spec(spec, decision, points, n)


def _slurm_options(launch: dict[str, Any]):
    """``--slurm KEY=VALUE`` items → the Slurm launcher's options: the keys orch reads itself
    (:data:`SLURM_OWN_KEYS`), and every other sbatch option passed on as given."""
    from orchestrator.launch import slurm

    pairs = slurm.parse_extra(launch["slurm"])
    own = {key: value for key, value in pairs if key in SLURM_OWN_KEYS}
    tasks = own.get("array-parallelism")
    if tasks is not None and not (tasks.isdecimal() and int(tasks) > 0):
        raise BadInput(f"--slurm array-parallelism={tasks}: give the number of tasks at once, 1 or more")
    return slurm.SlurmOptions(partition=own.get("partition"), time=own.get("time"),
                              array_parallelism=int(tasks) if tasks else None, log_dir=own.get("logs"),
                              extra=tuple(pair for pair in pairs if pair[0] not in SLURM_OWN_KEYS),
                              runs_per_gpu=launch["runs_per_gpu"])


def _check_dry_run_options(dry_run: bool, list_all: bool, fmt: str, launcher: str) -> None:
    """--list and --format shape the dry run's list of points: refused anywhere else."""
    given = [option for option, used in (("--list", list_all), (f"--format {fmt}", fmt != "table")) if used]
    named, one = " and ".join(given), len(given) == 1
    if given and not dry_run:
        raise BadInput(f"{named} only appl{'ies' if one else 'y'} with --dry-run; add --dry-run or drop "
                       f"{'it' if one else 'them'}")
    if given and launcher == "slurm":
        raise BadInput(f"{named} shape{'s' if one else ''} the dry run's list of points, but --launcher slurm "
                       f"--dry-run prints the job script; drop {'it' if one else 'them'}")


def _dry_run(spec: SweepSpec, uri: str, launch: dict[str, Any], *, list_all: bool, fmt: str) -> None:
    """``--dry-run``: the points and whether each is done, or with Slurm the job script; a store
    that does not exist is not created."""
    if launch["launcher"] != "slurm":
        from orchestrator.cli.dry_run import print_dry_run

        print_dry_run(spec, uri, fmt=fmt, every_row=list_all)
        return
    from orchestrator.launch import slurm, slurm_sweep

    options = _slurm_options(launch)
    options.minutes()
    slurm.check_reachable_from_nodes(uri, launch["store_is_shared"])
    click.echo(slurm_sweep.dry_run_script(spec, uri, options, device=launch["device"],
                                          max_retries=launch["max_retries"], storage=launch["storage"]), nl=False)


def _launcher(launch: dict[str, Any], *, metric: str | None, quiet: bool):
    """The launcher the options name (:class:`orchestrator.launch.sweep.Launcher`)."""
    from orchestrator.store import optuna_storage as storage_mod

    url = storage_mod.check(launch["storage"]) if launch["storage"] else None
    if launch["launcher"] == "slurm":
        from orchestrator.launch.slurm_sweep import SlurmLauncher

        if url and not storage_mod.is_postgres(url):
            raise BadInput("--launcher slurm --storage needs a PostgreSQL queue (postgresql://…): SQLite cannot hand "
                           "out points exactly once to several tasks")
        return SlurmLauncher(_slurm_options(launch), device=launch["device"], max_retries=launch["max_retries"],
                             storage=url, shared=launch["store_is_shared"], metric=metric)
    if url:
        from orchestrator.launch.queue import QueueLauncher

        return QueueLauncher(url, metric)
    if launch["gpus"] and launch["device"] == "cpu":
        raise BadInput("--gpus and --device cpu contradict each other; drop one")
    from orchestrator.execute.slots import plan_slots
    from orchestrator.launch.sweep import LocalLauncher

    slots = plan_slots(launch["workers"], launch["gpus"], launch["runs_per_gpu"], launch["device"])
    return LocalLauncher(slots, max_retries=launch["max_retries"], fail_fast=launch["fail_fast"], quiet=quiet)
