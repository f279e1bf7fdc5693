"""Damaged checkpoints never wedge a point: each is skipped with a warning in the sweep's
own output and a tag on the new run, the point trains from epoch 0, and the checkpoint it
superseded is removed; `orch run --resume` of such a run exits 2 with one message.

One real checkpoint (the training loop stopped after a batch, of a config that no point
has) is written by :func:`orchestrator.store.checkpoints.write` into one KILLED run per
point of a four-seed sweep, and each copy is then damaged on disk in its own way.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pickle

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY_BASE, all_runs, invoke, write_grid
from experiments.config import to_flat
from experiments.metric_names import epoch_key
from experiments.train import train
from orchestrator.store import checkpoints
from orchestrator.grid.load import load_grid
from orchestrator.store.schema import Kind, Status, Tag
from orchestrator.store.tracking import TrackingStore

CHECKPOINT = "checkpoint/ckpt-0.pkl"
# case -> (what is done to the checkpoint file, what the skip says in a sweep, ... and to `orch run --resume`)
CASES = {
    "truncated": ("cannot be read", "cannot be read"),
    "deleted": ("cannot be read", "cannot be read"),  # the file is gone, the run's tags still name it
    "not a checkpoint": ("is not a checkpoint of this version of orch", "is not a checkpoint of this version of orch"),
    "other config": ("holds another config", "holds another config than its run's"),
}


class StopAtOnce:
    """The training loop's checkpoint sink: asks it to stop at its first batch, keeps the checkpoint."""

    state = None

    def due(self) -> bool:
        return False

    def save(self, state) -> None:
        self.state = state

    def should_stop(self) -> bool:
        return True


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """Five points, one per case (seeds 0-4), of the tiny digits config."""
    return write_grid(tmp_path_factory.mktemp("grid") / "ckpt.yaml", "ckpt", {"model.norm": ["bn"]},
                      seeds=range(len(CASES)))


@pytest.fixture(scope="module")
def checkpoint(grid):
    """(a real checkpoint, the config it belongs to): a config with a seed no point has."""
    cfg = load_grid(grid, ["seed=99"]).runs[0].config
    sink = StopAtOnce()
    assert train(cfg, device="cpu", checkpoints=sink, should_stop=sink.should_stop) is None  # stopped
    return sink.state, cfg


def damaged_store(tmp: Path, grid: Path, checkpoint) -> tuple[str, dict, str]:
    """A store holding, for each point, a KILLED run of its run key with the real checkpoint
    damaged as its case says, and one bystander: a KILLED run of the checkpoint's own config
    with that checkpoint intact. Returns (uri, case -> run id, bystander's run id)."""
    state, own_cfg = checkpoint
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    store = TrackingStore(uri)
    exp = store.ensure_experiment("ckpt")
    spec = load_grid(grid)
    own_key = load_grid(grid, ["seed=99"]).runs[0].run_key

    def killed_run(cfg, run_key: str, name: str) -> tuple[str, Path]:
        run_id = store.start_run(exp, run_name=name, params=to_flat(cfg), tags={Tag.KIND: Kind.POINT, Tag.RUN_KEY: run_key})
        checkpoints.write(store, run_id, checkpoints.envelope(state, own_key, to_flat(own_cfg), 0), 0, 0)
        store.end_run(run_id, Status.KILLED, "preempted (SIGTERM) at step 0; checkpoint saved")
        return run_id, Path(urlparse(store.get_run(run_id).info.artifact_uri).path) / CHECKPOINT

    runs = {}
    for case, run in zip(CASES, spec.runs):
        runs[case], file = killed_run(run.config, run.run_key, f"damaged-{case}")
        if case == "truncated":
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
        elif case == "deleted":
            file.unlink()
        elif case == "not a checkpoint":  # a pickle, of the point's own run key, but no envelope
            file.write_bytes(pickle.dumps({"run_key": run.run_key, "state": state}))
        # "other config": the checkpoint as written, of own_cfg, in a run of another point's key
    bystander, _ = killed_run(own_cfg, own_key, "bystander")
    return uri, runs, bystander


@pytest.fixture(scope="module")
def swept(tmp_path_factory, grid, checkpoint):
    """The sweep run once over a store with a damaged checkpoint for every point."""
    tmp = tmp_path_factory.mktemp("swept")
    uri, damaged, bystander = damaged_store(tmp, grid, checkpoint)
    proc = invoke("sweep", str(grid), "--workers", "1", "--tracking-uri", uri, cwd=tmp)
    return uri, damaged, bystander, proc


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, grid, checkpoint):
    return damaged_store(tmp_path_factory.mktemp("damaged"), grid, checkpoint)


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_checkpoint_is_skipped_and_the_point_starts_afresh(swept, case):
    uri, damaged, bystander, proc = swept
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    client = MlflowClient(tracking_uri=uri)
    old = client.get_run(damaged[case])
    key = old.data.tags[Tag.RUN_KEY]
    (done,) = [r for r in all_runs(uri) if r.data.tags.get(Tag.RUN_KEY) == key and r.info.status == Status.FINISHED]
    # trained from epoch 0: every epoch its own, nothing carried over
    assert Tag.RESUMED_FROM not in done.data.tags
    steps = sorted(m.step for m in client.get_metric_history(done.info.run_id, epoch_key("val_loss")))
    assert steps == list(range(1, TINY_BASE["train"]["max_epochs"] + 1))
    # the skip, on the run and in the sweep's own output (not only in a point's log)
    skipped = done.data.tags[Tag.CHECKPOINT_SKIPPED]
    where = f"{damaged[case]}/{CHECKPOINT}"
    assert skipped.startswith(f"{where}: {CASES[case][0]}"), skipped
    (line,) = [line for line in proc.stderr.splitlines() if where in line]
    assert line.startswith(f"  warning {done.info.run_name}: the checkpoint {where} {CASES[case][0]}"), line
    assert line.endswith("skipped, starting afresh"), line
    # the superseded checkpoint is gone, files and tag; another run key's checkpoint stays
    assert Tag.CHECKPOINT not in old.data.tags
    assert not (Path(urlparse(old.info.artifact_uri).path) / "checkpoint").exists()
    kept = client.get_run(bystander)
    assert kept.data.tags[Tag.CHECKPOINT] == CHECKPOINT
    assert (Path(urlparse(kept.info.artifact_uri).path) / CHECKPOINT).is_file()


@pytest.mark.parametrize("case", CASES)
def test_orch_run_resume_of_a_damaged_checkpoint_exits_2_with_one_message(damaged, case):
    uri, runs, _ = damaged
    before = len(all_runs(uri))
    proc = invoke("run", "--resume", runs[case], "--tracking-uri", uri)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert f"run {runs[case]} cannot be resumed: its checkpoint {CHECKPOINT} {CASES[case][1]}" in line, line
    assert "afresh" in line, line
    assert len(all_runs(uri)) == before  # nothing started
