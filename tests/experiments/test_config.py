"""Run configs: defaults ← YAML ← ``--set``; every key typed and checked, every error one
ConfigError that names the key (and the file's line) and the fix."""

from __future__ import annotations

import pytest

from experiments.config import (KEYS, OMITTED_AT_DEFAULT, ConfigError, build, coerce, load, parse_override, run_key,
                                to_flat, to_yaml)
from experiments.errors import UserError


def test_defaults_round_trip_through_yaml_and_overrides(tmp_path):
    cfg = build({"model": {"norm": "gn"}, "optim.lr": "1e-2", "seed": 3})
    assert (cfg.model.norm, cfg.optim.lr, cfg.seed) == ("gn", 0.01, 3)
    path = tmp_path / "cfg.yaml"
    path.write_text(to_yaml(cfg))
    assert load(path) == cfg
    assert load(path, ["optim.lr=0.5"]).optim.lr == 0.5
    assert set(to_flat(cfg)) == set(KEYS)


@pytest.mark.parametrize("key, value, needle", [
    ("optim.lrr", 0.1, "valid keys"),
    ("optim.lr", "fast", "expected"),
    ("train.max_epochs", 2.5, "expected"),
    ("train.max_epochs", True, "expected"),  # a bool is not an int here
    ("model.widths", [16, 32], "a list of 3 integers"),
])
def test_unknown_keys_and_wrong_types_are_refused(key, value, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        build({key: value})
    assert err.value.key == key and isinstance(err.value, UserError)


def test_coerce_normalises_numbers():
    assert coerce("optim.lr", "5e-3") == 0.005 and coerce("train.max_epochs", 4.0) == 4
    assert coerce("model.widths", [8, 16, 32]) == (8, 16, 32)


@pytest.mark.parametrize("item, needle", [("nokey", "key=value"), ("optim.lrr=1", "unknown key in --set")])
def test_bad_overrides(item, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_override(item)


def test_an_error_in_a_file_names_its_line_and_an_override_does_not(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data:\n  name: digits\nmodel:\n  norm: xx\n")
    with pytest.raises(ConfigError, match=r"line 4") as err:
        load(path)
    assert str(path) in str(err.value) and "bn" in str(err.value)  # names the valid norms
    with pytest.raises(ConfigError) as err:
        load(path, ["model.norm=yy"])
    assert "line" not in str(err.value) and "yy" in str(err.value)


def test_range_and_compatibility_checks():
    from experiments.config import check

    with pytest.raises(ConfigError, match="model.gn_groups"):
        check(build({"model.norm": "gn", "model.gn_groups": 5}))
    with pytest.raises(ConfigError) as err:
        check(build({"optim.lr": -1.0}))
    assert err.value.key == "optim.lr"


def test_run_key_ignores_execution_settings_and_follows_results():
    base = build({"model.norm": "gn"})
    assert run_key(base) == run_key(build({"model.norm": "gn", "train.checkpoint_seconds": 5.0}))
    assert run_key(base) != run_key(build({"model.norm": "gn", "optim.lr": 0.2}))


def test_a_knob_added_later_keeps_the_run_keys_of_configs_at_its_default():
    """data.standardize did not exist when these keys were written (model.init already
    defaulted to torch_default): at its default the key is unchanged, set, it changes."""
    assert run_key(build({})) == "a040c89d97522aa4"
    cifar = {"model.norm": "gn", "data.name": "cifar10", "data.root": "/x", "seed": 3}
    assert run_key(build(cifar)) == "c8bd4087bc3d7651"
    assert run_key(build({**cifar, "data.standardize": "channel"})) == "c8bd4087bc3d7651"
    assert run_key(build({**cifar, "data.standardize": "pixel"})) != "c8bd4087bc3d7651"
    for key, default in OMITTED_AT_DEFAULT.items():
        assert to_flat(build({}))[key] == default  # the stated default is the dataclass's
