"""``orch tune``: an Optuna study over the grid's search space, its trials as tracked runs."""

from __future__ import annotations

import sys

import click

from orchestrator.cli.group import (device_option, handle_errors, max_points_option, open_store, quiet_option,
                                    set_option, tracking_uri_option, use_device)


@click.command("tune")
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
              help="Stops unpromising trials early on the value their code logs at each step.")
@max_points_option
@tracking_uri_option
@device_option
@set_option
@quiet_option("No per-trial progress.")
@handle_errors
def tune_cmd(grid_file: str, n_trials: int | None, timeout: float | None, storage: str | None,
             study_name: str | None, sampler: str, pruner: str, max_points: int, tracking_uri: str | None,
             device: str, overrides: tuple[str, ...], quiet: bool) -> None:
    """Tune the grid's `tune.space` (default: its entry's default space) with Optuna.

    Grid axes that are not searched give one study per setting; --set fixes them.
    Every trial is a nested MLflow run under one parent run per study; rerunning with
    the same study name resumes it.
    """
    from orchestrator.execute.stop import ignore_hangup
    from orchestrator.grid.load import load_grid
    from orchestrator.store import optuna_storage as storage_mod
    from orchestrator.store.uri import resolve_tracking_uri

    ignore_hangup()
    use_device(device)
    spec = load_grid(grid_file, overrides, max_points=max_points)
    # the Optuna storage is checked before the tracking store is opened (and perhaps created)
    storage = storage_mod.check(storage or storage_mod.default_storage(resolve_tracking_uri(tracking_uri)))
    store = open_store(tracking_uri)
    from orchestrator.tune.tuning import run_tune

    sys.exit(run_tune(spec, store, n_trials=n_trials, timeout=timeout, storage=storage, study_name=study_name,
                      sampler=sampler, pruner=pruner))
