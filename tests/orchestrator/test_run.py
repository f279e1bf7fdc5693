"""`orch run` end to end against a real SQLite MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, all_runs, invoke, orch
from experiments.config import build, run_key
from experiments.metric_names import EPOCH_METRICS as EPOCH_KEYS
from orchestrator.store.schema import Tag

SUMMARY = [
    f"{s}_{m}" for s in ("train", "val", "test") for m in ("acc", "f1_micro", "f1_macro")
] + ["best_epoch", "epochs_run", "train_seconds", "images_per_second"]
ARTIFACTS = ["config.yaml", "plots/curves.png", "plots/quantiles.png", "quantiles.csv",
             "plots/confusion_test.png", "test_report.json"]


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`orch run` with no arguments, once for the module."""
    tmp = tmp_path_factory.mktemp("default_run")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # liveness only: orch()'s 600-s timeout is 10x the ~60 s this run takes on a loaded 2-core machine
    proc = orch("run", env={"MLFLOW_TRACKING_URI": ""}, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return uri, proc


def test_default_run_is_complete(default_run):
    uri, proc = default_run
    runs = all_runs(uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    client = MlflowClient(tracking_uri=uri)

    # params: the resolved config as dotted keys, equal to the defaults
    cfg = build({})
    from experiments.config import to_flat

    expected = {k: (json.dumps(v) if isinstance(v, list) else str(v)) for k, v in to_flat(cfg).items()}
    assert run.data.params == expected

    # tags
    tags = run.data.tags
    assert tags["orch.run_key"] == run_key(cfg)
    for key in ("orch.torch_version", "orch.cuda_version", "orch.device"):
        assert tags[key]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=REPO)
    if head.returncode == 0:
        assert tags["orch.git_commit"] == head.stdout.strip()

    # summary metrics and per-epoch histories as long as epochs_run
    metrics = run.data.metrics
    for key in SUMMARY:
        assert key in metrics, key
    epochs_run = int(metrics["epochs_run"])
    assert 1 <= metrics["best_epoch"] <= epochs_run
    for key in EPOCH_KEYS:
        hist = client.get_metric_history(run.info.run_id, f"epoch/{key}")
        assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(1, epochs_run + 1)), key
    assert metrics["val_f1_macro"] > 0.8  # digits is easy; a broken loop would not get here

    # artifacts, including a loadable model
    paths = _artifact_paths(client, run.info.run_id)
    for a in ARTIFACTS:
        assert a in paths, (a, paths)
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "test_report.json")).read_text())
    assert np.array(report["confusion_matrix"]).shape == (10, 10)
    quantiles = Path(client.download_artifacts(run.info.run_id, "quantiles.csv")).read_text().splitlines()
    assert quantiles[0] == "epoch,feat_q01,feat_q20,feat_q80,feat_q99"
    assert len(quantiles) == epochs_run + 1
    logged_cfg = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml")).read_text())
    assert build(logged_cfg) == cfg


def test_progress_lines_on_stderr(default_run):
    _, proc = default_run
    lines = [l for l in proc.stderr.splitlines() if " step " in l and "val_f1_macro" in l]
    assert len(lines) >= 1
    assert "FINISHED" in proc.stderr


def test_quiet_and_logged_model_reproduces_val_f1(store, tmp_path):
    """Early stopping: a run whose validation loss rises stops early; the logged best model
    reproduces the logged val_f1_macro."""
    import mlflow.pytorch
    import torch

    from experiments.data import eval_batches, load_splits
    from experiments.metrics import classification_metrics

    cfg_file = tmp_path / "overfit.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "data": {"val_size": 0.5, "batch_size": 16},
        "optim": {"lr": 0.3, "momentum": 0.9},
        "schedule": {"step_size": 100, "gamma": 1.0},
        "train": {"max_epochs": 40, "patience": 2},
    }))
    proc = orch("run", str(cfg_file), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "" or "epoch" not in proc.stderr
    (run,) = all_runs(store)
    m = run.data.metrics
    assert m["epochs_run"] < 40
    assert m["best_epoch"] < m["epochs_run"]
    assert m["epochs_run"] - m["best_epoch"] == 2  # patience

    mlflow.set_tracking_uri(store)  # as the README says; earlier tests may have set another store
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    cfg = build(yaml.safe_load(cfg_file.read_text()))
    splits = load_splits(cfg.data, "cpu")
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(x).argmax(1) for x, _ in eval_batches(splits, "val", 512)])
    recomputed = classification_metrics(splits.val_y.numpy(), preds.numpy(), "val", splits.num_classes)["val_f1_macro"]
    assert recomputed == pytest.approx(m["val_f1_macro"], abs=1e-12)


def test_non_finite_loss_fails_the_run(store):
    proc = orch("run", "--set", "optim.lr=1e6", "--set", "train.max_epochs=3", "--quiet")
    assert proc.returncode == 1, proc.stderr
    (run,) = all_runs(store)
    assert run.info.status == "FAILED"
    reason = run.data.tags["orch.failure_reason"]
    assert "TrainingDiverged" in reason and "non-finite" in reason
    client = MlflowClient(tracking_uri=store)
    tb = Path(client.download_artifacts(run.info.run_id, "error/traceback.txt")).read_text()
    assert "Traceback" in tb and "TrainingDiverged" in tb


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell a Slurm allocation of 1 apart")
def test_a_run_in_a_slurm_job_trains_with_the_cpus_slurm_allocated(store):
    """Torch's own default counts the affinity mask, which a cluster without CPU binding does
    not narrow to the job's CPUs; the run uses no more threads than Slurm allocated."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "run", "--set", "train.max_epochs=1", "--set",
                           "model.depth_n=1", "--device", "cpu", "--quiet"], capture_output=True, text=True, timeout=600,
                          env={**env, "SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "1"})
    assert proc.returncode == 0, proc.stderr
    (run,) = all_runs(store)
    assert run.data.tags[Tag.DEVICE].endswith(", 1 threads)"), run.data.tags[Tag.DEVICE]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "optim.bogus=1"], "unknown key"),
        (["--set", "data.batch_size=abc"], "expected an integer"),
        (["--set", "model.norm=xx"], "unknown norm"),
        (["--set", "data.name=mnist"], "unknown dataset"),
        (["--set", "data.name=cifar10", "--set", "data.root=/nonexistent/cifar"], "data.download=true"),
        (["--set", "data.name=imagefolder", "--set", "data.root=/nonexistent/tree"], "train/"),
        (["--set", "model.norm=gn", "--set", "model.widths=[16,24,64]"], "24"),
        (["--set", "nokey"], "key=value"),
        (["missing.yaml"], "cannot read"),
        (["BAD_YAML"], "invalid YAML"),
        (["UNKNOWN_SECTION"], "unknown key"),
    ],
)
def test_bad_input_exits_2_without_a_run(store, tmp_path, args, needle):
    if args == ["BAD_YAML"]:
        (tmp_path / "bad.yaml").write_text("data: {name: digits\nmodel: [\n")
        args = ["bad.yaml"]
    if args == ["UNKNOWN_SECTION"]:
        (tmp_path / "unk.yaml").write_text("trainer:\n  epochs: 3\n")
        args = ["unk.yaml"]
    proc = invoke("run", *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([l for l in proc.stderr.splitlines() if l.strip()]) <= 2  # one clear message
    assert all_runs(store) == []
