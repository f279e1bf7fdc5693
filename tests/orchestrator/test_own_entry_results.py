"""`orch compare`, `orch report` and a sweep's summary on the runs of a user's own entry.

One real sweep of a function entry written into a temporary folder beside its grid (2 widths ×
3 seeds): its runs log ``val_acc`` and ``train_loss`` per step through ``run.log`` and return
``test_acc`` as their summary, and their params are the grid's own keys. Nothing of the built-in
study is in it, and a function names no default metric, so the sweep ranks by the first summary
metric its runs report.
"""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import scipy.stats
import yaml

from conftest import invoke, orch
from orchestrator.store.schema import Artifact, Kind, Tag

WIDTHS = (16, 64)
SEEDS = (0, 1, 2)
EPOCHS = 3

OWN_TRAIN = '''
def score(width, seed):
    return 0.6 + (0.2 if width == 64 else 0.0) + 0.01 * ((seed * 7) % 5)


def main(config, run):
    final = score(config["width"], run.seed)
    for step in range(1, config["epochs"] + 1):
        run.log({"val_acc": final * step / config["epochs"], "train_loss": 1.0 / step}, step=step)
    return {"test_acc": final}
'''


def score(width: int, seed: int) -> float:
    return 0.6 + (0.2 if width == 64 else 0.0) + 0.01 * ((seed * 7) % 5)


@pytest.fixture(scope="module")
def own_sweep(tmp_path_factory):
    """The sweep, once: (tracking URI, the sweep's stdout, its parent run, a client of the store)."""
    tmp = tmp_path_factory.mktemp("own")
    (tmp / "own_train.py").write_text(OWN_TRAIN)
    (tmp / "grid.yaml").write_text(yaml.safe_dump({
        "name": "own-study", "entry": "own_train:main", "base": {"lr": 0.1, "epochs": EPOCHS},
        "grid": {"width": list(WIDTHS)}, "seeds": list(SEEDS)}, sort_keys=False))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    proc = orch("sweep", "grid.yaml", "--workers", "2", "--quiet", cwd=tmp,
                env={"MLFLOW_TRACKING_URI": uri, "ORCH_SYSTEM_METRICS_SECONDS": "0"})
    assert proc.returncode == 0, proc.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("own-study").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    points = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.POINT]
    assert len(points) == len(WIDTHS) * len(SEEDS)
    assert {r.data.tags[Tag.ENTRY] for r in points} == {"own_train:main"}
    return uri, proc.stdout, parent, client


def test_the_sweep_closes_with_a_table_of_its_first_summary_metric(own_sweep):
    _, stdout, parent, client = own_sweep
    assert "test_acc (higher is better)" in stdout
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert logged == {Artifact.metric_by_axis("test_acc", "width"), Artifact.VAL_CURVES}
    assert "**test_acc** over seeds" in parent.data.tags[Tag.NOTE]


def test_compare_ranks_both_settings_with_intervals_over_seeds(own_sweep):
    uri = own_sweep[0]
    table = invoke("compare", "--tracking-uri", uri, "--metric", "test_acc")
    assert table.returncode == 0, table.stderr
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in table.stdout.splitlines() if line.startswith("│")]
    assert rows[0][:4] == ["rank", "width", "test_acc mean ± std", "n"] and rows[0][5] == "95% CI"
    assert [r[:4] for r in rows[1:]] == [["1", "64", "0.8200 ± 0.0200", "3/3"], ["2", "16", "0.6200 ± 0.0200", "3/3"]]
    assert [r[5] for r in rows[1:]] == ["[0.7703, 0.8697]", "[0.5703, 0.6697]"]
    result = invoke("compare", "--tracking-uri", uri, "--metric", "test_acc", "--baseline", "width=16",
                    "--format", "json")
    assert result.returncode == 0, result.stderr
    by_width = {row["width"]: row for row in json.loads(result.stdout)}
    assert set(by_width) == set(WIDTHS) and by_width[64]["rank"] == 1
    for width, row in by_width.items():
        vals = np.array([score(width, s) for s in SEEDS])
        half = scipy.stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / math.sqrt(len(vals))
        assert row["mean"] == pytest.approx(vals.mean())
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((vals.mean() - half, vals.mean() + half))
    assert by_width[64]["delta_mean"] == pytest.approx(0.2) and by_width[64]["n_pairs"] == 3
    assert "ttest_rel" in result.stderr


def test_compare_takes_a_step_metric_at_its_last_value(own_sweep):
    result = invoke("compare", "--tracking-uri", own_sweep[0], "--metric", "val_acc", "--format", "json")
    assert result.returncode == 0, result.stderr
    by_width = {row["width"]: row for row in json.loads(result.stdout)}
    assert by_width[16]["mean"] == pytest.approx(statistics.mean(score(16, s) for s in SEEDS))


def test_report_shows_the_scores_the_runs_logged_and_draws_what_exists(own_sweep, tmp_path):
    uri, _, parent, client = own_sweep
    result = invoke("report", "--tracking-uri", uri, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["Setting", "set", "Accuracy", "n"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    want = {w: statistics.mean(score(w, s) for s in SEEDS) for w in WIDTHS}
    assert [(r[0], r[1], r[2].split(" ±")[0], r[3]) for r in rows] == [
        (f"width{w}", "test", f"{want[w]:.3f}", "3") for w in WIDTHS]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {Artifact.REPORT_CURVES, Artifact.report_by_setting("test_acc")}  # no percentiles logged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_acc.png", "training_curves.png"]
