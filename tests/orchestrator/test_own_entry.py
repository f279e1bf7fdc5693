"""The user's own code as an entry, in this process: a function ``main(config, run)`` (its config
open, or a dataclass as its schema) and a command line; how a grid reads, checks and keys them."""
from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from experiments.config import ConfigError
from orchestrator.client import Run
from orchestrator.grid.command import CommandEntry
from orchestrator.grid.entry import resolve_entry
from orchestrator.grid.load import load_grid, tune_spec
from orchestrator.grid.own import FunctionEntry

PYTHON = sys.executable

CODE = '''
import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class Optim:
    lr: float = 0.1
    momentum: float = 0.0


@dataclass
class Config:
    epochs: int                              # required: every grid must give it
    width: int = 64
    act: Literal["relu", "gelu"] = "relu"
    optim: Optim = field(default_factory=Optim)
    widths: tuple[int, ...] = (16, 32)
    note: Optional[str] = None
    seed: int = 0                            # gets the run's seed


def main(config: Config, run):
    return {"score": config.optim.lr * config.width}


def open_main(config, run):
    return {"n": len(config)}


def typed_dict(config: dict, run):
    return None


def three(config, run, extra):
    return None


NOT_A_FUNCTION = 3
'''


@pytest.fixture
def code(tmp_path):
    """A module of entry functions beside the grid file; its name is fresh (imports are cached)."""
    name = f"own_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(CODE)
    return name


def grid(tmp_path: Path, text: str, overrides=()):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(text))
    return load_grid(path, overrides)


def refused(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        grid(tmp_path, text)
    return info.value


# ---------------------------------------------------------------- resolution


def test_a_function_resolves_from_the_grid_folder_and_the_folder_goes_last_on_sys_path(tmp_path, code):
    entry = resolve_entry(f"{code}:open_main", folder=str(tmp_path), checkpoint_seconds=5)
    assert isinstance(entry, FunctionEntry) and entry.name == f"{code}:open_main"
    assert entry.spec == {"entry": f"{code}:open_main", "folder": str(tmp_path.resolve()), "checkpoint_seconds": 5.0}
    assert entry.folder == str(tmp_path)  # provenance: the module's own folder
    assert sys.path[0] != str(tmp_path) and str(tmp_path) in sys.path  # first only while importing
    assert (entry.fields, entry.summary_metrics, entry.default_metric, entry.name_prefixes) == (None, (), "", {})
    assert resolve_entry() is resolve_entry(None)  # the built-in study, unchanged


def test_a_module_of_the_same_name_in_another_grid_folder_is_that_folders(tmp_path):
    name = f"same_{uuid.uuid4().hex[:8]}"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.py").write_text(f"def main(config, run):\n    return {{'{folder}': 1}}\n")
    first, second = (resolve_entry(f"{name}:main", folder=str(tmp_path / f)) for f in ("a", "b"))
    assert first.fn(None, None) == {"a": 1} and second.fn(None, None) == {"b": 1}
    assert resolve_entry(f"{name}:main").fn(None, None) == {"b": 1}  # no folder: the one imported last


def test_a_mapping_resolves_to_a_command(tmp_path):
    entry = resolve_entry({"command": "python train.py --lr {lr}"}, folder=str(tmp_path))
    assert isinstance(entry, CommandEntry) and entry.name == "python train.py --lr {lr}"
    assert entry.spec == {"entry": {"command": "python train.py --lr {lr}"}, "folder": str(tmp_path.resolve()),
                          "checkpoint_seconds": 60.0}
    hydra = resolve_entry({"command": "python train.py", "overrides": "hydra"}, folder=str(tmp_path))
    assert hydra.name == "python train.py [hydra overrides]"


@pytest.mark.parametrize("make_entry, needle", [
    (lambda code: "nowhere_xyz:main",
     ("cannot import module 'nowhere_xyz' from {folder} or the environment (ModuleNotFoundError: No module named "
      "'nowhere_xyz'); put nowhere_xyz.py beside the grid file or install it")),
    (lambda code: f"{code}:mian", "{code} has no function 'mian'; did you mean main?"),
    (lambda code: f"{code}:zzzzzz", "{code} has no function 'zzzzzz'; its functions: main, open_main, typed_dict, three"),
    (lambda code: f"{code}:NOT_A_FUNCTION", "{code}:NOT_A_FUNCTION is int, neither a function main(config, run) nor"),
    (lambda code: f"{code}:three", "{code}:three takes (config, run, extra); an entry function takes (config, run)"),
    (lambda code: code, "expected module:function, got '{code}'"),
    (lambda code: 3, "expected module:function or a mapping with a command, got 3"),
])
def test_an_entry_that_cannot_be_used_is_refused_naming_the_problem_and_the_fix(tmp_path, code, make_entry, needle):
    entry = make_entry(code)
    err = refused(tmp_path, f"name: t\nentry: {entry}\n")
    assert err.key == "entry" and "(line 2)" in err.problem
    assert needle.format(code=code, folder=tmp_path.resolve()) in err.problem


@pytest.mark.parametrize("body, needle", [
    ("import not_installed_xyz\n", ("importing {m} raised ModuleNotFoundError: No module named 'not_installed_xyz' "
                                    "({m}.py line 1); install it")),
    ("x = 1\nraise RuntimeError('boom')\n", "importing {m} raised RuntimeError: boom ({m}.py line 2); fix the module"),
    ("def main(config, run)\n", "importing {m} raised SyntaxError: expected ':' ({m}.py line 1); fix the module"),
    ("import sys\nsys.exit(2)\n", "importing {m} exited (SystemExit: 2): does it run a script at import"),
])
def test_a_module_that_fails_at_import_is_refused_with_where(tmp_path, body, needle):
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body)
    err = refused(tmp_path, f"name: t\nentry: {name}:main\n")
    assert err.key == "entry" and needle.format(m=name) in err.problem


# ---------------------------------------------------------------- a dataclass as the schema


def test_a_dataclass_is_the_schema_and_the_code_gets_an_instance(tmp_path, code):
    spec = grid(tmp_path, f"""
        name: t
        entry: {code}:main
        base: {{epochs: 3, optim: {{momentum: 0.9}}}}
        grid: {{width: [64, 128], optim.lr: [0.1, 1e-3]}}
        seeds: [0, 1]
    """)
    entry = spec.entry
    assert list(entry.fields) == ["epochs", "width", "act", "optim.lr", "optim.momentum", "widths", "note"]
    assert [r.name for r in spec.runs[:2]] == ["width64-lr0.1-s0", "width64-lr0.001-s0"]
    run = spec.runs[5]  # seed 1, width 64, lr 0.001
    assert entry.params(run.config) == {"epochs": 3, "width": 64, "act": "relu", "optim.lr": 0.001,
                                        "optim.momentum": 0.9, "widths": [16, 32], "note": None, "seed": 1}
    config = entry.user_config(run.config)
    assert type(config).__name__ == "Config" and type(config.optim).__name__ == "Optim"
    assert (config.epochs, config.optim.lr, config.widths, config.seed) == (3, 0.001, (16, 32), 1)
    # the point process rebuilds the same config from the params
    assert entry.run_key(entry.build(entry.params(run.config))) == run.run_key


@pytest.mark.parametrize("text, key, needle", [
    ("base: {epochs: 3, widht: 8}", "base.widht", "unknown key 'widht'; did you mean width? valid keys: epochs, width"),
    ("base: {epochs: 3}\ngrid: {width: [8, large]}", "grid.width", "expected an integer, got 'large'"),
    ("base: {epochs: 3, act: tanh}", "base.act", "expected one of 'relu', 'gelu', got 'tanh'"),
    ("base: {epochs: 3, optim: 0.1}", "base.optim", "optim is a section; give a mapping of its keys"),
    ("base: {epochs: 3}\ngrid: {widths: [8, 16]}", "grid.widths", "takes a list per run, so its axis is a list of lists"),
    ("grid: {width: [8, 16]}", "base.epochs", "epochs: missing: Config requires it"),
    ("base: {epochs: 3, seed: 1}", "base.seed", "the seed is not set here; list seeds at the top level"),
])
def test_the_grid_is_checked_against_the_dataclass(tmp_path, code, text, key, needle):
    err = refused(tmp_path, f"name: t\nentry: {code}:main\n{text}\n")
    assert err.key == key and needle in str(err), str(err)


def test_dataclass_values_are_normalised_to_their_types(tmp_path, code):
    spec = grid(tmp_path, f"name: t\nentry: {code}:main\nbase: {{epochs: 2.0, optim.lr: 1, widths: [1, 2, 3], "
                          "note: hi}\n")
    params = spec.entry.params(spec.runs[0].config)
    assert (params["epochs"], params["optim.lr"], params["widths"], params["note"]) == (2, 1.0, [1, 2, 3], "hi")
    assert type(params["optim.lr"]) is float


# ---------------------------------------------------------------- an open config


def test_an_open_config_takes_any_key_as_given_and_the_code_sees_the_yaml_nesting(tmp_path, code):
    spec = grid(tmp_path, f"""
        name: t
        entry: {code}:open_main
        base: {{epochs: 3, optim: {{momentum: 0.9, lr: 1e-3}}, tags: [a, b], flag: true, none: null}}
        grid: {{width: [64, 128]}}
        include: [{{other: x}}]
    """)
    entry = spec.entry
    assert [r.name for r in spec.runs] == ["width64-s0", "width128-s0", "otherx-s0"]
    config = entry.user_config(spec.runs[0].config)
    assert config == {"epochs": 3, "optim": {"momentum": 0.9, "lr": 0.001}, "tags": ["a", "b"], "flag": True,
                      "none": None, "width": 64}
    assert "seed" not in config and entry.params(spec.runs[0].config)["seed"] == 0
    assert spec.runs[2].point == {"other": "x", "seed": 0}  # no width: nobody gave it to the include entry
    annotated = grid(tmp_path, f"name: t\nentry: {code}:typed_dict\nbase: {{anything: 1}}\n")
    assert annotated.entry.fields is None


@pytest.mark.parametrize("text, key, needle", [
    ("base: {optim: 1, optim.lr: 2}", "base.optim.lr", "optim is given a value and also has keys below it"),
    ("base: {day: 2024-01-01}", "base.day", "expected a number, a string, true/false, null or a list of them"),
    ("base: {optim: {lr: 1}, optim.lr: 2}", "base.optim.lr", "optim.lr is given twice (nested and dotted)"),
])
def test_an_open_config_refuses_what_cannot_nest_or_be_a_param(tmp_path, code, text, key, needle):
    err = refused(tmp_path, f"name: t\nentry: {code}:open_main\n{text}\n")
    assert err.key == key and needle in err.problem, str(err)


# ---------------------------------------------------------------- run keys and specs


def test_run_keys_are_stable_and_distinct_across_entries_settings_and_seeds(tmp_path, code):
    one = resolve_entry(f"{code}:open_main", folder=str(tmp_path))
    again = resolve_entry(f"{code}:open_main", folder=str(tmp_path))
    other = resolve_entry(f"{code}:typed_dict", folder=str(tmp_path))
    command = resolve_entry({"command": "python t.py"}, folder=str(tmp_path))
    values = {"lr": 0.1, "optim.momentum": 0.9}
    key = one.run_key(one.build(values))
    assert key == again.run_key(again.build(dict(reversed(values.items()))))  # key order aside
    assert len(key) == 16 and int(key, 16) >= 0
    assert len({key, other.run_key(other.build(values)), command.run_key(command.build(values)),
                one.run_key(one.seeded(one.build(values), 1)), one.run_key(one.build({**values, "lr": 0.2}))}) == 5


def test_the_spec_is_json_and_rebuilds_the_same_entry(tmp_path, code):
    for entry in (resolve_entry(f"{code}:main", folder=str(tmp_path), checkpoint_seconds=0),
                  resolve_entry({"command": f"{PYTHON} t.py {{lr}}", "overrides": "argparse"}, folder=str(tmp_path))):
        again = resolve_entry(**json.loads(json.dumps(entry.spec)))
        config = entry.build({"epochs": 2, "lr": 0.5} if isinstance(entry, CommandEntry) else {"epochs": 2})
        assert (again.name, again.spec, type(again)) == (entry.name, entry.spec, type(entry))
        assert again.run_key(again.build(entry.params(config))) == entry.run_key(config)
        assert again.checkpoint_seconds(config) == entry.checkpoint_seconds(config)


# ---------------------------------------------------------------- checkpoint_seconds


def test_checkpoint_seconds_is_a_top_level_key_of_the_users_code(tmp_path, code):
    spec = grid(tmp_path, f"name: t\nentry: {code}:open_main\ncheckpoint_seconds: 0\n")
    assert spec.entry.checkpoint_seconds(spec.runs[0].config) == 0.0
    spec = grid(tmp_path, f"name: t\nentry: {code}:open_main\n")
    assert spec.entry.checkpoint_seconds(spec.runs[0].config) == 60.0
    for bad in ("-1", "soon", "true", ".nan"):
        err = refused(tmp_path, f"name: t\nentry: {code}:open_main\ncheckpoint_seconds: {bad}\n")
        assert err.key == "checkpoint_seconds" and "expected a number of seconds, 0 or more" in err.problem
    err = refused(tmp_path, "name: t\ncheckpoint_seconds: 5\n")  # the built-in study has its own key
    assert err.key == "checkpoint_seconds"
    assert "does not read a top-level checkpoint_seconds; give train.checkpoint_seconds under base" in err.problem


# ---------------------------------------------------------------- orch tune


def test_tune_needs_a_metric_and_a_space_and_takes_any_metric(tmp_path, code):
    head = f"name: t\nentry: {code}:open_main\nbase: {{lr: 0.1, depth: 2}}\n"
    with pytest.raises(ConfigError) as info:
        tune_spec(grid(tmp_path, head))
    assert info.value.key == "tune.metric" and "has no default objective" in info.value.problem
    with pytest.raises(ConfigError) as info:
        tune_spec(grid(tmp_path, head + "tune: {metric: val_acc}\n"))
    assert info.value.key == "tune.space" and "has no default search space" in info.value.problem
    tune = tune_spec(grid(tmp_path, head + "tune: {metric: my_metric, space: {lr: {type: float, low: 0.01, high: 1}, "
                                           "depth: {type: int, low: 1, high: 4}}}\n"))
    assert tune.metric == "my_metric" and [(p.key, p.type, p.low) for p in tune.space] == [("lr", "float", 0.01),
                                                                                          ("depth", "int", 1)]
    err = refused(tmp_path, head + "tune: {metric: m, space: {depth: {type: int, low: 1.5, high: 4}}}\n")
    assert err.key == "tune.space.depth.low" and "expected an integer, got 1.5" in err.problem


# ---------------------------------------------------------------- a command line


def command(tmp_path: Path, text: str, **kw) -> CommandEntry:
    return resolve_entry(dict(command=text, **kw), folder=str(tmp_path))


def test_the_command_template_is_filled_per_word_and_overrides_are_appended(tmp_path):
    entry = command(tmp_path, "python train.py --lr={lr:.0e} --opt {optim.lr} --seed {seed} 'a b' {{x}}")
    config = entry.seeded(entry.build({"lr": 0.001, "optim.lr": 0.5, "flag": True, "widths": [16, 32], "x": None}), 7)
    assert entry.argv(config) == ["python", "train.py", "--lr=1e-03", "--opt", "0.5", "--seed", "7", "a b", "{x}"]
    hydra = command(tmp_path, "python train.py", overrides="hydra")
    assert hydra.argv(config)[2:] == ["lr=0.001", "optim.lr=0.5", "flag=true", "widths=[16,32]", "x=null"]
    argparse = command(tmp_path, "python train.py", overrides="argparse")
    assert argparse.argv(config)[2:] == ["--lr", "0.001", "--optim.lr", "0.5", "--flag", "true", "--widths", "16",
                                        "32", "--x", "null"]
    assert hydra.argv(hydra.build({"name": "a b"}))[2:] == ["name='a b'"]


@pytest.mark.parametrize("entry, key, needle", [
    ('{command: "python t.py --lr {lr} --wd {wd}"}', "entry",
     "the command's placeholder {wd} names no config key; the keys: lr, seed; add wd to base, or fix the placeholder"),
    ('{command: "python t.py --lr {lrr}"}', "entry", "placeholder {lrr} names no config key; did you mean {lr}?"),
    ('{command: "pyhton-xyz t.py"}', "entry", "the command's program 'pyhton-xyz' is not found on PATH"),
    ('{command: "./missing.sh"}', "entry", "the command's program ./missing.sh is not found (looked for"),
    ('{command: "python t.py", overrides: fire}', "entry", "overrides: expected hydra (key=value) or argparse"),
    ('{comand: "python t.py"}', "entry", "unknown key 'comand' in the entry mapping; did you mean command?"),
    ('{command: "python \'t.py"}', "entry", "cannot split the command into words (No closing quotation)"),
    ('{command: "{lr} t.py"}', "entry", "the command's program '{lr}' holds a placeholder"),
    ('{command: "python t.py {}"}', "entry", "has a placeholder without a key"),
    ('{command: "python t.py {lr:d}"}', "entry", "the placeholder {lr:d} cannot format 0.1"),
    ('{command: ""}', "entry", "expected a command line as command, got ''"),
])
def test_a_bad_command_is_refused_when_the_grid_is_read(tmp_path, entry, key, needle):
    err = refused(tmp_path, f"name: t\nentry: {entry}\nbase: {{lr: 0.1}}\n")
    assert err.key == key and needle in err.problem, str(err)


def test_a_program_is_found_on_path_or_relative_to_the_grid_folder(tmp_path):
    script = tmp_path / "bin" / "train.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\nexit 0\n")
    err = refused(tmp_path, 'name: t\nentry: {command: "bin/train.sh"}\n')
    assert "bin/train.sh is not executable; chmod +x it, or start it through its interpreter" in err.problem
    script.chmod(0o755)
    assert grid(tmp_path, 'name: t\nentry: {command: "bin/train.sh --lr {lr}"}\nbase: {lr: 1}\n').entry.program == \
        "bin/train.sh"
    assert grid(tmp_path, f'name: t\nentry: {{command: "{PYTHON} -c pass"}}\n').runs[0].name == "s0"


def test_a_function_entry_returns_summary_metrics_and_refuses_anything_else(tmp_path, code):
    entry = resolve_entry(f"{code}:main", folder=str(tmp_path))
    config = entry.build({"epochs": 1, "width": 10})
    run = Run(entry.user_config(config), 0, tmp_path)  # the stand-in: records nothing
    assert entry.train(config, run) == {"score": 1.0}
    bad = FunctionEntry("x:bad", lambda config, run: 0.5, str(tmp_path), 60)
    with pytest.raises(TypeError, match="x:bad returned float 0.5; return a dict of summary metrics"):
        bad.train(config, run)
    worse = FunctionEntry("x:worse", lambda config, run: {"acc": "high"}, str(tmp_path), 60)
    with pytest.raises(TypeError, match="x:worse returned 'acc': 'high', not a number"):
        worse.train(config, run)
