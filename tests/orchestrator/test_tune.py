"""`orch tune` end to end: the real CLI, a real SQLite MLflow store and Optuna storage in tmp.

The acceptance study is the shipped demo grid as it is (8 trials of 6 epochs on digits,
about 20 s on 2 idle cores), checked through Optuna's own API (``optuna.load_study``) and
MLflow's (``MlflowClient``), not through orch's code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import REPO, all_runs, invoke, orch, results, ro_rows
from experiments.metric_names import epoch_key
from experiments.study import STUDY as BUILT_IN
from orchestrator.store import tracking
from orchestrator.cli.main import cli
from orchestrator.grid.load import load_grid
from orchestrator.tune.study import plan_studies

TUNE_GRID = REPO / "experiments" / "grids" / "tune.yaml"
STUDY = "tune-demo-bn"  # <grid name>-<setting run name>
SEARCHED = ("schedule.step_size", "schedule.gamma")


def tune_parents(uri: str):
    return [r for r in all_runs(uri) if r.data.tags.get("orch.kind") == "tune"]


def children_of(uri: str, parent_id: str):
    return [r for r in all_runs(uri) if r.data.tags.get("mlflow.parentRunId") == parent_id]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """`orch tune tune.yaml --n-trials 8` once, shared by the acceptance and resume tests."""
    tmp = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    t0 = time.perf_counter()
    proc = orch("tune", str(TUNE_GRID), "--n-trials", "8", env=env, cwd=tmp)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"orch tune --n-trials 8: {seconds:.1f}s wall")
    return uri, env, tmp, proc


def test_tune_records_every_trial_in_optuna_and_mlflow(tuned):
    uri, _, tmp, proc = tuned
    storage = f"sqlite:///{tmp / 'optuna.db'}"  # the default: beside the MLflow store
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.get_trials()
    assert len(trials) == 8
    states = {t.state for t in trials}
    assert states <= {TrialState.COMPLETE, TrialState.PRUNED}, states
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 2
    assert all(set(t.params) == set(SEARCHED) for t in trials)
    assert all(t.intermediate_values for t in trials)  # every trial reported per-epoch values

    parents = tune_parents(uri)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == STUDY and parent.info.status == "FINISHED"
    assert parent.data.tags["orch.study"] == STUDY
    assert parent.data.tags["orch.pruner"] == "median"
    assert parent.data.tags["orch.storage"] == storage

    kids = children_of(uri, parent.info.run_id)
    assert len(kids) == 8
    by_number = {t.number: t for t in trials}
    assert sorted(int(k.data.tags["orch.trial"]) for k in kids) == sorted(by_number)
    for kid in kids:
        trial = by_number[int(kid.data.tags["orch.trial"])]
        assert kid.data.tags["orch.kind"] == "trial"
        assert kid.data.tags["orch.study"] == STUDY
        assert kid.data.tags["orch.setting"] == "model.norm=bn"
        assert kid.info.run_name == f"{STUDY}-t{trial.number}"
        assert trial.user_attrs["orch.run_id"] == kid.info.run_id
        for key, value in trial.params.items():
            assert float(kid.data.params[key]) == value, (key, kid.data.params[key], value)
        assert kid.data.params["seed"] == "0"  # the grid's first seed
        assert kid.data.params["train.max_epochs"] == "6"  # the grid's base reached the trials
        assert kid.data.tags["orch.trial_state"] == trial.state.name
        if trial.state == TrialState.PRUNED:
            assert kid.info.status == "KILLED"
        else:
            assert kid.info.status == "FINISHED"
            assert kid.data.metrics["val_f1_macro"] == trial.value

    best = study.best_trial
    for key, value in study.best_params.items():
        assert float(parent.data.tags[f"best.{key}"]) == value
    assert parent.data.metrics["best_value"] == study.best_value
    assert parent.data.metrics["best_trial"] == best.number
    assert parent.data.tags["orch.best_run_id"] == best.user_attrs["orch.run_id"]

    c = MlflowClient(tracking_uri=uri)
    top = {a.path for a in c.list_artifacts(parent.info.run_id)}
    plots = {a.path for a in c.list_artifacts(parent.info.run_id, "plots")}
    assert {"trials.csv", "grid.yaml"} <= top
    assert {"plots/optimization_history.png", "plots/param_importances.png"} <= plots
    csv_text = Path(c.download_artifacts(parent.info.run_id, "trials.csv", str(tmp))).read_text()
    assert len(csv_text.strip().splitlines()) == 1 + 8

    n_pruned = sum(t.state == TrialState.PRUNED for t in trials)
    assert f"study {STUDY}: 8 trials ({len(complete)} complete, {n_pruned} pruned, 0 failed)" in proc.stdout
    assert "ExperimentalWarning" not in proc.stderr


def test_tune_parent_description_sums_up_the_study(tuned):
    """The parent's overview (mlflow.note.content): trials by state, best value and params, a
    link to the best trial's run, the artifacts."""
    uri, _, tmp, _ = tuned
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp / 'optuna.db'}")
    (parent,) = tune_parents(uri)
    note = parent.data.tags["mlflow.note.content"]
    counts = {s: sum(t.state == getattr(TrialState, s) for t in study.get_trials()) for s in ("COMPLETE", "PRUNED")}
    assert f"Trials: 8 ({counts['COMPLETE']} complete, {counts['PRUNED']} pruned, 0 failed)" in note
    best = study.best_trial
    assert f"val_f1_macro **{best.value:.4f}**" in note
    assert f"[trial {best.number}](#/experiments/{parent.info.experiment_id}/runs/{best.user_attrs['orch.run_id']}?" in note
    for key in SEARCHED:
        assert f"| `{key}` " in note
    assert "`trials.csv`" in note and "`plots/optimization_history.png`" in note


def test_pruned_trials_are_not_results(tuned):
    """A pruned trial's run is no finished point for `orch sweep`; a complete one is."""
    uri, _, _, _ = tuned
    kids = children_of(uri, tune_parents(uri)[0].info.run_id)
    keys = tracking.TrackingStore(uri).finished_run_keys(kids[0].info.experiment_id)
    for kid in kids:
        done = kid.data.tags["orch.run_key"] in keys
        assert done == (kid.data.tags["orch.trial_state"] == "COMPLETE"), kid.data.tags["orch.trial_state"]


def test_rerun_resumes_the_study_under_the_same_parent(tuned):
    uri, env, tmp, _ = tuned
    before = {r.info.run_id for r in all_runs(uri)}
    proc = orch("tune", str(TUNE_GRID), "--n-trials", "10", env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 already finished, 2 to run (resumed)" in proc.stderr
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp / 'optuna.db'}")
    assert len(study.trials) == 10
    parents = tune_parents(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    new = [r for r in all_runs(uri) if r.info.run_id not in before]
    assert sorted(int(r.data.tags["orch.trial"]) for r in new) == [8, 9]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in new)
    assert parents[0].data.metrics["best_value"] == study.best_value


def test_resume_with_another_fixed_config_is_refused(tuned):
    uri, env, tmp, _ = tuned
    n_runs = len(all_runs(uri))
    result = CliRunner().invoke(cli, ["tune", str(TUNE_GRID), "--set", "train.max_epochs=4"], env=env)
    assert result.exit_code == 2, result.output
    assert "train.max_epochs: 6 → 4" in result.output and "--study" in result.output
    assert len(all_runs(uri)) == n_runs


def test_finished_run_keys_excludes_pruned_runs(store):
    tracking_store = tracking.TrackingStore(store)
    exp = tracking_store.ensure_experiment("keys")
    ids = {}
    for state in ("COMPLETE", "PRUNED"):
        ids[state] = tracking_store.start_run(exp, run_name=state, params={},
                                              tags={"orch.run_key": state.lower(), "orch.trial_state": state})
        tracking_store.end_run(ids[state], "FINISHED")
    assert tracking_store.finished_run_keys(exp) == {"complete"}


@pytest.mark.parametrize("url, needle", [
    ("mysql://u@localhost/db", "unsupported scheme 'mysql'"),
    ("postgresql://nobody@127.0.0.1:1/none", "not reachable"),
    ("sqlite:///no/such/folder/optuna.db", "does not exist"),  # relative: in the test's folder
    ("sqlite:///notes.txt", "is not a SQLite database"),
    ("sqlite:///.", "is a folder"),
])
def test_bad_storage_exits_2_and_starts_nothing(store, tmp_path, url, needle):
    (tmp_path / "notes.txt").write_text("not a database\n")
    result = CliRunner().invoke(cli, ["tune", str(TUNE_GRID), "--storage", url])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert result.output.count("\n") <= 2  # one message, no traceback
    assert not (tmp_path / "mlflow.db").exists()  # refused before the tracking store is opened
    assert (tmp_path / "notes.txt").read_text() == "not a database\n"


def test_a_second_orch_tune_on_one_sqlite_storage_is_refused(tmp_path):
    """SQLite serves one process: two `orch tune` on it would each run trials up to n_trials."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    first = subprocess.Popen([sys.executable, "-m", "orchestrator", "tune", str(TUNE_GRID), "--n-trials", "50",
                              "--quiet"], cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(".optuna.db.*.holder")):  # the first one holds the storage
            assert first.poll() is None and time.time() < deadline, "the first orch tune ended or is slow"
            time.sleep(0.05)
        second = invoke("tune", str(TUNE_GRID), "--n-trials", "50", "--timeout", "5", env=env, cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        assert f"is in use by pid {first.pid}" in second.stderr and "--storage postgresql" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        while not _running_trials(tmp_path / "mlflow.db"):  # then preempt the first mid-trial
            assert first.poll() is None and time.time() < deadline, "no trial started"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err  # preempted: its trial and parent are closed KILLED
    assert "Traceback" not in err
    assert not [r for r in all_runs(uri) if r.info.status == "RUNNING"]
    (parent,) = tune_parents(uri)
    assert parent.info.status == "KILLED" and parent.data.tags["orch.failure_reason"] == "preempted (SIGTERM)"
    stopped = [r for r in children_of(uri, parent.info.run_id) if r.info.status == "KILLED"]
    assert stopped and all(r.data.tags["orch.failure_reason"].startswith("preempted (SIGTERM)") for r in stopped)


def test_a_signal_while_the_summary_is_written_leaves_the_parent_killed_not_running(store, monkeypatch):
    """SIGTERM after the last trial, while the study's summary is written: the parent ends KILLED
    (preempted), exit 143; the rerun writes the summary and closes it FINISHED."""
    from orchestrator.execute.stop import Stopped
    from orchestrator.tune import tuning

    real = tuning.summarize_study

    def preempted(*args, **kwargs):
        raise Stopped(signal.SIGTERM)  # what the SIGTERM handler raises, wherever the signal lands

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        monkeypatch.setattr(tuning, "summarize_study", preempted)
        first = invoke("tune", str(TUNE_GRID), "--n-trials", "1", "--set", "train.max_epochs=1")
        monkeypatch.setattr(tuning, "summarize_study", real)
        assert first.returncode == 143, first.stderr
        (parent,) = tune_parents(store)
        assert parent.info.status == "KILLED" and parent.data.tags["orch.failure_reason"] == "preempted (SIGTERM)"
        rerun = invoke("tune", str(TUNE_GRID), "--n-trials", "1", "--set", "train.max_epochs=1")
    finally:
        for sig, handler in handlers.items():  # in-process, orch tune installed its own
            signal.signal(sig, handler)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 already finished, 0 to run" in rerun.stderr
    (parent,) = tune_parents(store)
    assert parent.info.status == "FINISHED" and "orch.failure_reason" not in parent.data.tags


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception
def test_a_sigterm_that_python_drops_still_stops_the_study(store, monkeypatch):
    """Outside a trial's training a signal raises where it lands; where Python drops that
    exception (a finalizer: "Exception ignored in ..."), it is still a preemption: no trial
    starts, the parent ends KILLED, exit 143."""
    from orchestrator.tune import tuning

    class SignalledInFinalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs here, inside the finalizer, and its exception is dropped
                pass

    real = tuning.fail_orphan_trials

    def orphans_then_signal(*args, **kwargs):
        SignalledInFinalizer()
        return real(*args, **kwargs)

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        monkeypatch.setattr(tuning, "fail_orphan_trials", orphans_then_signal)
        result = invoke("tune", str(TUNE_GRID), "--n-trials", "3", "--set", "train.max_epochs=2", "--pruner", "none")
    finally:
        for sig, handler in handlers.items():  # in-process, orch tune installed its own
            signal.signal(sig, handler)
    assert result.returncode == 143, result.stderr
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{Path.cwd() / 'optuna.db'}")
    assert study.trials == []  # none started after the signal
    (parent,) = tune_parents(store)
    assert parent.info.status == "KILLED" and parent.data.tags["orch.failure_reason"] == "preempted (SIGTERM)"


def test_a_trial_stopped_by_sigterm_continues_exactly_where_it_stopped_on_rerun(tmp_path):
    """SIGTERM mid-trial: the trial's training checkpoints and its run ends KILLED. The rerun
    queues the trial again with its params and continues its run; that continuation is
    SIGKILLed at once (before or after its own first checkpoint), and the next rerun continues
    from the newest checkpoint there is. The result equals the same config trained without a
    stop (`orch run`), and the pruner saw each epoch once."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["tune", str(TUNE_GRID), "--n-trials", "2", "--pruner", "none", "--set", "train.max_epochs=8",
            "--set", "train.patience=8", "--set", "train.checkpoint_seconds=0", "--quiet"]

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=tmp_path, text=True,
                                env={**os.environ, "MLFLOW_TRACKING_URI": uri}, stderr=subprocess.PIPE)

    def stop_when(proc: subprocess.Popen, sig: int, **running) -> str:
        deadline = time.time() + 300
        try:
            while not _running_trials(tmp_path / "mlflow.db", **running):
                assert proc.poll() is None and time.time() < deadline, "no such trial ran"
                time.sleep(0.02)
        finally:
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
        return err

    first = start()
    err = stop_when(first, signal.SIGTERM, min_checkpoint_epoch=2)
    assert first.returncode == 143, err
    (stopped,) = [r for r in all_runs(uri) if r.info.status == "KILLED" and r.data.tags["orch.kind"] == "trial"]
    assert stopped.data.tags["orch.failure_reason"].startswith("preempted (SIGTERM) at step")
    second = start()
    stop_when(second, signal.SIGKILL, continuing=True)

    rerun = orch(*args, env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    first_trial = study.trials[int(stopped.data.tags["orch.trial"])]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    (last,) = [t for t in complete if "orch.resumes_trial" in t.user_attrs]
    assert last.params == first_trial.params
    assert sorted(last.intermediate_values) == list(range(1, 9))  # every epoch reported once
    (resumed,) = [r for r in all_runs(uri) if r.info.run_id == last.user_attrs["orch.run_id"]]
    assert resumed.info.status == "FINISHED" and int(resumed.data.tags["orch.resumed_step"]) >= 2
    assert "orch.checkpoint" not in stopped.data.tags or not [  # checkpoints go once the trial finished
        r for r in all_runs(uri) if "orch.checkpoint" in r.data.tags]

    config = Path(MlflowClient(tracking_uri=uri).download_artifacts(resumed.info.run_id, "config.yaml"))
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    ref_uri = f"sqlite:///{ref_dir / 'mlflow.db'}"
    reference = orch("run", str(config), "--device", "cpu", "--quiet", env={"MLFLOW_TRACKING_URI": ref_uri},
                     cwd=ref_dir)
    assert reference.returncode == 0, reference.stderr
    (ref,) = all_runs(ref_uri)
    assert results(resumed) == results(ref)
    ref_curve = {m.step: m.value for m in MlflowClient(tracking_uri=ref_uri).get_metric_history(
        ref.info.run_id, epoch_key("val_f1_macro"))}
    assert last.intermediate_values == pytest.approx(ref_curve, rel=1e-12)


def _running_trials(db: Path, min_checkpoint_epoch: int = 0, continuing: bool = False) -> list:
    """Trial runs RUNNING in a store another process is writing, with a checkpoint of
    ``min_checkpoint_epoch`` epochs, or (``continuing``) continuing a run."""
    rows = ro_rows(db, "SELECT r.run_uuid, (SELECT value FROM tags c WHERE c.run_uuid = r.run_uuid AND "
                       "c.key = 'orch.checkpoint_step'), (SELECT value FROM tags f WHERE f.run_uuid = r.run_uuid "
                       "AND f.key = 'orch.resumed_from') FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                       "AND t.key = 'orch.kind' AND t.value = 'trial' WHERE r.status = 'RUNNING'")
    return [run for run, epoch, source in rows
            if int(epoch or 0) >= min_checkpoint_epoch and (source or not continuing)]


def test_unknown_metric_exits_2(store, tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "m", "tune": {"metric": "val_f1"}}))
    result = CliRunner().invoke(cli, ["tune", str(grid)])
    assert result.exit_code == 2, result.output
    assert "tune.metric" in result.output and "val_f1_macro" in result.output
    assert all_runs(store) == []


def test_one_study_per_setting(tmp_path):
    grid = tmp_path / "norms.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "tn",
        "base": {"data": {"name": "digits"}, "model": {"depth_n": 1}, "train": {"max_epochs": 2}},
        "grid": {"model.norm": ["bn", "gn"]},
        "seeds": [3, 4],
    }))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = orch("tune", str(grid), "--n-trials", "2", "--sampler", "random", "--pruner", "none",
                env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parents = {p.info.run_name: p for p in tune_parents(uri)}
    assert set(parents) == {"tn-bn", "tn-gn"}
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    for norm in ("bn", "gn"):
        study = optuna.load_study(study_name=f"tn-{norm}", storage=storage)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
        assert set(study.best_params) == {"schedule.step_size", "schedule.gamma"}  # the default space
        kids = children_of(uri, parents[f"tn-{norm}"].info.run_id)
        assert len(kids) == 2
        assert {k.data.params["model.norm"] for k in kids} == {norm}
        assert {k.data.params["seed"] for k in kids} == {"3"}  # the first seed only
        assert {k.data.tags["orch.setting"] for k in kids} == {f"model.norm={norm}"}


def test_study_names_and_pruning_signal(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "grid": {"model.norm": ["bn", "gn"]}}))
    spec = load_grid(grid)
    assert [p.name for p in plan_studies(spec)] == ["g-bn", "g-gn"]
    assert [p.name for p in plan_studies(spec, "mine")] == ["mine-bn", "mine-gn"]
    one = load_grid(grid, ["model.norm=gn"])
    assert [p.name for p in plan_studies(one, "mine")] == ["mine"]
    assert BUILT_IN.report_metric("val_f1_macro", "maximize") == epoch_key("val_f1_macro")
    assert BUILT_IN.report_metric("test_acc", "maximize") == epoch_key("val_acc")
    assert BUILT_IN.report_metric("train_seconds", "minimize") == epoch_key("val_loss")


def test_importing_tuning_stays_light():
    code = ("import sys, orchestrator.tune.tuning; "
            "print(sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- tune.seeds: every trial over several seeds

SEEDS_GRID = {
    "name": "ts",
    "base": {"data": {"name": "digits", "batch_size": 64}, "model": {"depth_n": 1}, "train": {"max_epochs": 2}},
    "tune": {"n_trials": 2, "seeds": [0, 1]},
}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """`orch tune` with tune.seeds [0, 1]: 2 trials, each trained on both seeds."""
    tmp = tmp_path_factory.mktemp("tune-seeds")
    grid = tmp / "seeds.yaml"
    grid.write_text(yaml.safe_dump(SEEDS_GRID))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    proc = orch("tune", str(grid), "--sampler", "random", "--pruner", "none",
                env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return uri, tmp, grid


def test_a_trial_over_seeds_is_the_mean_of_its_seed_runs(seeded):
    uri, tmp, _ = seeded
    study = optuna.load_study(study_name="ts", storage=f"sqlite:///{tmp / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert study.user_attrs["orch.seeds"] == [0, 1]
    (parent,) = tune_parents(uri)
    assert parent.data.tags["orch.seeds"] == "0,1"
    trial_runs = children_of(uri, parent.info.run_id)
    assert len(trial_runs) == 2 and len(all_runs(uri)) == 1 + 2 + 2 * 2
    c = MlflowClient(tracking_uri=uri)
    for run in trial_runs:
        trial = study.trials[int(run.data.tags["orch.trial"])]
        assert run.data.tags["orch.kind"] == "trial" and run.data.tags["orch.seeds"] == "0,1"
        assert run.info.status == "FINISHED" and run.data.tags["orch.trial_state"] == "COMPLETE"
        assert trial.user_attrs["orch.run_id"] == run.info.run_id
        assert "seed" not in run.data.params and "orch.run_key" not in run.data.tags  # not a training run
        for key, value in trial.params.items():
            assert float(run.data.params[key]) == value
        seed_runs = sorted(children_of(uri, run.info.run_id), key=lambda r: int(r.data.params["seed"]))
        assert [r.data.params["seed"] for r in seed_runs] == ["0", "1"]
        assert [r.info.run_name for r in seed_runs] == [f"ts-t{trial.number}-s0", f"ts-t{trial.number}-s1"]
        for seed_run in seed_runs:
            assert seed_run.info.status == "FINISHED" and seed_run.data.tags["orch.kind"] == "trial_seed"
            assert seed_run.data.tags["orch.trial"] == str(trial.number)
            assert seed_run.data.params["schedule.gamma"] == run.data.params["schedule.gamma"]
        per_seed = [r.data.metrics["val_f1_macro"] for r in seed_runs]
        assert per_seed[0] != per_seed[1]  # the seeds trained differently
        mean = sum(per_seed) / 2
        assert trial.value == pytest.approx(mean, rel=1e-12)
        assert run.data.metrics["val_f1_macro"] == pytest.approx(mean, rel=1e-12)
        assert run.data.metrics["test_acc"] == pytest.approx(sum(r.data.metrics["test_acc"] for r in seed_runs) / 2)
        # The pruner saw the running mean at steps seed index × max_epochs + epoch.
        curves = [[m.value for m in sorted(c.get_metric_history(r.info.run_id, "epoch/val_f1_macro"),
                                           key=lambda m: m.step)] for r in seed_runs]
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4]
        assert trial.intermediate_values[2] == pytest.approx(curves[0][1])
        assert trial.intermediate_values[3] == pytest.approx((curves[0][0] + curves[1][0]) / 2)
        assert trial.intermediate_values[4] == pytest.approx((curves[0][1] + curves[1][1]) / 2)
    assert parent.data.tags["orch.best_run_id"] == study.best_trial.user_attrs["orch.run_id"]
    csv_text = Path(c.download_artifacts(parent.info.run_id, "trials.csv", str(tmp))).read_text()
    assert csv_text.splitlines()[0].startswith("number,state,val_f1_macro,last_step,")


def test_seed_runs_of_a_complete_trial_are_finished_results(seeded):
    uri, _, _ = seeded
    runs = all_runs(uri)
    keys = tracking.TrackingStore(uri).finished_run_keys(runs[0].info.experiment_id)
    assert keys == {r.data.tags["orch.run_key"] for r in runs if r.data.tags["orch.kind"] == "trial_seed"}
    assert len(keys) == 4


def test_resuming_with_other_tune_seeds_is_refused(seeded):
    uri, tmp, grid = seeded
    other = tmp / "other.yaml"
    other.write_text(yaml.safe_dump({**SEEDS_GRID, "tune": {"n_trials": 3, "seeds": [0, 2]}}))
    result = CliRunner().invoke(cli, ["tune", str(other), "--study", "ts"], env={"MLFLOW_TRACKING_URI": uri})
    assert result.exit_code == 2, result.output
    assert "tune.seeds [0, 1], not [0, 2]" in result.output


def test_a_worker_joining_the_study_trains_every_seed(seeded):
    """serve_studies (orch worker's share of tuning) reads the seeds from the stored WorkerJob."""
    from orchestrator.store import optuna_storage as storage_mod
    from orchestrator.store.schema import StudyAttr
    from orchestrator.tune.tuning import WorkerJob, serve_studies

    uri, tmp, _ = seeded
    url = f"sqlite:///{tmp / 'optuna.db'}"
    study = optuna.load_study(study_name="ts", storage=url)
    job = WorkerJob.from_attr(study.user_attrs[StudyAttr.WORKER_JOB])
    assert job.seeds == (0, 1)
    study.set_user_attr(StudyAttr.WORKER_JOB, {**job.to_attr(), "n_trials": 3})  # one more trial wanted
    assert serve_studies(storage_mod.open_storage(url, heartbeat=True)) == 1
    trial = optuna.load_study(study_name="ts", storage=url).trials[2]
    assert trial.state == TrialState.COMPLETE
    seed_runs = children_of(uri, trial.user_attrs["orch.run_id"])
    assert sorted(r.data.params["seed"] for r in seed_runs) == ["0", "1"]
    assert trial.value == pytest.approx(sum(r.data.metrics["val_f1_macro"] for r in seed_runs) / 2)
