"""`orch sweep GRID --dry-run`: the summary (points per axis value, totals, the first and last
rows), --list, --format json and csv, and the states read from a real SQLite MLflow store."""

from __future__ import annotations

import csv
import io
import json
import re
import time

import pytest

from conftest import invoke, write_grid
from orchestrator.cli.dry_run import HEAD, SHOW_ALL, TAIL
from orchestrator.grid.load import load_grid

AXES = {"model.norm": ["bn", "gn", "nn"], "data.batch_size": [8, 32, 128]}  # 9 settings
SEEDS = (0, 1, 2)  # 27 points: more than SHOW_ALL


@pytest.fixture
def grid(tmp_path):
    """A 27-point grid whose store (beside it) does not exist."""
    return write_grid(tmp_path / "g.yaml", "dry", AXES, seeds=SEEDS)


def dry_run(grid, *options, uri=None):
    """``orch sweep GRID --dry-run OPTIONS`` in this process; its stdout."""
    uri = uri or f"sqlite:///{grid.parent / 'none' / 'mlflow.db'}"
    proc = invoke("sweep", str(grid), "--dry-run", *options, "--tracking-uri", uri, cwd=grid.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def axis_rows(out: str) -> dict[str, dict[str, list[str]]]:
    """The summary's per-axis table: axis → value → its numbers (points, then done, pending, failed)."""
    lines = out.split("points per axis value:\n")[1].split("\n\n")[0].splitlines()[1:]
    rows: dict[str, dict[str, list[str]]] = {}
    axis = ""
    for line in lines:
        cells = re.split(r" {2,}", line.strip())
        if line[2] != " ":  # a new axis: its name in the first column
            axis, cells = cells[0], cells[1:]
        rows.setdefault(axis, {})[cells[0]] = cells[1:]
    return rows


def point_rows(out: str) -> list[list[str]]:
    """The per-point table's rows, split into cells (the line that says how many are left out skipped)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["#"]) + 1
    return [line.split() for line in lines[start:] if line[:1] != "…" and " points" not in line]


def test_the_summary_counts_points_per_axis_value_and_shows_the_first_and_last_rows(grid):
    out = dry_run(grid)
    assert len(load_grid(grid).runs) == 27 > SHOW_ALL
    assert "27 points = 9 settings × 3 seeds" in out
    assert axis_rows(out) == {"model.norm": {"bn": ["9"], "gn": ["9"], "nn": ["9"]},
                              "data.batch_size": {"8": ["9"], "32": ["9"], "128": ["9"]},
                              "seed": {"0": ["9"], "1": ["9"], "2": ["9"]}}
    rows = point_rows(out)
    assert [int(r[0]) for r in rows] == [*range(HEAD), *range(27 - TAIL, 27)]
    assert rows[0][1:] == ["bn-bs8-s0", "bn", "8", "0", "pending"]
    assert f"… {27 - HEAD - TAIL} more rows; --list shows all" in out
    assert out.rstrip().splitlines()[-1].startswith("27 points: 0 done, 27 pending, 0 failed")
    assert not (grid.parent / "none").exists()  # a store that does not exist is not created


def test_a_small_grid_shows_every_row_and_list_shows_every_row_of_a_large_one(tmp_path, grid):
    small = write_grid(tmp_path / "small.yaml", "small", {"model.norm": ["bn", "gn"]}, seeds=(0, 1))
    assert [row[1] for row in point_rows(dry_run(small))] == ["bn-s0", "gn-s0", "bn-s1", "gn-s1"]
    assert [row[1] for row in point_rows(dry_run(grid, "--list"))] == [r.name for r in load_grid(grid).runs]


def test_json_has_the_summary_and_every_point(grid):
    doc = json.loads(dry_run(grid, "--format", "json"))
    spec = load_grid(grid)
    assert (doc["name"], doc["sweep_id"], doc["store"]["state"]) == ("dry", spec.sweep_id, "absent")
    summary = doc["summary"]
    assert (summary["points"], summary["settings"], summary["seeds"]) == (27, 9, [0, 1, 2])
    assert (summary["done"], summary["pending"], summary["failed"]) == (0, 27, 0)
    assert [(v["value"], v["points"]) for v in summary["axes"]["data.batch_size"]] == [(8, 9), (32, 9), (128, 9)]
    assert len(doc["points"]) == 27
    for point, r in zip(doc["points"], spec.runs):
        assert point == {"index": r.index, "name": r.name, "run_key": r.run_key, "setting": r.setting,
                         "seed": r.point["seed"], "state": "pending",
                         "values": {"model.norm": r.point["model.norm"], "data.batch_size": r.point["data.batch_size"]}}


def test_csv_has_a_header_and_one_row_per_point(grid):
    rows = list(csv.DictReader(io.StringIO(dry_run(grid, "--format", "csv"))))
    spec = load_grid(grid)
    assert len(rows) == 27
    assert list(rows[0]) == ["index", "name", "run_key", "setting", "seed", "state", "model.norm", "data.batch_size"]
    assert [(r["name"], r["run_key"], r["setting"], r["seed"], r["model.norm"], r["data.batch_size"]) for r in rows] \
        == [(r.name, r.run_key, r.setting, str(r.point["seed"]), r.point["model.norm"], str(r.point["data.batch_size"]))
            for r in spec.runs]
    assert {r["state"] for r in rows} == {"pending"}


def test_an_include_only_key_is_counted_as_not_set_where_a_point_leaves_it(tmp_path):
    path = tmp_path / "inc.yaml"
    path.write_text("name: inc\nbase: {data: {name: digits}}\ngrid: {model.norm: [bn, gn]}\n"
                    "include: [{model.norm: gn, model.gn_groups: 8}]\nseeds: [0]\n")
    out = dry_run(path)
    assert axis_rows(out)["model.gn_groups"] == {"(not set)": ["2"], "8": ["1"]}
    assert point_rows(out)[2][1:] == ["gn-gn_groups8-s0", "gn", "8", "0", "pending"]
    csv_rows = list(csv.DictReader(io.StringIO(dry_run(path, "--format", "csv"))))
    assert [r["model.gn_groups"] for r in csv_rows] == ["", "", "8"]
    doc = json.loads(dry_run(path, "--format", "json"))
    assert [p["values"] for p in doc["points"]] == [{"model.norm": "bn"}, {"model.norm": "gn"},
                                                    {"model.norm": "gn", "model.gn_groups": 8}]
    assert doc["summary"]["axes"]["model.gn_groups"][0] == {"unset": True, "points": 2, "done": 0, "pending": 2,
                                                            "failed": 0, "unknown": 0}


@pytest.mark.parametrize("options", [["--list"], ["--format", "json"], ["--list", "--format", "csv"]])
def test_list_and_format_without_dry_run_are_refused(tmp_path, grid, options):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = invoke("sweep", str(grid), *options, "--tracking-uri", uri, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout
    message = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if line.strip()]
    assert len(message) == 1 and "only appl" in message[0] and "--dry-run" in message[0], message
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started, not even a store


@pytest.mark.integration
@pytest.mark.slow  # a fresh MLflow store: its migrations take seconds
def test_the_states_come_from_the_store_per_point_and_per_axis_value(grid):
    """A real SQLite store holding one finished point, one failed point and one that failed and
    was then stopped: done 1, failed 1, the rest (the stopped one too) pending."""
    from orchestrator.store.schema import Kind, Status, Tag
    from orchestrator.store.tracking import TrackingStore

    spec = load_grid(grid)
    uri = f"sqlite:///{grid.parent / 'mlflow.db'}"
    store = TrackingStore(uri)
    experiment = store.ensure_experiment(spec.name)
    for r, statuses in ((spec.runs[0], [Status.FAILED, Status.FINISHED]), (spec.runs[4], [Status.FAILED]),
                        (spec.runs[8], [Status.FAILED, Status.KILLED])):
        for status in statuses:
            run_id = store.start_run(experiment, run_name=r.name, params={},
                                     tags={Tag.RUN_KEY: r.run_key, Tag.KIND: Kind.POINT})
            store.end_run(run_id, status)
            time.sleep(0.01)  # the next attempt starts later: the latest one decides
    out = dry_run(grid, uri=uri)
    assert "27 points: 1 done, 25 pending, 1 failed" in out
    axes = axis_rows(out)
    assert axes["model.norm"] == {"bn": ["9", "1", "8", "0"], "gn": ["9", "0", "8", "1"], "nn": ["9", "0", "9", "0"]}
    assert axes["data.batch_size"]["8"] == ["9", "1", "8", "0"]
    assert axes["seed"]["0"] == ["9", "1", "7", "1"]
    doc = json.loads(dry_run(grid, "--format", "json", uri=uri))
    assert [p["state"] for p in doc["points"][:9]] == ["done", "pending", "pending", "pending", "failed",
                                                       "pending", "pending", "pending", "pending"]
    assert doc["store"]["state"] == "read" and (doc["summary"]["done"], doc["summary"]["failed"]) == (1, 1)
