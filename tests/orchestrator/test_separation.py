"""``orch sweep --until-separated``: seeds are added only where intervals overlap, up to the maximum."""

from __future__ import annotations

import collections
import json

from mlflow.tracking import MlflowClient

from conftest import TINY_BASE, children, invoke, orch, parents, write_grid
from orchestrator.grid import load_grid
from orchestrator.schema import Artifact, Status, Tag


def test_until_separated_adds_seeds_only_to_overlapping_settings_and_stops_at_the_maximum(tmp_path):
    # lr 0.1 under precision auto and fp32 trains identically on the CPU: the two settings tie and
    # can never separate, so both go to --max-seeds. lr 1e-4 barely learns: clearly separated
    # from the leader after the grid's two seeds, so it gets none.
    base = {**TINY_BASE, "train": {"max_epochs": 3, "patience": 3}}
    grid = write_grid(tmp_path / "g.yaml", "separate", {"optim.lr": [0.1, 0.0001], "train.precision": ["auto", "fp32"]},
                      seeds=(0, 1), base=base)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ("sweep", str(grid), "--workers", "2", "--tracking-uri", uri, "--until-separated", "val_f1_macro",
            "--max-seeds", "4", "--seeds-per-round", "1")
    proc = orch(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

    spec = load_grid(grid)
    kids = children(uri, spec.sweep_id)
    assert all(k.info.status == Status.FINISHED for k in kids)
    assert len({k.data.tags[Tag.RUN_KEY] for k in kids}) == len(kids)  # every point once
    seeds = collections.defaultdict(set)
    for k in kids:
        seeds[(float(k.data.params["optim.lr"]), k.data.params["train.precision"])].add(int(k.data.params["seed"]))
    assert seeds == {(0.1, "auto"): {0, 1, 2, 3}, (0.1, "fp32"): {0, 1, 2, 3},
                     (0.0001, "auto"): {0, 1}, (0.0001, "fp32"): {0, 1}}
    assert len({k.data.tags[Tag.PID] for k in kids}) <= 2  # the two slots kept their processes across rounds

    (parent,) = parents(uri, spec.sweep_id)
    client = MlflowClient(tracking_uri=uri)
    listed = client.download_artifacts(parent.info.run_id, Artifact.POINTS, str(tmp_path))
    assert len(json.loads(open(listed).read())) == 12  # the added points are ordinary points of the sweep

    again = orch(*args, cwd=tmp_path)  # nothing is missing and nothing more can be added
    assert again.returncode == 0, again.stderr
    assert "0 to run" in again.stderr and "more point" not in again.stderr
    assert len(children(uri, spec.sweep_id)) == 12


def test_until_separated_refuses_bad_input_before_anything_starts(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "separate-bad", {"model.norm": ["bn", "gn"]}, seeds=(0, 1))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for extra, needle in ((["--until-separated", "val_accuracy"], "not a summary metric"),
                          (["--until-separated", "val_f1_macro", "--max-seeds", "2"], "no room"),
                          (["--until-separated", "val_f1_macro", "--storage", "sqlite:///q.db"], "cannot queue")):
        proc = invoke("sweep", str(grid), "--tracking-uri", uri, *extra, cwd=tmp_path)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
