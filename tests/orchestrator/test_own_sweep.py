"""The user's own code swept for real: ``orch sweep`` in a subprocess over a function entry and a
command entry, on a SQLite store; bad entries refused with exit 2 before anything is recorded;
a command's process started, stopped and failed through the entry."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, all_runs, orch
from mlflow.tracking import MlflowClient

from orchestrator.client import Run
from orchestrator.errors import RunFailed
from orchestrator.grid.entry import resolve_entry
from orchestrator.store.schema import Kind, Status, Tag

PYTHON = sys.executable

FUNCTION = '''
def main(config, run):
    state = run.load_checkpoint()
    for epoch in range(state["epoch"] if state else 0, config["epochs"]):
        run.log({"val_acc": config["optim"]["lr"] * (epoch + 1), "train_loss": 1.0 / (epoch + 1)}, step=epoch + 1)
        run.save_checkpoint({"epoch": epoch + 1})
        if run.should_stop():
            return None
    return {"test_acc": config["optim"]["lr"] + run.seed}
'''

DATACLASS = '''
from dataclasses import dataclass

@dataclass
class Config:
    epochs: int
    lr: float = 0.1

def main(config: Config, run):
    return {"acc": config.lr}
'''

SCRIPT = '''
import argparse
import sys

from orchestrator.client import current

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float)
parser.add_argument("--fail", type=int)
parser.add_argument("--seed", type=int)
args = parser.parse_args()
run = current()
print("training with", run.config)
for step in range(3):
    run.log({"loss": args.lr / (step + 1)}, step=step + 1)
if args.fail:
    print("first line\\nCUDA error: the last line", file=sys.stderr)
    sys.exit(args.fail)
'''


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def runs_of(uri: str, kind: str = Kind.POINT):
    return [r for r in all_runs(uri) if r.data.tags.get(Tag.KIND) == kind]


# ---------------------------------------------------------------- a command's process


def stand_in(tmp_path: Path, stop=lambda: False) -> Run:
    """A run that records nothing (no store): what the entry sees of it is the same."""
    return Run({}, 0, tmp_path / "artifacts", stop=stop)


def test_a_command_fails_with_its_exit_status_and_stderr_tail_and_keeps_its_output(tmp_path):
    (tmp_path / "artifacts").mkdir()
    code = "import sys; print('out'); print(*range(20), sep=chr(10), file=sys.stderr); sys.exit(3)"
    entry = resolve_entry({"command": f"{PYTHON} -c \"{code}\""}, folder=str(tmp_path))
    with pytest.raises(RunFailed) as info:
        entry.train(entry.build({}), stand_in(tmp_path))
    assert str(info.value) == "exit status 3: " + "\n".join(map(str, range(5, 20)))  # the last 15 lines
    assert (tmp_path / "artifacts" / "output" / "stdout.txt").read_text() == "out\n"
    killed = resolve_entry({"command": f"{PYTHON} -c \"import os; os.kill(os.getpid(), 9)\""}, folder=str(tmp_path))
    with pytest.raises(RunFailed, match=r"^killed by SIGKILL \(nothing on stderr\)$"):
        killed.train(killed.build({}), stand_in(tmp_path))


def test_a_command_runs_in_the_grid_folder_and_reports_exit_status_and_wall_time(tmp_path):
    (tmp_path / "artifacts").mkdir()
    code = "import os; print(os.getcwd(), os.environ['ORCH_RUN'][:1])"
    entry = resolve_entry({"command": f"{PYTHON} -c \"{code}\" --lr {{lr}}"}, folder=str(tmp_path))
    summary = entry.train(entry.build({"lr": 0.1}), stand_in(tmp_path))
    assert summary["exit_status"] == 0.0 and summary["wall_seconds"] > 0
    assert (tmp_path / "artifacts" / "output" / "stdout.txt").read_text() == f"{tmp_path.resolve()} {{\n"


def test_a_stop_request_reaches_the_command_as_sigterm_and_ends_it_stopped(tmp_path):
    (tmp_path / "artifacts").mkdir()
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (print('term'), sys.exit(0))); "
            "print('up', flush=True); time.sleep(60)")
    entry = resolve_entry({"command": f"{PYTHON} -c \"{code}\""}, folder=str(tmp_path))
    out = tmp_path / "artifacts" / "output" / "stdout.txt"
    assert entry.train(entry.build({}), stand_in(tmp_path, stop=lambda: out.exists() and "up" in out.read_text())) \
        is None
    assert out.read_text() == "up\nterm\n"


@pytest.mark.parametrize("entry", ['{command: "python train.py --lr {lr}"}', "nowhere:main"])
def test_a_dry_run_of_a_command_imports_nothing_heavy(tmp_path, entry):
    write(tmp_path, "grid.yaml", f"name: light\nentry: {entry}\ngrid: {{lr: [0.1, 0.2]}}\n")
    code = textwrap.dedent(f"""
        import sys
        from click.testing import CliRunner
        from orchestrator.cli.main import cli
        uri = "sqlite:///" + {str(tmp_path / 'mlflow.db')!r}
        result = CliRunner().invoke(cli, ["sweep", {str(tmp_path / 'grid.yaml')!r}, "--dry-run", "--tracking-uri", uri])
        heavy = [m for m in ("torch", "mlflow", "optuna") if m in sys.modules]
        print(result.exit_code, heavy)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            check=False)
    expected = "0 []" if "command" in entry else "2 []"  # the function's module is not there: refused, still light
    assert result.stdout.strip().splitlines()[-1] == expected, result.stdout + result.stderr
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------- bad input, refused by the command


BAD = {  # grid text (the module beside it: mytrain.py with FUNCTION and DATACLASS) → the message's core
    "missing module": ("entry: nomodule_xyz:main", "cannot import module 'nomodule_xyz' from"),
    "missing function": ("entry: mytrain:mian", "mytrain has no function 'mian'; did you mean main?"),
    "placeholder": ('entry: {command: "python train.py --lr {lr} --wd {wd}"}\nbase: {lr: 0.1}',
                    "placeholder {wd} names no config key"),
    "program": ('entry: {command: "pythn-nowhere train.py"}', "the command's program 'pythn-nowhere' is not found"),
    "unknown key": ("entry: typed:main\nbase: {epochs: 1, lrr: 0.1}", "unknown key 'lrr'; did you mean lr?"),
    "wrong type": ("entry: typed:main\nbase: {epochs: many}", "expected an integer, got 'many'"),
    "missing field": ("entry: typed:main\nbase: {lr: 0.1}", "base.epochs: missing: Config requires it"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_entry_is_refused_with_exit_2_and_one_line_before_anything_is_recorded(tmp_path, case):
    text, needle = BAD[case]
    write(tmp_path, "mytrain.py", FUNCTION)
    write(tmp_path, "typed.py", DATACLASS)
    write(tmp_path, "grid.yaml", f"name: bad\n{text}\n")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    for extra in (["--dry-run"], []):
        result = orch("sweep", "grid.yaml", "--tracking-uri", uri, *extra, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert needle in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "store").exists()  # nothing recorded, no store created


# ---------------------------------------------------------------- real sweeps


@pytest.mark.slow
def test_a_function_entry_sweeps_two_settings_by_two_seeds_into_finished_runs(tmp_path):
    write(tmp_path, "mytrain.py", FUNCTION)
    write(tmp_path, "grid.yaml", """
        name: own-function
        entry: mytrain:main
        base: {epochs: 3}
        grid: {optim.lr: [0.1, 0.2]}
        seeds: [0, 1]
    """)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = orch("sweep", "grid.yaml", "--tracking-uri", uri, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = runs_of(uri)
    assert sorted(r.info.run_name for r in runs) == ["lr0.1-s0", "lr0.1-s1", "lr0.2-s0", "lr0.2-s1"]
    client = MlflowClient(tracking_uri=uri)
    for r in runs:
        lr, seed = float(r.data.params["optim.lr"]), int(r.data.params["seed"])
        assert r.info.status == Status.FINISHED and r.data.params == {"epochs": "3", "optim.lr": str(lr), "seed": str(seed)}
        assert r.data.tags[Tag.ENTRY] == "mytrain:main"
        assert r.data.metrics["test_acc"] == lr + seed
        history = client.get_metric_history(r.info.run_id, "val_acc")
        assert sorted((m.step, m.value) for m in history) == [(e, lr * e) for e in (1, 2, 3)]
    again = orch("sweep", "grid.yaml", "--tracking-uri", uri, "--dry-run", cwd=tmp_path)
    assert "4 points: 4 done, 0 pending" in again.stdout  # run keys: a rerun would skip them all


@pytest.mark.slow
def test_a_command_entry_reports_through_the_client_and_fails_with_its_stderr(tmp_path):
    write(tmp_path, "train.py", SCRIPT)
    write(tmp_path, "grid.yaml", f"""
        name: own-command
        entry: {{command: "{PYTHON} train.py --seed {{seed}}", overrides: argparse}}
        base: {{lr: 0.5}}
        grid: {{fail: [0, 3]}}
    """)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = orch("sweep", "grid.yaml", "--tracking-uri", uri, "--max-retries", "0", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    by_name = {r.info.run_name: r for r in runs_of(uri)}
    done, failed = by_name["fail0-s0"], by_name["fail3-s0"]
    client = MlflowClient(tracking_uri=uri)
    assert done.info.status == Status.FINISHED and done.data.params == {"lr": "0.5", "fail": "0", "seed": "0"}
    assert sorted((m.step, m.value) for m in client.get_metric_history(done.info.run_id, "loss")) == [
        (1, 0.5), (2, 0.25), (3, 0.5 / 3)]
    assert done.data.metrics["exit_status"] == 0.0 and done.data.metrics["wall_seconds"] > 0
    assert {a.path for a in client.list_artifacts(done.info.run_id, "output")} == {"output/stdout.txt",
                                                                                   "output/stderr.txt"}
    stdout = Path(client.download_artifacts(done.info.run_id, "output/stdout.txt", str(tmp_path)))
    assert stdout.read_text() == "training with {'lr': 0.5, 'fail': 0}\n"
    assert failed.info.status == Status.FAILED
    assert failed.data.tags[Tag.FAILURE_REASON].endswith("exit status 3: first line\nCUDA error: the last line")
    assert done.data.tags[Tag.ENTRY] == f"{PYTHON} train.py --seed {{seed}} [argparse overrides]"
