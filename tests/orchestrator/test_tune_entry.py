"""`orch tune` on the user's own code: a function entry, ``entry: mytrain:main``.

The function (written beside the grid in the test's folder, no torch) takes a dict config and
the run; as for any function entry, any metric it returns or logs can be the objective, and
orch cannot say how many steps it logs. The real CLI runs on a real SQLite MLflow store and
Optuna storage; the results are read through Optuna's and MLflow's own APIs.
"""

from __future__ import annotations

import math

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import all_runs, orch

# The user's code: a score that rises with the step, highest for lr near 0.1 (a deterministic
# function of lr, step and seed); seed n runs n steps fewer. It resumes from its checkpoint,
# and when it is told to stop it says so (a metric and a file among its artifacts) and returns None.
USER_CODE = '''
import math


def curve(lr, step, steps, seed):
    quality = 1.0 - (math.log10(lr) + 1.0) ** 2 / 4.0
    return quality * step / steps + 0.01 * seed


def main(config, run):
    state = run.load_checkpoint()
    start = state["step"] if state else 0
    for step in range(start + 1, config["steps"] - run.seed + 1):
        score = curve(config["lr"], step, config["steps"], run.seed)
        run.log({"score": score, "val_score": score}, step=step)
        run.save_checkpoint({"step": step})
        if run.should_stop():
            run.log({"stopped_at": step}, step=step)
            (run.artifact_dir / "stopped.txt").write_text(f"should_stop() at step {step}\\n")
            return None
    return {"score": score, "final_step": float(step)}
'''

SPACE = {"lr": {"type": "float", "low": 0.001, "high": 1.0, "log": True}}


def tune_grid(tmp, metric: str = "score", **tune) -> str:
    (tmp / "mytrain.py").write_text(USER_CODE)
    grid = tmp / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "fn", "entry": "mytrain:main", "base": {"steps": 8},
                                    "tune": {"metric": metric, "direction": "maximize", "space": SPACE, **tune}}))
    return str(grid)


def tune(tmp, grid: str, *args: str):
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    proc = orch("tune", grid, "--tracking-uri", uri, *args, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return uri, optuna.load_study(study_name="fn", storage=f"sqlite:///{tmp / 'optuna.db'}"), proc


def test_tune_prunes_a_function_entry_through_should_stop_and_records_trials_as_runs(tmp_path):
    grid = tune_grid(tmp_path)
    uri, study, proc = tune(tmp_path, grid, "--n-trials", "8", "--pruner", "median")
    trials = study.get_trials()
    assert len(trials) == 8 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [t.state for t in trials]
    (parent,) = [r for r in all_runs(uri) if r.data.tags.get("orch.kind") == "tune"]
    assert parent.info.status == "FINISHED" and parent.data.tags["orch.metric"] == "score"
    kids = {r.info.run_id: r for r in all_runs(uri) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(kids) == 8
    c = MlflowClient(tracking_uri=uri)
    for t in trials:
        run = kids[t.user_attrs["orch.run_id"]]
        assert run.data.tags["orch.kind"] == "trial" and run.data.tags["orch.entry"] == "mytrain:main"
        assert float(run.data.params["lr"]) == t.params["lr"] and run.data.params["steps"] == "8"
        assert run.data.tags["orch.trial_state"] == t.state.name
        history = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "score")}
        assert t.intermediate_values == {s: v for s, v in history.items() if s > 0}  # every logged value, reported
        if t.state == TrialState.PRUNED:  # the code saw should_stop() at the step it was pruned at
            last = max(t.intermediate_values)
            assert run.info.status == "KILLED" and run.data.metrics["stopped_at"] == last < 8
            assert run.data.tags["orch.failure_reason"].startswith(f"pruned by the tuner: at step {last} (score ")
            assert "stopped.txt" in {a.path for a in c.list_artifacts(run.info.run_id)}
            assert "orch.checkpoint" not in run.data.tags  # a pruned trial is never continued
        else:
            assert run.info.status == "FINISHED" and "stopped_at" not in run.data.metrics
            assert run.data.metrics["score"] == t.value and run.data.metrics["final_step"] == 8
    best = study.best_trial
    assert kids[best.user_attrs["orch.run_id"]].data.metrics["score"] == best.value
    assert parent.data.metrics["best_value"] == best.value
    assert f"PRUNED at step {max(pruned[0].intermediate_values)}" in proc.stderr


def test_hyperband_tunes_an_entry_that_cannot_say_its_last_step(tmp_path):
    """The entry's max_steps is None: Hyperband's max resource is "auto" (learnt from the first trial)."""
    grid = tune_grid(tmp_path)
    _, study, _ = tune(tmp_path, grid, "--n-trials", "6", "--pruner", "hyperband", "--sampler", "random")
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(sorted(t.intermediate_values) == list(range(1, 9)) for t in complete)


def test_a_logged_metric_is_an_objective_and_seeds_follow_one_another(tmp_path):
    """`tune.metric` names a value the code only logs; over three seeds (of 8, 7 and 6 steps:
    the entry cannot say how many) each seed's steps follow the largest step reported so far,
    the pruner sees the running mean over the seeds, and the trial's value is the mean of each
    seed's last logged value. A worker joining the study (serve_studies) rebuilds the entry
    from the study."""
    grid = tune_grid(tmp_path, "val_score", seeds=[0, 1, 2])
    uri, study, _ = tune(tmp_path, grid, "--n-trials", "2", "--pruner", "none", "--sampler", "random")
    c = MlflowClient(tracking_uri=uri)
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        seed_runs = sorted((r for r in all_runs(uri) if r.data.tags.get("mlflow.parentRunId") == t.user_attrs[
            "orch.run_id"]), key=lambda r: int(r.data.params["seed"]))
        c0, c1, c2 = ({m.step: m.value for m in c.get_metric_history(r.info.run_id, "val_score")} for r in seed_runs)
        assert (sorted(c0), sorted(c1), sorted(c2)) == (list(range(1, 9)), list(range(1, 8)), list(range(1, 7)))
        reported = t.intermediate_values
        assert sorted(reported) == list(range(1, 8 + 7 + 6 + 1))
        assert reported[3] == c0[3]
        assert reported[8 + 3] == pytest.approx((c0[3] + c1[3]) / 2, rel=1e-12)
        assert reported[8 + 7 + 3] == pytest.approx((c0[3] + c1[3] + c2[3]) / 3, rel=1e-12)
        assert t.value == pytest.approx((c0[8] + c1[7] + c2[6]) / 3, rel=1e-12)
        trial_run = c.get_run(t.user_attrs["orch.run_id"])
        assert trial_run.data.metrics["val_score"] == pytest.approx(t.value, rel=1e-12)
        assert trial_run.data.metrics["final_step"] == pytest.approx(7)  # every summary key all seeds have
        assert math.isclose(trial_run.data.metrics["score"], t.value, rel_tol=1e-12)

    from orchestrator.store import optuna_storage as storage_mod
    from orchestrator.store.schema import StudyAttr
    from orchestrator.tune.tuning import WorkerJob, serve_studies

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    job = WorkerJob.from_attr(study.user_attrs[StudyAttr.WORKER_JOB])
    assert job.entry == {"entry": "mytrain:main", "folder": str(tmp_path.resolve()), "checkpoint_seconds": 60.0}
    study.set_user_attr(StudyAttr.WORKER_JOB, {**job.to_attr(), "n_trials": 3})  # one more trial wanted
    assert serve_studies(storage_mod.open_storage(url, heartbeat=True)) == 1
    third = optuna.load_study(study_name="fn", storage=url).trials[2]
    assert third.state == TrialState.COMPLETE and sorted(third.intermediate_values) == list(range(1, 22))
