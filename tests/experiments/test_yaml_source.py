"""experiments.yaml_source: the one YAML reader of grid files and run configs (lines, duplicate keys)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from conftest import all_runs
from experiments.config import ConfigError, load, load_yaml
from experiments.yaml_source import line_of, parse_yaml, read_yaml
from orchestrator.cli.main import cli

DUPLICATE = "data:\n  name: digits\n  batch_size: 8\n  name: digits\n"


def test_lines_of_nested_keys_and_list_items():
    doc = parse_yaml("name: t\ngrid:\n  model.norm: [bn, gn]\ninclude:\n  - {model.norm: ln}\n", "g.yaml")
    assert doc.data["grid"] == {"model.norm": ["bn", "gn"]}
    assert doc.lines["grid"] == 2 and doc.lines["grid.model.norm"] == 3
    assert doc.lines["include[0]"] == 5 and doc.lines["include[0].model.norm"] == 5
    assert line_of(doc.lines, "grid.model.norm[1]") == 3  # falls back to the nearest parent
    assert line_of(doc.lines, "seeds") is None


def test_garbage_names_the_line_and_column():
    with pytest.raises(ConfigError) as info:
        parse_yaml("name: t\ngrid:\n  model.norm: [bn, gn\nseeds: [0]\n", "g.yaml")
    assert info.value.source == "g.yaml" and info.value.key is None
    assert "invalid YAML at line 4, column" in info.value.problem and "fix the syntax" in info.value.problem


def test_duplicate_key_names_both_lines_and_the_key_path():
    with pytest.raises(ConfigError) as info:
        parse_yaml(DUPLICATE, "c.yaml")
    assert info.value.key == "data.name"
    assert "'name' is given twice (lines 2 and 4); keep one of them" in info.value.problem


def test_merge_keys_and_aliases_are_not_duplicates():
    doc = parse_yaml("a: &x {k: 1}\nb:\n  <<: *x\n  j: 2\n", "m.yaml")
    assert doc.data["b"] == {"k": 1, "j": 2}


def test_read_yaml_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        read_yaml(missing, "grid file")
    assert info.value.source == str(missing) and "cannot read the grid file" in info.value.problem
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError) as info:
        read_yaml(tmp_path / "bin.yaml")
    assert "cannot read the file" in info.value.problem and "check the path" in info.value.problem


# ---------------------------------------------------------------- run configs go through it


def test_load_yaml_on_garbage_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {name: digits\nmodel: [\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert info.value.source == str(path)
    assert "invalid YAML at line 2" in info.value.problem


def test_load_yaml_refuses_a_duplicate_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(DUPLICATE)
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert info.value.key == "data.name" and "(lines 2 and 4)" in info.value.problem


def test_load_names_the_line_of_a_bad_value_from_the_file_not_from_set(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data:\n  name: digits\n  batch_size: abc\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.key == "data.batch_size"
    assert info.value.problem == "expected an integer, got 'abc' (line 3)"
    with pytest.raises(ConfigError) as info:
        load(path, ["data.batch_size=xyz"])
    assert info.value.problem == "expected an integer, got 'xyz'"  # --set has no line
    assert load(path, ["data.batch_size=8"]).data.batch_size == 8


def test_empty_config_file_gives_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_yaml(path) == {}
    assert load(path) == load()


def test_orch_run_with_a_duplicate_key_exits_2_naming_the_line(store, tmp_path):
    (tmp_path / "dup.yaml").write_text(DUPLICATE)
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "dup.yaml")])
    assert result.exit_code == 2, result.output
    assert "data.name" in result.output and "given twice (lines 2 and 4)" in result.output
    assert "Traceback" not in result.output
    assert all_runs(store) == []
