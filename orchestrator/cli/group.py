"""The ``orch`` group and what its commands share: the error mapping, options, the store, logging.

:func:`handle_errors` turns a :class:`~orchestrator.errors.UserError` into one line and exit 2
(:class:`~orchestrator.errors.ExitCode`). Heavy imports (torch, mlflow, optuna) stay inside the
commands, so ``orch --help`` stays fast. The ``orchestrator`` logger's records (INFO and up,
WARNING with ``--quiet``) print on stderr as bare lines for the length of a command.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable

import click

from orchestrator import __version__
from orchestrator.cli.output import logging_to_stderr
from orchestrator.errors import ExitCode, StoreFailure, UserError

if TYPE_CHECKING:
    from orchestrator.store.tracking import TrackingStore

@click.group("orch", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="orch")
@click.option("--debug", is_flag=True, help="Show full tracebacks for input errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:  # noqa: ARG001 - read back by handle_errors
    """orch: sweep orchestration with experiment tracking for training-recipe ablations.

    \b
    orch run [CONFIG.yaml]        train one configuration, logged to MLflow
    orch sweep GRID.yaml          run every point of a grid (resumable; --launcher slurm)
    orch compare --metric M       rank the settings of a sweep, mean ± std over seeds
    orch report                   a sweep's table of scores per split, and its figures
    orch tune GRID.yaml           tune the LR schedule with Optuna, trials as MLflow runs
    orch worker --storage URL     run queued points (several machines, PostgreSQL)
    orch status [--storage URL]   a sweep's points and Slurm jobs; the queue's state
    orch ui                       browse runs in MLflow's UI
    orch diff RUN_A RUN_B         what differs between two runs: params, code, packages
    """
    ctx.with_resource(logging_to_stderr())


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
        except (UserError, StoreFailure) as err:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            if isinstance(err, UserError):
                raise BadInput(str(err)) from None
            click.echo(f"error: {err}; fix the store and run the command again", err=True)
            sys.exit(ExitCode.FAILED)
        except KeyboardInterrupt:  # Ctrl-C before any run exists (reading, validating, opening the store)
            click.echo("interrupted", err=True)
            sys.exit(ExitCode.INTERRUPTED)

    return wrapper


def open_store(tracking_uri: str | None, *, write: bool = True) -> TrackingStore:
    """The command's tracking store: resolved, checked, opened once (``write=False``: never created)."""
    from orchestrator.store.tracking import TrackingStore
    from orchestrator.store.uri import check_store, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    check_store(uri, write=write)
    return TrackingStore(uri)


def check_experiment_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:  # noqa: ARG001
    """An ``--experiment`` that would create an experiment: refused before anything is created."""
    from orchestrator.grid.names import experiment_name_problem, shown_name

    problem = experiment_name_problem(value) if value is not None else None
    if problem:
        raise BadInput(f"--experiment {shown_name(value)} {problem}")
    return value


def use_device(device: str) -> None:
    """``--device cpu`` hides the GPUs from code trained in this process (CUDA_VISIBLE_DEVICES), as
    slots do for point processes; ``auto`` and ``cuda`` change nothing."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def one_queued_sweep(sweep: str, queued: list[str], *, may_come: bool = False) -> None:
    """``--sweep`` of a queue command names one queued sweep; ``may_come``: none yet is fine
    (a worker with --wait waits for it)."""
    matches = sorted(s for s in queued if s.startswith(sweep))
    if sweep and (len(matches) == 1 or may_come and not matches):
        return
    if not matches:
        raise BadInput(f"no queued sweep {sweep!r}; queued sweeps: {', '.join(sorted(queued)) or 'none'}")
    raise BadInput(f"--sweep {sweep!r} matches {len(matches)} queued sweeps: {', '.join(matches[:20])}"
                   f"{', …' if len(matches) > 20 else ''}; give enough of the id to name one")


tracking_uri_option = click.option(
    "--tracking-uri", metavar="URI", envvar=None,
    help="MLflow tracking URI (sqlite:///PATH.db, postgresql://USER@HOST/DB or http://HOST:PORT). "
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


def quiet_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--quiet/-q``: the command gets the flag, and the ``orchestrator`` logger shows warnings only."""

    def quiet_logging(ctx: click.Context, param: click.Parameter, value: bool) -> bool:  # noqa: ARG001
        if value:
            logging.getLogger("orchestrator").setLevel(logging.WARNING)
        return value

    return click.option("--quiet", "-q", is_flag=True, callback=quiet_logging, help=help_text)


def split_gpus(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:  # noqa: ARG001
    """``--gpus 0,1`` -> ["0", "1"]; None when not given (every visible GPU)."""
    return ([g.strip() for g in value.split(",") if g.strip()] or None) if value else None


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
