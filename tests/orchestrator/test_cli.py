"""The CLI's contract: one error base → exit 2, a failing store → exit 1, Ctrl-C → 130,
``--debug`` shows the traceback, and ``--help`` imports nothing heavy."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from orchestrator.cli import group, main, results, run, sweep, tune, worker
from orchestrator.cli.group import handle_errors
from orchestrator.cli.main import cli
from orchestrator.errors import ExitCode, StoreFailure, UserError


def user_errors() -> list[type]:
    """Every subclass of UserError that the package defines (its modules imported)."""
    for module in ("experiments.config", "experiments.datasets", "orchestrator.store.locks", "orchestrator.analyze.results",
                   "orchestrator.launch.slurm", "orchestrator.store.optuna_storage", "orchestrator.store.uri", "orchestrator.cli.ui"):
        importlib.import_module(module)
    found, todo = [], [UserError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def command_raising(error: BaseException) -> click.Command:
    @click.group()
    @click.option("--debug", is_flag=True)
    def root(debug: bool) -> None:
        pass

    @root.command()
    @handle_errors
    def work() -> None:
        raise error

    return root


def test_every_input_error_of_the_package_derives_from_the_one_base():
    names = {cls.__name__ for cls in user_errors()}
    assert {"ConfigError", "DatasetError", "StorageError", "TrackingError", "CompareError", "SweepBusy",
            "SlurmError", "UiError"} <= names


@pytest.mark.parametrize("error", user_errors(), ids=lambda cls: cls.__name__)
def test_each_input_error_is_one_line_and_exit_2(error):
    result = CliRunner().invoke(command_raising(error("grid.yaml: model.norm 'xx' is not a norm; use one of bn, gn")),
                                ["work"])
    assert result.exit_code == ExitCode.BAD_INPUT == 2
    assert result.stderr.strip().splitlines() == ["Error: grid.yaml: model.norm 'xx' is not a norm; use one of bn, gn"]
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("error, code, needle", [
    (StoreFailure("sqlite:///x.db", "disk I/O error"), ExitCode.FAILED, "the tracking store sqlite:///x.db failed"),
    (KeyboardInterrupt(), ExitCode.INTERRUPTED, "interrupted"),
])
def test_a_failing_store_and_ctrl_c_have_their_codes(error, code, needle):
    result = CliRunner().invoke(command_raising(error), ["work"])
    assert result.exit_code == code and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bug_is_not_turned_into_bad_input():
    """Only UserError means "fix your input": a plain ValueError from a bug is not exit 2."""
    result = CliRunner().invoke(command_raising(ValueError("a bug")), ["work"])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)


def test_debug_shows_the_traceback_of_an_input_error():
    from experiments.config import ConfigError

    result = CliRunner().invoke(command_raising(ConfigError("bad")), ["--debug", "work"])
    assert isinstance(result.exception, ConfigError)


def test_the_cli_catches_the_base_and_nothing_found_at_run_time():
    for module in (group, main, results, run, sweep, tune, worker):
        source = inspect.getsource(module)
        assert "sys.modules" not in source and "except ValueError" not in source, module.__name__


@pytest.mark.integration  # real `orch` processes
def test_help_imports_nothing_heavy():
    code = (
        "import sys; from click.testing import CliRunner; from orchestrator.cli.main import cli;"
        "r1 = CliRunner().invoke(cli, ['--help']); r2 = CliRunner().invoke(cli, ['run', '--help']);"
        "assert r1.exit_code == 0 and r2.exit_code == 0;"
        "heavy = [m for m in ('torch', 'mlflow', 'optuna', 'sklearn', 'matplotlib') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # liveness only (its speed is benchmarks' business): ~0.15 s each, the timeout is over 100x that
    subprocess.run([sys.executable, "-m", "orchestrator", "--help"], capture_output=True, check=True, timeout=60)
    subprocess.run([sys.executable, "-m", "orchestrator", "run", "--help"], capture_output=True, check=True,
                   timeout=60)


def test_every_command_is_listed_in_help():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("run", "sweep", "tune", "compare", "report", "status", "worker", "ui"):
        assert f"  {name} " in result.stdout, name


def test_every_command_and_option_says_what_it_does():
    """Flask's habit: the docstring is a command's help and every option has ``help=``."""
    for name, command in cli.commands.items():
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, (name, param.opts)


def test_the_orchestrator_logger_prints_bare_lines_on_stderr_for_one_command():
    """The group shows INFO records of every ``orchestrator.*`` logger as they are, on stderr
    (as the old ``say`` callbacks printed them), once even when the root logger has a handler
    (a library's ``logging.info`` gives it one), and leaves the logger as it found it."""
    import logging

    roots: list[logging.Handler] = []

    @cli.command("say-hello")
    def hello() -> None:
        roots.append(logging.StreamHandler(sys.stderr))  # the command's stderr, as CliRunner gives it
        logging.getLogger().addHandler(roots[0])
        logging.getLogger("orchestrator.launch.somewhere").info("sweep x: 3 points")
        logging.getLogger("orchestrator.execute.other").warning("warning: careful")

    try:
        result = CliRunner().invoke(cli, ["say-hello"])
    finally:
        del cli.commands["say-hello"]
        for handler in roots:
            logging.getLogger().removeHandler(handler)
    assert result.exit_code == 0 and result.stderr == "sweep x: 3 points\nwarning: careful\n"
    logger = logging.getLogger("orchestrator")
    assert logger.handlers == [] and logger.propagate and logger.level == logging.NOTSET


def test_quiet_keeps_warnings_only():
    import logging

    from orchestrator.cli.group import quiet_option

    @cli.command("say-quietly")
    @quiet_option("No progress.")
    def quietly(quiet: bool) -> None:
        logging.getLogger("orchestrator.x").info("progress")
        logging.getLogger("orchestrator.x").warning("a warning")

    try:
        loud, quiet = (CliRunner().invoke(cli, ["say-quietly", *flag]) for flag in ([], ["-q"]))
    finally:
        del cli.commands["say-quietly"]
    assert loud.stderr == "progress\na warning\n" and quiet.stderr == "a warning\n"
