"""`orch report` (table, latex, figures) and `orch compare`'s statistics on a real sweep.

The figure functions are checked on synthetic histories; the commands on one real
2-norm × 2-batch-size × 3-seed digits sweep in a SQLite MLflow store, against the
values MlflowClient reads back and against scipy.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml
from click.testing import CliRunner
from matplotlib.container import BarContainer
from statsmodels.stats.multitest import multipletests

from conftest import orch, run_record, write_grid
from experiments.metric_names import QUANTILES, SCORES, SPLITS, TRAIN_LOSS, VAL_LOSS, VAL_SCORES
from orchestrator.analyze.layout import curve_panels
from orchestrator.cli.main import cli
from orchestrator.analyze.results import compare
from orchestrator.analyze.figures import SettingCurves, metric_by_axis, panel_grid, quantiles, training_curves
from orchestrator.store.schema import Artifact, ExpectedPoint, Kind, Tag

NORMS = ("bn", "gn")
BATCHES = (32, 64)
SEEDS = (0, 1, 2)
REPORT_FIGURES = (Artifact.REPORT_CURVES, Artifact.REPORT_QUANTILES, Artifact.REPORT_TEST_ACC)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- figures, synthetic


def synthetic_curves(labels, n_seeds=3, seed=0) -> list[SettingCurves]:
    """Histories of unequal length (early stopping), one mapping per seed."""
    rng = np.random.default_rng(seed)
    out = []
    for label in labels:
        histories = []
        for _ in range(n_seeds):
            length = int(rng.integers(3, 7))
            names = (TRAIN_LOSS, VAL_LOSS, VAL_SCORES[0], *QUANTILES)
            histories.append({name: list(rng.uniform(0, 2, length)) for name in names})
        values = dict(zip(("model.norm", "data.batch_size"), label.split()))
        out.append(SettingCurves(label, values, tuple(str(s) for s in range(n_seeds)), tuple(histories)))
    return out


def test_panel_grid_rows_by_first_axis_columns_by_the_rest():
    settings = [{"model.norm": n, "data.batch_size": b} for n in ("bn_torch", "bn", "gn") for b in (8, 128)]
    assert panel_grid(settings) == (3, 2, [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)])
    one_axis = [{"model.norm": n} for n in ("bn", "in", "ln", "gn")]
    assert panel_grid(one_axis, wrap=3) == (2, 3, [(0, 0), (0, 1), (0, 2), (1, 0)])
    sparse = [{"model.norm": "gn", "data.batch_size": 8}, {"model.norm": "bn", "data.batch_size": 128}]
    assert panel_grid(sparse) == (2, 2, [(0, 0), (1, 1)])  # a sparse grid keeps its places


def test_training_curves_small_multiples_share_y_per_quantity():
    settings = synthetic_curves([f"{n} bs{b}" for n in ("bn", "gn", "ln") for b in (8, 128)])
    fig = training_curves(settings, curve_panels(sorted({name for s in settings for h in s.histories for name in h})))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2 * len(settings)
    loss = [ax for ax in visible if ax.get_title().endswith(": loss")]
    acc = [ax for ax in visible if ax.get_title().endswith(": val accuracy")]
    assert len(loss) == len(acc) == len(settings)
    assert all(loss[0].get_shared_y_axes().joined(loss[0], ax) for ax in loss)
    assert all(acc[0].get_shared_y_axes().joined(acc[0], ax) for ax in acc)
    assert not loss[0].get_shared_y_axes().joined(loss[0], acc[0])
    # Every panel's data fits the shared limits (they were rescaled after sharing).
    low, high = loss[-1].get_ylim()
    assert all(low <= y <= high for ax in loss for line in ax.lines for y in line.get_ydata())
    # The first panel: train loss = mean over the seeds that reached each epoch.
    first = next(ax for ax in loss if ax.get_title().startswith("bn bs8"))
    train = first.lines[0]
    seqs = settings[0].series(TRAIN_LOSS)
    want = [np.mean([s[e] for s in seqs if len(s) > e]) for e in range(max(map(len, seqs)))]
    assert list(train.get_ydata()) == pytest.approx(want)
    assert {ax.get_xlabel() for ax in visible} == {"epoch", ""} and loss[0].get_ylabel() == "loss"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["train loss", "val loss", "val accuracy"]


def test_quantile_panels_show_the_first_seed_on_shared_axes(tmp_path):
    settings = synthetic_curves(["bn", "in", "ln", "gn", "nn"])
    fig = quantiles(settings)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == len(settings)
    for ax, setting in zip(visible, settings):
        assert ax.get_title() == f"{setting.label}, seed 0"
        assert len(ax.lines) == len(QUANTILES)
        for line, name in zip(ax.lines, QUANTILES):
            assert list(line.get_ydata()) == pytest.approx(setting.histories[0][name])
        assert visible[0].get_shared_y_axes().joined(visible[0], ax)
        assert visible[0].get_shared_x_axes().joined(visible[0], ax)
    assert "first seed" in fig.get_suptitle()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "1st percentile", "20th percentile", "80th percentile", "99th percentile"]
    fig.savefig(tmp_path / "q.png")


def test_test_accuracy_error_bars_are_the_t_interval():
    expected = [ExpectedPoint(f"{n}-bs{b}-s{s}", f"k-{n}-{b}-{s}", {"model.norm": n, "data.batch_size": b, "seed": s},
                              f"model.norm={n},data.batch_size={b}") for n in ("bn", "gn") for b in (8, 128)
                for s in SEEDS]
    rng = np.random.default_rng(5)
    records = [run_record(ep, {"test_acc": float(rng.uniform(0.6, 0.9))}, start=i) for i, ep in enumerate(expected)]
    result = compare(records, expected, "test_acc")
    fig = metric_by_axis(result, "test accuracy", "model.norm", interval="ci")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bn", "gn"]
    assert "95% CI" in ax.get_ylabel() and ax.get_xlabel() == "norm"
    assert ax.get_legend().get_title().get_text() == "batch_size"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["8", "128"]
    assert ax.get_title() == "test accuracy by norm and batch_size\n(n = 3 seeds per setting)"
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    for container, bs in zip(bars, (8, 128), strict=True):
        rows = sorted((r for r in result.rows if r.group["data.batch_size"] == bs), key=lambda r: r.order)
        assert [bar.get_height() for bar in container] == pytest.approx([r.mean for r in rows])
        segments = container.errorbar.lines[2][0].get_segments()
        for seg, row in zip(segments, rows):
            vals = np.array(row.values)
            half = scipy.stats.t.ppf(0.975, 2) * vals.std(ddof=1) / math.sqrt(3)
            assert (seg[0][1], seg[1][1]) == pytest.approx((vals.mean() - half, vals.mean() + half))


# --------------------------------------------------------------------------- a real sweep


@pytest.fixture(scope="module")
def study_sweep(tmp_path_factory):
    """2 norms × 2 batch sizes × 3 seeds on digits, 2 epochs, depth 1: a real sweep once."""
    tmp = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    grid = tmp / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "report-study",
        "base": {"data": {"name": "digits"}, "model": {"depth_n": 1}, "train": {"max_epochs": 2, "patience": 2}},
        "grid": {"model.norm": list(NORMS), "data.batch_size": list(BATCHES)},
        "seeds": list(SEEDS),
    }, sort_keys=False))
    proc = orch("sweep", str(grid), "--workers", "2", "--quiet", env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("report-study")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    points = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.POINT]
    assert len(points) == len(NORMS) * len(BATCHES) * len(SEEDS)
    return uri, tmp, client, parent, points


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result


def values_by_seed(points, metric: str, norm: str, bs: int) -> dict[str, float]:
    return {r.data.params["seed"]: r.data.metrics[metric] for r in points
            if r.data.params["model.norm"] == norm and r.data.params["data.batch_size"] == str(bs)}


@pytest.mark.integration  # a real sweep (study_sweep)
@pytest.mark.slow
def test_report_markdown_equals_mlflow_and_figures_are_logged_and_written(study_sweep, tmp_path):
    uri, _, client, parent, points = study_sweep
    out = tmp_path / "figures"
    result = invoke("report", "--tracking-uri", uri, "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Setting", "set", "Accuracy", "F1 micro", "F1 macro", "n"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == len(NORMS) * len(BATCHES) * len(SPLITS)
    i = 0
    for norm in NORMS:
        for bs in BATCHES:
            assert rows[i][0] == f"{norm} bs{bs}"
            for split in SPLITS:
                assert rows[i][1] == split and rows[i][-1] == "3"
                for cell, score in zip(rows[i][2:5], SCORES):
                    vals = list(values_by_seed(points, f"{split}_{score}", norm, bs).values())
                    assert cell == f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"
                i += 1

    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == set(REPORT_FIGURES)
    for path in REPORT_FIGURES:
        local = Path(client.download_artifacts(parent.info.run_id, path, str(tmp_path)))
        written = out / Path(path).name
        for png in (local, written):
            assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    assert "logged on run" in result.stderr and str(out) in result.stderr


@pytest.mark.integration  # a real sweep (study_sweep)
@pytest.mark.slow
def test_report_latex_and_no_figures(study_sweep):
    uri, _, _, _, points = study_sweep
    result = invoke("report", "--tracking-uri", uri, "--format", "latex", "--no-figures")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.strip().splitlines() if not line.startswith("%")]
    assert lines[0] == r"\begin{tabular}{llrrrr}" and lines[-1] == r"\end{tabular}"
    assert r"\toprule" in lines and r"\midrule" in lines and r"\bottomrule" in lines
    body = [line for line in lines if " & " in line][1:]
    assert len(body) == len(NORMS) * len(BATCHES) * len(SPLITS)
    assert all(line.endswith(r" \\") and line.count(" & ") == 5 for line in body)
    vals = list(values_by_seed(points, "test_acc", "gn", 64).values())
    gn64_test = body[3 * 3 + 2].split(" & ")
    assert gn64_test[1] == "test"
    assert gn64_test[2] == rf"{statistics.mean(vals):.3f} $\pm$ {statistics.stdev(vals):.3f}"
    assert "±" not in result.stdout and result.stderr == ""  # no figures, nothing said about them


@pytest.mark.integration  # a real sweep (study_sweep)
@pytest.mark.slow
def test_compare_baseline_p_values_and_intervals_equal_scipy(study_sweep):
    uri, _, _, _, points = study_sweep
    result = invoke("compare", "--tracking-uri", uri, "--metric", "test_acc", "--baseline", "model.norm=bn",
                    "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == len(NORMS) * len(BATCHES)
    tested = [row for row in rows if row["p_value"] is not None]
    holm = multipletests([row["p_value"] for row in tested], alpha=0.05, method="holm")[1]
    assert len(tested) == 2 and [row["p_holm"] for row in tested] == pytest.approx(list(holm), abs=1e-12, rel=0)
    assert [row["significant"] for row in tested] == [bool(p < 0.05) for p in holm]
    for row in rows:
        bs = row["data.batch_size"]
        own = values_by_seed(points, "test_acc", row["model.norm"], bs)
        base = values_by_seed(points, "test_acc", "bn", bs)
        vals = np.array(list(own.values()))
        half = scipy.stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / math.sqrt(len(vals))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((vals.mean() - half, vals.mean() + half))
        if row["model.norm"] == "bn":
            assert row["p_value"] is None and row["significant"] is None
            continue
        seeds = sorted(own)
        p = scipy.stats.ttest_rel([own[s] for s in seeds], [base[s] for s in seeds]).pvalue
        assert row["p_value"] == pytest.approx(p)
        assert row["n_diverged"] == row["n_failed"] == 0 and row["pooled_axes"] == []
    assert "ttest_rel" in result.stderr and "weak at this n" in result.stderr
    assert "Holm" in result.stderr and "m = 2 paired tests" in result.stderr and "2 degrees of freedom" in result.stderr


@pytest.mark.integration  # a real sweep
@pytest.mark.slow
def test_compare_counts_a_real_diverged_setting_and_worst_replaces_it(tmp_path):
    """A real sweep where lr=1e6 diverges on every seed (its runs end FAILED, TrainingDiverged)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = write_grid(tmp_path / "grid.yaml", "diverging", {"optim.lr": [0.05, 1.0e6]}, seeds=(0, 1))
    proc = orch("sweep", str(grid), "--workers", "2", "--quiet", env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # some points failed
    common = ("compare", "--tracking-uri", uri, "--metric", "val_acc", "--format", "json")
    dropped = invoke(*common)
    assert dropped.exit_code == 0, dropped.output
    rows = {row["optim.lr"]: row for row in json.loads(dropped.stdout)}
    good, bad = rows[0.05], rows[1.0e6]
    assert (bad["n_diverged"], bad["n_failed"], bad["n_finished"], bad["rank"]) == (2, 0, 0, None)
    assert bad["mean"] is None and (good["n_diverged"], good["n_finished"]) == (0, 2)
    assert "2 runs (2 diverged, 0 failed)" in dropped.stderr

    worst = invoke(*common, "--failed-as", "worst")
    assert worst.exit_code == 0, worst.output
    rows = {row["optim.lr"]: row for row in json.loads(worst.stdout)}
    assert rows[1.0e6]["mean"] == pytest.approx(min(good["values"])) and rows[1.0e6]["rank"] == 2
    assert rows[1.0e6]["n_diverged"] == 2 and rows[0.05]["mean"] == pytest.approx(good["mean"])
    table = invoke("compare", "--tracking-uri", uri, "--metric", "val_acc")
    assert table.exit_code == 0 and "div/fail" in table.stdout and "2/0" in table.stdout


@pytest.mark.parametrize("command", [["report"], ["compare", "--metric", "val_acc"]])
def test_a_missing_sqlite_store_is_refused_and_not_created(tmp_path, command):
    db = tmp_path / "nowhere.db"
    result = invoke(*command, "--tracking-uri", f"sqlite:///{db}")
    assert result.exit_code == 2, result.output
    assert "no MLflow store" in result.output and str(db) in result.output
    assert not db.exists()


def test_report_out_and_no_figures_contradict(tmp_path):
    result = invoke("report", "--out", str(tmp_path / "f"), "--no-figures")
    assert result.exit_code == 2 and "--no-figures" in result.output
    assert not (tmp_path / "f").exists()
