"""``orch run``: train one configuration as one tracked run, or continue a stopped one."""

from __future__ import annotations

import logging
import sys

import click

from orchestrator.cli.group import (BadInput, check_experiment_name, device_option, handle_errors, open_store,
                                    quiet_option, set_option, tracking_uri_option, use_device)
from orchestrator.errors import ExitCode

log = logging.getLogger(__name__)


@click.command("run")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@set_option
@tracking_uri_option
@click.option("--experiment", default="orch", show_default=True, callback=check_experiment_name,
              help="MLflow experiment name.")
@device_option
@click.option("--run-name", default=None,
              help="MLflow run name (default: the study's name of the point, e.g. gn-bs8-s0).")
@click.option("--resume", "resume_run", default=None, metavar="RUN_ID",
              help="Continue a run that was stopped or killed, from its checkpoint, in a new run.")
@quiet_option("No per-epoch progress.")
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
    from orchestrator.execute import stop
    from orchestrator.grid import names
    from orchestrator.grid.entry import resolve_entry

    stop.ignore_hangup()
    entry = resolve_entry()  # orch run trains the built-in study; a grid names other entries
    store = open_store(tracking_uri)
    if resume_run:
        if config_file or overrides:
            raise BadInput("--resume continues a run with its own config; drop CONFIG.yaml and --set")
        from orchestrator.execute.runner import resumed_config

        cfg, experiment, run_name = resumed_config(store, resume_run, entry)
    else:
        cfg = entry.load_config(config_file, overrides)
    if device == "cuda":  # on a machine without a visible GPU: a usage mistake
        import torch

        if not torch.cuda.is_available():
            raise BadInput("--device cuda: no CUDA GPU is visible here; use --device cpu or auto")
    use_device(device)
    from orchestrator.execute.runner import run_tracked, summary_line

    exp_id = store.ensure_experiment(experiment)
    if run_name is None:  # the entry names a lone run by its headline keys, e.g. gn-bs8-s0
        params = entry.params(cfg)
        run_name = names.run_name({k: params[k] for k in (*entry.headline_keys, "seed")}, entry)
    with stop.handling() as flag:
        code, run_id, summary = run_tracked(entry, cfg, store=store, experiment_id=exp_id, run_name=run_name,
                                            quiet=quiet, stop=flag, resume=resume_run or False)
    if code == ExitCode.OK:
        log.info("run %s FINISHED  %s", run_id, summary_line(entry, summary))
    elif code in (ExitCode.INTERRUPTED, ExitCode.PREEMPTED):
        log.warning("continue it with: orch run --resume %s", run_id)
    sys.exit(code)
