"""Grid files → SweepSpec: expansion, names, ids, overrides and validation errors."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, TESTS
from experiments.config import ConfigError, build, check, run_key
from orchestrator.grid.load import SweepSpec, load_grid
from orchestrator.grid.names import describe_point, run_name
from experiments.study import DEFAULT_SPACE
from orchestrator.grid.load import tune_spec
from orchestrator.grid.space import ParamSpace

ROOT = REPO
GRIDS = ROOT / "experiments" / "grids"
BAD = TESTS / "grids" / "bad"
NORMS = ["bn_torch", "bn", "in", "bin", "ln", "gn", "nn"]


def write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def grid(tmp_path: Path, text: str, overrides: tuple[str, ...] = (), **kw) -> SweepSpec:
    return load_grid(write(tmp_path, text), overrides, **kw)


def refused(tmp_path: Path, text: str) -> ConfigError:
    """The error a grid of ``text`` is refused with."""
    with pytest.raises(ConfigError) as info:
        grid(tmp_path, text)
    return info.value


def settings(spec: SweepSpec) -> tuple[str, ...]:
    """Distinct settings (points without seed) in expansion order."""
    return tuple(dict.fromkeys(r.setting for r in spec.runs))


# ---------------------------------------------------------------- expansion


def test_demo_grid_expands_to_eighteen_runs_seed_major_in_file_order():
    spec = load_grid(GRIDS / "demo.yaml")
    assert spec.name == "demo"
    assert spec.axes == ("model.norm", "data.batch_size")
    assert spec.seeds == (0, 1, 2)
    assert [r.index for r in spec.runs] == list(range(18))
    # seed slowest, then the first axis, the second fastest
    assert [(r.config.seed, r.point["model.norm"], r.point["data.batch_size"]) for r in spec.runs] == [
        (s, n, b) for s in (0, 1, 2) for n in ("bn_torch", "gn", "nn") for b in (8, 128)
    ]
    assert spec.runs[0].name == "bn_torch-bs8-s0"
    assert spec.runs[11].name == "nn-bs128-s1"
    for r in spec.runs:
        assert r.config.data.name == "digits"
        assert (r.config.train.max_epochs, r.config.train.patience) == (4, 3)
        assert r.config.model.widths == (16, 32, 64)
        assert r.run_key == run_key(r.config)
    assert len({r.run_key for r in spec.runs}) == 18
    assert len({r.name for r in spec.runs}) == 18


def test_runs_are_seed_major(tmp_path):
    spec = grid(tmp_path, """
        name: t
        grid:
          model.norm: [bn, gn]
          data.batch_size: [8, 128]
        seeds: [0, 1, 2]
    """)
    assert len(spec.runs) == 12
    assert [r.name for r in spec.runs[:5]] == ["bn-bs8-s0", "bn-bs128-s0", "gn-bs8-s0", "gn-bs128-s0", "bn-bs8-s1"]
    assert [r.config.seed for r in spec.runs] == [0] * 4 + [1] * 4 + [2] * 4
    assert settings(spec) == (
        "model.norm=bn,data.batch_size=8",
        "model.norm=bn,data.batch_size=128",
        "model.norm=gn,data.batch_size=8",
        "model.norm=gn,data.batch_size=128",
    )


def test_point_labels_and_settings():
    spec = load_grid(GRIDS / "demo.yaml")
    run = next(r for r in spec.runs if r.name == "gn-bs8-s0")
    assert run.point == {"model.norm": "gn", "data.batch_size": 8, "seed": 0}
    assert run.setting == "model.norm=gn,data.batch_size=8"
    assert run.point_label == "model.norm=gn,data.batch_size=8,seed=0"
    assert describe_point(run.point) == run.point_label


def test_seeds_only_grid(tmp_path):
    spec = grid(tmp_path, """
        name: repeats
        base: {model.norm: gn}
        seeds: [3, 1]
    """)
    assert spec.axes == ()
    assert [r.name for r in spec.runs] == ["s3", "s1"]
    assert [r.setting for r in spec.runs] == ["", ""]
    assert [r.point_label for r in spec.runs] == ["seed=3", "seed=1"]
    assert spec.runs[0].config.model.norm == "gn"


def test_default_seed_and_nested_or_dotted_sections(tmp_path):
    spec = grid(tmp_path, """
        name: t
        base:
          data: {name: digits, batch_size: 32}
          optim.lr: 0.05
        grid:
          model: {norm: [bn, gn]}
    """)
    assert spec.seeds == (0,)
    assert spec.axes == ("model.norm",)
    assert spec.runs[1].config.data.batch_size == 32
    assert spec.runs[1].config.optim.lr == 0.05
    assert spec.runs[1].name == "gn-s0"


def test_include_and_exclude(tmp_path):
    spec = grid(tmp_path, """
        name: t
        grid:
          model.norm: [bn, gn, nn]
          data.batch_size: [8, 128]
        seeds: [0, 1]
        exclude:
          - {model.norm: nn, data.batch_size: 8}
          - {model.norm: gn, data.batch_size: 128}
        include:
          - {model.norm: gn, model.gn_groups: 8}
          - {model.norm: ln, data.batch_size: 8}
    """)
    assert spec.axes == ("model.norm", "data.batch_size", "model.gn_groups")
    names = [r.name for r in spec.runs]
    assert names[:6] == ["bn-bs8-s0", "bn-bs128-s0", "gn-bs8-s0", "nn-bs128-s0", "gn-bs128-gn_groups8-s0", "ln-bs8-s0"]
    assert len(spec.runs) == 12 and names[6] == "bn-bs8-s1"
    inc = spec.runs[4]
    # an include entry sits on base: unset axes take their base/default values
    assert inc.point == {"model.norm": "gn", "data.batch_size": 128, "model.gn_groups": 8, "seed": 0}
    assert inc.config.model.gn_groups == 8
    assert inc.point_label == "model.norm=gn,data.batch_size=128,model.gn_groups=8,seed=0"
    # grid points do not carry keys that only include entries set
    assert "model.gn_groups" not in spec.runs[0].point
    assert spec.runs[0].config.model.gn_groups == 16


def test_an_include_entry_takes_an_axis_it_leaves_unset_from_base_with_its_type(tmp_path):
    spec = grid(tmp_path, """
        name: t
        grid: {model.widths: [[16, 32, 64], [32, 64, 128]]}
        include: [{model.norm: gn}]
    """)
    assert spec.runs[2].point == {"model.widths": (16, 32, 64), "model.norm": "gn", "seed": 0}
    assert spec.runs[2].name == "widths16x32x64-gn-s0"


def test_include_only_grid(tmp_path):
    spec = grid(tmp_path, """
        name: t
        include:
          - {model.norm: bn}
          - {model.norm: gn, data.batch_size: 8}
    """)
    assert spec.axes == ("model.norm", "data.batch_size")
    assert [r.name for r in spec.runs] == ["bn-s0", "gn-bs8-s0"]


def test_run_names():
    assert run_name({"model.norm": "gn", "data.batch_size": 8, "seed": 0}) == "gn-bs8-s0"
    assert run_name({"optim.lr": 0.05, "schedule.gamma": 0.2, "schedule.step_size": 5, "seed": 1}) == (
        "lr0.05-gamma0.2-step5-s1"
    )
    assert run_name({"model.depth_n": 3, "data.name": "digits", "seed": 2}) == "n3-digits-s2"
    assert run_name({"data.augment": True, "train.compile": False, "seed": 0}) == "augment-no-compile-s0"
    assert run_name({"optim.momentum": 0.9, "model.widths": (8, 16, 32), "seed": 0}) == "momentum0.9-widths8x16x32-s0"
    assert run_name({"seed": 0}) == "s0"


def test_colliding_names_get_their_index(tmp_path):
    spec = grid(tmp_path, """
        name: t
        grid:
          data.root: [a/x, a_x]
    """)
    assert [r.name for r in spec.runs] == ["roota_x-s0-0", "roota_x-s0-1"]


def test_scientific_notation_is_a_number(tmp_path):
    spec = grid(tmp_path, """
        name: t
        grid:
          optim.lr: [1e-3, 0.1]
    """)
    assert [r.config.optim.lr for r in spec.runs] == [0.001, 0.1]
    assert spec.runs[0].name == "lr0.001-s0"


# ---------------------------------------------------------------- ids


SAME_A = """
name: ids
base:
  data: {name: digits, batch_size: 64}
  optim: {lr: 0.05}
grid:
  model.norm: [bn, gn]
seeds: [0, 1]
"""

# The same content: other key order, flow vs block style, dotted vs nested, comments.
SAME_B = """
# a comment
seeds: [0,
        1]
grid: {model.norm: [bn, gn]}
base:
  optim.lr: 5.0e-2
  data.batch_size: 64
  data:
    name: digits
name: "ids"
"""


def test_sweep_id_ignores_formatting_and_key_order(tmp_path):
    a = load_grid(write(tmp_path, SAME_A, "a.yaml"))
    b = load_grid(write(tmp_path, SAME_B, "b.yaml"))
    assert len(a.sweep_id) == 12 and int(a.sweep_id, 16) >= 0
    assert a.sweep_id == b.sweep_id
    assert [r.run_key for r in a.runs] == [r.run_key for r in b.runs]


def test_sweep_id_changes_with_a_value_or_the_name(tmp_path):
    a = load_grid(write(tmp_path, SAME_A, "a.yaml"))
    c = load_grid(write(tmp_path, SAME_A.replace("lr: 0.05", "lr: 0.06"), "c.yaml"))
    d = load_grid(write(tmp_path, SAME_A.replace("name: ids", "name: ids2"), "d.yaml"))
    e = load_grid(write(tmp_path, SAME_A.replace("seeds: [0, 1]", "seeds: [0, 2]"), "e.yaml"))
    assert len({a.sweep_id, c.sweep_id, d.sweep_id, e.sweep_id}) == 4


def test_run_key_is_the_resolved_config(tmp_path):
    explicit = grid(tmp_path, """
        name: t
        base: {optim: {lr: 0.1}, schedule: {step_size: 5, gamma: 0.2}, model: {widths: [16, 32, 64]}}
        grid: {model.norm: [gn]}
    """)
    defaults = grid(tmp_path, """
        name: other
        include: [{model.norm: gn}]
    """)
    assert explicit.runs[0].run_key == defaults.runs[0].run_key
    assert explicit.runs[0].run_key == run_key(build({"model.norm": "gn"}))


# ---------------------------------------------------------------- overrides


def test_override_replaces_an_axis():
    spec = load_grid(GRIDS / "demo.yaml", ["model.norm=gn"])
    assert [r.name for r in spec.runs] == [f"gn-bs{b}-s{s}" for s in (0, 1, 2) for b in (8, 128)]
    assert spec.axes == ("model.norm", "data.batch_size")
    assert spec.sweep_id != load_grid(GRIDS / "demo.yaml").sweep_id


def test_override_sets_base_and_seed():
    spec = load_grid(GRIDS / "demo.yaml", ["optim.lr=0.05", "train.max_epochs=2", "seed=4"])
    assert len(spec.runs) == 6
    assert {(r.config.optim.lr, r.config.train.max_epochs, r.config.seed) for r in spec.runs} == {(0.05, 2, 4)}
    assert spec.runs[0].name == "bn_torch-bs8-s4"


def test_override_drops_include_entries_that_disagree(tmp_path):
    path = write(tmp_path, """
        name: t
        grid: {data.batch_size: [8]}
        include:
          - {model.norm: gn, model.gn_groups: 8}
          - {model.norm: ln}
    """)
    spec = load_grid(path, ["model.norm=ln"])
    assert [r.name for r in spec.runs] == ["bs8-s0", "bs128-ln-s0"]
    assert spec.runs[0].config.model.norm == "ln"


def test_errors_name_the_include_entry_as_written_after_overrides_drop_some(tmp_path):
    path = write(tmp_path, """
        name: t
        grid: {data.batch_size: [8]}
        include:
          - {model.norm: gn}
          - {model.norm: ln, optim.lr: -1.0}
    """)
    with pytest.raises(ConfigError) as info:
        load_grid(path, ["model.norm=ln"])
    assert info.value.key == "include[1].optim.lr"


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("model.nrom=gn", "--set model.nrom", "unknown key"),
        ("data.batch_size=big", "--set data.batch_size", "expected an integer"),
        ("optim.lr=0", "--set optim.lr", "greater than 0"),
        ("model.norm=xx", "--set model.norm", "unknown norm"),
        ("seed=-1", "--set seed", "seed -1 is negative"),
        ("lr", "--set", "key=value"),
    ],
)
def test_bad_override(override, key, message):
    with pytest.raises(ConfigError) as info:
        load_grid(GRIDS / "demo.yaml", [override])
    assert info.value.key == key
    assert message in info.value.problem


# ---------------------------------------------------------------- shipped grids


def test_seed_grids_load_without_data():
    norms = load_grid(GRIDS / "seed_norms.yaml", check_data=False)
    assert norms.name == "seed-norms" and norms.seeds == (0, 1, 2)
    assert len(norms.runs) == 21
    assert {r.point["model.norm"] for r in norms.runs} == set(NORMS)
    cfg = norms.runs[0].config
    assert (cfg.data.name, cfg.data.root, cfg.data.val_size, cfg.data.batch_size) == (
        "imagefolder", "~/data/cifar10", 10000, 128,
    )
    assert (cfg.optim.lr, cfg.schedule.step_size, cfg.schedule.gamma) == (0.1, 5, 0.2)
    assert (cfg.train.max_epochs, cfg.train.patience) == (50, 5)

    batch = load_grid(GRIDS / "seed_batch.yaml", check_data=False)
    assert batch.name == "seed-batch" and len(batch.runs) == 18
    assert settings(batch) == (
        "model.norm=bn_torch,data.batch_size=8",
        "model.norm=bn_torch,data.batch_size=128",
        "model.norm=bn,data.batch_size=8",
        "model.norm=bn,data.batch_size=128",
        "model.norm=gn,data.batch_size=8",
        "model.norm=gn,data.batch_size=128",
    )
    assert batch.runs[0].config.schedule == cfg.schedule


def test_seed_grids_check_the_data_root(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_grid(GRIDS / "seed_norms.yaml", [f"data.root={tmp_path / 'nowhere'}"])
    assert info.value.key == "--set data.root"
    (tmp_path / "cifar10" / "train").mkdir(parents=True)
    spec = load_grid(GRIDS / "seed_norms.yaml", [f"data.root={tmp_path / 'cifar10'}"])
    assert len(spec.runs) == 21


def test_tune_grid():
    spec = load_grid(GRIDS / "tune.yaml")
    assert spec.name == "tune-demo" and len(spec.runs) == 1
    assert spec.runs[0].config.train.max_epochs == 6
    tune = spec.tune
    assert (tune.metric, tune.direction, tune.n_trials) == ("val_f1_macro", "maximize", 8)
    assert tune.space == (
        ParamSpace("schedule.step_size", "int", 1, 6, False, None, None),
        ParamSpace("schedule.gamma", "float", 0.05, 0.9, True, None, None),
    )


def test_tune_defaults_and_suggest(tmp_path):
    spec = grid(tmp_path, """
        name: t
        tune:
          space:
            model.norm: {type: categorical, choices: [bn, gn]}
            optim.lr: {type: float, low: 0.01, high: 0.5, step: 0.01}
    """)
    assert spec.tune.metric == "val_f1_macro" and spec.tune.direction == "maximize"
    assert spec.tune.n_trials is None
    norm, lr = spec.tune.space
    assert norm.choices == ("bn", "gn")

    class Trial:
        def suggest_categorical(self, name, choices):
            return (name, choices)

        def suggest_float(self, name, low, high, *, step=None, log=False):
            return (name, low, high, step, log)

    assert norm.suggest(Trial()) == ("model.norm", ["bn", "gn"])
    assert lr.suggest(Trial()) == ("optim.lr", 0.01, 0.5, 0.01, False)

    default = grid(tmp_path, "name: t\ntune: {}\n").tune
    assert [p.key for p in default.space] == list(DEFAULT_SPACE)
    assert grid(tmp_path, "name: t\n").tune is None


@pytest.mark.parametrize("max_epochs, low, high", [(50, 2, 30), (6, 2, 5), (3, 1, 2), (2, 1, 2),
                                                   ("[4, 9]", 2, 3)])
def test_default_step_size_range_ends_below_max_epochs(tmp_path, max_epochs, low, high):
    """A StepLR step size of max_epochs or more never decays: the default range ends below the
    shortest setting's max_epochs (with or without a tune section)."""
    axis = f"grid: {{train.max_epochs: {max_epochs}}}\n" if isinstance(max_epochs, str) else ""
    base = "" if axis else f"base: {{train: {{max_epochs: {max_epochs}}}}}\n"
    text = f"name: t\n{base}{axis}"
    for spec in (grid(tmp_path, text + "tune: {}\n").tune, tune_spec(grid(tmp_path, text))):
        (step,) = [p for p in spec.space if p.key == "schedule.step_size"]
        assert (step.low, step.high) == (low, high)


def test_default_space_leaves_out_grid_axes_with_or_without_a_tune_section(tmp_path):
    text = "name: t\ngrid: {schedule.gamma: [0.1, 0.2]}\n"
    with_section = grid(tmp_path, text + "tune: {n_trials: 3}\n").tune
    without = tune_spec(grid(tmp_path, text))
    assert [p.key for p in with_section.space] == [p.key for p in without.space] == ["schedule.step_size"]
    assert with_section.space == without.space
    assert (without.metric, without.direction, without.n_trials) == ("val_f1_macro", "maximize", None)


def test_default_space_of_grid_axes_only_is_refused_with_or_without_a_tune_section(tmp_path):
    text = "name: t\ngrid: {schedule.gamma: [0.1], schedule.step_size: [3]}\n"
    with pytest.raises(ConfigError) as written:
        grid(tmp_path, text + "tune: {}\n")
    spec = grid(tmp_path, text)  # a sweep of this grid needs no search space
    with pytest.raises(ConfigError) as default:
        tune_spec(spec)
    for err in (written.value, default.value):
        assert err.key == "tune"
        assert "every key of the default search space" in err.problem and "tune.space" in err.problem


def test_default_space_bounds_are_checked_against_every_setting_like_a_written_space(tmp_path, monkeypatch):
    # 3 groups do not divide the 16 channels of the first stage: wrong for gn, fine for bn.
    bad = {"type": "int", "low": 3, "high": 16}
    text = "name: t\ngrid: {model.norm: [bn, gn]}\n"
    with pytest.raises(ConfigError) as written:
        grid(tmp_path, text + "tune: {space: {model.gn_groups: {type: int, low: 3, high: 16}}}\n")
    monkeypatch.setitem(DEFAULT_SPACE, "model.gn_groups", bad)
    with pytest.raises(ConfigError) as section:
        grid(tmp_path, text + "tune: {}\n")
    spec = grid(tmp_path, text)
    with pytest.raises(ConfigError) as default:
        tune_spec(spec)
    errors = [written.value, section.value, default.value]
    assert {e.key for e in errors} == {"tune.space.model.gn_groups.low"}
    problems = {e.problem.split(" (")[0] for e in errors}  # the same message, lines aside
    assert len(problems) == 1 and "cannot be split into 3 groups" in problems.pop()
    assert all("with model.gn_groups=3" in e.problem for e in errors)


def test_tune_seeds_default_to_the_first_seed_and_set_seed_pins_them(tmp_path):
    text = "name: t\nseeds: [4, 5]\n"
    assert grid(tmp_path, text + "tune: {}\n").tune.seeds is None  # resolved by tune_spec
    assert tune_spec(grid(tmp_path, text)).seeds == (4,)
    assert tune_spec(grid(tmp_path, text + "tune: {}\n")).seeds == (4,)
    written = text + "tune: {seeds: [0, 1, 2]}\n"
    assert grid(tmp_path, written).tune.seeds == tune_spec(grid(tmp_path, written)).seeds == (0, 1, 2)
    assert tune_spec(grid(tmp_path, written, ("seed=7",))).seeds == (7,)
    assert grid(tmp_path, written).seeds == (4, 5)  # a sweep keeps its own seeds


@pytest.mark.parametrize("seeds, message", [
    ("3", "expected a list of seeds, got the single number 3; use a list, e.g. seeds: [0, 1, 2]"),
    ("[]", "the list is empty; give at least one seed, e.g. seeds: [0, 1, 2], or omit tune.seeds for the "
           "grid's first seed"),
    ("[0, 1, 0]", "seed 0 appears twice"),
    ("[-1]", "seed -1 is negative"),
    ("[4294967296]", "use seeds below 2**32"),
    ("[0.5]", "seed 0.5 is not an integer"),
])
def test_tune_seeds_are_checked_like_the_grid_seeds(tmp_path, seeds, message):
    err = refused(tmp_path, f"name: t\ntune:\n  n_trials: 2\n  seeds: {seeds}\n")
    assert err.key == "tune.seeds"
    assert message in err.problem and "(line 4)" in err.problem


def test_tune_spec_refuses_a_metric_that_is_not_a_summary_metric(tmp_path):
    spec = grid(tmp_path, "name: t\ntune: {metric: val_f1}\n")  # a sweep ignores tune
    with pytest.raises(ConfigError) as info:
        tune_spec(spec)
    assert info.value.key == "tune.metric" and "val_f1_macro" in info.value.problem


# ---------------------------------------------------------------- imports


@pytest.mark.integration  # a fresh interpreter
def test_grid_loading_and_a_dry_run_without_a_store_import_neither_torch_nor_mlflow(tmp_path):
    """The built-in entry is resolved with the grid: its config, names and checks import no torch,
    and ``orch sweep --dry-run`` on a grid whose store does not exist yet reads no store (nor
    draws with rich: its summary, JSON and CSV are plain text)."""
    code = textwrap.dedent(f"""
        import sys
        from click.testing import CliRunner
        from orchestrator.grid.load import load_grid
        from orchestrator.grid.load import tune_spec
        spec = load_grid({str(GRIDS / 'demo.yaml')!r})
        assert len(spec.runs) == 18 and tune_spec(spec).space
        heavy = [m for m in ("torch", "mlflow", "optuna") if m in sys.modules]
        assert not heavy, ("load_grid", heavy)
        from orchestrator.cli.main import cli
        uri = "sqlite:///" + {str(tmp_path / 'none' / 'mlflow.db')!r}
        for fmt in ("table", "json", "csv"):
            result = CliRunner().invoke(cli, ["sweep", {str(GRIDS / 'demo.yaml')!r}, "--dry-run", "--format", fmt,
                                              "--tracking-uri", uri])
            assert result.exit_code == 0 and "gn-bs8-s0" in result.output, result.output
        heavy = [m for m in ("torch", "mlflow", "optuna", "rich") if m in sys.modules]
        assert not heavy, ("orch sweep --dry-run", heavy)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "none").exists()  # nothing was created


# ---------------------------------------------------------------- the entry seam

# A study the orchestrator has never heard of: flat keys, its own naming, check and default space.
TOY_ENTRY = '''
import dataclasses
from experiments.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Config:
    lr: float = 0.1
    width: int = 63
    act: str = "relu"
    seed: int = 0


class Toy:
    fields = {"seed": int, "lr": float, "width": int, "act": str}
    related_keys = {"width": ("act",)}
    name_prefixes = {"act": ""}
    headline_keys = ("act",)
    summary_metrics = ("acc", "loss")
    default_metric = "acc"

    def coerce(self, key, value):
        tp = self.fields[key]
        value = float(value) if tp is float and isinstance(value, int) and not isinstance(value, bool) else value
        if type(value) is not tp:
            raise ConfigError(f"expected {tp.__name__}, got {value!r}", key=key)
        return value

    def build(self, values):
        return Config(**values)

    def check(self, config, check_paths):
        if config.act == "gelu" and config.width % 2:
            raise ConfigError(f"gelu needs an even width, got {config.width}", key="width")

    def params(self, config):
        return dataclasses.asdict(config)

    def seeded(self, config, seed):
        return dataclasses.replace(config, seed=seed)

    def run_key(self, config):
        return repr(config)

    def default_space(self, settings):
        return {"lr": {"type": "float", "low": 0.01, "high": 1.0, "log": True}}

    name, spec, folder, progress_keys = "toy_entry:TOY", {"entry": "toy_entry:TOY"}, None, ("acc",)

    def user_config(self, config):
        return config

    def checkpoint_seconds(self, config):
        return 60.0

    def train(self, config, run):
        return {"acc": 1.0, "loss": 0.0}


TOY = Toy()
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    (tmp_path / "toy_entry.py").write_text(TOY_ENTRY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "entry: toy_entry:TOY\n"


def test_a_grid_names_its_entry_and_the_orchestrator_reads_points_through_it(tmp_path, toy):
    spec = grid(tmp_path, toy + "name: toy\ngrid: {act: [relu, silu], width: [64, 128]}\nseeds: [0, 1]\n")
    assert [r.name for r in spec.runs[:3]] == ["relu-width64-s0", "relu-width128-s0", "silu-width64-s0"]
    assert spec.runs[4].point_label == "act=relu,width=64,seed=1"
    assert spec.runs[4].config.seed == 1 and spec.runs[4].run_key == repr(spec.runs[4].config)
    tune = tune_spec(spec)
    assert (tune.metric, [p.key for p in tune.space]) == ("acc", ["lr"])
    err = refused(tmp_path, toy + "name: toy\ngrid: {optim.lr: [0.1]}\n")  # its keys, not the built-in study's
    assert err.key == "grid.optim.lr" and "valid keys: seed, lr, width, act" in err.problem
    err = refused(tmp_path, toy + "name: toy\ngrid: {act: [relu, gelu]}\n")  # a check on width blames the act axis
    assert err.key == "grid.act" and "width: gelu needs an even width, got 63" in err.problem
    assert "at act=gelu" in err.problem


def test_the_built_in_study_is_the_entry_without_one(tmp_path):
    named = grid(tmp_path, "name: t\nentry: experiments.study:STUDY\ngrid: {model.norm: [bn, gn]}\n")
    default = grid(tmp_path, "name: t\ngrid: {model.norm: [bn, gn]}\n")
    assert named.sweep_id == default.sweep_id and named.entry is default.entry
    assert [r.run_key for r in named.runs] == [r.run_key for r in default.runs]


@pytest.mark.parametrize("entry, needle", [
    ("nowhere_at_all:main", "cannot import module 'nowhere_at_all' from "),
    ("experiments.study:NOPE", "experiments.study has no function 'NOPE'"),
    ("experiments.config:KEYS", "experiments.config:KEYS is tuple, neither a function main(config, run) nor an entry"),
    ("experiments", "expected module:function, got 'experiments'"),
])
def test_an_entry_that_cannot_be_loaded_is_refused_with_its_line(tmp_path, entry, needle):
    err = refused(tmp_path, f"name: t\nentry: {entry}\n")
    assert err.key == "entry" and needle in err.problem and "(line 2)" in err.problem


# ---------------------------------------------------------------- bad grids

# file → (expected key path, substring of the message). Key None: a file-level error.
BAD_GRIDS: dict[str, tuple[str | None, str]] = {
    "yaml_syntax.yaml": (None, "invalid YAML at line 4"),
    "top_not_mapping.yaml": (None, "mapping at the top level"),
    "empty_file.yaml": ("name", "missing"),
    "unknown_top_key.yaml": ("grids", "did you mean grid?"),
    "missing_name.yaml": ("name", "missing"),
    "empty_name.yaml": ("name", "empty"),
    "name_not_string.yaml": ("name", "expected a string"),
    "unknown_axis.yaml": ("grid.model.nrom", "did you mean model.norm?"),
    "unknown_base_key.yaml": ("base.optim.learning_rate", "valid keys"),
    "wrong_type_batch.yaml": ("grid.data.batch_size", "expected an integer, got 'large'"),
    "wrong_type_base.yaml": ("base.train.max_epochs", "expected an integer"),
    "axis_not_list.yaml": ("grid.model.norm", "write model.norm: [gn]"),
    "empty_axis.yaml": ("grid.data.batch_size", "empty"),
    "duplicate_axis_value.yaml": ("grid.model.norm", "bn appears twice"),
    "duplicate_yaml_key.yaml": ("grid.model.norm", "given twice (lines 3 and 5)"),
    "widths_axis_flat.yaml": ("grid.model.widths", "list of lists"),
    "section_not_mapping.yaml": ("base.data", "is a section"),
    "base_list_value.yaml": ("base.model.norm", "move the key under grid"),
    "seed_in_base.yaml": ("base.seed", "seeds: [0, 1, 2]"),
    "seed_axis.yaml": ("grid.seed", "seeds are not a grid axis"),
    "unknown_norm.yaml": ("grid.model.norm", "unknown norm 'batchnorm'"),
    "unknown_dataset.yaml": ("base.data.name", "unknown dataset 'mnist'"),
    "gn_groups_not_dividing.yaml": ("base.model.gn_groups", "cannot be split into 12 groups"),
    "gn_widths_axis.yaml": ("grid.model.widths", "12 channels cannot be split into 16 groups"),
    "negative_batch.yaml": ("grid.data.batch_size", "greater than 0, got -8"),
    "lr_zero.yaml": ("grid.optim.lr", "greater than 0"),
    "gamma_above_one.yaml": ("base.schedule.gamma", "above 1"),
    "missing_root.yaml": ("base.data.root", "no train/ folder"),
    "root_unset.yaml": ("base.data.root", "needs data.root"),
    "seeds_not_list.yaml": ("seeds", "use a list, e.g. seeds: [0, 1, 2]"),
    "seeds_duplicate.yaml": ("seeds", "seed 1 appears twice"),
    "seeds_negative.yaml": ("seeds", "negative"),
    "seeds_not_int.yaml": ("seeds", "not an integer"),
    "seeds_empty.yaml": ("seeds", "empty"),
    "duplicate_points.yaml": ("include[1]", "same run as grid point model.norm=gn,data.batch_size=8"),
    "include_not_list.yaml": ("include", "expected a list"),
    "include_unknown_key.yaml": ("include[1].model.groups", "did you mean model.gn_groups?"),
    "include_list_value.yaml": ("include[0].model.norm", "one entry per point"),
    "exclude_everything.yaml": ("exclude", "the grid is empty after exclude"),
    "exclude_unknown_key.yaml": ("exclude[0].model.gn_groups", "not a grid axis"),
    "exclude_value_not_in_axis.yaml": ("exclude[0].model.norm", "excludes nothing"),
    "tune_bad_direction.yaml": ("tune.direction", "maximize or minimize"),
    "tune_n_trials_zero.yaml": ("tune.n_trials", "positive integer"),
    "tune_unknown_key.yaml": ("tune.trials", "did you mean n_trials?"),
    "tune_low_ge_high.yaml": ("tune.space.schedule.gamma.low", "must be below high"),
    "tune_log_nonpositive.yaml": ("tune.space.schedule.gamma.low", "log-scale"),
    "tune_unknown_type.yaml": ("tune.space.schedule.gamma.type", "'uniform'"),
    "tune_type_mismatch.yaml": ("tune.space.schedule.step_size.type", "use type: int"),
    "tune_categorical_no_choices.yaml": ("tune.space.model.norm.choices", "non-empty list of choices"),
    "tune_unknown_space_key.yaml": ("tune.space.schedule.gama", "did you mean schedule.gamma?"),
    "tune_high_out_of_range.yaml": ("tune.space.schedule.gamma.high", "above 1"),
    "tune_space_is_axis.yaml": ("tune.space.schedule.gamma", "either swept or tuned"),
}


def test_every_bad_grid_has_an_expectation():
    files = {p.name for p in BAD.glob("*.yaml")}
    assert files == set(BAD_GRIDS)
    assert len(files) >= 20


@pytest.mark.parametrize("filename", sorted(BAD_GRIDS))
def test_bad_grid(filename):
    key, message = BAD_GRIDS[filename]
    path = BAD / filename
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    err = info.value
    assert err.key == key
    assert message in err.problem
    assert err.source == str(path)
    # what is wrong and how to fix it: a clause after the problem ("; ...")
    assert ";" in err.problem or "?" in err.problem


def test_missing_root_is_skipped_only_with_check_data_false():
    spec = load_grid(BAD / "missing_root.yaml", check_data=False)
    assert len(spec.runs) == 1
    for other in ("unknown_norm.yaml", "root_unset.yaml", "gn_groups_not_dividing.yaml"):
        with pytest.raises(ConfigError):
            load_grid(BAD / other, check_data=False)


def test_check_paths_keyword_keeps_other_checks():
    cfg = build({"data.name": "imagefolder", "data.root": "/nonexistent/x"})
    check(cfg, check_paths=False)
    with pytest.raises(ConfigError):
        check(cfg)
    with pytest.raises(ConfigError):
        check(build({"data.name": "cifar10"}), check_paths=False)


def test_unreadable_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_grid(missing)
    assert info.value.source == str(missing)
    assert "cannot read" in info.value.problem and "check the path" in info.value.problem


def test_errors_carry_the_line(tmp_path):
    path = write(tmp_path, """
        name: t
        base:
          data: {name: digits}
        grid:
          model.norm: [bn]
          data.batch_size: [8, 0]
    """)
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    assert info.value.key == "grid.data.batch_size"
    assert "(at model.norm=bn,data.batch_size=0, line 7)" in str(info.value)
